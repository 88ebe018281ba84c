"""`tuner rerank`: many queries' candidates from a JSONL file or a TREC run file, reranked into a file, resumably."""

from __future__ import annotations

import json

import pytest

from tuner.retrieval import read_run

ROWS = [
    {"id": "a", "query": "capital of France", "documents": ["Paris is the capital of France.", "Gravity pulls."]},
    {
        "query": "why do apples fall",
        "documents": [
            {"title": "Newton", "text": "Gravity pulls objects down."},
            {"id": "d2", "text": "Apples are red."},
            "Trees grow apples.",
        ],
        "instruction": "Find physics facts",
    },
    {"id": 3, "query": "vitamin D and bones", "documents": [{"id": "v1", "title": "Vitamin D"}, "Jet engines roar."]},
    {"id": "empty", "query": "a query with nothing retrieved", "documents": []},
    {"id": "e", "query": "sleep and memory", "documents": ["Sleep consolidates memory.", "Coffee.", "Exercise helps."]},
]


_LOADED: dict = {}


@pytest.fixture(autouse=True)
def _one_load_per_option_set(monkeypatch):
    """Each `tuner rerank` here loads the same tiny model: it is loaded once per set of load options and reused
    (a load and a first forward take seconds on 2 busy cores)."""
    from tuner.scoring import Reranker

    real = Reranker.from_pretrained

    def from_pretrained(path, **kwargs):
        key = (str(path), json.dumps(kwargs, sort_keys=True, default=str))
        if key not in _LOADED:
            _LOADED[key] = real(path, **kwargs)
        return _LOADED[key]

    monkeypatch.setattr(Reranker, "from_pretrained", staticmethod(from_pretrained))


def _write_rows(path, rows=ROWS):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _rerank(model, *args):
    from tuner.cli import main

    argv = ["rerank", "--model", model, "--device", "cpu", "--dtype", "float32", "--no-progress", *args]
    return main([str(a) for a in argv])


def test_each_line_is_the_query_ranked_as_reranker_rank_ranks_it(tiny_model_dir, tiny_reranker, tmp_path, capsys):
    """Queries scored together in chunks (across queries) come out as `Reranker.rank` ranks each query alone, in
    input order, with the row's and documents' ids; --top-k cuts each list."""
    data = _write_rows(tmp_path / "queries.jsonl")
    out = tmp_path / "out.jsonl"
    assert _rerank(tiny_model_dir, "--input", data, "--out", out, "--chunk-pairs", "4") == 0
    assert "reranked 5 queries (10 pairs)" in capsys.readouterr().out
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == len(ROWS)
    for row, line in zip(ROWS, lines, strict=True):
        expected = tiny_reranker.rank(row["query"], row["documents"], instruction=row.get("instruction"))
        assert line.get("id") == row.get("id") and line["query"] == row["query"]
        assert [r["index"] for r in line["results"]] == [e["index"] for e in expected]
        assert [r["score"] for r in line["results"]] == pytest.approx([e["score"] for e in expected], abs=1e-6)
        for result in line["results"]:
            document = row["documents"][result["index"]]
            assert result.get("id") == (document.get("id") if isinstance(document, dict) else None)
    # the row's own instruction was used (a document ranks otherwise without it)
    plain = tiny_reranker.score(ROWS[1]["query"], ROWS[1]["documents"])
    assert sorted(r["score"] for r in lines[1]["results"]) != pytest.approx(sorted(plain), abs=1e-9)

    top = tmp_path / "top.jsonl"
    assert _rerank(tiny_model_dir, "--input", data, "--out", top, "--chunk-pairs", "4", "--top-k", "1") == 0
    cut = [json.loads(line) for line in top.read_text(encoding="utf-8").splitlines()]
    assert [c["results"] for c in cut] == [line["results"][:1] for line in lines]


