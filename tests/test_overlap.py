"""The seen / unseen split of evaluation queries by the training data (tuner.overlap) and its report part."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from mini_beir import DOCS, QRELS, QUERIES, write_beir

from tuner.config import Config
from tuner.data.beir import load_beir
from tuner.evaluate import EvalResult
from tuner.overlap import (
    SEEN,
    TRAINING_VIEW,
    UNSEEN,
    groups_view,
    runs_of_adapter,
    split_queries,
    text_key,
    training_view,
    union,
    write_view,
)
from tuner.report import paired_stats, write_report

ROOT = Path(__file__).resolve().parent.parent


def test_scifact_test_queries_split_by_the_train_qrels_as_doc_ids_say():
    """On the bundled SciFact, the text-based split equals the one computed from the collection's ids (the same
    corpus on both sides): a test query is seen when a relevant abstract is judged relevant to a train claim, or
    its claim is a train claim."""
    test, train = load_beir(ROOT / "data" / "scifact", "test"), load_beir(ROOT / "data" / "scifact", "train")
    train_pos = {d for judged in train.qrels.values() for d, g in judged.items() if g > 0}
    train_claims = set(train.queries.values())
    expected = {
        q: SEEN
        if test.queries[q] in train_claims or any(g > 0 and d in train_pos for d, g in judged.items())
        else UNSEEN
        for q, judged in test.qrels.items()
    }
    got = split_queries(test.queries, test.qrels, test.corpus, training_view(ROOT / "data" / "scifact", "train"))
    assert got["part"] == expected
    # the figures the README quotes
    assert sum(p == SEEN for p in got["part"].values()) == 196 and len(got["part"]) == 300
    assert (got["relevant_documents_in_training"], got["relevant_documents"]) == (181, 283)
    assert got["query_in_training"] == 2 and got["positive_in_training"] == 196


def _train_file(path: Path) -> Path:
    title, text = DOCS["d1"]
    rows = [
        # d1 as a training positive, spaced and cased otherwise than the corpus renders it
        {"query": "an unrelated claim", "pos": [f"  {title.upper()}   {text}"], "neg": ["Cats purr."]},
        # q3's own text as a training query (positive and negative unrelated to the collection)
        {"query": " does SLEEP help memory? ", "pos": ["Something else."], "neg": ["Dogs bark."]},
        # d5 (relevant to q4) only as a negative: a negative is not what a query's gain could be remembered from
        {"query": "another claim", "pos": ["Other text."], "neg": [{"title": DOCS["d5"][0], "text": DOCS["d5"][1]}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_a_union_of_views_holds_every_views_queries_positives_and_groups():
    from tuner.overlap import TrainingView

    a = TrainingView("a", frozenset({"q1"}), frozenset({"d1"}), 2)
    b = TrainingView("b", frozenset({"q2"}), frozenset({"d1", "d2"}), 3)
    both = union([a, b])
    assert both.queries == {"q1", "q2"} and both.positives == {"d1", "d2"} and both.groups == 5
    assert both.source == "a + b" and union([a]) is a


def test_a_runs_dev_queries_are_sampled_with_its_training_seed():
    """`data.drop_dev_queries` left out the dev queries training sampled with `train.seed`: the split must drop the
    same ones."""
    from tuner.config import load_config
    from tuner.evaluate import sample_queries
    from tuner.overlap import _dev_query_texts, normalize

    beir = ROOT / "data" / "scifact"
    data = load_beir(beir, "test")
    qids = [q for q in data.qrels if q in data.queries]
    overrides = [f"eval.beir={beir}", "eval.split=test", "eval.max_queries=5"]

    def dev(seed):
        return {normalize(data.queries[q]) for q in sample_queries(qids, 5, seed)}

    assert dev(7) != dev(0)
    assert _dev_query_texts(load_config(None, [*overrides, "train.seed=7"])) == dev(7)


def test_a_training_file_is_matched_by_text_after_whitespace_and_case_folding(tmp_path):
    corpus = {d: {"title": t, "text": x} for d, (t, x) in DOCS.items()}
    view = training_view(_train_file(tmp_path / "train.jsonl"))
    assert view.groups == 3 and view.source == str(tmp_path / "train.jsonl")
    got = split_queries({q: QUERIES[q] for q in QRELS}, QRELS, corpus, view)
    # q1: d1 is a positive; q2: d1 is judged 0 for it, d2 unseen; q3: its text; q4: d5 only as a negative
    assert got["part"] == {"q1": SEEN, "q2": UNSEEN, "q3": SEEN, "q4": UNSEEN, "q5": UNSEEN}
    assert (got["query_in_training"], got["positive_in_training"]) == (1, 1)
    assert (got["relevant_documents_in_training"], got["relevant_documents"]) == (1, 5)


def _run_folder(folder: Path, train_file: str | list[str], eval_beir: Path | None = None, **data) -> Path:
    config = Config()
    config.data.train_file = train_file
    config.eval.beir = str(eval_beir) if eval_beir else None
    for key, value in data.items():
        setattr(config.data, key, value)
    folder.mkdir(parents=True, exist_ok=True)
    config.save(folder / "config.yaml")
    return folder


def test_a_run_folder_reads_its_recorded_training_data_and_names_it_when_gone(tmp_path):
    train = _train_file(tmp_path / "train.jsonl")
    view = training_view(_run_folder(tmp_path / "run", str(train)))
    assert view.groups == 3 and f"from run {tmp_path / 'run'}" in view.source
    assert training_view(_run_folder(tmp_path / "run1", str(train), max_groups=1)).groups == 1  # as trained
    # a BEIR folder: its split's judged queries and relevant documents
    beir = write_beir(tmp_path / "beir", split="train")
    view = training_view(beir)
    assert view.groups == 5 and len(view.positives) == 5  # q2's d1 is judged 0: not a positive; d1 is q1's
    # the run evaluated on a collection holding q3 ("does sleep help memory?"): training left that group out
    test = write_beir(tmp_path / "test-beir")
    view = training_view(_run_folder(tmp_path / "run3", str(train), eval_beir=test))
    assert view.groups == 2 and "less its 1 dev queries (data.drop_dev_queries)" in view.source
    assert text_key("does sleep help memory?") not in view.queries
    kept = training_view(_run_folder(tmp_path / "run4", str(train), eval_beir=test, drop_dev_queries=False))
    assert kept.groups == 3 and text_key("does sleep help memory?") in kept.queries
    with pytest.raises(FileNotFoundError) as err:
        training_view(_run_folder(tmp_path / "run2", str(tmp_path / "gone.jsonl")))
    assert str(tmp_path / "run2" / "config.yaml") in str(err.value) and "--train-data" in str(err.value)
    # as training reads it: a group without a negative is not trained on, and max_groups counts kept groups
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    lone = tmp_path / "lone.jsonl"
    lone.write_text("\n".join(json.dumps(r) for r in [{"query": "no negative", "pos": ["P"]}, *rows]) + "\n")
    view = training_view(_run_folder(tmp_path / "run5", str(lone), max_groups=1))
    assert view.groups == 1 and text_key("an unrelated claim") in view.queries
    assert text_key("no negative") not in view.queries
    # a split names a file of a folder (or a BEIR / hub split), not a file or a run
    with pytest.raises(ValueError, match="a split names a file in a folder"):
        training_view(train, "dev")
    # data.train_file as a list: every file's groups, max_groups counted over the list as training counts it
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"query": "a query of the second file", "pos": ["Q"], "neg": ["R"]}) + "\n")
    view = training_view(_run_folder(tmp_path / "run6", [str(train), str(other)]))
    assert view.groups == 4 and text_key("a query of the second file") in view.queries
    assert f"{train} + {other}, from run" in view.source
    view = training_view(_run_folder(tmp_path / "run7", [str(train), str(other)], max_groups=3))
    assert view.groups == 3 and text_key("a query of the second file") not in view.queries


def test_a_run_folder_splits_by_the_view_its_training_recorded(tmp_path):
    """A run records the groups it trained on (training_view.json.gz, keys only): eval reads that, not the recipe;
    the runs an adapter comes from: RUN/adapter, RUN/checkpoints/checkpoint-N, and the sources of a merge."""
    from tuner.data import Group

    run = _run_folder(tmp_path / "run", str(tmp_path / "moved-away.jsonl"))  # the recipe's data is gone
    groups = [Group(query="Q one", pos=[{"title": "T", "text": "x y"}], neg=["n"])]
    write_view(groups_view(groups, "train.jsonl, 1 groups"), run / TRAINING_VIEW)
    view = training_view(run)
    assert view.groups == 1 and view.source == f"train.jsonl, 1 groups, as run {run} trained on"
    assert view.queries == {text_key(" q  ONE")} and view.positives == {text_key("T x y")}
    assert b"Q one" not in gzip.decompress((run / TRAINING_VIEW).read_bytes())  # no training text in the run folder
    # a damaged view is named, with the way out
    good = (run / TRAINING_VIEW).read_bytes()
    for damaged in (good[:20], good[:10] + b"x" * 30, gzip.compress(b'{"queries": "abc", "positives": []}')):
        (run / TRAINING_VIEW).write_bytes(damaged)
        with pytest.raises(ValueError, match=r"not a training view tuner train wrote .*--train-data"):
            training_view(run)
    (run / TRAINING_VIEW).write_bytes(good)

    (run / "adapter").mkdir()
    (run / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    assert runs_of_adapter(run / "adapter") == [run] == runs_of_adapter(run / "checkpoints" / "checkpoint-5")
    other = _run_folder(tmp_path / "other", "x.jsonl")
    merged = tmp_path / "merged"
    merged.mkdir()
    sources = [str(run / "adapter"), str(other / "adapter"), str(run / "checkpoints" / "checkpoint-5")]
    (merged / "tuner.json").write_text(json.dumps({"merge": {"sources": sources}}))
    assert runs_of_adapter(merged) == [run, other] and runs_of_adapter(tmp_path / "loose") == []
    (run / "soup").mkdir()  # a merge saved inside one of its sources' runs comes from all of them
    (run / "soup" / "tuner.json").write_text(json.dumps({"merge": {"sources": sources}}))
    assert runs_of_adapter(run / "soup") == [run, other]
    (merged / "tuner.json").write_text(json.dumps({"merge": {"sources": [str(run / "adapter"), str(tmp_path)]}}))
    with pytest.raises(ValueError, match="which comes from no tuner run"):
        runs_of_adapter(merged)  # a split by part of its training data would call trained-on queries unseen
    both = union([view, training_view(_run_folder(tmp_path / "third", str(_train_file(tmp_path / "t.jsonl"))))])
    assert both.groups == 4 and text_key("Q one") in both.queries and text_key("an unrelated claim") in both.queries


def _result(label: str, values: dict[str, float]) -> EvalResult:
    per_query = {q: {"ndcg@10": v, "mrr@10": v / 2} for q, v in values.items()}
    means = {m: sum(r[m] for r in per_query.values()) / len(per_query) for m in ("ndcg@10", "mrr@10")}
    return EvalResult(label, means, per_query, {q: [("d1", 1.0)] for q in values}, pairs=len(values))


def test_the_report_gives_each_part_its_means_and_paired_test(tmp_path):
    base = _result("base", {"a": 0.2, "b": 0.4, "c": 0.5, "d": 0.1, "e": 0.9})
    tuned = _result("tuned", {"a": 0.6, "b": 0.8, "c": 0.5, "d": 0.1, "e": 0.7})
    first = _result("first stage (BM25)", {"a": 0.3, "b": 0.3, "c": 0.3, "d": 0.3, "e": 0.3})
    overlap = {
        "part": {"a": SEEN, "b": SEEN, "c": UNSEEN, "d": UNSEEN, "e": UNSEEN},
        "query_in_training": 0,
        "positive_in_training": 2,
        "relevant_documents": 5,
        "relevant_documents_in_training": 2,
        "source": "train.jsonl",
        "training_queries": 7,
    }
    summary = write_report(tmp_path, [first, base, tuned], 1, ["ndcg@10", "mrr@10"], "ndcg@10", {}, overlap=overlap)
    parts = summary["training_overlap"]["parts"]
    assert parts[SEEN]["queries"] == 2 and parts[UNSEEN]["queries"] == 3
    seen = {row["label"]: row for row in parts[SEEN]["systems"]}
    unseen = {row["label"]: row for row in parts[UNSEEN]["systems"]}
    assert seen["tuned"]["metrics"] == pytest.approx({"ndcg@10": 0.7, "mrr@10": 0.35})
    assert unseen["base"]["metrics"]["ndcg@10"] == pytest.approx(0.5) and "vs_reference" not in unseen["base"]
    assert seen["tuned"]["vs_reference"]["ndcg@10"] == paired_stats([0.2, 0.4], [0.6, 0.8])
    assert unseen["tuned"]["vs_reference"]["ndcg@10"] == paired_stats([0.5, 0.1, 0.9], [0.5, 0.1, 0.7])
    assert summary["training_overlap"]["relevant_documents_in_training"] == 2

    rows = [json.loads(line) for line in (tmp_path / "per_query.jsonl").read_text().splitlines()]
    assert {r["qid"]: r["part"] for r in rows} == overlap["part"]
    report = (tmp_path / "report.md").read_text()
    assert "## Seen and unseen in training (nDCG@10, against base)" in report
    assert "| seen | 2 | tuned | 0.7000 | +0.4000 | 2 / 0 / 0 |" in report
    assert "| unseen | 3 | tuned | 0.4333 | -0.0667 | 0 / 2 / 1 |" in report
    assert "2 of the 5 relevant documents of these queries are training positives" in report
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(summary))

    # a part with no query is a row that says so, not a mean of nothing
    overlap["part"] = dict.fromkeys("abcde", UNSEEN)
    summary = write_report(tmp_path, [first, base, tuned], 1, ["ndcg@10"], "ndcg@10", {}, overlap=overlap)
    assert summary["training_overlap"]["parts"][SEEN]["queries"] == 0
    assert "| seen | 0 | - | - | - | - | - |" in (tmp_path / "report.md").read_text()
    # without the split, nothing of it
    summary = write_report(tmp_path, [first, base, tuned], 1, ["ndcg@10"], "ndcg@10", {})
    assert "training_overlap" not in summary and "Seen and unseen" not in (tmp_path / "report.md").read_text()
    assert all("part" not in json.loads(line) for line in (tmp_path / "per_query.jsonl").read_text().splitlines())


def test_training_records_each_parts_figures_and_keeps_a_recorded_base_on_resume():
    """`tuner train`'s split of the dev queries (metrics.json dev.training_overlap): part means of the first stage,
    base and final per-query figures, final vs base paired; a base reused by --resume keeps its recorded means."""
    from types import SimpleNamespace

    from tuner.data import Group
    from tuner.evaluate import Evaluator
    from tuner.overlap import groups_view
    from tuner.train import _training_overlap

    corpus = {d: {"title": t, "text": x} for d, (t, x) in DOCS.items()}
    candidates = {q: [(d, 1.0 / (i + 1)) for i, d in enumerate(DOCS)] for q in QRELS}
    evaluator = Evaluator({q: QUERIES[q] for q in QRELS}, corpus, QRELS, candidates, top_k=3, metrics=["ndcg@10"])
    # d4 (q3's) is a relevant document the first stage's top 3 misses: it counts all the same
    groups = [Group(query="x", pos=[corpus["d4"]], neg=["y"]), Group(query=QUERIES["q5"].upper(), pos=["z"])]
    groups = groups_view(groups)  # (with lora.init_adapter, joined with the earlier round's view)
    final = {q: {"ndcg@10": v} for q, v in zip(QRELS, [0.1, 0.2, 0.9, 0.4, 0.8], strict=True)}
    base = {q: {"ndcg@10": v} for q, v in zip(QRELS, [0.1, 0.3, 0.3, 0.4, 0.2], strict=True)}
    got = _training_overlap(groups, evaluator, SimpleNamespace(last_per_query=final, base_per_query=base), {})
    seen, unseen = got["parts"][SEEN], got["parts"][UNSEEN]
    assert (seen["queries"], unseen["queries"]) == (2, 3)  # q3 by its document, q5 by its text
    assert seen["final"]["ndcg@10"] == pytest.approx(0.85) and seen["base"]["ndcg@10"] == pytest.approx(0.25)
    assert seen["final_vs_base"] == paired_stats([0.3, 0.2], [0.9, 0.8])
    first = evaluator.first_stage_result().per_query
    assert unseen["first_stage"]["ndcg@10"] == pytest.approx(sum(first[q]["ndcg@10"] for q in ("q1", "q2", "q4")) / 3)
    assert (got["query_in_training"], got["positive_in_training"]) == (1, 1)

    resumed = _training_overlap(
        groups, evaluator, SimpleNamespace(last_per_query=final, base_per_query={}), {"dev": {"training_overlap": got}}
    )
    assert resumed["parts"][SEEN]["base"] == seen["base"] and "final_vs_base" not in resumed["parts"][SEEN]
    nothing = SimpleNamespace(last_per_query={}, base_per_query={})
    assert _training_overlap(groups, evaluator, nothing, {"dev": {"training_overlap": got}}) is got


def test_data_check_against_an_evaluation_set_counts_what_the_data_covers(tmp_path, capsys, monkeypatch):
    """Before training: `tuner data check TRAIN --against EVAL` counts the evaluation queries the data covers."""
    from tuner import overlap
    from tuner.cli import main

    train = _train_file(tmp_path / "train.jsonl")
    beir = write_beir(tmp_path / "beir")
    with monkeypatch.context() as patch:  # counted on the groups the check read: the file is not read again
        patch.setattr(overlap, "training_view", lambda *a, **k: pytest.fail("the training file was read twice"))
        assert main(["data", "check", str(train), "--no-tokens", "--against", str(beir), "--json"]) == 0
    against = json.loads(capsys.readouterr().out)["against"]
    assert (against["seen"], against["queries"]) == (2, 5)  # q1 (d1 a positive), q3 (its text)
    assert (against["query_in_training"], against["positive_in_training"]) == (1, 1)
    assert main(["data", "check", str(train), "--no-tokens", "--against", str(beir)]) == 0
    assert f"against {beir}: 2 of 5 queries are covered by this data" in capsys.readouterr().out
    # a labeled file as the evaluation set: its groups' positives are the relevant documents
    dev = tmp_path / "dev.jsonl"
    dev.write_text(json.dumps({"query": "Does sleep help memory?", "pos": ["Other text."], "neg": ["x"]}) + "\n")
    assert main(["data", "check", str(train), "--no-tokens", "--against", str(dev), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["against"]["seen"] == 1
    assert main(["data", "check", str(train), "--no-tokens", "--against-split", "dev"]) == 2
    assert "--against-split: for --against" in capsys.readouterr().err
    assert main(["data", "check", str(train), "--no-tokens", "--against", str(tmp_path / "nope")]) == 2
    assert f"--against {tmp_path / 'nope'}" in capsys.readouterr().err
    # the checked data at fault is named as such, not the evaluation set: a split of a file (ignored before)
    assert main(["data", "check", str(train), "--no-tokens", "--split", "dev", "--against", str(beir)]) == 2
    assert (
        f"--split dev: names a file in a folder of training files, a BEIR qrels split or a hub split; {train} is a file"
        in capsys.readouterr().err
    )
    assert main(["data", "check", str(train), "--no-tokens", "--split", "dev"]) == 2
    assert "--split dev: names a file" in capsys.readouterr().err
    # a BEIR folder as the training data: its train qrels, which this one lacks (it has test qrels only)
    assert main(["data", "check", str(beir), "--against", str(beir)]) == 2
    err = capsys.readouterr().err
    assert f"{beir} as the training data of --against:" in err and "(--split names the training qrels)" in err
    # data with errors: said, not counted
    bad = tmp_path / "bad.jsonl"
    bad.write_text(train.read_text() + "{not json\n")
    assert main(["data", "check", str(bad), "--no-tokens", "--against", str(beir)]) == 1
    assert f"against {beir}: not counted: the data has errors" in capsys.readouterr().out


def test_data_check_against_with_errors_or_as_json_and_a_beir_training_split(tmp_path, capsys):
    """Data with errors gets no coverage figures (only the note); --json still says each error on stderr; a BEIR
    folder checked as training data is read by its --split qrels, an evaluation folder by its --against-split."""
    from tuner.cli import main

    train = _train_file(tmp_path / "train.jsonl")
    beir = write_beir(tmp_path / "beir")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(train.read_text() + "{not json\n")
    assert main(["data", "check", str(bad), "--no-tokens", "--against", str(beir)]) == 1
    out = capsys.readouterr().out
    assert "not counted: the data has errors" in out and "queries are covered" not in out
    assert main(["data", "check", str(bad), "--no-tokens", "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["errors"] and f"error: {bad}:" in captured.err
    training = write_beir(tmp_path / "training", split="dev")  # its training qrels are named dev
    assert main(["data", "check", str(training), "--split", "dev", "--against", str(beir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["against"]["queries"] == 5
    # and an evaluation folder by its --against-split qrels
    evaluation = write_beir(tmp_path / "evaluation", qrels={"q1": {"d1": 1}}, split="dev")
    argv = ["data", "check", str(train), "--no-tokens", "--against", str(evaluation), "--against-split", "dev"]
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["against"]["queries"] == 1


def test_a_runs_dev_queries_from_a_labeled_file_are_sampled_as_training_sampled_them(tmp_path):
    """eval.data (a labeled file) with eval.max_queries: the dev queries are the ones training sampled with its
    train.seed and max_queries, not every query of the file nor another seed's sample."""
    from tuner.config import load_config
    from tuner.evaluate import Evaluator
    from tuner.overlap import _dev_query_texts, normalize

    dev = tmp_path / "dev.jsonl"
    rows = [{"query": f"Question {n}", "pos": [f"answer {n}"], "neg": [f"other {n}"]} for n in range(12)]
    dev.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")

    def sampled(seed):
        queries = Evaluator.from_groups(dev, None, 4, seed, show_progress=False).queries
        return {normalize(t) for t in queries.values()}

    assert sampled(7) != sampled(0) and len(sampled(7)) == 4
    overrides = [f"eval.data={dev}", "eval.max_queries=4", "train.seed=7"]
    assert _dev_query_texts(load_config(None, overrides)) == sampled(7)


