"""Output paths that cannot be written: one line naming the flag (or recipe key) and the folder at fault, exit code 2,
before any model loads or any scoring starts; and a failed run leaves no empty output folder behind."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from tuner.files import make_output_dir, removed_if_failed

ROOT = Path(__file__).resolve().parents[1]
VERBS = ("eval", "instruct", "calibrate")


class Loaded(Exception):
    """What the stubbed model loader raises: the run reached the model."""


@pytest.fixture
def no_model(monkeypatch):
    """Model loading and the evaluator's build raise `Loaded`: a check that comes later fails the test."""
    from tuner import eval_run, instruct

    def fake(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(eval_run, "load_reranker", fake)
    monkeypatch.setattr(instruct, "load_reranker", fake)
    monkeypatch.setattr(eval_run.Evaluator, "from_beir", fake)
    monkeypatch.setattr(eval_run.Evaluator, "from_groups", fake)


def _deny_mkdir(monkeypatch, under: Path) -> None:
    """`Path.mkdir` of a folder under `under` raises PermissionError, as in a read-only parent for a user who is
    not root (the tests may run as root, whom mode bits do not stop)."""
    real = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if Path(self).absolute().is_relative_to(under):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)


def _args(verb: str, tmp_path: Path, out: Path) -> list[str]:
    data = tmp_path / "dev.jsonl"
    data.write_text(json.dumps({"query": "q", "pos": ["a"], "neg": ["b"]}) + "\n", encoding="utf-8")
    source = ["--data", str(data)] if verb == "calibrate" else ["--beir", str(tmp_path)]
    return [verb, "--model", str(tmp_path), *source, "--out", str(out)]


@pytest.mark.parametrize("verb", VERBS)
def test_an_out_that_cannot_be_a_folder_is_named_before_any_model_loads(verb, tmp_path, capsys, no_model, monkeypatch):
    from tuner.cli import main

    existing = tmp_path / "existing.txt"
    existing.write_text("x\n", encoding="utf-8")
    cases = [
        (existing, f"--out {existing} is a file, not a folder"),
        (existing / "ev", f"--out {existing / 'ev'}: {existing} is a file, not a folder"),
    ]
    for out, message in cases:
        assert main(_args(verb, tmp_path, out)) == 2
        err = capsys.readouterr().err
        assert f"tuner {verb}: error: {message}" in err and "Errno" not in err
    locked = tmp_path / "locked"
    locked.mkdir()
    _deny_mkdir(monkeypatch, locked)
    assert main(_args(verb, tmp_path, locked / "ev")) == 2
    err = capsys.readouterr().err
    assert f"--out {locked / 'ev'}: no permission to write in {locked}" in err and "Errno" not in err


def test_make_output_dir_names_the_flag_for_what_the_checks_cannot_see(tmp_path, monkeypatch):
    """An OS error of the creation itself (a read-only mount, a full disk) is one line naming the flag too."""
    for code, reason in ((errno.EROFS, "is on a read-only file system"), (errno.ENOSPC, "no space left on device")):

        def mkdir(self, *args, _code=code, **kwargs):
            raise OSError(_code, {errno.EROFS: "Read-only file system"}.get(_code, "No space left on device"))

        monkeypatch.setattr(Path, "mkdir", mkdir)
        with pytest.raises(ValueError) as info:
            make_output_dir(tmp_path / "a" / "b", "--x")
        assert str(info.value).startswith(f"--x {tmp_path / 'a' / 'b'}: ") and reason in str(info.value)


def test_train_names_output_dir_when_it_cannot_be_a_folder(tmp_path, monkeypatch):
    from tuner.config import ConfigError, load_config
    from tuner.train_setup import output_dir_for

    existing = tmp_path / "existing.txt"
    existing.write_text("x\n", encoding="utf-8")
    recipe = ROOT / "recipes" / "tiny-cpu.yaml"
    for out, message in [
        (existing, f"output.dir {existing} is a file, not a folder"),
        (existing / "run", f"output.dir {existing / 'run'}: {existing} is a file, not a folder"),
    ]:
        with pytest.raises(ConfigError) as info:
            output_dir_for(load_config(recipe, [f"output.dir={out}"]))
        assert str(info.value) == message
    locked = tmp_path / "locked"
    locked.mkdir()
    _deny_mkdir(monkeypatch, locked)
    with pytest.raises(ConfigError) as info:
        output_dir_for(load_config(recipe, [f"output.dir={locked / 'run'}"]))
    assert str(info.value) == f"output.dir {locked / 'run'}: no permission to write in {locked}"
    assert output_dir_for(load_config(recipe, [f"output.dir={existing / 'run'}"]), create=False)  # not checked