def _run_file(path, beir_docs):
    """A first-stage run over the mini BEIR corpus: q1..q5, 5 candidates each, in a shuffled line order with two
    tied scores (trec_eval order cuts ties by doc id, descending)."""
    lines = []
    for n, qid in enumerate(["q3", "q1", "q5", "q2", "q4"]):
        docs = sorted(beir_docs)[n : n + 5] if n < 4 else sorted(beir_docs)[:5]
        scores = [9.0, 7.0, 7.0, 3.0, 1.0]
        for rank, (doc, score) in reversed(list(enumerate(zip(docs, scores, strict=True), 1))):
            lines.append(f"{qid} Q0 {doc} {rank} {score} bm25\n")
    path.write_text("".join(lines), encoding="utf-8")
    return path


def test_a_trec_run_comes_back_as_a_trec_run_of_its_top_depth(tiny_model_dir, tiny_reranker, beir_dir, tmp_path):
    from mini_beir import DOCS, QUERIES

    from tuner.metrics import ranked_ids

    run_path = _run_file(tmp_path / "bm25.trec", DOCS)
    first = read_run(run_path)
    out = tmp_path / "reranked.trec"
    argv = ["--candidates", run_path, "--beir", beir_dir, "--depth", "3", "--out", out, "--chunk-pairs", "5"]
    assert _rerank(tiny_model_dir, *argv) == 0
    reranked = read_run(out)
    assert list(reranked) == list(first)  # queries in the run file's order
    lines = [line.split() for line in out.read_text(encoding="utf-8").splitlines()]
    assert {(p[1], p[5]) for p in lines} == {("Q0", "tuner")}
    for qid, ranked in reranked.items():
        depth = ranked_ids(first[qid])[:3]  # ties cut as trec_eval orders them
        assert sorted(d for d, _ in ranked) == sorted(depth)
        docs = [{"title": DOCS[d][0], "text": DOCS[d][1]} for d in depth]
        scores = dict(zip(depth, tiny_reranker.score(QUERIES[qid], docs), strict=True))
        assert [d for d, _ in ranked] == ranked_ids(scores)
        assert [s for _, s in ranked] == pytest.approx([scores[d] for d, _ in ranked], abs=1e-6)
        assert [int(p[3]) for p in lines if p[0] == qid] == [1, 2, 3]


def _interrupt_after_first_chunk(monkeypatch):
    """`score_pairs` raises (as Ctrl-C would) on its second call: the first chunk is written, the rest is not."""
    from tuner.scoring import Reranker

    real = Reranker.score_pairs
    calls = []

    def score_pairs(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Reranker, "score_pairs", score_pairs)
    return lambda: monkeypatch.setattr(Reranker, "score_pairs", real)


@pytest.mark.parametrize("kind", ["jsonl", "trec"])
def test_an_interrupted_run_resumes_into_the_file_an_uninterrupted_run_writes(
    kind, tiny_model_dir, beir_dir, tmp_path, monkeypatch, capsys
):
    from mini_beir import DOCS

    if kind == "jsonl":
        source = ["--input", _write_rows(tmp_path / "queries.jsonl")]
    else:
        source = ["--candidates", _run_file(tmp_path / "bm25.trec", DOCS), "--beir", beir_dir, "--depth", "4"]
    argv = [*source, "--chunk-pairs", "4"]
    whole = tmp_path / f"whole.{kind}"
    assert _rerank(tiny_model_dir, *argv, "--out", whole) == 0

    out = tmp_path / f"out.{kind}"
    partial, record = tmp_path / f"out.{kind}.partial", tmp_path / f"out.{kind}.partial.json"
    restore = _interrupt_after_first_chunk(monkeypatch)
    capsys.readouterr()
    assert _rerank(tiny_model_dir, *argv, "--out", out) == 130
    err = capsys.readouterr().err
    assert f"{partial} keeps the first 1 of 5 queries; the same command with --resume continues it" in err
    assert not out.exists()
    written = partial.read_bytes()
    assert written and whole.read_bytes().startswith(written) and len(written) < len(whole.read_bytes())
    # a crash in the middle of the next chunk's write leaves half a line past what the record says was written
    with open(partial, "ab") as f:
        f.write(b'{"query": "half a li' + b"x" * 100_000)
    restore()

    assert _rerank(tiny_model_dir, *argv, "--out", out, "--resume") == 0
    assert "resuming after" in capsys.readouterr().out
    assert out.read_bytes() == whole.read_bytes()
    assert not partial.exists() and not record.exists()


