"""`tuner tiny-model` and `tuner score` as a user runs them."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch


def _tuner(*args, check=True):
    return subprocess.run([sys.executable, "-m", "tuner", *map(str, args)], capture_output=True, text=True, check=check)


def test_tiny_model_is_an_ordinary_hf_directory(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "tiny"
    _tuner("tiny-model", out, "--layers", 1, "--hidden", 32, "--seed", 3)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 1 and model.config.hidden_size == 32
    assert model.config.vocab_size == len(tok) == 151669
    assert tok.pad_token == "<|endoftext|>"
    assert (out / "model.safetensors").is_file()
    # the seed fixes the weights
    again = tmp_path / "again"
    _tuner("tiny-model", again, "--layers", 1, "--hidden", 32, "--seed", 3)
    other = AutoModelForCausalLM.from_pretrained(again)
    assert torch.equal(model.model.embed_tokens.weight, other.model.embed_tokens.weight)


def test_score_prints_a_ranking(tiny_model_dir, tiny_reranker, tmp_path):
    docs = tmp_path / "docs.jsonl"
    rows = ["plain string document", {"title": "Title", "text": "object document"}, "third"]
    docs.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    res = _tuner(
        "score",
        "--model",
        tiny_model_dir,
        "--query",
        "a query",
        "--documents",
        docs,
        "--top-k",
        2,
        "--device",
        "cpu",
    )
    ranking = json.loads(res.stdout)
    expected = tiny_reranker.rank("a query", rows, top_k=2)
    assert [r["index"] for r in ranking] == [r["index"] for r in expected]
    assert ranking[0]["score"] == expected[0]["score"] or abs(ranking[0]["score"] - expected[0]["score"]) < 1e-6
    # one document per line works too
    lines = tmp_path / "docs.txt"
    lines.write_text("first line\nsecond line\n", encoding="utf-8")
    res = _tuner("score", "--model", tiny_model_dir, "--query", "q", "--documents", lines, "--device", "cpu")
    assert sorted(r["document"] for r in json.loads(res.stdout)) == ["first line", "second line"]


def test_tiny_model_shapes_it_cannot_build_are_one_line_naming_the_flags(tmp_path, capsys, monkeypatch):
    # --hidden 100000 was torch's allocator traceback (exit 1); --hidden 30 --heads 4 named "hidden (30)" after
    # torch had loaded
    import tuner.tiny
    from tuner.cli import main

    out = str(tmp_path / "tiny")
    assert main(["tiny-model", out, "--hidden", "30", "--heads", "4"]) == 2
    assert capsys.readouterr().err == "tuner tiny-model: error: --hidden 30 must be a multiple of --heads 4\n"
    assert main(["tiny-model", out, "--heads", "4", "--kv-heads", "3"]) == 2
    assert capsys.readouterr().err == "tuner tiny-model: error: --heads 4 must be a multiple of --kv-heads 3\n"

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(tuner.tiny, "write_tiny_model", no_memory)
    assert main(["tiny-model", out, "--hidden", "100000", "--layers", "1"]) == 2
    assert capsys.readouterr().err == (
        "tuner tiny-model: error: --layers 1 --hidden 100000: a model of about 540.7 GB in float32 (the "
        "151,669-token embedding alone is 60.7 GB), more than this machine could allocate; choose a smaller --hidden "
        "or --layers\n"
    )
    assert not (tmp_path / "tiny").exists()


def test_score_errors_name_the_file_and_line(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('"ok"\n{"text": "fine"}\n{broken\n', encoding="utf-8")
    res = _tuner("score", "--model", tiny_model_dir, "--query", "q", "--documents", bad, check=False)
    assert res.returncode == 2
    assert f"{bad}:3: invalid JSON" in res.stderr
    assert "Traceback" not in res.stderr
    good = tmp_path / "good.txt"
    good.write_text("a document\n", encoding="utf-8")
    res = _tuner("score", "--model", tmp_path / "nope", "--query", "q", "--documents", good, check=False)
    assert res.returncode == 2 and "not found: no such directory" in res.stderr


def test_os_errors_are_one_line_and_reports_fail_before_scoring(tmp_path, monkeypatch, capsys):
    """A file where a folder is wanted (or no permission, a full disk) is one line naming the path, exit code 2;
    `eval` finds out before it loads or scores anything."""
    from tuner import eval_run
    from tuner.cli import main

    blocker = tmp_path / "afile"
    blocker.write_text("not a folder", encoding="utf-8")
    assert main(["tiny-model", str(blocker / "tiny")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(blocker) in err and "Traceback" not in err

    def no_scoring(*args, **kwargs):
        raise AssertionError("candidates were loaded before the output folder was checked")

    monkeypatch.setattr(eval_run.Evaluator, "from_beir", no_scoring)
    argv = ["eval", "--model", str(tmp_path), "--beir", str(tmp_path), "--out", str(blocker / "report")]
    assert main(argv) == 2
    assert str(blocker) in capsys.readouterr().err


def test_serve_exec_needs_the_vllm_engine(tmp_path, capsys):
    from tuner.cli import main

    assert main(["serve", "--exec", str(tmp_path)]) == 2
    assert "--engine vllm" in capsys.readouterr().err


def test_recipe_overrides_after_a_flag_are_overrides(monkeypatch, capsys):
    """`tuner train RECIPE --resume key=value ...` (a flag before the overrides): argparse ends the positional list
    at the flag and called the overrides "unrecognized arguments"; they are overrides wherever they stand."""
    from pathlib import Path

    from tuner.cli import main

    recipe = str(Path(__file__).parents[1] / "recipes" / "tiny-cpu.yaml")
    seen = []

    def fake_train(config, resume):
        seen.append((config.train.max_steps, config.train.lr, config.output.dir, resume))
        return {"metrics": {}, "adapter_dir": "a", "output_dir": "o"}

    monkeypatch.setattr("tuner.train.train", fake_train)
    assert main(["train", recipe, "train.lr=0.1", "--resume", "train.max_steps=7", "output.dir=runs/x"]) == 0
    assert seen == [(7, 0.1, "runs/x", True)]
    assert main(["config", "train.lr=0.1", "--recipe", recipe, "train.max_steps=7"]) == 0
    listed = capsys.readouterr().out
    assert re.search(r"^train\.max_steps +7 ", listed, re.M) and re.search(r"^train\.lr +0\.1 ", listed, re.M)
    # what is not an override is still refused, naming it
    assert main(["train", recipe, "--resume", "--bogus"]) == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.parametrize("verb", ["eval", "instruct", "calibrate"])
def test_scoring_verbs_pass_the_fast_path_options(verb, tmp_path, monkeypatch):
    """`--prefix-reuse`, `--packing` and `--attn-implementation` reach `load_reranker` (off / the checkpoint's by
    default); the run stops there."""
    from tuner import eval_run, instruct
    from tuner.cli import main

    seen = []

    class Loaded(Exception):
        pass

    def fake_load(model, adapter, options):
        seen.append(options)
        raise Loaded

    monkeypatch.setattr(eval_run, "load_reranker", fake_load)
    monkeypatch.setattr(instruct, "load_reranker", fake_load)
    monkeypatch.setattr(eval_run.Evaluator, "from_beir", lambda *a, **k: None)
    monkeypatch.setattr(eval_run, "first_stage_system", lambda *a: type("Row", (), {"label": "first stage"}))
    data = tmp_path / "dev.jsonl"
    data.write_text(json.dumps({"query": "q", "pos": ["a"], "neg": ["b"]}) + "\n")
    beir = ["--beir", str(tmp_path)]
    args = {"eval": beir, "instruct": beir, "calibrate": ["--data", str(data)]}
    base = [verb, "--model", str(tmp_path), *args[verb], "--out", str(tmp_path / "out")]
    fast = ["--prefix-reuse", "auto", "--packing", "--attn-implementation", "flex_attention"]
    for extra, want in (([], (False, False, None)), (fast, ("auto", True, "flex_attention"))):
        with pytest.raises(Loaded):
            main([*base, *extra])
        assert (seen[-1].prefix_reuse, seen[-1].packing, seen[-1].attn_implementation) == want


def test_bad_numbers_and_devices_are_one_line_before_any_model_loads(tiny_model_dir, tmp_path, capsys):
    """Out-of-range numbers fail in argparse naming the flag; an unknown device, or a GPU this machine lacks,
    fails naming --device (they were tracebacks, some after the model had loaded)."""
    from tuner.cli import main

    docs = tmp_path / "docs.txt"
    docs.write_text("a document\n", encoding="utf-8")
    score = ["score", "--model", str(tiny_model_dir), "--query", "q", "--documents", str(docs)]
    for flag, value, message in [
        ("--top-k", "-1", "must be 0 or more"),
        ("--max-length", "-1", "must be a positive integer"),
        ("--top-k", "two", "must be an integer"),
    ]:
        assert main([*score, flag, value]) == 2
        err = capsys.readouterr().err
        assert f"argument {flag}: {message}" in err and err.count("\n") == 1  # no usage block above it
    assert main(["serve", "--model", str(tiny_model_dir), "--port", "99999"]) == 2
    assert "argument --port: must be a port number from 0 to 65535" in capsys.readouterr().err
    # argparse's own usage errors, in a verb's and in a sub-verb's parser, are one line naming what to read
    assert main(["export", str(tmp_path), "--format", "onnx", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tuner export: error: argument --format: invalid choice: 'onnx'" in err
    assert "`tuner export --help`" in err
    assert main(["data", "chek"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tuner data: error:") and "'chek'" in err
    # a mistyped flag is the verb's (and sub-verb's) error, pointing at the help that lists its flags
    assert main([*score, "--bogus", "1"]) == 2
    err = capsys.readouterr().err
    assert err == "tuner score: error: unrecognized arguments: --bogus 1 (`tuner score --help` lists the options)\n"
    assert main(["data", "check", str(docs), "--bogus"]) == 2
    assert capsys.readouterr().err.startswith("tuner data check: error: unrecognized arguments: --bogus (`tuner data")
    assert main([*score, "--device", "bogus"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "device 'bogus': not a device name" in err
    if not torch.cuda.is_available():
        assert main([*score, "--device", "cuda"]) == 2
        assert "device 'cuda': no CUDA GPU here" in capsys.readouterr().err


def test_ctrl_c_and_sigterm_stop_a_verb_cleanly(tmp_path, monkeypatch, capsys):
    """Ctrl-C is one line and exit code 130; SIGTERM unwinds the same way, so an atomic folder being written is
    removed (a killed export used to leave its temporary copy behind), and the previous handler comes back."""
    import os
    import signal

    from tuner.cli import main
    from tuner.cli import models as models_cli
    from tuner.files import atomic_dir

    target = tmp_path / "export"

    def killed_while_writing(args):
        with atomic_dir(target) as tmp:
            (tmp / "model.safetensors").write_bytes(b"x" * 1000)
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("SIGTERM did not stop the verb")

    monkeypatch.setattr(models_cli, "_run_tiny_model", killed_while_writing)
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in a shell, whatever the test runner set
    try:
        assert main(["tiny-model", str(target)]) == 130
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # put back
    finally:
        signal.signal(signal.SIGTERM, before)
    assert "tuner tiny-model: interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary copy

    # a server stopped by SIGTERM (how systemd, Kubernetes and `docker stop` end it; uvicorn shuts down gracefully
    # and re-raises the signal) exits 0: a stopped service, not a failed one
    def stopped_by_the_process_manager(args):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the server")

    monkeypatch.setattr(models_cli, "_run_serve", stopped_by_the_process_manager)
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        assert main(["serve", str(tmp_path)]) == 0
    finally:
        signal.signal(signal.SIGTERM, before)
    assert "tuner serve: stopped (SIGTERM)" in capsys.readouterr().err


def test_tuners_own_warnings_print_as_one_cli_line(tiny_model_dir, tmp_path, capsys):
    """A calibration used off its instruction warns; on the CLI that is a `tuner score: warning:` line as the CLI's
    other warnings are, not Python's `/path/tuner/scoring.py:487: UserWarning:` with a line of tuner's source."""
    import shutil
    import warnings

    from tuner.cli import main

    model = tmp_path / "calibrated"
    shutil.copytree(tiny_model_dir, model)
    fitted = {"temperature": 2.0, "bias": 0.5, "instruction": "Find fruit", "max_length": 8192}
    (model / "tuner.json").write_text(json.dumps({"instruction": "Find fruit", "calibration": fitted}))
    (tmp_path / "docs.txt").write_text("a banana\na wing\n", encoding="utf-8")
    printer = warnings.showwarning
    argv = ["score", "--model", str(model), "--query", "q", "--documents", str(tmp_path / "docs.txt")]
    assert main([*argv, "--instruction", "Find wings", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "tuner score: warning: the calibration in tuner.json was fitted with the instruction 'Find fruit'" in err
    assert "UserWarning" not in err and "scoring.py" not in err
    assert warnings.showwarning is printer  # put back: a notebook or test that called main keeps Python's


def test_score_documents_file_problems_fail_before_the_model_loads(tmp_path, capsys):
    """An empty documents file, a non-string text and a bad byte are one line naming the file (and line); a .txt
    is one document per line even when a line starts with a quote."""
    from tuner.cli import main, read_documents

    def score(path):
        return main(["score", "--model", str(tmp_path / "never-loaded"), "--query", "q", "--documents", str(path)])

    cases = [
        ("empty.txt", b"\n  \n", "empty.txt: no documents"),
        ("num.jsonl", b'"ok"\n{"text": 5}\n', "num.jsonl:2: field 'text' must be a string, got int"),
        ("null.jsonl", b'{"text": null}\n', "null.jsonl:1: field 'text' must be a string, got NoneType"),
        ("latin.txt", b"fine\ncaf\xe9\n", "latin.txt:2: not UTF-8 text"),
        ("cut.jsonl", b'"ok"\n"cut\n', "cut.jsonl:2: invalid JSON (Unterminated string starting at column 1)\n"),
    ]
    for name, content, message in cases:
        (tmp_path / name).write_bytes(content)
        assert score(tmp_path / name) == 2
        assert message in capsys.readouterr().err
    assert score(tmp_path) == 2  # a folder, not "no such file"
    assert "a folder; --documents takes a JSONL or text file" in capsys.readouterr().err
    assert score(tmp_path / "emty.txt") == 2  # a typo: the file beside it of a close name is named
    assert capsys.readouterr().err.endswith(f"emty.txt: no such file; did you mean {tmp_path / 'empty.txt'}?\n")
    assert score(tmp_path) == 2
    assert "a folder; --documents takes a JSONL or text file" in capsys.readouterr().err
    blank = ["score", "--model", str(tmp_path / "never-loaded"), "--query", " ", "--documents", str(tmp_path)]
    assert main(blank) == 2 and "--query is empty" in capsys.readouterr().err
    assert score(tmp_path) == 2
    assert "a folder; --documents takes a JSONL or text file" in capsys.readouterr().err
    quoted = tmp_path / "quoted.txt"
    quoted.write_bytes(b'\xef\xbb\xbf"To be" is a quote\nsecond\n')
    assert read_documents(quoted) == ['"To be" is a quote', "second"]
    # lines end at "\n" (and "\r\n") only: U+2028 (which json.dumps(ensure_ascii=False) writes raw) or a form feed
    # inside a document does not split it
    unicode_breaks = tmp_path / "breaks.jsonl"
    unicode_breaks.write_text(json.dumps("para one\u2028para two", ensure_ascii=False) + "\r\n", encoding="utf-8")
    assert read_documents(unicode_breaks) == ["para one\u2028para two"]
    feed = tmp_path / "feed.txt"
    feed.write_text("page one\x0cpage two\r\nsecond\n", encoding="utf-8", newline="")
    assert read_documents(feed) == ["page one\x0cpage two", "second"]
    # a .json file may hold one JSON array of documents (pretty-printed or not), checked item by item
    array = tmp_path / "docs.json"
    array.write_text('[\n  "first",\n  {"title": "T", "text": "second"},\n  {"document": "third"}\n]\n')
    assert read_documents(array) == ["first", {"title": "T", "text": "second"}, "third"]
    # a title alone is a document, as in the Python API and the server; an object of another schema is not
    array.write_text('[{"title": "Only a title"}]')
    assert read_documents(array) == [{"title": "Only a title"}]
    array.write_text('[{"body": "x"}]')
    assert score(array) == 2
    assert "item 1: a document object needs a 'text' (or 'title') field; got keys 'body'" in capsys.readouterr().err
    array.write_text('["first", {"text": 5}]')
    assert score(array) == 2
    assert "docs.json: item 2: field 'text' must be a string, got int" in capsys.readouterr().err
    array.write_text("[]")
    assert score(array) == 2 and "docs.json: no documents" in capsys.readouterr().err


def test_importing_bitsandbytes_after_tuner_prints_no_cpu_kernel_advice():
    """bitsandbytes' import-time warning about an optional CPU 4-bit kernel (AVX512-BF16 CPUs only) is silenced."""
    pytest.importorskip("bitsandbytes")
    proc = subprocess.run(
        [sys.executable, "-c", "import tuner, bitsandbytes"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "kernels-community" not in proc.stderr + proc.stdout


def test_max_length_help_tells_where_the_default_comes_from():
    # every verb that loads a model reads the prompt budget from the export's tuner.json when there is one: a
    # help that says "default 8192" makes a user pass 8192 to a model trained and exported with 512
    from tuner.cli import build_parser

    verbs = build_parser()._subparsers._group_actions[0].choices
    seen = []
    for name, sub in verbs.items():
        for action in sub._actions:
            if "--max-length" in action.option_strings and name not in ("data",):
                seen.append(name)
                assert "tuner.json" in action.help, f"tuner {name} --max-length: {action.help}"
    assert {"eval", "instruct", "calibrate", "score", "serve"} <= set(seen), seen


def test_output_folders_that_cannot_be_made_and_bad_sizes_name_the_flag(tiny_model_dir, tmp_path, capsys):
    # an existing file where a folder is to be written, a folder that already holds a model, a size that is not
    # one: one line naming the argument, before anything loads (not "[Errno 17] File exists")
    from tuner.cli import main

    afile = tmp_path / "afile"
    afile.write_text("x")
    for argv, message in (
        (["tiny-model", str(afile)], f"OUT_DIR {afile} is a file, not a folder"),
        (["export", str(tmp_path / "run"), "--out", str(afile)], f"--out {afile} is a file, not a folder"),
        (["export", str(tmp_path / "run"), "--out", str(tmp_path / "x"), "--max-shard-size", "lots"],
         "argument --max-shard-size: 'lots' is not a size (an integer of bytes, or with a unit: 5GB, 500MB, 2GiB)"),
        (["tiny-model", str(tiny_model_dir)], f"{tiny_model_dir} already holds files (chat_template"),
    ):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err.splitlines()[-1] and "Errno" not in err and "Traceback" not in err, err
    # --overwrite replaces a folder's model
    again = tmp_path / "again"
    assert main(["tiny-model", str(again), "--layers", "1", "--hidden", "32"]) == 0
    assert main(["tiny-model", str(again), "--layers", "1", "--hidden", "32", "--overwrite"]) == 0


def test_a_model_write_cut_off_leaves_no_folder_that_looks_complete(tmp_path, monkeypatch):
    """save_pretrained writes config.json before the weights: the GPU benchmark's check for an already written 4B
    (config.json present) would have taken a write cut off by its timeout for a model, and failed every load."""
    from transformers import Qwen3ForCausalLM

    from tuner.tiny import write_tiny_model

    def cut_off(self, folder, **kwargs):
        (folder / "config.json").write_text("{}", encoding="utf-8")
        raise KeyboardInterrupt("the timeout's signal, mid-write")

    real_save = Qwen3ForCausalLM.save_pretrained
    monkeypatch.setattr(Qwen3ForCausalLM, "save_pretrained", cut_off)
    with pytest.raises(KeyboardInterrupt):
        write_tiny_model(tmp_path / "model", layers=1, hidden=32)
    assert list((tmp_path / "model").iterdir()) == []  # no config.json, and no temporary folder left
    # written into a folder that holds other files, it keeps them (`tuner tiny-model DIR --overwrite`, or ".")
    monkeypatch.setattr(Qwen3ForCausalLM, "save_pretrained", real_save)
    (tmp_path / "model" / "notes.txt").write_text("mine", encoding="utf-8")
    monkeypatch.chdir(tmp_path / "model")
    write_tiny_model(".", layers=1, hidden=32)
    names = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"notes.txt", "config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(n.startswith(".tuner-write-") for n in names)


def test_a_tiny_model_takes_its_shape_is_shareable_and_gets_its_config_json_last(tmp_path, monkeypatch):
    """write_tiny_model builds the heads it is given, with tied embeddings like the 4B (a head count that does not
    divide the hidden size, or a KV head count that does not divide the heads, is refused), leaves files others can
    read (safetensors writes 0600), moves config.json into place after every other file, and gives the tokenizer
    tuner's chat template when asked (the GPU benchmarks' models)."""
    import os
    import stat

    from tuner import tiny
    from tuner.chat_template import build_chat_template

    with pytest.raises(ValueError, match=r"hidden \(64\) must be divisible by heads \(6\)"):
        tiny.tiny_config(hidden=64, heads=6)
    with pytest.raises(ValueError, match=r"heads \(4\) must be divisible by kv_heads \(3\)"):
        tiny.tiny_config(heads=4, kv_heads=3)
    assert tiny.tiny_config().tie_word_embeddings  # as the 4B's lm_head is: the paths export takes for it
    moved = []
    replace = os.replace
    monkeypatch.setattr(tiny.os, "replace", lambda src, dst: moved.append(os.path.basename(dst)) or replace(src, dst))
    saved = os.umask(0o022)
    try:
        out = tiny.write_tiny_model(tmp_path / "model", layers=1, hidden=32, heads=2, kv_heads=1, chat_template=True)
    finally:
        os.umask(saved)
    config = json.loads((out / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (2, 1, 16)
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o644
    assert moved[-1] == "config.json" and {"model.safetensors", "tokenizer.json"} <= set(moved)
    assert (out / "chat_template.jinja").read_text() == build_chat_template(None)  # as a merged export has it


def test_eval_instruct_and_calibrate_pass_every_option_on(tmp_path, monkeypatch):
    """Each flag of `tuner eval`, `instruct` and `calibrate` reaches its `run_*` function (a flag parsed but not
    passed on is silently ignored), and the defaults are the documented ones."""
    from pathlib import Path

    from tuner import calibrate, eval_run, instruct, overlap
    from tuner.cli import main
    from tuner.eval_run import ModelOptions

    class Stop(Exception):
        pass

    seen = {}

    def fake(name):
        def run(*args, **kwargs):
            seen[name] = (args, kwargs)
            raise Stop

        return run

    monkeypatch.setattr(eval_run, "run_eval", fake("eval"))
    monkeypatch.setattr(instruct, "run_instruct", fake("instruct"))
    monkeypatch.setattr(calibrate, "run_calibrate", fake("calibrate"))
    monkeypatch.setattr(instruct, "apply_targets", lambda path: [path])
    monkeypatch.setattr(overlap, "training_view", lambda source, split=None: ("view", source, split))
    model = ["--model", "m", "--adapter", "a", "--max-length", "256", "--batch-tokens", "1234", "--device", "cpu"]
    model += ["--dtype", "float32", "--prefix-reuse", "on", "--packing", "--attn-implementation", "eager"]
    options = ModelOptions("cpu", "float32", 256, 1234, prefix_reuse=True, packing=True, attn_implementation="eager")
    source = ["--beir", "b", "--split", "dev", "--top-k", "7", "--max-queries", "3", "--seed", "5"]
    source += ["--cache-dir", "cdir", "--no-progress", "--metrics", "recall@20", "ndcg@5"]
    out = str(tmp_path / "o")
    rerank = {"split": "dev", "data": None, "candidates": "bm25", "top_k": 7, "max_queries": 3, "seed": 5}
    rerank |= {"metrics": ["recall@20", "ndcg@5"]}
    rerank |= {"adapter": "a", "options": options, "cache_dir": "cdir", "show_progress": False}

    argv = ["eval", *model, *source, "--out", out, "--instruction", "Find X", "--compare", "c1", "c2"]
    with pytest.raises(Stop):
        main([*argv, "--train-data", "t.jsonl", "--train-split", "tr", "--base-cache", "bc"])
    args, kwargs = seen.pop("eval")
    assert args == ("m", "b", Path(out))
    assert kwargs == {"instructions": ["Find X"], "compare": ["c1", "c2"], "train_data": ("view", "t.jsonl", "tr"),
                      "train_split": "tr", "base_cache_dir": "bc", **rerank}  # fmt: skip
    with pytest.raises(Stop):
        main(["eval", "--model", "m", "--beir", "b", "--out", out, "--train-data", "none"])
    kwargs = seen.pop("eval")[1]
    assert (kwargs["split"], kwargs["top_k"], kwargs["seed"], kwargs["max_queries"]) == ("test", 100, 0, None)
    assert (kwargs["instructions"], kwargs["cache_dir"], kwargs["show_progress"]) == ([None], "runs/cache", None)
    assert kwargs["options"] == ModelOptions() and kwargs["train_data"] is None and kwargs["base_cache_dir"] is None
    assert kwargs["metrics"] is None  # the evaluator's default metrics

    candidates = tmp_path / "cands.txt"
    candidates.write_text("Find claims\n", encoding="utf-8")
    argv = ["instruct", *model, *source, "--out", out, "--instructions", str(candidates), "--apply", "exp"]
    with pytest.raises(Stop):
        main([*argv, "--force"])
    args, kwargs = seen.pop("instruct")
    assert args == ("m", "b", Path(out))
    assert kwargs == {"instructions": ["Find claims"], "apply": "exp", "force": True, **rerank}
    with pytest.raises(Stop):
        main(["instruct", "--model", "m", "--beir", "b", "--out", out])
    kwargs = seen.pop("instruct")[1]
    assert (kwargs["top_k"], kwargs["force"], kwargs["apply"], kwargs["instructions"]) == (50, False, None, [])

    argv = ["calibrate", *model, "--data", "d.jsonl", "--split", "dev", "--out", out, "--apply", "exp", "--seed", "4"]
    with pytest.raises(Stop):
        main([*argv, "--force"])
    args, kwargs = seen.pop("calibrate")
    assert args == ("m", "d.jsonl", out)
    assert kwargs == {"split": "dev", "apply": "exp", "seed": 4, "force": True, "adapter": "a", "options": options}
    with pytest.raises(Stop):
        main(["calibrate", "--model", "m", "--data", "d.jsonl", "--out", out])
    kwargs = seen.pop("calibrate")[1]
    assert (kwargs["split"], kwargs["seed"], kwargs["force"], kwargs["apply"]) == (None, 0, False, None)


def test_score_and_serve_pass_every_option_on(tmp_path, monkeypatch, capsys):
    """Each flag of `tuner score` and `tuner serve` (tuner engine) reaches the Reranker or the server."""
    from tuner import scoring, serve
    from tuner.cli import main

    seen = {}

    class FakeReranker:
        def rank(self, query, documents, top_k=None, instruction=None, normalize=True):
            seen["rank"] = (query, documents, top_k, instruction, normalize)
            return []

    def from_pretrained(path, **kwargs):
        seen["load"] = (path, kwargs)
        return FakeReranker()

    monkeypatch.setattr(scoring.Reranker, "from_pretrained", staticmethod(from_pretrained))
    docs = tmp_path / "docs.txt"
    docs.write_text("one\ntwo\n", encoding="utf-8")
    argv = ["score", "--model", "m", "--adapter", "a", "--query", "q", "--documents", str(docs), "--top-k", "1"]
    argv += ["--instruction", "Find X", "--max-length", "300", "--no-calibration", "--device", "cpu"]
    argv += ["--dtype", "float32", "--prefix-reuse", "auto", "--packing", "--attn-implementation", "eager"]
    assert main(argv) == 0
    fast = {"prefix_reuse": "auto", "packing": True, "attn_implementation": "eager"}
    assert seen["load"] == ("m", {"adapter": "a", "device": "cpu", "dtype": "float32", "max_length": 300,
                                  "calibrated": False, **fast})  # fmt: skip
    assert seen["rank"] == ("q", ["one", "two"], 1, "Find X", True)
    assert main(["score", "--model", "m", "--query", "q", "--documents", str(docs), "--raw"]) == 0
    assert seen["rank"][4] is False  # --raw: the yes−no logits
    assert main(["score", "--model", "m", "--query", "q", "--documents", str(docs)]) == 0
    off = {"prefix_reuse": False, "packing": False, "attn_implementation": None}
    assert seen["load"][1] == {"adapter": None, "device": None, "dtype": None, "max_length": None,
                               "calibrated": True, **off}  # fmt: skip
    assert seen["rank"] == ("q", ["one", "two"], None, None, True)

    monkeypatch.setattr(serve, "serve", lambda model, **kwargs: seen.update(serve=(model, kwargs)))
    monkeypatch.setenv("TUNER_TEST_KEY", " secret\n")
    argv = ["serve", "m", "--host", "0.0.0.0", "--port", "8123", "--api-key-env", "TUNER_TEST_KEY"]
    argv += ["--model-name", "mine", "--max-documents", "10", "--max-batch-tokens", "2048"]
    argv += ["--max-queued-documents", "64", "--max-request-mb", "0.5", "--max-length", "300", "--no-calibration"]
    argv += ["--compile", "--device", "cpu", "--dtype", "float32", "--graceful-timeout", "5", "--packing"]
    assert main(argv) == 0
    assert seen["serve"] == ("m", {"host": "0.0.0.0", "port": 8123, "api_key": "secret", "model_name": "mine",
                                   "max_documents": 10, "max_batch_tokens": 2048, "max_queued_documents": 64,
                                   "max_request_bytes": 2**19, "max_length": 300, "graceful_timeout": 5.0,
                                   "calibrated": False, "compile": True, "device": "cpu", "dtype": "float32",
                                   "prefix_reuse": False, "packing": True, "attn_implementation": None})  # fmt: skip
    assert main(["serve", "m"]) == 0
    assert seen["serve"] == ("m", {"host": "127.0.0.1", "port": 8000, "api_key": None, "model_name": None,
                                   "max_documents": 1000, "max_batch_tokens": None, "max_queued_documents": 8192,
                                   "max_request_bytes": 32 * 2**20, "max_length": None, "graceful_timeout": 25.0,
                                   "calibrated": True, "compile": False, "device": None, "dtype": None,
                                   **off})  # fmt: skip
    # a blank key would serve without authentication: refused by name, the server never starts
    seen.pop("serve")
    monkeypatch.setenv("TUNER_TEST_KEY", " \n")
    assert main(["serve", "m", "--api-key-env", "TUNER_TEST_KEY"]) == 2
    assert "--api-key-env TUNER_TEST_KEY: the environment variable is unset, empty or blank" in capsys.readouterr().err
    assert "serve" not in seen


def test_number_types_refuse_just_past_their_bounds_and_take_the_bounds():
    """The argparse types at their edges: positive ints from 1, positive finite floats, counts from 0, ports
    0-65535 (`--max-request-mb 0` would refuse every request; `--graceful-timeout inf` never stops)."""
    import argparse

    from tuner.cli.common import non_negative_int, port_number, positive_float, positive_int

    cases = [(positive_int, "1", "0"), (positive_float, "1e-9", "0"), (positive_float, "1e300", "inf"),
             (non_negative_int, "0", "-1"), (port_number, "65535", "65536"), (port_number, "0", "-1")]  # fmt: skip
    for parse, good, bad in cases:
        assert parse(good) == float(good), (parse.__name__, good)
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)


def test_config_with_overrides_alone_lists_the_defaults_with_them(capsys):
    """`tuner config train.lr=0.1` (no recipe): the override applies to the defaults; it is not read as a recipe
    path. `tuner config RECIPE` (as in `tuner train RECIPE`) still takes the recipe."""
    from pathlib import Path

    from tuner.cli import main

    assert main(["config", "train.lr=0.1", "train.max_steps=7"]) == 0
    listed = capsys.readouterr().out
    assert re.search(r"^train\.lr +0\.1 ", listed, re.M) and re.search(r"^train\.max_steps +7 ", listed, re.M)
    recipe = str(Path(__file__).parents[1] / "recipes" / "tiny-cpu.yaml")
    assert main(["config", recipe, "train.max_steps=7"]) == 0
    assert re.search(r"^train\.max_steps +7 ", capsys.readouterr().out, re.M)


def test_version_prints_tuner_and_its_libraries_on_one_line(capsys, monkeypatch):
    """`tuner --version`, for a bug report: tuner's version and the installed torch / transformers / peft / trl /
    bitsandbytes, on one line however narrow the terminal; a library that is not installed is said so."""
    from importlib import metadata

    import tuner
    from tuner.cli import main

    monkeypatch.setenv("COLUMNS", "40")
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(f"tuner {tuner.__version__} (torch {metadata.version('torch')}, ")
    assert f"transformers {metadata.version('transformers')}, peft {metadata.version('peft')}" in out
    assert f", sentence-transformers {metadata.version('sentence-transformers')}, bitsandbytes " in out
    real = metadata.version

    def version(name):
        if name == "bitsandbytes":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "version", version)
    assert main(["--version"]) == 0
    assert "bitsandbytes not installed; Python " in capsys.readouterr().out


def test_export_merge_and_tiny_model_pass_every_option_on(tmp_path, monkeypatch, capsys):
    """Each flag of `tuner export`, `tuner merge` and `tuner tiny-model` reaches the function that does the work,
    with the documented defaults; a failed parity gate is exit 3."""
    from tuner import export, merge, tiny
    from tuner.cli import main

    seen = {}

    def fake_export(source, out, **kwargs):
        seen["export"] = (source, out, kwargs)
        if kwargs["base_model"] == "broken":
            raise export.ParityError("gate failed")
        return {"formats": {"merged": {"max_abs_logit_delta": 0.0, "passed": True}}}

    monkeypatch.setattr(export, "export", fake_export)
    out = str(tmp_path / "exp")
    argv = ["export", "run", "--out", out, "--format", "merged", "--dtype", "bfloat16", "--device", "cpu"]
    assert main([*argv, "--base", "b", "--max-shard-size", "1000", "--overwrite"]) == 0
    assert seen["export"] == ("run", out, {"formats": ["merged"], "dtype": "bfloat16", "device": "cpu",
                                           "base_model": "b", "max_shard_size": 1000, "overwrite": True})  # fmt: skip
    assert main(["export", "run", "--out", out]) == 0
    assert seen["export"] == ("run", out, {"formats": ["adapter", "merged", "seq-cls"], "dtype": "float32",
                                           "device": None, "base_model": None, "max_shard_size": 5 * 10**9,
                                           "overwrite": False})  # fmt: skip
    assert main(["export", "run", "--out", out, "--max-shard-size", "2GiB"]) == 0
    assert seen["export"][2]["max_shard_size"] == 2 * 2**30
    assert main(["export", "run", "--out", out, "--max-shard-size", "0"]) == 2  # no shard holds anything
    assert "argument --max-shard-size: '0' is not a size" in capsys.readouterr().err
    assert main(["export", "run", "--out", out, "--base", "broken"]) == 3
    assert "tuner export: gate failed" in capsys.readouterr().err

    def fake_merge(sources, out, weights=None, **kwargs):
        seen["merge"] = (sources, out, weights, kwargs)
        return {"sources": sources, "weights": weights or [0.5, 0.5], "rank": 8, "layers": 2,
                "max_rel_diff_vs_weighted_sum": 0.0}  # fmt: skip

    monkeypatch.setattr(merge, "merge_adapters", fake_merge)
    argv = ["merge", "a", "b", "--out", out, "--weights", "0.25", "0.75", "--base", "B", "--overwrite"]
    assert main(argv) == 0
    assert seen["merge"] == (["a", "b"], out, [0.25, 0.75], {"base_model": "B", "overwrite": True})
    assert main(["merge", "a", "b", "--out", out]) == 0
    assert seen["merge"] == (["a", "b"], out, None, {"base_model": None, "overwrite": False})

    monkeypatch.setattr(tiny, "write_tiny_model", lambda *args: seen.update(tiny=args) or args[0])
    argv = ["tiny-model", str(tmp_path / "t"), "--layers", "3", "--hidden", "48", "--heads", "6", "--kv-heads", "3"]
    assert main([*argv, "--seed", "7"]) == 0
    assert seen["tiny"] == (str(tmp_path / "t"), 3, 48, 7, 6, 3)
    assert main(["tiny-model", str(tmp_path / "t2")]) == 0
    assert seen["tiny"] == (str(tmp_path / "t2"), 2, 64, 0, 4, 2)
