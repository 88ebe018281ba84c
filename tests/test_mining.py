"""Hard-negative mining: BM25 candidates, judged positives never negatives, seeded sampling, reranker filter."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tuner.cli import main
from tuner.data import load_beir, load_groups, write_groups
from tuner.data.check import check_file
from tuner.mining import MiningStats, mine_negatives

REPO = Path(__file__).resolve().parents[1]


def make_beir(root: Path) -> Path:
    """A 40-document collection where each query's words appear, fading, in many documents."""
    root.mkdir(parents=True, exist_ok=True)
    topics = ["solar panel efficiency", "protein folding energy", "river flood model"]
    docs = []
    for t, topic in enumerate(topics):
        words = topic.split()
        for i in range(12):
            # doc i repeats the topic words fewer times as i grows, so BM25 ranks them in order i
            text = " ".join([*(words * max(1, 12 - i)), f"filler{t}x{i}"])
            docs.append({"_id": f"{t}-{i}", "title": "", "text": text})
    docs.append({"_id": "dup", "title": "", "text": docs[3]["text"]})  # same text as the positive 0-3
    docs += [{"_id": f"other{i}", "title": "misc", "text": f"unrelated words number {i}"} for i in range(3)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    queries = [{"_id": f"q{t}", "text": topic} for t, topic in enumerate(topics)]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (root / "qrels").mkdir(exist_ok=True)
    qrels = ["query-id\tcorpus-id\tscore", "q0\t0-3\t1", "q0\t0-6\t0", "q1\t1-0\t2", "q1\t1-1\t1", "q2\t2-5\t1"]
    (root / "qrels" / "train.tsv").write_text("\n".join(qrels) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def beir(tmp_path):
    return load_beir(make_beir(tmp_path / "mini"), "train")


def _ids(group, corpus) -> list[str]:
    by_text = {}
    for doc_id, doc in corpus.items():
        by_text.setdefault(doc["text"], doc_id)
    return [by_text[d["text"]] for d in group.neg]


def test_negatives_come_from_the_rank_range_and_never_are_judged_positives(beir, tmp_path):
    stats = MiningStats()
    groups = mine_negatives(
        beir, depth=20, range_min=1, range_max=12, num_negatives=20, sampling="top",
        cache_dir=tmp_path / "cache", show_progress=False, stats=stats,
    )  # fmt: skip
    assert [g.qid for g in groups] == ["q0", "q1", "q2"]
    assert (stats.queries, stats.groups, stats.full) == (3, 3, 0)
    q0 = _ids(groups[0], beir.corpus)
    # rank 0 is 0-0 (skipped by range_min=1); 0-3 is the positive and "dup" has its text: both excluded.
    # 0-6 is judged non-relevant (score 0): a valid negative.
    assert "0-0" not in q0 and "0-3" not in q0 and "dup" not in q0
    assert "0-6" in q0 and q0 == [d for d in q0 if d.startswith("0-")]
    assert [d["text"] for d in groups[0].pos] == [beir.corpus["0-3"]["text"]]
    q1 = _ids(groups[1], beir.corpus)
    assert "1-0" not in q1 and "1-1" not in q1 and len(groups[1].pos) == 2  # graded positives (2 and 1)
    assert groups[1].pos_grades == [2, 1] and groups[0].pos_grades is None  # the qrels' grades, for nDCG
    for g in groups:
        pos_texts = {d["text"] for d in g.pos}
        assert not any(d["text"] in pos_texts for d in g.neg)
    # "top" sampling keeps BM25 order; range_max=12 bounds it
    assert q0 == sorted(q0, key=lambda d: int(d.split("-")[1]))
    assert len(q0) <= 11


def test_empty_positives_and_empty_queries_are_left_out_and_counted(tmp_path, capsys):
    """A judged positive with no text made a group that `tuner data check` and training refuse; a judged query
    with no text vanished without a word. Both are left out, and the CLI says which."""
    root = make_beir(tmp_path / "mini")
    corpus = [json.loads(line) for line in (root / "corpus.jsonl").read_text().splitlines()]
    corpus += [{"_id": "blank", "title": "", "text": "  "}]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus), encoding="utf-8")
    queries = [json.loads(line) for line in (root / "queries.jsonl").read_text().splitlines()]
    queries += [{"_id": "qe", "text": ""}]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    with open(root / "qrels" / "train.tsv", "a", encoding="utf-8") as f:
        f.write("q1\tblank\t1\nqe\t0-0\t1\n")
    stats = MiningStats()
    groups = mine_negatives(load_beir(root, "train"), depth=30, num_negatives=3, cache_dir=tmp_path / "c",
                            show_progress=False, stats=stats)  # fmt: skip
    assert all(doc["text"].strip() for g in groups for doc in g.pos)
    assert len(groups) == 3 and {g.qid for g in groups} == {"q0", "q1", "q2"}  # q1 keeps its two real positives
    assert stats.skipped == ["query 'q1': its positive 'blank' has no text", "query 'qe' has no text"]
    out = tmp_path / "out.jsonl"
    assert main(["mine", "--beir", str(root), "--out", str(out), "--num-negatives", "3", "--no-progress"]) == 0
    assert (
        "left out: 2 (query 'q1': its positive 'blank' has no text; query 'qe' has no text)" in capsys.readouterr().out
    )
    assert check_file(out, tokens=False).ok


