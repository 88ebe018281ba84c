"""Evaluator on a tiny model and a small BEIR slice written into tmp_path (conftest `beir_dir`, `evaluator`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mini_beir import DOCS, QRELS, QUERIES
from train_helpers import random_adapter

from tuner.evaluate import Evaluator, first_stage_run, sample_queries
from tuner.metrics import evaluate_run


def test_first_stage_is_the_cut_candidates(evaluator, beir_dir):
    from tuner.data.beir import load_beir

    data = load_beir(beir_dir, "test")
    run = first_stage_run(data.corpus, data.queries, "bm25", top_k=5)
    assert evaluator.qids == ["q1", "q2", "q3", "q4", "q5"]
    assert all(len(evaluator.candidates[q]) == 5 for q in evaluator.qids)
    expected = evaluate_run(data.qrels, run, missing="zero")
    assert evaluator.first_stage_metrics() == pytest.approx(expected, abs=1e-12)
    assert evaluator.first_stage_metrics()["ndcg@10"] > 0.5  # BM25 finds the obvious matches


def test_reranked_scores_are_the_rerankers_logits(evaluator, tiny_reranker):
    result = evaluator.evaluate(tiny_reranker, label="tiny")
    assert result.pairs == 25 and result.label == "tiny"
    docs = evaluator.candidates["q3"]
    logits = tiny_reranker.score(QUERIES["q3"], [evaluator.corpus[d] for d in docs], normalize=False)
    by_doc = dict(zip(docs, logits, strict=True))
    ranked = result.run["q3"]
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    for doc_id, score in ranked:
        assert score == pytest.approx(by_doc[doc_id], abs=1e-5)
    # the metrics are those of the reranked run; a second (cached) call gives the same figures
    assert result.metrics == pytest.approx(evaluate_run(evaluator.qrels, result.run), abs=1e-12)
    assert evaluator(tiny_reranker) == pytest.approx(result.metrics, abs=1e-9)
    assert set(result.metrics) == {"ndcg@10", "mrr@10", "map@100", "recall@100"}


def test_sharded_reranking_covers_every_query_once(evaluator, tiny_reranker):
    """`rerank(shard=(rank, world))` (DDP evaluation): the shards are disjoint and together give the whole run."""
    whole, _ = evaluator.rerank(tiny_reranker)
    parts = [evaluator.rerank(tiny_reranker, shard=(r, 3))[0] for r in range(3)]
    assert sum(len(p) for p in parts) == len(whole) and all(parts[:2])
    merged = {q: ranked for p in parts for q, ranked in p.items()}
    assert merged.keys() == whole.keys()
    for q, ranked in whole.items():
        assert [d for d, _ in merged[q]] == [d for d, _ in ranked]
        assert max(abs(a - b) for (_, a), (_, b) in zip(merged[q], ranked, strict=True)) < 1e-5


@pytest.mark.parametrize("packing", [False, True])
def test_prefix_reuse_scores_each_query_once_with_the_same_run(evaluator, tiny_model_dir, monkeypatch, packing):
    """`tuner eval --prefix-reuse auto [--packing]`: each query's candidates share one prefix forward, and the run
    is the plain path's (same order, logits within 1e-5)."""
    from tuner.eval_run import ModelOptions, load_reranker
    from tuner.scoring import Reranker

    plain, _ = evaluator.rerank(load_reranker(str(tiny_model_dir), None, ModelOptions("cpu", "float32")))
    options = ModelOptions("cpu", "float32", prefix_reuse="auto", packing=packing)
    fast = load_reranker(str(tiny_model_dir), None, options)
    assert fast.prefix_reuse == "auto" and fast.packing is packing
    seen = []
    original = Reranker._logits_shared_prefix

    def spy(self, prefix, rests, batch_tokens):
        seen.append(len(rests))
        return original(self, prefix, rests, batch_tokens)

    monkeypatch.setattr(Reranker, "_logits_shared_prefix", spy)
    run, _ = evaluator.rerank(fast)
    assert sorted(seen) == sorted(len(evaluator.candidates[q]) for q in plain)  # one prefix forward per query
    assert run.keys() == plain.keys()
    for q, ranked in plain.items():
        assert [d for d, _ in run[q]] == [d for d, _ in ranked]
        assert max(abs(a - b) for (_, a), (_, b) in zip(run[q], ranked, strict=True)) < 1e-5


def test_non_finite_scores_stop_the_evaluation_naming_the_query(evaluator, tiny_model_dir):
    """A NaN logit has no order: the metrics of a run ranked on it were computed without a word."""
    from tuner.head import unwrap_backbone
    from tuner.scoring import NonFiniteScoresError, Reranker

    broken = Reranker.from_pretrained(tiny_model_dir, device="cpu", dtype="float32")
    with torch.no_grad():
        unwrap_backbone(broken.model).norm.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteScoresError, match=r"scores are not finite \(query '[^']+', document '[^']+': nan\)"):
        evaluator.rerank(broken)


def test_bare_model_in_training_mode(evaluator, tiny_reranker):
    model, tok = tiny_reranker.model, tiny_reranker.tokenizer
    model.train()
    try:
        got = evaluator(model, tok)
        assert model.training  # restored after evaluation
    finally:
        model.eval()
    assert got == pytest.approx(evaluator(tiny_reranker), abs=1e-9)
    with pytest.raises(TypeError):
        evaluator(model)


def test_instruction_changes_scores(evaluator, tiny_reranker):
    default = evaluator.evaluate(tiny_reranker)
    none = evaluator.evaluate(tiny_reranker, instruction="")
    assert none.info["instruction"] == ""
    assert default.run["q1"] != none.run["q1"]


def test_a_result_names_the_instruction_it_was_scored_with(evaluator, tiny_reranker):
    """The report's instruction column: a model's own default (an adapter's tuner.json sets one) by its text, not
    "(default)"; an explicit one as given."""
    from tuner.scoring import Reranker

    own = Reranker(tiny_reranker.model, tiny_reranker.tokenizer, instruction="Judge the claim", show_progress=False)
    assert evaluator.evaluate(own).info["instruction"] == "Judge the claim"
    assert evaluator.evaluate(own, instruction="").info["instruction"] == ""
    assert evaluator.evaluate(tiny_reranker).info["instruction"] is None  # the contract's default