def test_a_resume_while_another_run_writes_the_partial_is_refused(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Two `--resume`s of one output at once (a second terminal, a scheduler's retry) appended to one partial."""
    import fcntl
    import os

    argv = ["--input", _write_rows(tmp_path / "queries.jsonl"), "--chunk-pairs", "4", "--out", tmp_path / "out.jsonl"]
    restore = _interrupt_after_first_chunk(monkeypatch)
    assert _rerank(tiny_model_dir, *argv) == 130
    restore()
    partial = tmp_path / "out.jsonl.partial"
    held = os.open(partial, os.O_RDWR)  # what the other run holds while it writes
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    capsys.readouterr()
    before = partial.read_bytes()
    assert _rerank(tiny_model_dir, *argv, "--resume") == 2
    assert f"{partial} is being written by another tuner rerank now" in capsys.readouterr().err
    assert partial.read_bytes() == before
    os.close(held)  # that run ended
    assert _rerank(tiny_model_dir, *argv, "--resume") == 0 and not partial.exists()


def test_a_partial_is_refused_without_resume_and_an_output_without_overwrite(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    data = _write_rows(tmp_path / "queries.jsonl")
    out, partial = tmp_path / "out.jsonl", tmp_path / "out.jsonl.partial"
    assert _rerank(tiny_model_dir, "--input", data, "--out", out, "--resume") == 2
    assert f"--resume: no {partial} to continue" in capsys.readouterr().err

    restore = _interrupt_after_first_chunk(monkeypatch)
    assert _rerank(tiny_model_dir, "--input", data, "--out", out, "--chunk-pairs", "3") == 130
    restore()
    before = partial.read_bytes()
    capsys.readouterr()
    assert _rerank(tiny_model_dir, "--input", data, "--out", out, "--chunk-pairs", "3") == 2
    err = capsys.readouterr().err
    assert f"{partial}: a partial output of an earlier run is there; continue it with --resume" in err
    assert partial.read_bytes() == before  # not started over

    assert _rerank(tiny_model_dir, "--input", data, "--out", out, "--chunk-pairs", "3", "--resume") == 0
    capsys.readouterr()
    assert _rerank(tiny_model_dir, "--input", data, "--out", out) == 2
    assert f"--out {out} already exists; choose another file or pass --overwrite" in capsys.readouterr().err
    assert _rerank(tiny_model_dir, "--input", data, "--out", out, "--top-k", "1", "--overwrite") == 0
    assert "(replaced the previous file)" in capsys.readouterr().out
    assert all(len(json.loads(line)["results"]) <= 1 for line in out.read_text(encoding="utf-8").splitlines())


def test_resume_refuses_another_input_options_or_model_settings(
    tiny_model_dir, beir_dir, tmp_path, monkeypatch, capsys
):
    from mini_beir import DOCS

    data = _write_rows(tmp_path / "queries.jsonl")
    out, partial = tmp_path / "out.jsonl", tmp_path / "out.jsonl.partial"
    restore = _interrupt_after_first_chunk(monkeypatch)
    assert _rerank(tiny_model_dir, "--input", data, "--out", out, "--chunk-pairs", "3") == 130
    restore()
    before = partial.read_bytes()
    capsys.readouterr()

    other = _write_rows(tmp_path / "other.jsonl", [{**ROWS[0], "query": "capital of Spain"}, *ROWS[1:]])
    assert _rerank(tiny_model_dir, "--input", other, "--out", out, "--chunk-pairs", "3", "--resume") == 2
    err = capsys.readouterr().err
    assert f"--resume: {partial} was written with another input (input: " in err
    run = _run_file(tmp_path / "bm25.trec", DOCS)
    assert _rerank(tiny_model_dir, "--candidates", run, "--beir", beir_dir, "--out", out, "--resume") == 2
    assert f"--resume: {partial} was written from a JSONL --input, not from this one" in capsys.readouterr().err
    assert _rerank(tiny_model_dir, "--input", data, "--out", out, "--top-k", "2", "--resume") == 2
    assert "another options (top_k: null then, 2 now)" in capsys.readouterr().err
    assert _rerank(tiny_model_dir, "--input", data, "--out", out, "--max-length", "512", "--resume") == 2
    assert "another model settings (max_length: 8192 then, 512 now)" in capsys.readouterr().err
    assert partial.read_bytes() == before and not out.exists()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"query": "q", "documents": ["d"]', "invalid JSON"),
        ('["q", ["d"]]', "expected a JSON object with 'query' and 'documents', got a list"),
        ('{"documents": ["d"]}', "missing field 'query'"),
        ('{"query": " ", "documents": ["d"]}', "field 'query' is empty"),
        ('{"query": "q", "documents": "d"}', "field 'documents' must be a list, got a string"),
        ('{"query": "q", "documents": ["d", 5]}', "documents[1]: expected a string or an object with 'text'"),
        ('{"query": "q", "documents": [{"content": "d"}]}', "documents[0]: a document object needs a 'text'"),
        ('{"query": "q", "documents": [{"id": [1], "text": "d"}]}', "documents[0]: field 'id' must be a string"),
        ('{"query": "q", "documents": [], "instruction": 1}', "field 'instruction' must be a string, got a number"),
    ],
)
def test_a_bad_line_is_named_by_file_and_line_before_the_model_loads(tmp_path, capsys, line, message):
    data = tmp_path / "queries.jsonl"
    data.write_text(json.dumps(ROWS[0]) + "\n\n" + line + "\n" + json.dumps(ROWS[1]) + "\n", encoding="utf-8")
    # the model is never loaded: a bad line is found first
    assert _rerank(tmp_path / "no-model", "--input", data, "--out", tmp_path / "out.jsonl") == 2
    err = capsys.readouterr().err
    assert f"tuner rerank: error: {data}:3: {message}" in err
    assert not list(tmp_path.glob("out.jsonl*"))


def test_a_mistyped_input_is_named_with_the_file_it_resembles(tmp_path, capsys):
    _write_rows(tmp_path / "queries.jsonl")
    assert _rerank(tmp_path / "no-model", "--input", tmp_path / "queries.jsnol", "--out", tmp_path / "o.jsonl") == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'queries.jsnol'}: no such file; did you mean {tmp_path / 'queries.jsonl'}?" in err


