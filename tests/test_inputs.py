"""Bad input gets one clear error naming the file, line, field or path: model folders, run files, BEIR
corpora, `data split` outputs, `mine --max-length`."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import pytest

from tuner.cli import build_parser, main
from tuner.data.beir import DataError, load_beir
from tuner.loading import ModelNotFoundError, load_model
from tuner.retrieval import read_run


# ------------------------------------------------------------------------------------------ model folders
def _weightless_copy(tiny_model_dir, dest):
    """The tiny model's folder without its weight files."""
    shutil.copytree(tiny_model_dir, dest, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return dest


def test_adapter_without_weights_names_the_folder(tiny_model_dir, tmp_path, capsys):
    ad = tmp_path / "ad"
    ad.mkdir()
    cfg = {"peft_type": "LORA", "base_model_name_or_path": str(tiny_model_dir), "r": 4, "target_modules": ["q_proj"]}
    (ad / "adapter_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    with pytest.raises(ModelNotFoundError, match=r"ad: no adapter weights \(adapter_model\.safetensors or adapter"):
        load_model(tiny_model_dir, adapter=ad, device="cpu")
    with pytest.raises(ModelNotFoundError, match="no adapter weights"):
        load_model(ad, device="cpu")  # an adapter folder alone
    docs = tmp_path / "docs.txt"
    docs.write_text("a document\n", encoding="utf-8")
    argv = ["score", "--model", str(tiny_model_dir), "--adapter", str(ad), "--query", "q", "--documents", str(docs)]
    assert main([*argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{ad}: no adapter weights" in err and len(err.strip().splitlines()) == 1


def test_invalid_adapter_config_names_the_file(tiny_model_dir, tmp_path):
    ad = tmp_path / "ad"
    ad.mkdir()
    (ad / "adapter_config.json").write_text('{\n"peft_type": "LORA",\n', encoding="utf-8")  # truncated
    (ad / "adapter_model.safetensors").write_bytes(b"")
    for kwargs in ({"model": tiny_model_dir, "adapter": ad}, {"model": ad}):
        with pytest.raises(ValueError, match=r"ad/adapter_config\.json: invalid JSON \(line 2 column 21: "):
            load_model(**kwargs, device="cpu")


def test_model_folder_without_weights_or_with_bad_config(tiny_model_dir, tmp_path):
    bare = _weightless_copy(tiny_model_dir, tmp_path / "bare")
    with pytest.raises(ModelNotFoundError, match=r"bare: no model weights \(model\.safetensors, "):
        load_model(bare, device="cpu")
    # a sharded index whose shard is missing
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}}
    (bare / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    with pytest.raises(ModelNotFoundError, match=r"missing shard.*'model-00001-of-00002\.safetensors'"):
        load_model(bare, device="cpu")
    # an invalid config.json is named, weights or not
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "config.json").write_text('{"model_type": "qwen3",', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken/config\.json: invalid JSON \(line 1 column 24: "):
        load_model(broken, device="cpu")
    (broken / "config.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken/config\.json: expected a JSON object"):
        load_model(broken, device="cpu")


def test_truncated_weights_and_a_foreign_adapter_are_named(tiny_model_dir, tmp_path):
    trunc = _weightless_copy(tiny_model_dir, tmp_path / "trunc")
    weights = (tiny_model_dir / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(weights[: len(weights) - 1000])  # intact header, short body
    with pytest.raises(ModelNotFoundError, match=r"trunc/model\.safetensors: not a readable safetensors file"):
        load_model(trunc, device="cpu")
    # an adapter made for a base of another size
    from peft import LoraConfig, get_peft_model

    from tuner.tiny import write_tiny_model

    small = write_tiny_model(tmp_path / "small", layers=1, hidden=32)
    base, _, _ = load_model(small, device="cpu")
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "ad")
    with pytest.raises(ValueError, match=r"/ad' does not fit base .*: size mismatch for "):
        load_model(tiny_model_dir, adapter=tmp_path / "ad", device="cpu")
    (tmp_path / "ad" / "adapter_model.safetensors").write_bytes(b"junk")
    with pytest.raises(ModelNotFoundError, match=r"ad/adapter_model\.safetensors: not a readable safetensors"):
        load_model(tiny_model_dir, adapter=tmp_path / "ad", device="cpu")
    # an adapter saved as .bin passes the up-front check (and then meets the same size check)
    (tmp_path / "ad" / "adapter_model.safetensors").rename(tmp_path / "ad" / "adapter_model.bin")
    from tuner.loading import _check_reachable

    _check_reachable(str(tmp_path / "ad"), "adapter")


def test_an_adapter_config_that_does_not_describe_its_weights_is_named(tiny_model_dir, tmp_path):
    """peft loads non-strictly: a config without target_modules would put LoRA on peft's default modules and drop
    the other stored tensors silently (a model that scores, wrongly); one without r fails as a size mismatch that
    reads like another base."""
    from peft import LoraConfig, get_peft_model

    base, _, _ = load_model(tiny_model_dir, device="cpu")
    good = tmp_path / "good"
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    get_peft_model(base, LoraConfig(r=4, target_modules=targets)).save_pretrained(good)
    load_model(tiny_model_dir, adapter=good, device="cpu")  # the intact adapter loads
    config = json.loads((good / "adapter_config.json").read_text(encoding="utf-8"))

    def broken(name: str, **change) -> Path:
        folder = tmp_path / name
        shutil.copytree(good, folder)
        edited = {k: v for k, v in {**config, **change}.items() if v is not None}
        (folder / "adapter_config.json").write_text(json.dumps(edited), encoding="utf-8")
        return folder

    cases = [
        (broken("no-targets", target_modules=None), r"stored tensors did not load \(e\.g\. .*\); its adapter_config"),
        (broken("fewer-targets", target_modules=["q_proj"]), r"stored tensors did not load .*\{'q_proj'\}"),
        (broken("no-r", r=None), r"no-r/adapter_config\.json has no 'r' \(peft's default is 8\) but .* rank 4"),
        (broken("other-r", r=16), r"other-r/adapter_config\.json says r=16 but .* have rank 4"),
        (broken("no-type", peft_type=None), r"no-type/adapter_config\.json: no 'peft_type' field"),
    ]
    for folder, message in cases:
        with pytest.raises(ValueError, match=message):
            load_model(tiny_model_dir, adapter=folder, device="cpu")
    # weights that lost tensors: the adapter's own modules are named as not stored
    from safetensors.torch import load_file, save_file

    tensors = load_file(good / "adapter_model.safetensors")
    short = broken("short")
    save_file({k: v for k, v in tensors.items() if ".layers.0." not in k}, short / "adapter_model.safetensors")
    with pytest.raises(ValueError, match=r"adapter tensors are not stored \(e\.g\. .*layers\.0\."):
        load_model(tiny_model_dir, adapter=short, device="cpu")


def test_a_folder_of_models_names_the_ones_inside(tmp_path):
    """A multi-format export root or a training run passed as the model: the error lists the model folders in
    it (they are what the user meant)."""
    for sub, name in (("merged", "config.json"), ("seq-cls", "config.json"), ("adapter", "adapter_config.json")):
        (tmp_path / "root" / sub).mkdir(parents=True)
        (tmp_path / "root" / sub / name).write_text("{}")
    example = re.escape(repr(str(tmp_path / "root" / "merged")))  # the one the README serves, not the adapter
    with pytest.raises(
        ModelNotFoundError, match=rf"it holds adapter, merged, seq-cls: pass one of them, e\.g\. {example}"
    ):
        load_model(tmp_path / "root", device="cpu")


def test_a_run_that_has_not_finished_names_its_newest_checkpoint(tmp_path):
    """A run interrupted before its adapter/ was written, given to score, eval, serve or export: the errors said
    only "has neither config.json nor adapter_config.json" (or "nor a run with adapter/"), not that the run is
    unfinished and its checkpoints hold the weights there are."""
    from tuner.export import resolve_adapter_dir

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("name: x\n")
    for step in (2, 10, 12):
        (run / "checkpoints" / f"checkpoint-{step}").mkdir()
        (run / "checkpoints" / f"checkpoint-{step}" / "adapter_config.json").write_text("{}")
    for step in (2, 10):  # checkpoint-12: a save cut off before its trainer_state.json
        state = json.dumps({"global_step": step})  # as transformers writes it (an empty state is no finished save)
        (run / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    hint = (
        "; it is a training run that has not finished (no adapter/ yet): `tuner train RECIPE ... --resume` finishes "
        f"it, or pass a checkpoint, e.g. {str(run / 'checkpoints' / 'checkpoint-10')!r}"
    )
    with pytest.raises(ModelNotFoundError) as err:
        load_model(run, device="cpu")
    assert str(err.value) == f"model directory {str(run)!r} has neither config.json nor adapter_config.json{hint}"
    with pytest.raises(FileNotFoundError) as err:
        resolve_adapter_dir(run)
    assert str(err.value) == f"{run}: neither an adapter directory (adapter_config.json) nor a run with adapter/{hint}"


def test_a_hub_id_in_the_local_cache_loads_offline_and_an_unreachable_hub_fails_at_once(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub
    import huggingface_hub.utils._http as hub_http

    from tuner.loading import _check_reachable

    snapshot = tmp_path / "cache" / "models--acme--ranker" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}", encoding="utf-8")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123", encoding="utf-8")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "cache"))
    _check_reachable("acme/ranker")  # HF_HUB_OFFLINE=1 (conftest): found in the cache, no request made

    # online, hub unreachable (a closed local port): one request, no retry backoff (hf_hub_download would sleep
    # 1+2+4+8+8 s between five retries before giving the same error)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(
        hub, "HUGGINGFACE_CO_URL_TEMPLATE", "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}"
    )
    sleeps = []
    monkeypatch.setattr(hub_http.time, "sleep", sleeps.append)
    unreachable = r"model 'acme/other' not found: .*Hub could not be reached to look it up \(ConnectError: .*network"
    with pytest.raises(ModelNotFoundError, match=unreachable):
        _check_reachable("acme/other")
    assert sleeps == []

    import huggingface_hub

    def no_such_repo(*args, **kwargs):  # the hub answered: the name is wrong
        raise ValueError("404 Repository Not Found for url")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", no_such_repo)
    with pytest.raises(ModelNotFoundError, match=r"model 'acme/other' not found: .*could not provide it \(ValueError"):
        _check_reachable("acme/other")


def test_an_adapters_recorded_base_and_tuner_json_fields_are_checked(tiny_model_dir, tmp_path):
    """The base an adapter's tuner.json names: relative to the adapter when not found from here, else an error
    saying where the name came from and how to pass the base; hand-edited tuner.json fields name the field."""
    from exporting import make_run

    from tuner.scoring import Reranker

    shutil.copytree(tiny_model_dir, tmp_path / "base")
    adapter = make_run(tmp_path / "run", tmp_path / "base") / "adapter"
    meta_file = adapter / "tuner.json"
    meta = json.loads(meta_file.read_text())

    def write(**fields):
        meta_file.write_text(json.dumps({**meta, **fields}), encoding="utf-8")

    write(base_model="../../base")  # relative to the adapter, not to the working directory
    load_model(adapter, device="cpu")
    write(base_model="models/moved-away")
    with pytest.raises(ModelNotFoundError) as err:
        load_model(adapter, device="cpu")
    assert "'models/moved-away' not found" in str(err.value)
    assert f"named in {meta_file}" in str(err.value) and "--adapter" in str(err.value)
    bad_fields = [
        ({"max_length": "abc"}, "field 'max_length' must be a positive integer"),
        ({"max_length": 0}, "field 'max_length' must be a positive integer"),
        ({"instruction": 3}, "field 'instruction' must be a string"),
        ({"calibration": [1, 2]}, "field 'calibration' must be an object"),
        ({"calibration": {"temperature": 0}}, "field 'calibration.temperature' must be a positive number"),
        ({"calibration": {"temperature": 1.0, "bias": "x"}}, "field 'calibration.bias' must be a finite number"),
        # a model trained or exported under another prompt would be scored on prompts it never saw
        ({"contract": {"contract_version": 2}}, "written under prompt contract version 2; this tuner implements"),
        ({"contract": {"suffix": "<|im_end|>\n"}}, r"field 'contract.suffix' is .*, not the contract's"),
        ({"contract": "v1"}, "field 'contract' must be an object"),
    ]
    for fields, message in bad_fields:
        write(base_model=str(tmp_path / "base"), **fields)
        with pytest.raises(ValueError, match=rf"{meta_file}: {message}"):
            Reranker.from_pretrained(adapter, device="cpu")
    meta_file.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{meta_file}: expected a JSON object, got list"):
        Reranker.from_pretrained(adapter, device="cpu")


# ------------------------------------------------------------------------------------------ run files
def test_run_file_rank_must_be_an_integer(tmp_path):
    run = tmp_path / "run.trec"
    run.write_text("q1 Q0 d1 1 2.5 bm25\nq1 Q0 d2 two 1.5 bm25\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{run}:2: rank 'two' is not an integer"):
        read_run(run)
    run.write_text("q1 Q0 d1 1 high bm25\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{run}:1: score 'high' is not a number"):
        read_run(run)
    run.write_text("q1 Q0 d1 1 nan bm25\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{run}:1: score 'nan' is not a number"):
        read_run(run)
    # a document twice for one query (trec_eval refuses it; a dict would keep one score silently)
    run.write_text("q1 Q0 d1 1 2.5 bm25\nq2 Q0 d1 1 2.5 bm25\nq1 Q0 d1 2 1.5 bm25\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{run}:3: docid 'd1' ranked twice for query 'q1' \(first on line 1\)"):
        read_run(run)
    run.write_bytes(b"q1 Q0 d1 1 2.5 bm25\n\xff\n")
    with pytest.raises(DataError, match=rf"{run}: not UTF-8"):
        read_run(run)
    run.write_text("q1 Q0 d1 1 1.5 bm25\nq1 Q0 d2 2 2.5 bm25\nq2 Q0 d1 1 -inf bm25\n", encoding="utf-8")
    assert read_run(run) == {"q1": [("d2", 2.5), ("d1", 1.5)], "q2": [("d1", float("-inf"))]}


def test_a_written_run_file_ranks_from_1_and_reads_back_the_exact_scores(tmp_path):
    """TREC run files (a report's runs/*.trec): ranks start at 1, and `digits=None` keeps every score exact, so
    trec_eval (ties by doc id) ranks the file as the scores did."""
    from tuner.retrieval import write_run

    run = {"q1": [("d2", 0.1 + 0.2), ("d1", 0.3)], "q2": [("d9", -1e-9)]}
    write_run(run, tmp_path / "run.trec", tag="t", digits=None)
    lines = [line.split() for line in (tmp_path / "run.trec").read_text(encoding="utf-8").splitlines()]
    assert [(p[0], p[2], p[3]) for p in lines] == [("q1", "d2", "1"), ("q1", "d1", "2"), ("q2", "d9", "1")]
    assert read_run(tmp_path / "run.trec") == run
    write_run(run, tmp_path / "rounded.trec")  # 6 decimals by default
    assert read_run(tmp_path / "rounded.trec")["q2"] == [("d9", 0.0)]


def test_a_run_file_of_other_queries_is_an_error_and_a_partial_one_a_warning(tmp_path, caplog):
    """Query ids that match none of the split's (another split, another id scheme) gave all-zero metrics and
    exit 0; a run file that covers some queries counts the rest 0, which the log now says."""
    from tuner.evaluate import first_stage_run

    queries = {"q1": "one", "q2": "two", "q3": "three"}
    run = tmp_path / "run.trec"
    run.write_text("Q1 Q0 d1 1 2.5 bm25\nQ2 Q0 d1 1 2.5 bm25\n", encoding="utf-8")
    with pytest.raises(
        DataError, match=r"none of the 3 judged queries .* \(its query ids: Q1, Q2; the split's: q1, q2"
    ):
        first_stage_run({}, queries, run)
    run.write_text("q1 Q0 d1 1 2.5 bm25\n", encoding="utf-8")
    with caplog.at_level("WARNING", logger="tuner.evaluate"):
        assert first_stage_run({}, queries, run) == {"q1": [("d1", 2.5)]}
    assert "2 of 3 judged queries have no candidates in this run file (e.g. q2, q3)" in caplog.text


# ------------------------------------------------------------------------------------------ BEIR corpora
def _beir(folder, corpus_rows: list[str]):
    (folder / "qrels").mkdir(parents=True)
    with gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(corpus_rows) + "\n")
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "query"}\n', encoding="utf-8")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('{"_id": "d2", "title": "t"}', "field 'text' is missing"),
        ('{"_id": "d2", "text": null}', "field 'text' is null, not a string"),
        ('{"_id": "d2", "text": ["a"]}', "field 'text' is a list, not a string"),
        ('{"_id": "d1", "text": "again"}', "duplicate _id 'd1' \\(first on line 1\\)"),
    ],
)
def test_beir_corpus_rows_are_checked(tmp_path, row, message):
    folder = _beir(tmp_path / "b", ['{"_id": "d1", "title": "t", "text": "one"}', row])
    with pytest.raises(DataError, match=rf"corpus\.jsonl\.gz:2: {message}"):
        load_beir(folder)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ('{"_id": "q1", "text": null}\n', r"queries\.jsonl:1: field 'text' is null, not a string"),
        (
            '{"_id": "q1", "text": "a"}\n{"_id": "q1", "text": "b"}\n',
            r"queries\.jsonl:2: duplicate _id 'q1' \(first on line 1\)",
        ),
        (
            '{"_id": "q2", "text": "other"}\n',  # q1 of the qrels has no text
            r"test\.tsv: 1 query id has no text in .*queries\.jsonl \(e\.g\. 'q1'\)",
        ),
    ],
)
def test_beir_query_rows_are_checked(tmp_path, rows, message):
    folder = _beir(tmp_path / "b", ['{"_id": "d1", "text": "one"}'])
    (folder / "queries.jsonl").write_text(rows, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_beir(folder)


def test_a_mistyped_beir_folder_names_the_close_one(tmp_path):
    """`--beir data/scifakt` (mine, eval, instruct): the error names data/scifact beside it, as a mistyped file does."""
    (tmp_path / "scifact").mkdir()
    (tmp_path / "scifact.md").write_text("a file of a close name is no BEIR folder")
    with pytest.raises(DataError, match=rf"scifakt: no such directory; did you mean {tmp_path / 'scifact'}\?$"):
        load_beir(tmp_path / "scifakt")
    with pytest.raises(DataError, match=r"nothing: no such directory$"):
        load_beir(tmp_path / "nothing")


def test_beir_accepts_empty_text_and_missing_title(tmp_path):
    folder = _beir(tmp_path / "b", ['{"_id": "d1", "text": ""}', '{"_id": 2, "title": null, "text": "x"}'])
    data = load_beir(folder)
    assert data.corpus == {"d1": {"title": "", "text": ""}, "2": {"title": "", "text": "x"}}


def test_beir_files_tolerate_blank_lines_and_spaces_around_qrels_ids(tmp_path):
    folder = _beir(tmp_path / "b", ['{"_id": "d1", "text": "one"}', "", "   ", '{"_id": "d2", "text": "two"}'])
    (folder / "queries.jsonl").write_text('\n{"_id": "q1", "text": "query"}\n\n', encoding="utf-8")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n q1 \t d2 \t1\n", encoding="utf-8")
    data = load_beir(folder)
    assert set(data.corpus) == {"d1", "d2"} and data.queries == {"q1": "query"}
    assert data.qrels == {"q1": {"d2": 1}}


def test_beir_bytes_problems_are_named_or_tolerated(tmp_path):
    """A bad byte names its line (not an offset into a read buffer), a corrupt .gz is a data error naming the
    file, and a BOM (queries, qrels) is dropped as in training files."""
    from tuner.data import load_groups

    rows = [f'{{"_id": "d{i}", "text": "{"x" * 200}"}}' for i in range(1, 400)]
    folder = _beir(tmp_path / "b", rows)
    corpus = folder / "corpus.jsonl.gz"
    with gzip.open(corpus, "wb") as f:
        f.write("\n".join(rows[:150]).encode() + b'\n{"_id": "bad", "text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=rf"{corpus}:151: not UTF-8"):
        load_beir(folder)
    raw = bytearray(gzip.compress(("\n".join(rows) + "\n").encode(), mtime=0))  # a 10-byte header (no name)
    raw[11] ^= 0xFF  # one flipped byte at the start of the deflate stream: zlib.error, not an OSError
    corpus.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=rf"{corpus}: cannot read"):
        load_beir(folder)
    groups = tmp_path / "groups.jsonl.gz"
    groups.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=rf"{groups}: cannot read"):
        load_groups(groups)

    folder = _beir(tmp_path / "bom", ['{"_id": "d1", "text": "one"}'])
    (folder / "queries.jsonl").write_bytes(b'\xef\xbb\xbf{"_id": "q1", "text": "query"}\n')
    (folder / "qrels" / "test.tsv").write_bytes(b"\xef\xbb\xbfquery-id\tcorpus-id\tscore\nq1\td1\t1\n")
    data = load_beir(folder)
    assert data.queries == {"q1": "query"} and data.qrels == {"q1": {"d1": 1}}
    (folder / "qrels" / "test.tsv").write_bytes(b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq\xe9\td1\t1\n")
    with pytest.raises(DataError, match=r"test\.tsv:3: not UTF-8"):
        load_beir(folder)
    # TREC's own qrels: space-separated "qid iter docid rel" (and tab-separated four columns)
    (folder / "qrels" / "test.tsv").write_text("q1 0 d1 1\nq1\t0\td2\t0\n", encoding="utf-8")
    assert load_beir(folder).qrels == {"q1": {"d1": 1, "d2": 0}}
    (folder / "qrels" / "test.tsv").write_text("q1 d1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"test\.tsv:1: expected 3 tab-separated columns .* or TREC's 4"):
        load_beir(folder)


# ------------------------------------------------------------------------------------------ data split / mine
def test_data_split_refuses_to_overwrite_its_input(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    rows = [{"query": f"q{i}", "pos": [f"p{i}"], "neg": [f"n{i}"]} for i in range(10)]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    good.write_text(text, encoding="utf-8")
    dev = tmp_path / "dev.jsonl"
    for outs in (["--train-out", str(good), "--dev-out", str(dev)], ["--train-out", str(dev), "--dev-out", str(good)]):
        assert main(["data", "split", str(good), *outs]) == 2
        err = capsys.readouterr().err
        assert "is the input file" in err and str(good) in err and len(err.strip().splitlines()) == 1
    # the same file reached through another spelling, and both outputs one file
    other = tmp_path / "sub" / ".." / "good.jsonl"
    assert main(["data", "split", str(good), "--train-out", str(other), "--dev-out", str(dev)]) == 2
    assert main(["data", "split", str(good), "--train-out", str(dev), "--dev-out", str(tmp_path / "dev.jsonl")]) == 2
    assert "are the same file" in capsys.readouterr().err
    assert good.read_text(encoding="utf-8") == text and not dev.exists()  # nothing written, nothing lost
    # a folder input: its train.jsonl is the file read
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "train.jsonl").write_text(text, encoding="utf-8")
    assert main(["data", "split", str(folder), "--train-out", str(folder / "train.jsonl"), "--dev-out", str(dev)]) == 2
    assert (folder / "train.jsonl").read_text(encoding="utf-8") == text
    # ordinary use still works
    train = tmp_path / "train.jsonl"
    assert main(["data", "split", str(good), "--train-out", str(train), "--dev-out", str(dev)]) == 0
    assert len(train.read_text().splitlines()) + len(dev.read_text().splitlines()) == 10


def test_mine_max_length_defaults_to_the_reranker(monkeypatch, tmp_path):
    args = build_parser().parse_args(["mine", "--beir", "x", "--out", "y"])
    assert args.max_length is None
    # None reaches Reranker.from_pretrained, which then takes tuner.json's max_length (else 8192)
    seen = {}

    class Stop(Exception):
        pass

    def fake_from_pretrained(path, **kwargs):
        seen.update(kwargs)
        raise Stop

    from tuner import scoring

    monkeypatch.setattr(scoring.Reranker, "from_pretrained", staticmethod(fake_from_pretrained))
    folder = _beir(tmp_path / "b", ['{"_id": "d1", "text": "one"}'])
    with pytest.raises(Stop):
        main(["mine", "--beir", str(folder), "--split", "test", "--out", str(tmp_path / "g.jsonl"), "--reranker", "m"])
    assert seen["max_length"] is None