def test_base_is_the_disabled_adapter(evaluator, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from tuner.scoring import Reranker

    base = Reranker.from_pretrained(tiny_model_dir, device="cpu", dtype="float32")
    before = evaluator.evaluate(base)
    torch.manual_seed(0)
    peft_model = get_peft_model(base.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at zero; a non-zero B makes the adapter change scores
            torch.nn.init.normal_(param, std=0.5)
    tuned = Reranker(peft_model, base.tokenizer)
    after = evaluator.evaluate(tuned)
    with peft_model.disable_adapter():
        disabled = evaluator.evaluate(tuned)
    for q in evaluator.qids:
        assert [d for d, _ in disabled.run[q]] == [d for d, _ in before.run[q]]
        assert [s for _, s in disabled.run[q]] == pytest.approx([s for _, s in before.run[q]], abs=1e-5)
    assert any(after.run[q] != before.run[q] for q in evaluator.qids)


def test_bad_candidates_and_sampling():
    with pytest.raises(ValueError, match="not in the corpus"):
        Evaluator({"q": "x"}, {"a": "doc"}, {"q": {"a": 1}}, {"q": [("zz", 1.0)]})
    with pytest.raises(ValueError, match="no query"):
        Evaluator({"q": "x"}, {"a": "doc"}, {"other": {"a": 1}}, {})
    ev = Evaluator({"q": "x", "r": "y"}, {"a": "doc"}, {"q": {"a": 1}, "r": {"a": 1}}, {"q": [("a", 1.0)]})
    assert ev.first_stage_metrics()["ndcg@10"] == pytest.approx(0.5)  # r has no candidates: 0
    assert sample_queries(list("abcdef"), 3, seed=0) == sample_queries(list("abcdef"), 3, seed=0)
    assert len(sample_queries(list("abcdef"), 3)) == 3 and sample_queries(list("ab"), None) == ["a", "b"]


def test_candidates_are_cut_in_trec_eval_order_and_the_first_stage_row_is_that_cut():
    """Candidates in any order (a `Run` from the API, tied scores of a run file) are cut at `top_k` in trec_eval
    order (score desc, doc id desc); the first-stage row ranks those same `top_k` (a metric deeper than the cut
    counts them only, as for every reranker); a document judged 0 is not one of the relevant documents."""
    corpus = {d: f"doc {d}" for d in "abcd"}
    candidates = {"q": [("a", 1.0), ("d", 3.0), ("b", 2.0), ("c", 2.0)]}
    ev = Evaluator({"q": "x"}, corpus, {"q": {"a": 1, "b": 0}}, candidates, top_k=2)
    assert ev.candidates["q"] == ["d", "c"]  # b and c tie at 2.0: the higher doc id first
    assert ev.first_stage["q"] == [("d", 3.0), ("c", 2.0)]
    assert ev.first_stage_metrics()["recall@100"] == 0.0  # a, the relevant one, is below the cut
    assert list(ev.relevant_documents) == ["a"]
    # a run that lacks a query counts it 0, and keeps it in the per-query figures (the paired tests need it)
    empty = ev.score_run({}, "nothing")
    assert list(empty.per_query) == ["q"] and empty.metrics["ndcg@10"] == 0.0


def test_a_groups_file_samples_its_queries_with_the_seed(tmp_path):
    """`tuner eval --data FILE --max-queries N --seed S`: the seed picks the queries, not only their order."""
    rows = [{"query": f"query {i}", "pos": [f"pos {i}"], "neg": [f"neg {i}"]} for i in range(12)]
    path = tmp_path / "dev.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    picked = {tuple(Evaluator.from_groups(path, max_queries=3, seed=s).qids) for s in range(4)}
    assert len(picked) > 1 and all(len(p) == 3 for p in picked)
    again = Evaluator.from_groups(path, max_queries=3, seed=2).qids
    assert again == Evaluator.from_groups(path, max_queries=3, seed=2).qids


def test_encoded_prompts_are_not_shared_between_rerankers_of_other_budgets(evaluator, tiny_reranker):
    """`tuner eval --compare` scores every model with one evaluator: a model with another `max_length` (an
    export's tuner.json) must not be scored on the prompts encoded for the first one (cut at another budget)."""
    from tuner.scoring import Reranker

    short = Reranker(tiny_reranker.model, tiny_reranker.tokenizer, max_length=80, show_progress=False)
    fresh = Evaluator(evaluator.queries, evaluator.corpus, evaluator.qrels, evaluator.first_stage, top_k=5)
    expected, _ = fresh.rerank(short)
    evaluator.rerank(tiny_reranker)  # the full-budget prompts are encoded (and kept) first
    got, _ = evaluator.rerank(short)
    long_run, _ = fresh.rerank(tiny_reranker)
    assert any([s for _, s in long_run[q]] != pytest.approx([s for _, s in expected[q]], abs=1e-4) for q in expected)
    for q, ranked in expected.items():
        assert [d for d, _ in got[q]] == [d for d, _ in ranked]
        assert [s for _, s in got[q]] == pytest.approx([s for _, s in ranked], abs=1e-5)


# ---------------------------------------------------------------------------------------------- report
def test_paired_stats_hand_computed():
    from scipy.stats import ttest_rel

    from tuner.report import paired_stats

    ref, other = [0.0, 0.0, 0.0, 1.0, 0.5], [1.0, 0.0, 0.5, 0.0, 0.75]
    st = paired_stats(ref, other)
    assert st["delta"] == pytest.approx(0.15)
    assert (st["wins"], st["ties"], st["losses"], st["queries"]) == (3, 1, 1, 5)
    assert st["p_ttest"] == pytest.approx(ttest_rel(other, ref).pvalue)
    assert 0.0 < st["p_randomization"] <= 1.0
    same = paired_stats(ref, ref)
    assert (same["delta"], same["ties"], same["p_ttest"], same["p_randomization"]) == (0.0, 5, 1.0, 1.0)
    better = paired_stats([0.0] * 40, [0.5 + 0.01 * i for i in range(40)])
    assert better["p_randomization"] < 0.001 and better["p_ttest"] < 0.001
    with pytest.raises(ValueError):
        paired_stats([0.0], [0.0, 1.0])


def test_the_randomization_test_is_two_sided_exact_enough_and_seeded():
    """The sign-flip p: a loss is as significant as the same gain; with n=5 equal gains the exact p is 2/32 (the
    observed flip and its mirror count); p never reaches 0 (add-one: 1/10,001 at least); one seed, one p; and
    differences within TIE_TOLERANCE are ties."""
    from tuner.report import paired_stats

    gains = [0.5 + 0.01 * i for i in range(40)]
    better, worse = paired_stats([0.0] * 40, gains), paired_stats(gains, [0.0] * 40)
    assert worse["delta"] == pytest.approx(-better["delta"]) and worse["losses"] == 40
    assert worse["p_randomization"] == better["p_randomization"] == pytest.approx(1 / 10_001)
    assert paired_stats([0.0] * 5, [1.0] * 5)["p_randomization"] == pytest.approx(2 / 32, abs=0.01)
    ref, other = [0.0, 0.0, 0.0, 1.0, 0.5], [1.0, 0.0, 0.5, 0.0, 0.75]
    assert paired_stats(ref, other) == paired_stats(ref, other)
    assert paired_stats(ref, other, seed=1)["p_randomization"] != paired_stats(ref, other)["p_randomization"]
    noise = paired_stats([0.5, 0.5, 0.5], [0.5 + 1e-12, 0.5, 0.5 - 1e-12])
    assert (noise["wins"], noise["ties"], noise["losses"], noise["p_randomization"]) == (0, 3, 0, 1.0)


def test_each_system_is_paired_with_the_reference_by_query():
    """metrics.json's vs_reference: other minus reference, query by query, whatever order each system's per-query
    figures come in (a base read back from --base-cache)."""
    from tuner.evaluate import EvalResult
    from tuner.report import build_summary, paired_stats

    def result(label, values):
        per_query = {q: {"ndcg@10": v} for q, v in values.items()}
        return EvalResult(label, {"ndcg@10": sum(values.values()) / len(values)}, per_query, {})

    ref = result("base", {"a": 0.1, "b": 0.2, "c": 0.9})
    tuned = result("tuned", {"c": 0.6, "a": 0.5, "b": 0.4})  # another order
    summary = build_summary([ref, tuned], 0, ["ndcg@10"], "ndcg@10", {})
    stats = summary["systems"][1]["vs_reference"]["ndcg@10"]
    assert stats == paired_stats([0.1, 0.2, 0.9], [0.5, 0.4, 0.6])
    assert stats["delta"] == pytest.approx(0.1) and (stats["wins"], stats["losses"]) == (2, 1)


def test_the_plot_draws_each_systems_deltas_against_the_reference(tmp_path, monkeypatch):
    """report.png: per query, the system's figure minus the reference's, sorted (a gain is above the zero line)."""
    from matplotlib.axes import Axes

    from tuner.report import plot_deltas

    drawn, real = {}, Axes.plot

    def spy(self, x, y, *args, label=None, **kwargs):
        drawn[label] = list(y)
        return real(self, x, y, *args, label=label, **kwargs)

    monkeypatch.setattr(Axes, "plot", spy)
    summary = {"primary_metric": "ndcg@10", "reference": "base", "systems": [{"label": "base"}, {"label": "tuned"}]}
    per_query = {
        "a": {"base": {"ndcg@10": 0.25}, "tuned": {"ndcg@10": 0.75}},
        "b": {"base": {"ndcg@10": 0.5}, "tuned": {"ndcg@10": 0.25}},
        "c": {"base": {"ndcg@10": 0.5}, "tuned": {"ndcg@10": 1.0}},
    }
    plot_deltas(summary, per_query, tmp_path / "report.png")
    assert drawn == {"tuned (mean +0.2500)": [-0.25, 0.5, 0.5]}
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_the_trec_eval_check_cuts_the_run_for_mrr_at_k():
    """The report's trec_eval check: MRR@10 is trec_eval's recip_rank on the run cut to its top 10, so a first
    relevant document at rank 12 agrees (0 both), instead of a false alarm."""
    pytest.importorskip("pytrec_eval")
    from tuner.metrics import evaluate_per_query
    from tuner.report import crosscheck_pytrec_eval

    qrels = {"q": {"d11": 1}}
    run = {"q": [(f"d{i:02d}", float(20 - i)) for i in range(15)]}  # d11 at rank 12
    per_query = evaluate_per_query(qrels, run, ["mrr@10", "ndcg@10", "recall@100"])
    assert per_query["q"]["mrr@10"] == 0.0
    assert crosscheck_pytrec_eval(qrels, run, per_query) == pytest.approx(0.0, abs=1e-12)


def test_the_reports_run_files_keep_exact_scores_and_its_table_four_decimal_deltas(tmp_path):
    """runs/*.trec hold each score exactly (logits 1e-9 apart stay in their order: rounded, they would tie and
    trec_eval would rank them by doc id); report.md gives each delta to 4 decimals, as the values."""
    from tuner.evaluate import EvalResult
    from tuner.metrics import evaluate_per_query, mean
    from tuner.report import write_report
    from tuner.retrieval import read_run

    qrels = {"q": {"a": 1}}

    def result(label, run):
        per_query = evaluate_per_query(qrels, run, ["ndcg@10"])
        return EvalResult(label, mean(per_query, ["ndcg@10"]), per_query, run, pairs=2)

    base, tuned = result("base", {"q": [("b", 2.0), ("a", 1.0)]}), result("tuned", {"q": [("a", 1 + 1e-9), ("b", 1.0)]})
    summary = write_report(tmp_path, [base, tuned], 0, ["ndcg@10"], "ndcg@10", {}, qrels=qrels)
    for res, entry in zip((base, tuned), summary["systems"], strict=True):
        assert read_run(tmp_path / entry["run_file"]) == res.run
    assert "| tuned | 1.0000 (+0.3691) |" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_p_values_are_printed_to_4_decimals_and_below_that_as_a_bound():
    from tuner.report import _fmt_p

    assert [_fmt_p(p) for p in (0.04999, 0.005, 0.0001, 0.00005, None)] == [
        "0.0500", "0.0050", "0.0001", "<0.0001", "n/a"
    ]  # fmt: skip


def _table_rows(markdown: str) -> dict[str, list[float]]:
    """The first table of report.md: label → the four metric values (deltas dropped)."""
    rows = {}
    for line in markdown.split("## Paired")[0].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[1][:1].isdigit():
            rows[cells[0].strip("*")] = [float(c.split()[0]) for c in cells[1:5]]
    return rows


def test_cli_eval_end_to_end(tmp_path, tiny_model_dir, beir_dir):
    from tuner.cli import main
    from tuner.metrics import evaluate_per_query, mean
    from tuner.retrieval import read_run

    adapter = random_adapter(tiny_model_dir, tmp_path / "adapter")
    out = tmp_path / "out"
    argv = ["eval", "--model", str(tiny_model_dir), "--adapter", str(adapter), "--beir", str(beir_dir)]
    argv += ["--top-k", "5", "--out", str(out), "--instructions", "default", "none", "--no-progress"]
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "05-merged.trec").write_text("q1 Q0 d1 1 1.0 old\n")  # an earlier report's system
    assert main([*argv, "--cache-dir", ""]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(
        Path(s["run_file"]).name for s in summary["systems"]
    )
    labels = [s["label"] for s in summary["systems"]]
    assert labels == ["first stage (BM25)", "base [default]", "base [none]", "tuned [default]", "tuned [none]"]
    assert summary["reference"] == "base [default]" and summary["queries"] == 5
    by_label = {s["label"]: s for s in summary["systems"]}
    assert by_label["tuned [default]"]["metrics"] != by_label["base [default]"]["metrics"]  # the adapter matters

    # report.md shows exactly the figures of metrics.json
    report = (out / "report.md").read_text()
    table = _table_rows(report)
    # top-5 under every cutoff: the report says so, and recall beyond the candidates is one value for all rows
    assert "Only the top 5 candidates are ranked, so nDCG@10, MRR@10, MAP@100 and Recall@100 count those 5" in report
    assert len({s["metrics"]["recall@100"] for s in summary["systems"]}) == 1
    assert set(table) == set(labels)
    for label, values in table.items():
        expected = [by_label[label]["metrics"][m] for m in summary["metrics_order"]]
        assert values == pytest.approx(expected, abs=5e-5)

    # per_query.jsonl averages to metrics.json, and every run file re-evaluates to the same figures
    rows = [json.loads(line) for line in (out / "per_query.jsonl").read_text().splitlines()]
    assert len(rows) == 5
    qrels = {q: QRELS[q] for q in QRELS}
    for label, entry in by_label.items():
        per_query = {row["qid"]: row["metrics"][label] for row in rows}
        assert mean(per_query) == pytest.approx(entry["metrics"], abs=1e-12)
        from_file = mean(evaluate_per_query(qrels, read_run(out / entry["run_file"]), missing="zero"))
        assert from_file == pytest.approx(entry["metrics"], abs=1e-12)
        assert entry["pytrec_eval_max_abs_diff"] < 1e-6
        if label != "base [default]":
            stats = entry["vs_reference"]["ndcg@10"]
            assert stats["wins"] + stats["ties"] + stats["losses"] == 5
            assert stats["p_randomization"] is not None
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a TREC run file as candidates gives the same first stage; --compare loads an adapter on --model
    out2 = tmp_path / "out2"
    run_file = out / by_label["first stage (BM25)"]["run_file"]
    argv2 = ["eval", "--model", str(tiny_model_dir), "--beir", str(beir_dir), "--candidates", str(run_file)]
    argv2 += ["--compare", str(adapter), "--top-k", "5", "--out", str(out2), "--no-progress", "--cache-dir", ""]
    assert main(argv2) == 0
    second = json.loads((out2 / "metrics.json").read_text())["systems"]
    # a folder named as a run's or an export's is labeled with its parent's name
    labels = [f"first stage ({run_file.name})", f"{tiny_model_dir.parent.name}/model", f"{tmp_path.name}/adapter"]
    assert [s["label"] for s in second] == labels
    assert second[0]["metrics"] == pytest.approx(by_label["first stage (BM25)"]["metrics"], abs=1e-12)
    assert second[1]["metrics"] == pytest.approx(by_label["base [default]"]["metrics"], abs=1e-9)
    assert second[2]["metrics"] == pytest.approx(by_label["tuned [default]"]["metrics"], abs=1e-9)


def test_cli_eval_user_errors(tmp_path, tiny_model_dir, beir_dir, capsys):
    from tuner.cli import main

    foreign = tmp_path / "other-collection.trec"
    foreign.write_text("q1 Q0 not-a-doc 1 3.0 bm25\n", encoding="utf-8")
    argv = ["eval", "--model", str(tiny_model_dir), "--beir", str(beir_dir), "--candidates", str(foreign)]
    assert main([*argv, "--out", str(tmp_path / "o"), "--cache-dir", ""]) == 2
    err = capsys.readouterr().err
    assert f"{foreign}: " in err and "'not-a-doc'" in err and "is not in the corpus" in err

    base = ["eval", "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main([*base, "--beir", str(beir_dir), "--candidates", str(tmp_path / "nope.trec")]) == 2
    assert "neither 'bm25' nor an existing run file" in capsys.readouterr().err
    assert main([*base, "--beir", str(beir_dir), "--split", "dev"]) == 2
    assert "no qrels for split 'dev'" in capsys.readouterr().err
    assert main([*base, "--beir", str(beir_dir), "--top-k", "0"]) == 2
    capsys.readouterr()
    # a wrong adapter path is the one thing said (not first a note that it is not from a tuner run), before any work
    missing = str(tmp_path / "nope" / "adapter")
    assert main([*base, "--beir", str(beir_dir), "--adapter", missing]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and f"adapter {missing!r} not found" in err


def test_cli_eval_adapter_given_as_its_run_folder_is_its_adapter(tmp_path, tiny_model_dir, beir_dir, capsys):
    """--adapter RUN stands for RUN/adapter, as `tuner export RUN` reads it (it was refused, naming RUN/adapter):
    the queries are split by the run's training data, and a broken adapter inside is the one error, named."""
    from tuner.cli import main
    from tuner.overlap import TRAINING_VIEW, TrainingView, write_view

    run = tmp_path / "runs" / "quick"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA"}', encoding="utf-8")
    (run / "config.yaml").write_text("name: quick\n", encoding="utf-8")
    write_view(TrainingView("t.jsonl", frozenset(), frozenset(), 0), run / TRAINING_VIEW)
    argv = ["eval", "--model", str(tiny_model_dir), "--beir", str(beir_dir), "--adapter", str(run)]
    assert main([*argv, "--out", str(tmp_path / "o"), "--no-progress", "--cache-dir", ""]) == 2
    out, err = capsys.readouterr()
    assert out == f"tuner eval: splitting the queries by the training data of run {run} (--train-data none: no split)\n"
    assert err.count("\n") == 1 and f"{run / 'adapter'}: no adapter weights" in err, err


def _dev_groups(path: Path) -> Path:
    rows = [
        {"query": "what is bm25", "pos": ["BM25 ranks documents.", "A ranking function."], "neg": ["Cats purr."]},
        {"query": "capital of france", "pos": ["Paris."], "neg": ["Berlin.", "Paris.", "Rome."], "qid": "cap"},
        {"query": "find the fish", "pos": ["Salmon swim."], "neg": ["Dogs bark."], "instruction": "Find animals"},
        {"query": "no negatives here", "pos": ["Alone."]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_an_evaluator_from_a_groups_file(tmp_path, tiny_reranker):
    """Each group's documents are its candidates (a duplicate counted once, as the positive it also is), its
    positives the qrels; the first stage is a seeded random order; a row's instruction is the one its pairs get."""
    path = _dev_groups(tmp_path / "dev.jsonl")
    ev = Evaluator.from_groups(path)
    assert ev.qids == ["q1", "cap", "q3"]  # the group without a negative has nothing to rank: left out
    assert ev.qrels == {"q1": {"d1": 1, "d2": 1}, "cap": {"d4": 1}, "q3": {"d7": 1}}  # ids by first appearance
    assert sorted(ev.candidates["cap"]) == ["d4", "d5", "d6"] and ev.top_k == 3  # Paris. once

    def order(e):
        return tuple(tuple(e.candidates[q]) for q in ev.qids)

    others = {order(Evaluator.from_groups(path, seed=s)) for s in range(1, 6)}
    assert order(Evaluator.from_groups(path)) == order(ev) and len(others | {order(ev)}) > 1  # seeded, and random

    result = ev.evaluate(tiny_reranker)
    got = dict(result.run["q3"])
    texts = {"d7": "Salmon swim.", "d8": "Dogs bark."}
    own = tiny_reranker.score_pairs([("find the fish", t, "Find animals") for t in texts.values()], normalize=False)
    assert [got[d] for d in texts] == pytest.approx(own, abs=1e-5)
    default = tiny_reranker.score_pairs([("find the fish", t) for t in texts.values()], normalize=False)
    assert own != pytest.approx(default, abs=1e-5)  # the row's instruction changes the scores
    forced = dict(ev.evaluate(tiny_reranker, instruction="").run["q3"])  # an explicit instruction: for all
    none = tiny_reranker.score_pairs([("find the fish", t, "") for t in texts.values()], normalize=False)
    assert [forced[d] for d in texts] == pytest.approx(none, abs=1e-5)


def test_cli_eval_on_a_groups_file(tmp_path, tiny_model_dir, capsys):
    from tuner.cli import main

    path = _dev_groups(tmp_path / "dev.jsonl")
    out = tmp_path / "out"
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(path), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert [s["label"] for s in summary["systems"]] == [
        "first stage (random order)",
        f"{tiny_model_dir.parent.name}/model",
    ]
    assert summary["dataset"] == "dev.jsonl" and summary["queries"] == 3 and summary["pairs_per_model"] == 8
    assert "first stage in a seeded random order" in capsys.readouterr().out
    assert "Each query's group is ranked whole (at most 3 documents)" in (out / "report.md").read_text()
    missing = [
        "eval",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(tmp_path / "dve.jsonl"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(missing) == 2 and not (tmp_path / "o").exists()  # checked before the output folder is made
    assert "did you mean" in capsys.readouterr().err
    argv = ["eval", "--model", str(tiny_model_dir), "--data", str(path), "--top-k", "3"]
    assert main(argv) == 2
    assert "--top-k: for --beir; with --data the candidates are each group's documents" in capsys.readouterr().err


def test_cli_instruct_on_a_groups_file(tmp_path, tiny_model_dir):
    from tuner.cli import main

    path = _dev_groups(tmp_path / "dev.jsonl")
    (tmp_path / "ins.txt").write_text("Find animals\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = [
        "instruct",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(path),
        "--instructions",
        str(tmp_path / "ins.txt"),
    ]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    labels = [s["label"] for s in summary["systems"]]
    assert labels[0] == "first stage (random order)" and len(labels) == 4 and summary["queries"] == 3
    record = json.loads((out / "tuner.json").read_text())
    assert record["instruction"] == summary["instruction_search"]["winner"]
    # a labeled file has no split: the record says what metrics.json says (it said "test", the --split default)
    assert record["instruction_search"]["split"] == summary["split"] == ""


def test_instruct_on_rows_with_their_own_instruction_says_they_are_overridden(tmp_path, tiny_model_dir, caplog):
    """A row's own instruction is not searched for: the search scores its query under each candidate, and says so;
    the tuner.json record keeps the search's summary, not every candidate's metrics (those are in metrics.json)."""
    from tuner.cli import main

    path = _dev_groups(tmp_path / "dev.jsonl")  # "find the fish" carries "Find animals"
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="tuner.instruct"):
        assert main(["instruct", "--model", str(tiny_model_dir), "--data", str(path), "--out", str(out)]) == 0
    warned = [r.getMessage() for r in caplog.records if r.name == "tuner.instruct"]
    assert any(w.startswith("1 of 3 queries of ") and "carry their own instruction" in w for w in warned), warned
    record = json.loads((out / "tuner.json").read_text())["instruction_search"]
    assert "candidates" not in record
    assert len(json.loads((out / "metrics.json").read_text())["instruction_search"]["candidates"]) == 2


def test_a_cutoff_deeper_than_the_reranked_candidates_is_flagged_in_training_and_the_card(tmp_path, caplog):
    """eval.top_k=5 with recall@20: training logged recall@20=1.0000 and the model card printed it as if 20
    documents had been ranked; both now say only the top 5 are (a `tuner eval` report already did)."""
    from mini_beir import write_beir

    from tuner.config import EvalSection
    from tuner.export_card import model_card
    from tuner.train_setup import build_evaluators

    beir = write_beir(tmp_path / "topics")
    section = EvalSection(beir=str(beir), split="test", top_k=5, metrics=["ndcg@10", "recall@20", "mrr@3"])
    with caplog.at_level("WARNING", logger="tuner.train"):
        build_evaluators(section, seed=0, cache_dir=tmp_path / "cache")
    said = [r.getMessage() for r in caplog.records if r.name == "tuner.train"]
    assert len(said) == 1 and said[0].startswith("eval.top_k=5: Only the top 5 candidates are ranked, so nDCG@10")
    assert "Recall@20 is the first stage's recall at 5" in said[0] and "MRR@3" not in said[0]
    meta = {
        "format": "adapter",
        "recipe": {"eval": {"beir": str(beir), "top_k": 5}},
        "eval": {"tuned": {"ndcg@10": 0.5, "recall@20": 1.0}},
    }
    card = model_card(tmp_path / "export", meta)
    assert "Only the top 5 candidates are ranked, so nDCG@10 and Recall@20 count those 5" in card
    # reranked deep enough: no note
    meta["recipe"]["eval"]["top_k"] = 20
    assert "Only the top" not in model_card(tmp_path / "export", meta)
    # an export of a run: its tuner.json names the recipe, and the run's resolved YAML holds the eval section
    run_meta = {**meta, "recipe": "my-recipe"}
    recipe_yaml = f"name: my-recipe\neval:\n  beir: {beir}\n  top_k: 5\n"
    card = model_card(tmp_path / "export", run_meta, recipe_yaml)
    assert "Only the top 5 candidates are ranked, so nDCG@10 and Recall@20 count those 5" in card


def test_cli_eval_splits_the_queries_by_the_training_data_of_the_adapters_run(
    tmp_path, tiny_model_dir, beir_dir, capsys
):
    """An adapter inside a tuner run folder: eval reports every system on the queries its training data covers and
    on the rest (the run's config.yaml names the data); --train-data names another source or 'none'."""
    from tuner.cli import main
    from tuner.config import Config

    run = tmp_path / "run"
    adapter = random_adapter(tiny_model_dir, run / "adapter")
    title, text = DOCS["d1"]
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"query": "q", "pos": [f"{title} {text}"], "neg": ["x"]}) + "\n", encoding="utf-8")
    config = Config()
    config.data.train_file = str(train)
    config.save(run / "config.yaml")
    base = ["eval", "--model", str(tiny_model_dir), "--adapter", str(adapter), "--beir", str(beir_dir)]
    base += ["--top-k", "5", "--no-progress", "--cache-dir", ""]

    assert main([*base, "--out", str(tmp_path / "auto")]) == 0
    out = capsys.readouterr().out
    assert f"splitting the queries by the training data of run {run}" in out
    assert "## Seen and unseen in training" in out  # printed with the report's head
    summary = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    overlap = summary["training_overlap"]
    assert (overlap["parts"]["seen"]["queries"], overlap["parts"]["unseen"]["queries"]) == (1, 4)  # q1 (d1)
    by_label = {s["label"]: s for s in summary["systems"]}
    tuned = "run/adapter"  # the run's adapter is named by its run
    seen_tuned = {r["label"]: r for r in overlap["parts"]["seen"]["systems"]}[tuned]
    rows = {r["qid"]: r for r in map(json.loads, (tmp_path / "auto" / "per_query.jsonl").read_text().splitlines())}
    assert rows["q1"]["part"] == "seen" and seen_tuned["metrics"] == rows["q1"]["metrics"][tuned]
    assert by_label[tuned]["metrics"] != seen_tuned["metrics"]

    assert main([*base, "--out", str(tmp_path / "none"), "--train-data", "none"]) == 0
    assert "training_overlap" not in json.loads((tmp_path / "none" / "metrics.json").read_text())
    # an explicit source that is not there: one line, before an output folder is made
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "bad"), "--train-data", str(tmp_path / "trian.jsonl")]) == 2
    assert "--train-data" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    # the run's data gone: a warning, and the report without the split
    train.unlink()
    assert main([*base, "--out", str(tmp_path / "gone")]) == 0
    assert "warning: no seen/unseen split" in capsys.readouterr().err
    assert "training_overlap" not in json.loads((tmp_path / "gone" / "metrics.json").read_text())


def _count_scored(monkeypatch) -> list:
    """The label of each system `Evaluator.evaluate` scores from now on (a base read from the cache is not)."""
    from tuner.evaluate import Evaluator

    scored = []
    evaluate = Evaluator.evaluate

    def counted(self, model, *args, **kwargs):
        scored.append(kwargs.get("label"))
        return evaluate(self, model, *args, **kwargs)

    monkeypatch.setattr(Evaluator, "evaluate", counted)
    return scored


def test_an_eval_reads_the_base_back_from_the_base_cache(tmp_path, tiny_model_dir, beir_dir, monkeypatch):
    """`tuner eval --base-cache DIR`: the base (the adapter disabled) is scored once for a set; a later eval of
    another adapter of that base reads it back, ranked run included (the paired tests against it are the same);
    another instruction is another entry."""
    from tuner import eval_run

    cache = tmp_path / "base-cache"
    options = {"top_k": 5, "show_progress": False, "cache_dir": None, "base_cache_dir": cache}
    first = eval_run.run_eval(
        str(tiny_model_dir), beir_dir, tmp_path / "a", adapter=str(random_adapter(tiny_model_dir, tmp_path / "x")),
        **options,
    )  # fmt: skip
    assert len(list(cache.glob("base-*.json"))) == 1
    scored = _count_scored(monkeypatch)
    other = str(random_adapter(tiny_model_dir, tmp_path / "y", seed=1))
    second = eval_run.run_eval(str(tiny_model_dir), beir_dir, tmp_path / "b", adapter=other, **options)
    assert scored == ["tuned"]
    base = next(s for s in second["systems"] if s["label"] == "base")
    assert base["metrics"] == next(s for s in first["systems"] if s["label"] == "base")["metrics"]
    assert "--base-cache" in base["base_cache"]
    fresh = eval_run.run_eval(
        str(tiny_model_dir), beir_dir, tmp_path / "c", adapter=other, **{**options, "base_cache_dir": None}
    )

    def figures(summary):  # what the report says of each system (not its timing)
        keys = ("label", "metrics", "vs_reference", "pytrec_eval_max_abs_diff", "instruction", "pairs")
        return [{k: s.get(k) for k in keys} for s in summary["systems"]]

    assert figures(second) == figures(fresh) and "base_cache" not in fresh["systems"][1]
    scored.clear()
    eval_run.run_eval(str(tiny_model_dir), beir_dir, tmp_path / "d", adapter=other, instructions=[""], **options)
    assert scored == ["base", "tuned"] and len(list(cache.glob("base-*.json"))) == 2
    # an adapter whose tuner.json sets another default instruction: its base is scored with that one, not read back
    (tmp_path / "y" / "tuner.json").write_text(json.dumps({"instruction": "Judge the claim"}), encoding="utf-8")
    scored.clear()
    eval_run.run_eval(str(tiny_model_dir), beir_dir, tmp_path / "g", adapter=other, **options)
    assert scored == ["base", "tuned"] and len(list(cache.glob("base-*.json"))) == 3

    # the CLI flag: a second eval of the same base reads it back
    from tuner.cli import main

    flags = ["--beir", str(beir_dir), "--top-k", "5", "--cache-dir", "", "--no-progress"]
    flags += ["--base-cache", str(tmp_path / "cli-cache")]
    argv = ["eval", "--model", str(tiny_model_dir), "--adapter", other, *flags]
    assert main([*argv, "--out", str(tmp_path / "e")]) == 0
    scored.clear()
    assert main([*argv, "--out", str(tmp_path / "f")]) == 0
    assert scored == ["tuned"]
    # the adapter given alone as --model stands for the base it names: the same base, read back from the same cache
    scored.clear()
    assert main(["eval", "--model", other, *flags, "--out", str(tmp_path / "h")]) == 0
    assert scored == ["tuned"]
    systems = {s["label"]: s for s in json.loads((tmp_path / "h" / "metrics.json").read_text())["systems"]}
    assert systems["base"]["model"] == systems["tuned"]["model"] == str(tiny_model_dir)
    assert systems["tuned"]["adapter"] == other


def test_the_base_cache_keys_the_prompt_budget_and_the_model_options(tmp_path, tiny_model_dir, beir_dir, monkeypatch):
    """`tuner eval --base-cache`: an adapter whose tuner.json sets another `max_length` scores its base with that
    budget, and another dtype scores it in that precision: neither reads back an entry measured otherwise."""
    from tuner import eval_run

    options = {"top_k": 3, "max_queries": 2, "show_progress": False, "cache_dir": None}
    options["base_cache_dir"] = tmp_path / "base-cache"
    adapter = str(random_adapter(tiny_model_dir, tmp_path / "x"))
    eval_run.run_eval(str(tiny_model_dir), beir_dir, tmp_path / "a", adapter=adapter, **options)
    scored = _count_scored(monkeypatch)
    (tmp_path / "x" / "tuner.json").write_text(json.dumps({"max_length": 80}), encoding="utf-8")
    eval_run.run_eval(str(tiny_model_dir), beir_dir, tmp_path / "b", adapter=adapter, **options)
    assert scored == ["base", "tuned"]
    (tmp_path / "x" / "tuner.json").unlink()
    scored.clear()
    bf16 = eval_run.ModelOptions(dtype="bfloat16")
    eval_run.run_eval(str(tiny_model_dir), beir_dir, tmp_path / "c", adapter=adapter, options=bf16, **options)
    assert scored == ["base", "tuned"]


def test_an_adapter_given_alone_is_compared_with_another_adapter_on_its_own_base(tmp_path, tiny_model_dir, beir_dir):
    """`tuner eval --model ADAPTER_A --compare ADAPTER_B`: B loads on the base it names (as A does), not on A."""
    from tuner import eval_run

    first = str(random_adapter(tiny_model_dir, tmp_path / "a"))
    second = str(random_adapter(tiny_model_dir, tmp_path / "b", seed=1))
    options = {"top_k": 3, "max_queries": 2, "show_progress": False, "cache_dir": None}
    summary = eval_run.run_eval(first, beir_dir, tmp_path / "out", compare=[second], **options)
    systems = {s["label"]: s for s in summary["systems"]}
    assert list(systems) == ["first stage (BM25)", "base", "tuned", "b"]
    assert (systems["b"]["model"], systems["b"]["adapter"]) == (second, None)
    alone = eval_run.run_eval(str(tiny_model_dir), beir_dir, tmp_path / "alone", adapter=second, **options)
    assert systems["b"]["metrics"] == next(s for s in alone["systems"] if s["label"] == "tuned")["metrics"]


def test_a_compared_system_that_is_not_there_fails_before_any_scoring(tmp_path, tiny_model_dir, beir_dir, monkeypatch):
    # it loaded after the first stage, base and tuned rows were scored: a typo in --compare cost that whole time
    from tuner import eval_run

    def no_scoring(*args, **kwargs):
        raise AssertionError("a model was loaded before --compare was checked")

    monkeypatch.setattr(eval_run, "load_reranker", no_scoring)
    with pytest.raises(OSError, match=r"^--compare: model '\./runs/nope' not found: no such directory"):
        eval_run.run_eval(str(tiny_model_dir), beir_dir, tmp_path / "out", compare=["./runs/nope"], top_k=3)


@pytest.mark.filterwarnings("ignore:Could not find a config file")  # peft looks for the recorded base's config
def test_a_compared_adapter_loads_on_the_model_given(tmp_path, tiny_model_dir, beir_dir):
    """`tuner eval --model BASE --compare ADAPTER`: the adapter is scored on BASE, not on the base its
    adapter_config.json records (a hub id, a folder since moved)."""
    from tuner import eval_run

    adapter = random_adapter(tiny_model_dir, tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "moved-away")
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    options = {"top_k": 3, "max_queries": 2, "show_progress": False, "cache_dir": None}
    summary = eval_run.run_eval(str(tiny_model_dir), beir_dir, tmp_path / "out", compare=[str(adapter)], **options)
    row = summary["systems"][-1]
    assert (row["label"], row["model"], row["adapter"]) == (
        f"{tmp_path.name}/adapter",
        str(tiny_model_dir),
        str(adapter),
    )


def test_a_system_given_as_a_run_or_export_folder_is_labeled_by_the_run_or_export(tmp_path, monkeypatch):
    """`tuner eval --compare runs/lr1e-3/adapter runs/lr2e-4/adapter`: rows "lr1e-3/adapter" and "lr2e-4/adapter",
    not "adapter" and "adapter (2)"; a checkpoint by its run, an export's format folder by the export, a folder of
    another name and a hub id by their own name, a relative path as the folder it resolves to."""
    from tuner.eval_run import system_label

    for folder in ("runs/lr2e-4/adapter", "runs/full/model", "exports/bikes/merged", "exports/bikes/seq-cls"):
        (tmp_path / folder).mkdir(parents=True)
    assert system_label(str(tmp_path / "runs/lr2e-4/adapter")) == "lr2e-4/adapter"
    assert system_label(str(tmp_path / "runs/full/model")) == "full/model"
    assert system_label(str(tmp_path / "runs/lr2e-4/checkpoints/checkpoint-40")) == "lr2e-4/checkpoint-40"
    assert system_label(str(tmp_path / "exports/bikes/merged")) == "bikes/merged"
    assert system_label(str(tmp_path / "exports/bikes/seq-cls")) == "bikes/seq-cls"
    assert system_label(str(tmp_path / "models/tiny-reranker")) == "tiny-reranker"
    assert system_label("Qwen/Qwen3-Reranker-4B") == "Qwen3-Reranker-4B"
    monkeypatch.chdir(tmp_path / "runs/lr2e-4")
    assert system_label("adapter") == "lr2e-4/adapter"
    (tmp_path / "runs/best").symlink_to(tmp_path / "runs/lr2e-4")  # a stable name for the winner keeps its name
    assert system_label(str(tmp_path / "runs/best/adapter")) == "best/adapter"


def test_systems_of_one_name_get_numbered_labels():
    """`--compare runs/a/adapter runs/b/adapter runs/c/adapter`: three systems named "adapter" get labels of their
    own (labels key per_query.jsonl and the run files; a repeated one fails the report after all the scoring)."""
    from tuner.eval_run import _unique

    taken = {"first stage (BM25)"}
    assert [_unique("adapter", taken) for _ in range(3)] == ["adapter", "adapter (2)", "adapter (3)"]


def test_judged_relevant_documents_missing_from_the_corpus_are_warned_about(tmp_path, tiny_model_dir, caplog):
    """A qrels line whose document the corpus lacks cannot be retrieved by any system yet counts in recall and
    nDCG: said once on stderr (the log) and kept in metrics.json and report.md, not silently evaluated."""
    from mini_beir import write_beir

    from tuner.cli import main
    from tuner.eval_run import report_meta

    qrels = {**QRELS, "q1": {"d1": 1, "d999": 1, "d998": 0}}  # d998 is judged non-relevant: it changes nothing
    beir = write_beir(tmp_path / "mini", qrels=qrels)
    want = (
        f"{beir / 'qrels' / 'test.tsv'}: 1 judged-relevant document of 1 query is not in corpus.jsonl "
        "(e.g. q1 → d999): it counts as relevant and never retrieved"
    )
    with caplog.at_level("WARNING", logger="tuner.evaluate"):
        evaluator = Evaluator.from_beir(beir, "test", top_k=5, show_progress=False)
        assert [r.getMessage()[: len(want)] for r in caplog.records] == [want]
        assert len(evaluator.warnings) == 1 and evaluator.warnings[0].startswith(want)
        caplog.clear()
        sampled = Evaluator.from_beir(beir, "test", top_k=5, max_queries=2, seed=0)
        assert "q1" not in sampled.qids  # the queries evaluated are all findable: nothing to say
        assert sampled.warnings == [] and not caplog.records
        assert "warnings" not in report_meta(sampled, beir, "test", "BM25", 5, 2)

        out = tmp_path / "out"
        argv = ["eval", "--model", str(tiny_model_dir), "--beir", str(beir), "--top-k", "5", "--out", str(out)]
        assert main([*argv, "--no-progress", "--cache-dir", ""]) == 0
        assert [r.getMessage()[: len(want)] for r in caplog.records] == [want]
    meta = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert len(meta["warnings"]) == 1 and meta["warnings"][0].startswith(want)
    assert f"**Warning:** {want}" in (out / "report.md").read_text(encoding="utf-8")


def test_eval_and_instruct_report_the_metrics_a_recipe_names(tmp_path, tiny_model_dir, beir_dir, capsys):
    """`--metrics` takes eval.metrics' names, checked the same way (the same message for a bad one), the first
    primary: `tuner eval --max-queries N --seed <train.seed> --metrics <eval.metrics>` measures training's dev set
    (a recipe's recall@20 had no tuner eval counterpart)."""
    from tuner.cli import main
    from tuner.config import ConfigError, load_config
    from tuner.train_setup import build_evaluators

    recipe = [f"eval.beir={beir_dir}", "eval.top_k=5", "eval.max_queries=3", "eval.metrics=[recall@20,ndcg@5]"]
    dev = build_evaluators(load_config(None, recipe).eval, 42, None)["dev"]
    base = ["eval", "--model", str(tiny_model_dir), "--beir", str(beir_dir), "--top-k", "5", "--max-queries", "3"]
    base += ["--seed", "42", "--no-progress", "--cache-dir", ""]
    assert main([*base, "--metrics", "recall@20", "ndcg@5", "--out", str(tmp_path / "e")]) == 0
    summary = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert (summary["metrics_order"], summary["primary_metric"]) == (["recall@20", "ndcg@5"], "recall@20")
    first = summary["systems"][0]
    assert first["metrics"] == pytest.approx(dev.first_stage_metrics(), abs=1e-12)
    rows = [json.loads(line) for line in (tmp_path / "e" / "per_query.jsonl").read_text().splitlines()]
    assert sorted(r["qid"] for r in rows) == sorted(dev.qids)
    report = (tmp_path / "e" / "report.md").read_text()
    assert "| system | Recall@20 | nDCG@5 |" in report and "Paired comparison against" in report
    capsys.readouterr()

    # a bad name: the recipe's message, named by the flag, before any output folder or model
    with pytest.raises(ConfigError) as recipe_err:
        load_config(None, ["eval.metrics=[bleu@4]"])
    assert main([*base, "--metrics", "ndcg@10", "bleu@4", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert f"--metrics: {str(recipe_err.value).split('eval.metrics: ')[1]}" in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()
    assert main([*base, "--metrics", "ndcg", "--out", str(tmp_path / "bad")]) == 2
    assert "--metrics: metric 'ndcg' needs a cutoff" in capsys.readouterr().err

    # instruct shares eval's options: the winner is the best on the first metric
    (tmp_path / "ins.txt").write_text("Find animals\n", encoding="utf-8")
    argv = ["instruct", "--model", str(tiny_model_dir), "--data", str(_dev_groups(tmp_path / "dev.jsonl"))]
    argv += ["--instructions", str(tmp_path / "ins.txt"), "--metrics", "mrr@10", "p@1", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "i")]) == 0
    summary = json.loads((tmp_path / "i" / "metrics.json").read_text())
    assert (summary["metrics_order"], summary["primary_metric"]) == (["mrr@10", "p@1"], "mrr@10")
    best = max(summary["systems"][1:], key=lambda s: s["metrics"]["mrr@10"])["metrics"]["mrr@10"]
    assert summary["instruction_search"]["winner_value"] == best


def test_the_evaluated_adapter_of_a_run_is_labeled_by_its_run_as_compared_ones_are(
    tmp_path, tiny_model_dir, beir_dir, capsys
):
    """`tuner eval --adapter runs/listwise --compare runs/pointwise`: rows "listwise" and "pointwise" (the --adapter
    row was "tuned", the only one not named by its run), in the printed table, report.md, metrics.json,
    per_query.jsonl and the run files alike; an adapter from no run stays "tuned"."""
    from tuner import eval_run
    from tuner.cli import main

    runs = {}
    for n, name in enumerate(("listwise", "pointwise")):
        runs[name] = tmp_path / "runs" / name
        random_adapter(tiny_model_dir, runs[name] / "adapter", seed=n)
        (runs[name] / "config.yaml").write_text(f"name: {name}\n", encoding="utf-8")
    flags = ["--beir", str(beir_dir), "--top-k", "3", "--max-queries", "2", "--train-data", "none"]
    flags += ["--no-progress", "--cache-dir", ""]
    out = tmp_path / "e"
    argv = ["eval", "--model", str(tiny_model_dir), "--adapter", str(runs["listwise"])]
    assert main([*argv, "--compare", str(runs["pointwise"]), *flags, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "metrics.json").read_text())
    labels = ["first stage (BM25)", "base", "listwise", "pointwise"]
    assert [s["label"] for s in summary["systems"]] == labels and summary["reference"] == "base"
    report = (out / "report.md").read_text()
    for label in labels[2:]:
        assert f"\n| {label} | " in report and f"\n| {label} | " in printed
    assert "| tuned |" not in report
    rows = [json.loads(line) for line in (out / "per_query.jsonl").read_text().splitlines()]
    assert all(list(r["metrics"]) == labels for r in rows)
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(
        Path(s["run_file"]).name for s in summary["systems"]
    )
    listwise = summary["systems"][2]
    assert (listwise["model"], listwise["adapter"]) == (str(tiny_model_dir), str(runs["listwise"]))

    options = {"top_k": 3, "max_queries": 2, "show_progress": False, "cache_dir": None}

    def labels_of(model, adapter=None):
        summary = eval_run.run_eval(model, beir_dir, tmp_path / "o", adapter=adapter, **options)
        return [s["label"] for s in summary["systems"][1:]]

    # the run's adapter given alone, or its checkpoint, by the run (as system_label names them in --compare)
    assert labels_of(str(runs["listwise"] / "adapter")) == ["base", "listwise/adapter"]
    checkpoint = runs["listwise"] / "checkpoints" / "checkpoint-4"
    random_adapter(tiny_model_dir, checkpoint)
    assert labels_of(str(tiny_model_dir), str(checkpoint)) == ["base", "listwise/checkpoint-4"]
    # an adapter from no run: "tuned", as before
    plain = random_adapter(tiny_model_dir, tmp_path / "plain" / "adapter")
    assert labels_of(str(tiny_model_dir), str(plain)) == ["base", "tuned"]
    assert labels_of(str(plain)) == ["base", "tuned"]