def test_tuner_train_exits_2_naming_output_dir(tmp_path, capsys, monkeypatch):
    """Before the data is read or the model loads (both stubbed to fail the test)."""
    from tuner import modeling, train_setup
    from tuner.cli import main

    def fake(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(modeling, "load_base", fake)
    monkeypatch.setattr(train_setup, "load_training_groups", fake)
    existing = tmp_path / "existing.txt"
    existing.write_text("x\n", encoding="utf-8")
    out = existing / "run"
    assert main(["train", str(ROOT / "recipes" / "tiny-cpu.yaml"), f"output.dir={out}"]) == 2
    assert f"tuner train: error: output.dir {out}: {existing} is a file, not a folder" in capsys.readouterr().err


def test_a_run_that_fails_on_its_inputs_leaves_no_empty_out_folder(tmp_path, capsys):
    """`tuner eval` makes --out first (so that an unwritable one fails in seconds): a bad --data row or --candidates
    file found after it removes the folders it made, which are empty; a folder that was there before stays."""
    from mini_beir import write_beir

    from tuner.cli import main

    bad_row = tmp_path / "bad.jsonl"
    bad_row.write_text(json.dumps({"query": "q", "pos": "a", "neg": ["b"]}) + "\n", encoding="utf-8")
    beir = write_beir(tmp_path / "beir")
    bad_run = tmp_path / "other.run"
    bad_run.write_text("nope Q0 d1 1 5.0 x\n", encoding="utf-8")
    model = str(ROOT / "models" / "tiny-reranker")
    sources = [
        (["--data", str(bad_row)], f"{bad_row}:1: field 'pos'"),
        (["--beir", str(beir), "--candidates", str(bad_run)], f"{bad_run}: none of the"),
    ]
    for source, message in sources:
        out = tmp_path / "new" / "ev"
        assert main(["eval", "--model", model, *source, "--out", str(out), "--no-progress"]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "new").exists()  # both folders it made are gone
        before = tmp_path / "before"
        before.mkdir(exist_ok=True)
        assert main(["eval", "--model", model, *source, "--out", str(before / "ev"), "--no-progress"]) == 2
        assert message in capsys.readouterr().err
        assert before.is_dir() and not (before / "ev").exists()
        assert main(["eval", "--model", model, *source, "--out", str(before), "--no-progress"]) == 2
        assert before.is_dir()  # empty, but not this call's


def test_removed_if_failed_removes_only_the_empty_folders_it_saw_made(tmp_path):
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(RuntimeError), removed_if_failed(kept / "a" / "b") as out:
        out.mkdir(parents=True)
        raise RuntimeError
    assert kept.is_dir() and not (kept / "a").exists()
    with pytest.raises(RuntimeError), removed_if_failed(kept / "a" / "b") as out:
        out.mkdir(parents=True)
        (out / "partial.json").write_text("{}")
        raise RuntimeError
    assert (kept / "a" / "b" / "partial.json").is_file()  # something was written: nothing is removed
    with removed_if_failed(tmp_path / "ok") as out:  # success: the folder stays
        out.mkdir()
    assert (tmp_path / "ok").is_dir()


def test_removed_if_failed_cleans_up_after_an_interrupt_too(tmp_path):
    """Ctrl-C (KeyboardInterrupt, not an Exception) during a command leaves no empty folder behind either."""
    with pytest.raises(KeyboardInterrupt), removed_if_failed(tmp_path / "a" / "b") as out:
        make_output_dir(out, "--out")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def _results():
    from tuner.evaluate import EvalResult

    def result(label, values):
        per_query = {q: {"ndcg@10": v} for q, v in values.items()}
        mean = sum(values.values()) / len(values)
        return EvalResult(label, {"ndcg@10": mean}, per_query, {q: [("d1", 1.0)] for q in values}, pairs=len(values))

    return [result("first stage", {"a": 0.3, "b": 0.3}), result("base", {"a": 0.2, "b": 0.4})]


def _report_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_report_that_cannot_be_written_whole_replaces_nothing_and_names_the_final_path(tmp_path, monkeypatch):
    """write_report writes every file to a temporary first: a late failure (report.png) leaves the previous report
    as it was, no temporary behind, and one line naming the flag and the file (not the temporary)."""
    from tuner import report

    out = tmp_path / "out"
    report.write_report(out, _results(), 1, ["ndcg@10"], "ndcg@10", {"created": "before"})
    before = _report_files(out)
    assert set(before) >= {"metrics.json", "per_query.jsonl", "report.md", "report.png"}

    (out / "report.png").unlink()
    (out / "report.png").mkdir()  # a folder where the report writes a file: found before anything is replaced
    before = _report_files(out)
    with pytest.raises(ValueError) as info:
        report.write_report(out, _results(), 1, ["ndcg@10"], "ndcg@10", {"created": "after"})
    assert str(info.value) == f"--out {out}: {out / 'report.png'} is a folder, where the report writes its report.png"
    assert _report_files(out) == before
    (out / "report.png").rmdir()

    def full_disk(summary, per_query, path):
        Path(path).write_bytes(b"half a png")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(report, "plot_deltas", full_disk)
    before = _report_files(out)
    with pytest.raises(ValueError) as info:
        report.write_report(out, _results(), 1, ["ndcg@10"], "ndcg@10", {"created": "after"})
    assert str(info.value) == (
        f"--out {out}: could not write {out / 'report.png'} (No space left on device); no file of the report was "
        "replaced"
    )
    assert _report_files(out) == before  # metrics.json says "before" still; no temporary left


@pytest.mark.parametrize("verb", ["eval", "instruct"])
def test_a_folder_in_the_way_of_the_report_is_found_before_any_model_loads(verb, tmp_path, capsys, no_model):
    from tuner.cli import main

    out = tmp_path / "out"
    (out / "report.png").mkdir(parents=True)
    assert main([verb, "--model", str(tmp_path), "--beir", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"tuner {verb}: error: --out {out}: {out / 'report.png'} is a folder, where the report writes" in err
    assert (out / "report.png").is_dir()