def test_run_file_ids_the_beir_folder_lacks_are_counted_and_the_first_named(beir_dir, tmp_path, capsys):
    run = tmp_path / "run.trec"
    run.write_text("q1 Q0 d1 1 2.0 bm25\nqX Q0 d1 1 2.0 bm25\nqY Q0 d2 1 2.0 bm25\n", encoding="utf-8")
    argv = ["--candidates", run, "--beir", beir_dir, "--out", tmp_path / "out.trec"]
    assert _rerank(tmp_path / "no-model", *argv) == 2
    assert f"{run}:2: 2 of the 3 query ids are not in {beir_dir / 'queries.jsonl'} (the first: 'qX')" in (
        capsys.readouterr().err
    )
    run.write_text("q1 Q0 d1 1 2.0 bm25\nq1 Q0 zz 2 1.0 bm25\nq2 Q0 zz 1 2.0 bm25\nq2 Q0 yy 2 0.5 bm25\n")
    assert _rerank(tmp_path / "no-model", *argv) == 2
    err = capsys.readouterr().err
    assert f"{run}:2: 2 document ids are not in {beir_dir / 'corpus.jsonl'} (the first: 'zz', a top-100 " in err
    assert _rerank(tmp_path / "no-model", *argv, "--depth", "1") == 2  # q2's yy is below the depth
    assert f"{run}:3: 1 document id is not in {beir_dir / 'corpus.jsonl'} (the first: 'zz', a top-1 " in (
        capsys.readouterr().err
    )
    assert _rerank(tmp_path / "no-model", "--candidates", run, "--out", tmp_path / "o.trec") == 2
    assert "--candidates needs --beir" in capsys.readouterr().err