def test_sampling_is_seeded_and_per_query(beir, tmp_path):
    kwargs = dict(depth=20, range_min=0, range_max=20, num_negatives=4, cache_dir=tmp_path / "c", show_progress=False)
    a = mine_negatives(beir, seed=0, **kwargs)
    assert mine_negatives(beir, seed=0, **kwargs) == a
    assert mine_negatives(beir, seed=1, **kwargs) != a
    # a query's negatives do not depend on which other queries are mined
    beir.qrels = {"q1": beir.qrels["q1"]}
    assert mine_negatives(beir, seed=0, **kwargs) == [a[1]]


def test_bm25_index_is_cached(beir, tmp_path):
    cache = tmp_path / "cache"
    first = mine_negatives(beir, cache_dir=cache, show_progress=False)
    (index,) = list(cache.glob("bm25-*"))
    stamp = index.stat().st_mtime_ns
    assert mine_negatives(beir, cache_dir=cache, show_progress=False) == first
    assert [p.name for p in cache.iterdir()] == [index.name] and index.stat().st_mtime_ns == stamp


def test_a_cached_bm25_index_is_not_reused_across_tokenizer_settings(beir, tmp_path, monkeypatch):
    """An index built without PyStemmer was reused once it was installed: stemmed queries met unstemmed terms
    (SciFact nDCG@10 0.48 for 0.69) without an error. The cache key covers the stemmer (and bm25s, its params)."""
    from tuner import retrieval

    cache = tmp_path / "cache"
    stemmed = retrieval.BM25(beir.corpus, cache_dir=cache)
    monkeypatch.setattr(retrieval, "_stemmer", lambda: None)
    plain = retrieval.BM25(beir.corpus, cache_dir=cache)
    assert not plain.cached and len(list(cache.glob("bm25-*"))) == 2
    assert retrieval.BM25(beir.corpus, cache_dir=cache).cached  # the same settings again: reused
    monkeypatch.undo()
    assert retrieval.BM25(beir.corpus, cache_dir=cache).cached and stemmed.cached is False


def test_a_cached_bm25_index_is_reused_only_for_the_same_texts_and_maps_its_own_document_order(tmp_path):
    """The index cache is keyed by ids and texts (titles included): an edited document is indexed again. The same
    documents in another order share the key, so hits are named by the cached index's own id list."""
    from tuner.retrieval import BM25

    corpus = {f"d{i}": {"title": "", "text": f"common words number{i} item{i}"} for i in range(6)}
    corpus["d3"] = {"title": "Glaucoma", "text": "common words"}  # found by its title alone
    cache = tmp_path / "cache"
    first = BM25(corpus, cache_dir=cache).search({"q": "glaucoma"}, k=3)
    assert first["q"][0][0] == "d3"
    reordered = BM25(dict(reversed(corpus.items())), cache_dir=cache)
    assert reordered.cached and reordered.search({"q": "glaucoma"}, k=3) == first
    edited = {**corpus, "d5": {"title": "", "text": "glaucoma glaucoma glaucoma"}}
    index = BM25(edited, cache_dir=cache)
    assert not index.cached and index.search({"q": "glaucoma"}, k=1)["q"][0][0] == "d5"
    retitled = {**corpus, "d0": {"title": "Glaucoma", "text": corpus["d0"]["text"]}}
    assert not BM25(retitled, cache_dir=cache).cached


class FakeReranker:
    """Logit 4 for judged positives and documents with a marker word (likely false negatives), else -3."""

    def __init__(self, beir, markers: tuple[str, ...]) -> None:
        self.high = {beir.corpus[d]["text"] for j in beir.qrels.values() for d, rel in j.items() if rel > 0}
        self.markers = markers
        self.calls: list[tuple] = []

    def score_pairs(self, pairs, instruction=None, normalize=True):
        assert normalize is False  # mining works on logits
        self.calls.extend((q, d["text"], instruction) for q, d in pairs)
        return [4.0 if d["text"] in self.high or any(m in d["text"] for m in self.markers) else -3.0 for _, d in pairs]


