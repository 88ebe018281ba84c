"""Atomic writes (tuner.files): whole files or none, and the permissions a plain open()/mkdir() would give."""

from __future__ import annotations

import os
import stat

import pytest

from tuner.files import atomic_dir, atomic_open, atomic_write, default_mode


@pytest.fixture
def umask():
    """Set a umask for one test, then restore the previous one."""
    saved = os.umask(0o022)
    os.umask(saved)

    def use(mask: int) -> None:
        os.umask(mask)

    yield use
    os.umask(saved)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_and_folders_get_the_umask_mode_not_tempfiles_private_one(tmp_path, umask, mask):
    umask(mask)
    assert default_mode() == 0o666 & ~mask and default_mode(directory=True) == 0o777 & ~mask
    out = atomic_write(tmp_path / "a" / "metrics.json", '{"x": 1}\n')
    assert out.read_text() == '{"x": 1}\n' and _mode(out) == 0o666 & ~mask
    with atomic_dir(tmp_path / "index") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "f.bin").write_bytes(b"1")
    assert _mode(tmp_path / "index") == 0o777 & ~mask
    assert _mode(tmp_path / "index" / "sub") == 0o777 & ~mask
    assert _mode(tmp_path / "index" / "sub" / "f.bin") == 0o666 & ~mask


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "groups.jsonl"
    atomic_write(path, "old\n")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write("half of the new")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["groups.jsonl"]
    with pytest.raises(ValueError), atomic_open(path, "a"):
        pass


def test_atomic_dir_replaces_a_folder_whole_or_not_at_all(tmp_path):
    target = tmp_path / "cache"
    with atomic_dir(target) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "v").write_text("2")
        raise RuntimeError("interrupted")
    assert (target / "v").read_text() == "1"
    with atomic_dir(target) as tmp:
        (tmp / "w").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["w"]  # the old folder is gone, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_atomic_dir_removes_what_a_killed_writer_of_the_same_folder_left(tmp_path):
    # a SIGKILL (OOM killer, a lost session) runs no cleanup: an export's temporary folder, an almost complete copy
    # of the model, stayed hidden beside --out after every such stop, and the next export did not look at it
    import subprocess
    import sys

    from tuner.files import _owner_tag

    target = tmp_path / "export"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)
    host = _owner_tag().rsplit("-", 1)[0]
    left = tmp_path / f".export.{host}-{dead}.abcd1234.tmp"
    (left / "merged").mkdir(parents=True)
    (left / "merged" / "model.safetensors").write_bytes(b"0" * 100)
    running = tmp_path / f".export.{host}-{os.getpid()}.efgh5678.tmp"  # a live writer's (here: this process)
    other_host = tmp_path / f".export.{host}x-{dead}.ijkl9012.tmp"
    running.mkdir()
    other_host.mkdir()
    removed = f"removed {left}, left by an earlier run writing {target} that was killed"
    with pytest.warns(UserWarning, match=removed), atomic_dir(target) as tmp:
        assert tmp.name.startswith(f".export.{_owner_tag()}.")
        (tmp / "v").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["export", running.name, other_host.name])


def test_run_outputs_are_shareable(tmp_path, umask):
    """What the helper found: groups files, reports and configs were 0600 whatever the umask."""
    from tuner.config import atomic_write_json
    from tuner.data.groups import write_groups
    from tuner.data.schema import Group
    from tuner.instruct import apply_meta

    umask(0o022)
    paths = [
        write_groups([Group(query="q", pos=["a"], neg=["b"])], tmp_path / "g.jsonl"),
    ]
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "config.json").write_text("{}")
    paths += apply_meta(tmp_path / "export", {"instruction": "x"})
    atomic_write_json(tmp_path / "tuner.json", {"a": 1})
    for path in [*paths, tmp_path / "tuner.json"]:
        assert _mode(path) == 0o644, path