def test_every_model_option_reaches_the_reranker(tmp_path, capsys, monkeypatch):
    """`tuner rerank`'s model flags are `tuner score`'s (and eval's --batch-tokens), passed on as they are."""
    from tuner.cli import main
    from tuner.scoring import Reranker

    class Loaded(Exception):
        pass

    def from_pretrained(path, **kwargs):
        raise Loaded(path, kwargs)

    monkeypatch.setattr(Reranker, "from_pretrained", staticmethod(from_pretrained))
    data = _write_rows(tmp_path / "queries.jsonl")
    argv = ["rerank", "--model", "m", "--adapter", "a", "--input", str(data), "--out", str(tmp_path / "o.jsonl")]
    argv += ["--max-length", "300", "--no-calibration", "--batch-tokens", "1024", "--device", "cpu"]
    argv += ["--dtype", "float32", "--prefix-reuse", "auto", "--packing", "--attn-implementation", "eager"]
    with pytest.raises(Loaded) as loaded:
        main(argv)
    fast = {"prefix_reuse": "auto", "packing": True, "attn_implementation": "eager"}
    assert loaded.value.args == ("m", {"adapter": "a", "device": "cpu", "dtype": "float32", "max_length": 300,
                                       "batch_tokens": 1024, "calibrated": False, "show_progress": False,
                                       **fast})  # fmt: skip
    with pytest.raises(Loaded) as loaded:
        main(["rerank", "--model", "m", "--input", str(data), "--out", str(tmp_path / "o.jsonl")])
    off = {"prefix_reuse": False, "packing": False, "attn_implementation": None}
    assert loaded.value.args == ("m", {"adapter": None, "device": None, "dtype": None, "max_length": None,
                                       "batch_tokens": None, "calibrated": True, "show_progress": False,
                                       **off})  # fmt: skip
    assert not list(tmp_path.glob("o.jsonl*"))  # nothing is written before the model loads
    assert main(["rerank", "--model", "m", "--input", str(data), "--out", "o", "--depth", "5"]) == 2
    assert "--depth: for --candidates" in capsys.readouterr().err


def test_raw_gives_the_yes_no_logits(tiny_model_dir, tiny_reranker, tmp_path):
    data = _write_rows(tmp_path / "queries.jsonl", ROWS[:1])
    out = tmp_path / "raw.jsonl"
    assert _rerank(tiny_model_dir, "--input", data, "--out", out, "--raw") == 0
    (line,) = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    logits = tiny_reranker.score(ROWS[0]["query"], ROWS[0]["documents"], normalize=False)
    assert {r["index"]: r["score"] for r in line["results"]} == pytest.approx(dict(enumerate(logits)), abs=1e-6)