def test_reranker_filters_false_negatives_and_gives_teacher_scores(beir, tmp_path):
    reranker = FakeReranker(beir, ("filler0x5", "filler1x4"))
    stats = MiningStats()
    kwargs = dict(depth=20, range_min=0, range_max=20, sampling="top", cache_dir=tmp_path / "c", show_progress=False)
    groups = mine_negatives(
        beir, num_negatives=10, reranker=reranker, teacher_scores=True, instruction="Judge it", stats=stats, **kwargs
    )
    by_qid = {g.qid: g for g in groups}
    q0, q1 = _ids(by_qid["q0"], beir.corpus), _ids(by_qid["q1"], beir.corpus)
    assert "0-5" not in q0 and "1-4" not in q1  # scored like a positive: dropped as a likely false negative
    assert len(q0) == 10 and len(q1) == 9
    assert stats.filtered == 2 and stats.scored_pairs == len(reranker.calls)
    assert {c[2] for c in reranker.calls} == {"Judge it"}
    for g in groups:
        assert g.pos_scores == [4.0] * len(g.pos) and g.neg_scores == [-3.0] * len(g.neg)
    report = check_file(write_groups(groups, tmp_path / "teacher.jsonl"), tokens=False)
    assert report.ok and report.stats["with_teacher_scores"] == len(groups)

    # margins off: nothing is dropped; max_score alone drops the high ones again
    loose = mine_negatives(beir, num_negatives=10, reranker=FakeReranker(beir, ("filler0x5",)), margin=None, **kwargs)
    assert "0-5" in _ids(loose[0], beir.corpus) and loose[0].neg_scores is None
    capped = mine_negatives(
        beir, num_negatives=10, reranker=FakeReranker(beir, ("filler0x5",)), margin=None, max_score=0.5, **kwargs
    )
    assert "0-5" not in _ids(capped[0], beir.corpus)

    # candidates are scored lazily: enough for 2 negatives needs one chunk of 8, not the whole range
    lazy = FakeReranker(beir, ())
    mine_negatives(beir, num_negatives=2, reranker=lazy, **kwargs)
    assert len(lazy.calls) == sum(len(g.pos) + 8 for g in groups)


def test_the_rank_range_is_range_min_inclusive_to_range_max_exclusive(beir, tmp_path):
    """`[range_min, range_max)`, 0-based: "top" sampling with room for every survivor gives exactly those ranks."""
    from tuner.retrieval import BM25

    run = BM25(beir.corpus).search({"q1": beir.queries["q1"]}, k=20)
    ranked = [d for d, _ in run["q1"]]
    assert ranked[:6] == ["1-0", "1-1", "1-2", "1-3", "1-4", "1-5"]  # the fixture's BM25 order
    groups = mine_negatives(
        beir, depth=20, range_min=2, range_max=6, num_negatives=20, sampling="top", show_progress=False
    )  # fmt: skip
    assert _ids(next(g for g in groups if g.qid == "q1"), beir.corpus) == ["1-2", "1-3", "1-4", "1-5"]


def test_a_group_with_exactly_num_negatives_counts_as_full(beir):
    """`tuner mine`'s summary ("N groups with K negatives"): a group that got exactly K is full."""
    stats = MiningStats()
    groups = mine_negatives(beir, depth=20, range_min=0, num_negatives=2, show_progress=False, stats=stats)
    assert all(len(g.neg) == 2 for g in groups) and stats.full == stats.groups == 3


def test_queries_with_one_text_never_get_each_others_positives_as_negatives(tmp_path):
    """Two judged queries with the same text (SciFact train has such pairs): a positive of one is a positive of
    the other, never its negative."""
    root = make_beir(tmp_path / "mini")
    with open(root / "queries.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"_id": "q0b", "text": "solar panel efficiency"}) + "\n")
    with open(root / "qrels" / "train.tsv", "a", encoding="utf-8") as f:
        f.write("q0b\t0-1\t1\n")
    beir = load_beir(root, "train")
    groups = {g.qid: g for g in mine_negatives(
        beir, depth=20, range_min=0, range_max=20, num_negatives=20, sampling="top", show_progress=False
    )}  # fmt: skip
    assert "0-1" not in _ids(groups["q0"], beir.corpus) and "0-3" not in _ids(groups["q0b"], beir.corpus)
    assert "0-2" in _ids(groups["q0"], beir.corpus)  # the range does reach those ranks


class LogitByWord:
    """A fake reranker: a document's logit by its last word (its `filler<t>x<i>` marker), else -3."""

    def __init__(self, logits: dict[str, float]) -> None:
        self.logits = logits

    def score_pairs(self, pairs, instruction=None, normalize=True):
        return [self.logits.get(d["text"].split()[-1], -3.0) for _, d in pairs]


def test_the_false_negative_margins_are_measured_from_the_weakest_positive(beir, tmp_path):
    """`margin` drops a candidate above (1 - margin) x p(weakest positive); `absolute_margin` one above
    p(weakest positive) - absolute_margin. q1's positives score 4 (1-0) and 1 (1-1): the weakest is p = 0.731."""
    kwargs = dict(depth=20, range_min=2, range_max=20, num_negatives=20, sampling="top", show_progress=False)
    # 1-3 at p = 0.668 (0.91 x the weakest) is dropped by margin 0.1, 1-4 at p = 0.599 (0.82 x) is not
    reranker = LogitByWord({"filler1x0": 4.0, "filler1x1": 1.0, "filler1x3": 0.7, "filler1x4": 0.4})
    kept = _ids(next(g for g in mine_negatives(beir, reranker=reranker, **kwargs) if g.qid == "q1"), beir.corpus)
    assert "1-3" not in kept and "1-4" in kept and "1-2" in kept
    # absolute_margin 0.1: the limit is 0.731 - 0.1 = 0.631, so 1-3 (0.668) goes, 1-4 (0.599) stays
    groups = mine_negatives(beir, reranker=reranker, margin=None, absolute_margin=0.1, **kwargs)
    kept = _ids(next(g for g in groups if g.qid == "q1"), beir.corpus)
    assert "1-3" not in kept and "1-4" in kept
    # absolute_margin 0.2: the limit is 0.531, so both go
    groups = mine_negatives(beir, reranker=reranker, margin=None, absolute_margin=0.2, **kwargs)
    kept = _ids(next(g for g in groups if g.qid == "q1"), beir.corpus)
    assert "1-3" not in kept and "1-4" not in kept and "1-2" in kept


def test_a_text_the_corpus_holds_twice_is_one_negative(tmp_path):
    """Two corpus ids with one text (Cranfield has such a pair) are one document: mined once, or a group gets the
    same negative twice (which `tuner data check` warns about and training drops)."""
    root = make_beir(tmp_path / "mini")
    corpus = [json.loads(line) for line in (root / "corpus.jsonl").read_text().splitlines()]
    corpus.append({"_id": "copy", "title": "", "text": corpus[5]["text"]})  # 0-5 again
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus), encoding="utf-8")
    beir = load_beir(root, "train")
    for sampling in ("top", "random"):
        groups = mine_negatives(
            beir, depth=20, range_min=0, num_negatives=20, sampling=sampling, show_progress=False
        )  # fmt: skip
        texts = [d["text"] for d in groups[0].neg]
        assert corpus[5]["text"] in texts and len(texts) == len(set(texts)), sampling
    out = write_groups(groups, tmp_path / "mined.jsonl")
    assert check_file(out, tokens=False).stats["repeated_in_group"] == 0