def test_a_symlink_in_a_written_folder_leaves_its_target_alone(tmp_path, umask):
    """usual_modes gives the folder's own files the usual mode; a link (e.g. into a shared cache) is not followed."""
    umask(0o022)
    private = tmp_path / "private.bin"
    private.write_bytes(b"secret")
    private.chmod(0o600)
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "link.bin").symlink_to(private)
        (tmp / "own.bin").write_bytes(b"1")
    assert _mode(private) == 0o600
    assert _mode(tmp_path / "out" / "own.bin") == 0o644


def test_weights_written_by_libraries_get_the_umask_mode(tiny_model_dir):
    # safetensors writes its files 0600 (a private tempfile renamed into place): a model folder others on the
    # machine (a serving user, a shared cache) cannot read. The tiny model here; the training adapter and
    # checkpoints in test_train_resume.
    assert {p.name: _mode(p) for p in tiny_model_dir.iterdir()} == {
        p.name: default_mode(p.is_dir()) for p in tiny_model_dir.iterdir()
    }


def test_did_you_mean_compares_names_without_their_suffixes(tmp_path):
    from tuner.files import similar_names

    for name in ("dev.jsonl", "train.jsonl", "corpus.jsonl.gz", "queries.jsonl"):
        (tmp_path / name).write_text("")
    assert similar_names(tmp_path / "nope.jsonl") == []  # ".jsonl" in common is no likeness
    assert similar_names(tmp_path / "dve.jsonl") == [tmp_path / "dev.jsonl"]
    assert similar_names(tmp_path / "trian") == [tmp_path / "train.jsonl"]
    assert similar_names(tmp_path / "train.jsnol") == [tmp_path / "train.jsonl"]
    assert similar_names(tmp_path / "corpus.jsonl") == [tmp_path / "corpus.jsonl.gz"]


def test_did_you_mean_leaves_out_hidden_entries_and_offers_at_most_n(tmp_path):
    from tuner.files import similar_names

    for name in (".train.jsonl", "train1.jsonl", "train2.jsonl", "train3.jsonl", "train4.jsonl"):
        (tmp_path / name).write_text("")
    assert similar_names(tmp_path / ".train.jsnol") == []  # much like ".train.jsonl", but that one is hidden
    assert len(similar_names(tmp_path / "train.jsonl")) == 3
    assert len(similar_names(tmp_path / "train.jsonl", n=2)) == 2


def test_did_you_mean_cutoff_is_a_stem_ratio_of_0_6(tmp_path):
    from tuner.files import similar_names

    (tmp_path / "abcde.jsonl").write_text("")  # "abcxy" against "abcde": ratio 0.6, offered
    (tmp_path / "wxyz.jsonl").write_text("")  # "wxab" against "wxyz": ratio 0.5, not
    assert similar_names(tmp_path / "abcxy.jsonl") == [tmp_path / "abcde.jsonl"]
    assert similar_names(tmp_path / "wxab.jsonl") == []


@pytest.mark.parametrize(
    ("doc", "place"),
    [
        ('{"a": 1\n"b": 2}', (1, 8)),  # a comma missing at the end of line 1: there, not at line 2 column 1
        ("[1,\n  2\n  3]", (2, 4)),
        ('{\n"a": 1,\n', (2, 8)),  # truncated: after the last character
        ("[1,\n  x]", (2, 3)),  # a bad token stays where it is
        ('{"a" 1}', (1, 6)),
    ],
)
def test_json_errors_are_placed_where_the_text_is_short(doc, place):
    import json

    from tuner.files import json_error_place

    with pytest.raises(json.JSONDecodeError) as err:
        json.loads(doc)
    assert json_error_place(doc, err.value) == place


def test_a_failed_rename_names_the_file_written_not_the_temporary(tmp_path):
    target = tmp_path / "report.png"
    target.mkdir()
    with pytest.raises(IsADirectoryError) as info:
        atomic_write(target, b"png")
    assert info.value.filename == str(target) and ".tmp" not in str(info.value)
    assert [p.name for p in tmp_path.iterdir()] == ["report.png"]  # no temporary left