def test_a_query_over_the_prompt_budget_is_named_by_its_line(tiny_model_dir, tmp_path, capsys):
    """Found while scoring (the encoder measures it): named by file, line and field, and the partial is said to need
    a fresh start once the input is fixed (a resume checks that the input is unchanged)."""
    rows = [ROWS[0], ROWS[4], {"query": "long " * 200, "documents": ["d"]}]
    data = _write_rows(tmp_path / "queries.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert _rerank(tiny_model_dir, "--input", data, "--out", out, "--max-length", "128", "--chunk-pairs", "2") == 2
    err = capsys.readouterr().err
    assert f"tuner rerank: error: {data}:3: field 'query': instruction + query take " in err
    assert f"{out}.partial keeps the first 2 of 3 queries; once the input or options are fixed, delete it" in err


def test_tied_scores_keep_input_order_in_jsonl_and_trec_eval_order_in_a_run(
    tiny_model_dir, beir_dir, tmp_path, monkeypatch
):
    from mini_beir import DOCS

    from tuner.scoring import Reranker

    monkeypatch.setattr(Reranker, "score_pairs", lambda self, pairs, **kwargs: [0.5] * len(pairs))
    data = _write_rows(tmp_path / "queries.jsonl")
    out = tmp_path / "ties.jsonl"
    assert _rerank(tiny_model_dir, "--input", data, "--out", out) == 0
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [[r["index"] for r in line["results"]] for line in lines] == [list(range(len(r["documents"]))) for r in ROWS]
    run = tmp_path / "ties.trec"
    argv = ["--candidates", _run_file(tmp_path / "bm25.trec", DOCS), "--beir", beir_dir, "--out", run]
    assert _rerank(tiny_model_dir, *argv) == 0
    written: dict = {}
    for line in run.read_text(encoding="utf-8").splitlines():  # in the file's order, as trec_eval breaks ties
        written.setdefault(line.split()[0], []).append(line.split()[2])
    assert written and all(docs == sorted(docs, reverse=True) for docs in written.values())


def test_a_run_folder_is_identified_by_the_weights_it_stands_for(tmp_path):
    """`--model RUN` loads RUN/adapter: a resume must see that adapter retrained (its weights changed), not RUN's
    own top level, which holds no weights."""
    from tuner.rerank import source_identity

    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text("name: r\n", encoding="utf-8")
    (run / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA"}', encoding="utf-8")
    weights = run / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(b"x" * 10)
    before = source_identity(run)
    assert before == source_identity(run / "adapter")
    weights.write_bytes(b"y" * 20)  # the run trained again
    assert source_identity(run) != before


def test_a_hub_model_the_first_run_downloaded_still_resumes(tmp_path, monkeypatch):
    """A hub id is identified before the load by its name alone: a first run downloads it after the record is made,
    so its commit is in the cache only on the resume, which was refused for it ("another options (model: ..."). The
    commit is compared after the load (model settings), where both runs have it."""
    import huggingface_hub

    from tuner.rerank import hub_snapshot, source_identity

    cached: dict = {}
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name, **kw: cached.get(repo))
    first = source_identity("Org/Model")  # not downloaded yet
    snapshot = tmp_path / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}", encoding="utf-8")
    cached["Org/Model"] = str(snapshot / "config.json")  # the first run's load downloaded it
    assert source_identity("Org/Model") == first
    assert hub_snapshot("Org/Model") == "abc123" and hub_snapshot(None) is None and hub_snapshot(tmp_path) is None


def test_a_refused_resume_names_the_missing_partial_and_lets_go_of_the_lock(tmp_path):
    """The lock taken for --resume (caf6cbe) opened the partial before the record was read: a record without its
    partial was `[Errno 2] No such file or directory` instead of the record check's message, and a resume refused
    for other options kept the partial's fd and lock for the rest of a Python caller's process."""
    import fcntl
    import os

    from tuner.rerank import Rerank

    data = _write_rows(tmp_path / "queries.jsonl")
    out = tmp_path / "out.jsonl"
    Rerank(out, input=data)._write_record(0, 0, 0, {})  # the record of a run killed before its partial was made
    with pytest.raises(ValueError, match=r"--resume: .*out.jsonl.partial is missing, so .* cannot be continued"):
        Rerank(out, input=data, resume=True)

    (tmp_path / "out.jsonl.partial").write_bytes(b"")
    with pytest.raises(ValueError, match="another options"):
        Rerank(out, input=data, top_k=2, resume=True)
    fd = os.open(tmp_path / "out.jsonl.partial", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: the refused resume let go of it
    finally:
        os.close(fd)


def test_a_non_finite_score_is_named_by_its_line_and_document(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Reranker.score_pairs names a NaN by its place in the chunk it was given ("pair 1"): for `tuner rerank` that
    is no place in the input, so the error named no query."""
    from tuner.scoring import Reranker

    real, calls = Reranker.logits_for_ids, []

    def logits_for_ids(self, *args, **kwargs):
        logits = list(real(self, *args, **kwargs))
        calls.append(1)
        if len(calls) == 2:  # the second chunk's second pair: ROWS[1]'s second document
            logits[1] = float("nan")
        return logits

    monkeypatch.setattr(Reranker, "logits_for_ids", logits_for_ids)
    data = _write_rows(tmp_path / "queries.jsonl", [{"query": f"q{n}", "documents": ["a", "b"]} for n in range(3)])
    assert _rerank(tiny_model_dir, "--input", data, "--out", tmp_path / "out.jsonl", "--chunk-pairs", "2") == 2
    err = capsys.readouterr().err
    assert f"{data}:2: documents[1] (pair 1 of the chunk scored): 1 of 2 scores are not finite" in err