def test_a_corpus_copy_of_a_file_document_is_one_document_of_the_pool(tmp_path):
    """`tuner mine --data --corpus`: a corpus document the file holds already is not added to the pool again (two
    copies would be two negatives of one text in a group)."""
    from tuner.data.schema import Group
    from tuner.mining import mine_for_groups

    folder = make_beir(tmp_path / "mini")
    corpus = {d["_id"]: d for d in map(json.loads, (folder / "corpus.jsonl").read_text().splitlines())}
    group = Group(query="solar panel efficiency", pos=[corpus["0-3"]["text"]], neg=[corpus["0-5"]["text"]])
    (mined,) = mine_for_groups(
        [group], corpus=corpus, range_min=0, num_negatives=20, sampling="top", show_progress=False
    )  # fmt: skip
    texts = [d["text"] for d in mined.neg]
    assert corpus["0-5"]["text"] in texts and len(texts) == len(set(texts))


def test_tiny_reranker_teacher_scores_match_its_logits(beir, tmp_path, tiny_reranker):
    groups = mine_negatives(
        beir, depth=10, range_min=0, range_max=10, num_negatives=2, reranker=tiny_reranker, margin=None,
        teacher_scores=True, cache_dir=tmp_path / "c", show_progress=False,
    )  # fmt: skip
    g = groups[0]
    expected = tiny_reranker.score_pairs([(g.query, d) for d in g.pos + g.neg], normalize=False)
    assert g.pos_scores + g.neg_scores == pytest.approx(expected, abs=1e-5)