def test_a_run_whose_recipe_names_no_training_data_is_named(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    Config().save(run / "config.yaml")  # data.train_file and data.beir unset
    with pytest.raises(FileNotFoundError, match=r"config\.yaml: the run names no training data"):
        training_view(run)


def test_a_judged_document_missing_from_the_collection_is_not_counted():
    """BEIR qrels can name documents the corpus lacks: such a judgment makes no query seen and is not counted as
    a relevant document, and it does not stop the split (a lookup of it would be a KeyError)."""
    view = groups_view([], "nothing")
    got = split_queries({"q1": "a question"}, {"q1": {"gone": 1, "d1": 1}}, {"d1": "A document."}, view)
    assert got["part"] == {"q1": UNSEEN} and got["relevant_documents"] == 1


def test_an_evaluation_folder_of_labeled_files_is_read_at_its_split(tmp_path):
    """`data check --against FOLDER --against-split dev`: the dev file of a folder of labeled files is the evaluation
    set, not the folder's other files."""
    from tuner.overlap import eval_overlap

    folder = tmp_path / "eval"
    folder.mkdir()
    for split, n in (("dev", 2), ("test", 3)):
        rows = [{"query": f"{split} question {i}", "pos": [f"{split} answer {i}"], "neg": ["x"]} for i in range(n)]
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    view = groups_view([], "nothing")
    assert eval_overlap(view, folder, "dev")["queries"] == 2
    assert eval_overlap(view, folder, "test")["queries"] == 3
    # no split: the test file, as `tuner eval --data FOLDER` scores it (it read the folder's train file, the
    # training side, and here failed for want of one)
    assert eval_overlap(view, folder)["queries"] == 3


def test_a_beir_training_split_counts_only_queries_with_a_relevant_document_in_the_corpus(tmp_path):
    """BEIR training turns a judged query into a group only through a relevant document (grade > 0): a query judged
    0 on everything is not a training query, and a relevant document the corpus lacks is not a positive."""
    qrels = {"q1": {"d1": 1, "gone": 1}, "q2": {"d2": 0}, "q3": {"d4": 1}}
    view = training_view(write_beir(tmp_path / "beir", qrels=qrels, split="train"))
    assert view.groups == 2 and text_key(QUERIES["q2"]) not in view.queries
    assert len(view.positives) == 2  # d1 and d4


def test_data_check_of_a_beir_folder_against_an_evaluation_set_reports_its_training_split(tmp_path, capsys):
    """`data check BEIR --against EVAL` counts coverage from the folder's train qrels: the stats it prints above that
    count are of the same train qrels, not of its test qrels (the split a BEIR folder is checked by alone)."""
    from tuner.cli import main

    folder = write_beir(tmp_path / "beir", qrels={"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d4": 1}})
    write_beir(folder, qrels={"q4": {"d5": 1}}, split="train")
    assert main(["data", "check", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stats"]["split"] == "test"
    assert main(["data", "check", str(folder), "--against", str(folder), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["stats"]["split"] == "train" and payload["stats"]["qrels"] == 1
    assert (payload["against"]["queries"], payload["against"]["seen"]) == (3, 0)
    assert main(["data", "check", str(folder), "--split", "test", "--against", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stats"]["split"] == "test"