def test_cli_mine_caches_next_to_output_and_passes_check(tmp_path, capsys):
    folder = make_beir(tmp_path / "mini")
    out = tmp_path / "out" / "train.jsonl"
    args = ["mine", "--beir", str(folder), "--split", "train", "--out", str(out), "--num-negatives", "3"]
    assert main([*args, "--no-progress"]) == 0
    assert "wrote 3 groups for 3 judged queries" in capsys.readouterr().out
    assert len(list(out.parent.glob("bm25-*"))) == 1
    report = check_file(out, tokens=False)
    assert report.ok and report.stats["neg_per_query"]["min"] == 3
    assert main(["data", "check", str(out)]) == 0
    printed = capsys.readouterr().out
    for line in ("rows: 3    groups: 3", "negatives per query: 3 / 3 / 3", "query tokens:", "prompt tokens:"):
        assert line in printed
    assert "truncated at max_length 1024: 0 pairs" in printed and printed.rstrip().endswith("0 errors, 0 warnings")
    assert main([*args, "--no-progress"]) == 0  # the same output again: said, not silent
    assert f"to {out} in " in (printed := capsys.readouterr().out) and "(replaced the previous file)" in printed
    assert "fewest negatives" not in printed  # every group full: nothing to name
    # a range that holds fewer candidates than --num-negatives: the summary names the shortest groups' queries
    assert main([*args, "--num-negatives", "20", "--range-min", "2", "--depth", "8", "--no-progress"]) == 0
    out_text = capsys.readouterr().out
    short = re.search(r"fewest negatives: query '(q\d)': (\d+)(; query '(q\d)': (\d+))*", out_text)
    assert short and "(BM25 ranks 2..8 held too few candidates; lower --range-min or raise --depth)" in out_text
    counts = {g.qid: len(g.neg) for g in load_groups(out)}
    assert int(short.group(2)) == min(counts.values()) == counts[short.group(1)]
    assert main([*args, "--teacher-scores"]) == 2
    assert "--teacher-scores needs --reranker" in capsys.readouterr().err
    # the reranker's filter options without a reranker would be ignored (plain BM25 negatives); bad ranges and an
    # --out that cannot be written are named before any mining
    assert main([*args, "--adapter", "a", "--max-score", "0.5"]) == 2
    assert "--adapter, --max-score need --reranker" in capsys.readouterr().err
    assert main([*args, "--margin", "0.1"]) == 2  # the default's value, given: still ignored without a reranker
    assert "--margin needs --reranker" in capsys.readouterr().err
    for bad, message in (
        (["--depth", "5"], "--depth 5 leaves no candidate: it must be above --range-min 5"),
        (["--range-min", "20", "--range-max", "10"], "--range-min 20 must be below --range-max 10"),
    ):
        assert main([*args, *bad]) == 2
        err = capsys.readouterr().err
        assert message in err and "range_min" not in err, err
    assert main(["mine", "--help"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    for default in ("(default 100)", "(default 5)", "(default 7", "(default 0.1,", "(default random)"):
        assert default in printed, default
    assert main([*args, "--reranker", "never-loaded", "--margin", "-3"]) == 2
    assert "--margin must be in [0, 1] (the probability scale), got -3.0" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for bad_out, message in ((out.parent, "is a folder"), (blocker / "x.jsonl", "a-file is a file, not a folder")):
        i = args.index("--out")
        assert main([*args[: i + 1], str(bad_out), *args[i + 2 :]]) == 2
        assert message in capsys.readouterr().err
    assert main(["mine", "--beir", str(tmp_path / "nope"), "--out", str(out)]) == 2
    capsys.readouterr()
    # no candidate left below --range-min (the mini corpus has a few documents): an error, no empty training file
    empty = tmp_path / "out" / "empty.jsonl"
    none_left = ["mine", "--beir", str(folder), "--split", "train", "--out", str(empty), "--range-min", "50"]
    assert main([*none_left, "--no-progress"]) == 2
    assert "no training group from 3 judged queries" in capsys.readouterr().err and not empty.exists()


def test_bundled_scifact_train_mines_seven_bm25_negatives(tmp_path):
    """The acceptance figure: >= 7 negatives for >= 95% of SciFact train queries, none judged positive."""
    beir = load_beir(REPO / "data" / "scifact", "train")
    out = tmp_path / "scifact-train.jsonl"
    assert main(["mine", "--beir", str(REPO / "data" / "scifact"), "--out", str(out), "--no-progress"]) == 0
    groups = load_groups(out)
    assert len(beir.queries) == 809
    full = sum(1 for g in groups if len(g.neg) >= 7)
    assert full >= 0.95 * len(beir.queries)
    id_by_text = {}
    for doc_id, doc in beir.corpus.items():
        id_by_text.setdefault((doc["title"], doc["text"]), set()).add(doc_id)
    for g in groups:
        judged = {d for d, rel in beir.qrels[g.qid].items() if rel > 0}
        for doc in g.neg:
            assert not id_by_text[(doc.get("title", ""), doc["text"])] & judged
    assert check_file(out, tokens=False).ok


def test_bundled_collections_have_readme_and_license():
    for name, split in (("scifact", "test"), ("cranfield", "test")):
        folder = REPO / "data" / name
        readme = (folder / "README.md").read_text(encoding="utf-8")
        assert "## License" in readme
        beir = load_beir(folder, split)
        assert beir.queries and all(d in beir.corpus for j in beir.qrels.values() for d in j)


def test_mining_a_labeled_file_of_positives_alone(tmp_path, capsys):
    """`tuner mine --data`: the file's documents (+ --corpus) are the pool; each query gets BM25 negatives from
    it, never its own positive (nor a corpus copy of it), and keeps its instruction and qid."""
    folder = make_beir(tmp_path / "mini")
    corpus = {json.loads(line)["_id"]: json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines()}
    rows = [
        {"query": "solar panel efficiency", "document": corpus["0-3"]["text"], "label": 1, "instruction": "Find it"},
        {"query": "river flood model", "document": corpus["2-5"]["text"], "label": 1, "qid": "r"},
        {"query": "protein folding energy", "document": corpus["1-0"]["text"], "label": 1},
    ]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "groups.jsonl"
    argv = ["mine", "--data", str(pairs), "--corpus", str(folder / "corpus.jsonl"), "--out", str(out)]
    assert main([*argv, "--range-min", "0", "--num-negatives", "4", "--sampling", "top", "--no-progress"]) == 0
    groups = load_groups(out)
    assert [(g.query, g.instruction, g.qid) for g in groups] == [
        ("solar panel efficiency", "Find it", None),
        ("river flood model", None, "r"),
        ("protein folding energy", None, None),
    ]
    for group, row in zip(groups, rows, strict=True):
        texts = [d["text"] for d in group.neg]
        assert len(texts) == 4 and row["document"] not in texts  # corpus 0-3 and "dup" are the positive's text
        topic = row["query"].split()[0]
        assert all(topic in t for t in texts)  # BM25's hardest: the same topic's other documents
    assert check_file(out).ok

    # without --corpus the pool is the file's own documents: here three topics that share no word, so no query
    # has a negative (BM25 score 0 is no hard negative), which is an error rather than an empty file
    argv = ["mine", "--data", str(pairs), "--out", str(tmp_path / "own.jsonl"), "--range-min", "0", "--no-progress"]
    capsys.readouterr()
    assert main(argv) == 2 and not (tmp_path / "own.jsonl").exists()
    assert f"{pairs}: no training group from 3 judged queries" in capsys.readouterr().err
    assert main(["mine", "--beir", str(folder), "--corpus", str(folder / "corpus.jsonl"), "--out", str(out)]) == 2
    assert "--corpus adds documents to a --data file's pool" in capsys.readouterr().err
    # a corpus file that is not there (BEIR folders ship corpus.jsonl.gz as often): named, with the close file beside
    gz = tmp_path / "gz" / "corpus.jsonl.gz"
    gz.parent.mkdir()
    gz.write_bytes(b"")
    argv = ["mine", "--data", str(pairs), "--corpus", str(gz.parent / "corpus.jsonl"), "--out", str(out)]
    assert main(argv) == 2
    assert capsys.readouterr().err.endswith(
        f"--corpus {gz.parent / 'corpus.jsonl'}: no such file; did you mean {gz}?\n"
    )
    # a BEIR folder given for its corpus file: said to be a folder, not "no such file; did you mean <itself>?"
    argv = ["mine", "--data", str(pairs), "--corpus", str(gz.parent), "--out", str(out)]
    assert main(argv) == 2
    assert capsys.readouterr().err.endswith(
        f"--corpus {gz.parent}: a folder; --corpus takes a corpus file (a BEIR corpus.jsonl[.gz]), e.g. {gz}\n"
    )


def test_cli_mine_refuses_probability_options_above_1(tmp_path, capsys):
    """--margin, --absolute-margin and --max-score are on the probability scale: above 1 is refused by name before
    the reranker loads (a --max-score of 5 would filter nothing)."""
    out = tmp_path / "g.jsonl"
    base = ["mine", "--beir", str(tmp_path / "never-read"), "--out", str(out), "--reranker", "never-loaded"]
    for flag in ("--margin", "--absolute-margin", "--max-score"):
        assert main([*base, flag, "1.5"]) == 2
        assert f"{flag} must be in [0, 1] (the probability scale), got 1.5" in capsys.readouterr().err
    assert not out.exists()


def test_cli_mine_refuses_an_empty_rank_range_by_name(tmp_path, capsys):
    """--range-min equal to --range-max, or --depth equal to --range-min, leaves no rank to sample: named before
    anything is read (not "no training group" after the BM25 index was built)."""
    base = ["mine", "--beir", str(tmp_path / "never-read"), "--out", str(tmp_path / "g.jsonl")]
    assert main([*base, "--range-min", "10", "--range-max", "10"]) == 2
    assert "--range-min 10 must be below --range-max 10" in capsys.readouterr().err
    assert main([*base, "--range-min", "10", "--depth", "10"]) == 2
    assert "--depth 10 leaves no candidate: it must be above --range-min 10" in capsys.readouterr().err


def test_cli_mine_seed_picks_the_random_negatives(tmp_path):
    """`--seed` reaches the sampler: another seed samples other negatives from the same range, the same seed the
    same ones."""
    folder = make_beir(tmp_path / "mini")
    argv = ["mine", "--beir", str(folder), "--split", "train", "--range-min", "0", "--num-negatives", "2"]
    mined = {}
    for name, seed in (("a", "0"), ("b", "1"), ("c", "1")):
        out = tmp_path / f"{name}.jsonl"
        assert main([*argv, "--seed", seed, "--out", str(out), "--no-progress", "--cache-dir", str(tmp_path)]) == 0
        mined[name] = [g.neg for g in load_groups(out)]
    assert mined["b"] == mined["c"] and mined["a"] != mined["b"]


def test_cli_mine_passes_every_option_on(tmp_path, monkeypatch):
    """Each flag of `tuner mine` reaches the reranker's loading or the miner (a flag parsed but not passed on would
    be silently ignored)."""
    import torch

    from tuner import mining, scoring
    from tuner.data import Group

    seen = {}

    class Loaded:  # what the scores file's settings read of a loaded reranker
        instruction, max_length, calibration, model = None, 300, None, torch.nn.Linear(1, 1)

    loaded = Loaded()

    def from_pretrained(path, **kwargs):
        seen["load"] = (path, kwargs)
        return loaded

    def fake_mine(beir, **options):
        seen["mine"] = options
        return [Group(query="q", pos=["p"], neg=["n"])]

    monkeypatch.setattr(scoring.Reranker, "from_pretrained", staticmethod(from_pretrained))
    monkeypatch.setattr(mining, "mine_negatives", fake_mine)
    folder = make_beir(tmp_path / "mini")
    argv = ["mine", "--beir", str(folder), "--split", "train", "--out", str(tmp_path / "g.jsonl"), "--no-progress"]
    argv += ["--depth", "50", "--range-min", "2", "--range-max", "30", "--num-negatives", "4", "--sampling", "top"]
    argv += ["--seed", "3", "--cache-dir", str(tmp_path / "cache"), "--reranker", "r", "--adapter", "a"]
    argv += ["--margin", "0.2", "--absolute-margin", "0.3", "--max-score", "0.9", "--teacher-scores"]
    argv += ["--instruction", "Find X", "--max-length", "300", "--device", "cpu", "--dtype", "float32"]
    assert main(argv) == 0
    assert seen["load"] == ("r", {"adapter": "a", "device": "cpu", "dtype": "float32", "max_length": 300})
    options = {k: v for k, v in seen["mine"].items() if k != "stats"}
    scorer = options.pop("reranker")  # the loaded reranker, its scores kept for --resume
    assert isinstance(scorer, mining.ScoreCache) and scorer.reranker is loaded
    assert options == {"depth": 50, "range_min": 2, "range_max": 30, "num_negatives": 4, "sampling": "top",
                       "seed": 3, "cache_dir": str(tmp_path / "cache"), "margin": 0.2,
                       "absolute_margin": 0.3, "max_score": 0.9, "teacher_scores": True, "instruction": "Find X",
                       "show_progress": False}  # fmt: skip


def test_no_progress_silences_the_model_loading_bar_too(tmp_path, tiny_model_dir, capsys):
    """`tuner mine --reranker M --no-progress` still drew transformers' "Loading weights" bar on stderr."""
    from transformers.utils import logging as hf_logging

    from tuner.cli import main

    argv = ["mine", "--beir", str(make_beir(tmp_path / "mini")), "--out", str(tmp_path / "mined.jsonl")]
    argv += ["--num-negatives", "3", "--reranker", str(tiny_model_dir), "--margin", "0", "--no-progress"]
    assert main(argv) == 0
    assert "Loading weights" not in capsys.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # on again for the rest of the process


def test_a_query_left_without_a_negative_is_named_in_the_summary(tmp_path, capsys):
    """A judged query whose rank range holds no candidate gets no group: the summary said only "wrote 3 groups for 4
    judged queries", its "fewest negatives" list naming the groups it wrote; the query is named with the way out."""
    folder = make_beir(tmp_path / "mini")
    with (folder / "corpus.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps({"_id": "z", "title": "", "text": "zebra crossing"}) + "\n")
    with (folder / "queries.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps({"_id": "qz", "text": "zebra crossing"}) + "\n")
    with (folder / "qrels" / "train.tsv").open("a", encoding="utf-8") as f:
        f.write("qz\tz\t1\n")
    out = tmp_path / "groups.jsonl"
    argv = ["mine", "--beir", str(folder), "--out", str(out), "--range-min", "0", "--num-negatives", "2"]
    assert main([*argv, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 groups for 4 judged queries" in printed
    assert "\n  no group: 1 query kept no negative (query 'qz'; BM25 ranks 0..100 held too few candidates)" in printed
    assert [g.qid for g in load_groups(out)] == ["q0", "q1", "q2"]


def test_a_labeled_files_own_instruction_scores_its_group(tmp_path):
    """`tuner mine --data` with a reranker: a row's instruction is the one its group trains with, so its teacher
    scores and false-negative filter are those of that prompt (they were the default instruction's, or --instruction's,
    for every group)."""
    from tuner.mining import mine_for_groups

    folder = make_beir(tmp_path / "mini")
    corpus = {json.loads(line)["_id"]: json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines()}
    rows = [
        {"query": "solar panel efficiency", "document": corpus["0-3"]["text"], "label": 1, "instruction": "Find it"},
        {"query": "river flood model", "document": corpus["2-5"]["text"], "label": 1},
    ]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    reranker = FakeReranker(load_beir(folder, "train"), ())
    groups = mine_for_groups(
        load_groups(pairs),
        corpus=corpus,
        reranker=reranker,
        teacher_scores=True,
        instruction="Judge it",
        range_min=0,
        num_negatives=2,
        cache_dir=tmp_path / "c",
        show_progress=False,
    )
    assert [(g.query, g.instruction) for g in groups] == [
        ("solar panel efficiency", "Find it"),
        ("river flood model", None),
    ]
    used = {}
    for query, _, instruction in reranker.calls:
        used.setdefault(query, set()).add(instruction)
    assert used == {"solar panel efficiency": {"Find it"}, "river flood model": {"Judge it"}}


def test_an_interrupted_reranker_mine_resumes_from_its_kept_scores(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """Mining with a reranker takes hours on a 4B model; an interruption lost every score. The scores are now kept
    in OUT.scores.partial, and --resume reads them back: the same file as an uninterrupted run, fewer pairs scored."""
    from tuner.scoring import Reranker

    folder = make_beir(tmp_path / "mini")
    common = ["--beir", str(folder), "--num-negatives", "3", "--range-min", "0", "--margin", "0", "--no-progress"]
    common += ["--reranker", str(tiny_model_dir), "--dtype", "float32", "--device", "cpu", "--teacher-scores"]
    real = Reranker.score_pairs
    calls: list[int] = []
    stop_at = [None]

    def counted(self, pairs, **kwargs):
        calls.append(len(pairs))
        if len(calls) == stop_at[0]:
            raise KeyboardInterrupt
        return real(self, pairs, **kwargs)

    monkeypatch.setattr(Reranker, "score_pairs", counted)
    assert main(["mine", *common, "--out", str(tmp_path / "whole.jsonl")]) == 0
    whole = sum(calls)
    capsys.readouterr()

    out = tmp_path / "resumed.jsonl"
    partial = tmp_path / "resumed.jsonl.scores.partial"
    calls.clear()
    stop_at[0] = 3
    assert main(["mine", *common, "--out", str(out)]) == 130
    assert not out.exists() and partial.is_file()
    kept = sum(calls[:2])
    assert f"{partial} keeps the reranker's scores of {kept} pairs" in capsys.readouterr().err

    assert main(["mine", *common, "--out", str(out)]) == 2  # not started over without a word
    assert "continue it with --resume" in capsys.readouterr().err
    assert main(["mine", *common, "--out", str(out), "--resume", "--max-length", "512"]) == 2
    assert "another reranker set-up (max_length: 8192 then, 512 now)" in capsys.readouterr().err
    assert main(["mine", "--beir", str(folder), "--out", str(out), "--resume"]) == 2
    assert "BM25 alone keeps none" in capsys.readouterr().err

    calls.clear()
    stop_at[0] = None
    assert main(["mine", *common, "--out", str(out), "--resume"]) == 0
    assert f"({kept} of them read back from {partial})" in capsys.readouterr().out
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes() and not partial.exists()
    assert sum(calls) == whole - kept  # the kept pairs were not scored again


def test_a_scores_file_cut_mid_line_by_a_crash_resumes_with_that_pair_scored_again(tmp_path):
    from tuner.mining import ScoreCache

    class Fake:
        calls = 0

        def score_pairs(self, pairs, instruction=None, normalize=False):
            Fake.calls += 1
            return [float(len(d)) for _, d in pairs]

    path = tmp_path / "out.jsonl.scores.partial"
    first = ScoreCache(Fake(), path, {"m": 1}, resume=False)
    assert first.score_pairs([("q", "ab"), ("q", "abc")]) == [2.0, 3.0]
    first.score_pairs([("q", "abcd")])
    first.close()
    path.write_bytes(path.read_bytes()[:-7])  # the last line cut by the crash
    again = ScoreCache(Fake(), path, {"m": 1}, resume=True)
    Fake.calls = 0
    assert again.score_pairs([("q", "ab"), ("q", "abc")]) == [2.0, 3.0] and Fake.calls == 0  # read back
    assert again.score_pairs([("q", "abcd")]) == [4.0] and Fake.calls == 1  # its line was cut: scored again
    again.close()
    third = ScoreCache(Fake(), path, {"m": 1}, resume=True)  # the new line did not land on the cut one
    assert len(third.scores) == 3
    with pytest.raises(ValueError, match=r"another reranker set-up \(m: 1 then, 2 now\)"):
        ScoreCache(Fake(), path, {"m": 2}, resume=True)


def test_a_reranker_mine_that_kept_no_group_says_its_scores_are_kept_for_a_resume(tmp_path, tiny_model_dir, capsys):
    """The filter dropped every candidate: the run failed, its scores stayed in OUT.scores.partial without a word,
    and the rerun with looser options was refused for it. Both are said now, and --resume reuses the scores."""
    folder = make_beir(tmp_path / "mini")
    out = tmp_path / "mined.jsonl"
    common = ["mine", "--beir", str(folder), "--out", str(out), "--num-negatives", "3", "--range-min", "0"]
    common += ["--reranker", str(tiny_model_dir), "--dtype", "float32", "--device", "cpu", "--no-progress"]
    assert main([*common, "--margin", "0.5"]) == 2  # the tiny model's random scores: every candidate dropped
    err = capsys.readouterr().err
    assert "no training group" in err and f"{out}.scores.partial" in err and "--resume" in err
    assert main([*common, "--margin", "0", "--resume"]) == 0
    assert "of them read back from" in capsys.readouterr().out and out.is_file()


def test_a_non_finite_reranker_score_is_named_by_its_query_and_document(beir, tmp_path):
    """The reranker names a NaN by its place in one call ("pair 1"): mining calls it per query and chunk, so the
    error named neither the query nor the document."""
    from tuner.scoring import NonFiniteScoresError, check_finite

    class NanReranker(FakeReranker):
        def score_pairs(self, pairs, instruction=None, normalize=True):
            logits = super().score_pairs(pairs, instruction, normalize)
            logits = [float("nan") if "filler0x5" in d["text"] else x for x, (_, d) in zip(logits, pairs, strict=True)]
            check_finite(logits)
            return logits

    kwargs = dict(depth=20, range_min=0, range_max=20, sampling="top", cache_dir=tmp_path / "c", show_progress=False)
    with pytest.raises(NonFiniteScoresError, match=r"^query '.*', document '0-5': 1 of \d+ scores are not finite"):
        mine_negatives(beir, num_negatives=10, reranker=NanReranker(beir, ()), **kwargs)
