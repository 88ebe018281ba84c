"""Resume equivalence, QLoRA on CPU, per-epoch negative resampling, and offline wandb tracking."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import time

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import tiny_config, write_beir
from transformers import TrainerCallback

from tuner.config import ConfigError
from tuner.data.schema import Group
from tuner.files import default_mode
from tuner.train import train
from tuner.train_data import EpochSampler, sample_group
from tuner.train_setup import RankEval


@pytest.fixture(scope="module")
def beir(tmp_path_factory):
    return write_beir(tmp_path_factory.mktemp("beir") / "topics")


class _Crash(RuntimeError):
    pass


class _CrashAfterSave(TrainerCallback):
    """Simulates an interrupted run: dies right after the checkpoint at `step` is written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise _Crash(f"interrupted after step {self.step}")


def _as_a_new_process() -> None:
    """Remove the log handlers an earlier `train` call in this process left on the "tuner" logger, as a new
    `tuner train --resume` process starts without them."""
    logger = logging.getLogger("tuner")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def test_resumed_run_ends_with_the_same_weights(tiny_model_dir, beir, tmp_path):
    # 6 train groups, 2 per step: 3 steps per epoch, so the interruption at step 4 falls inside epoch 1,
    # where negatives and order differ from epoch 0. Dropout is on: its RNG state must be restored too.
    common = ("train.max_steps=8", "train.save_steps=4", "lora.dropout=0.1", "train.scheduler=cosine", "train.warmup=2")
    full = train(tiny_config(tiny_model_dir, beir, tmp_path / "full", *common))
    with pytest.raises(_Crash):
        train(tiny_config(tiny_model_dir, beir, tmp_path / "cut", *common), callbacks=[_CrashAfterSave(4)])
    assert not (tmp_path / "cut" / "adapter").exists()
    # the log ends with why the run stopped and the checkpoint --resume continues from
    log_text = (tmp_path / "cut" / "logs" / "train.log").read_text()
    assert "ERROR run failed: _Crash: interrupted after step 4" in log_text
    assert "last checkpoint: " + str(tmp_path / "cut" / "checkpoints" / "checkpoint-4") in log_text
    # a later save that was cut off (a folder without trainer_state.json) is skipped, not fatal
    (tmp_path / "cut" / "checkpoints" / "checkpoint-6").mkdir()
    (tmp_path / "cut" / "checkpoints" / "checkpoint-6" / "adapter_model.safetensors").write_bytes(b"partial")
    _as_a_new_process()
    resumed = train(
        tiny_config(tiny_model_dir, beir, tmp_path / "cut", *common, "tracking.run_name=again"), resume=True
    )
    log_text = (tmp_path / "cut" / "logs" / "train.log").read_text()
    assert "checkpoint-6 is incomplete" in log_text
    assert "--resume: continuing from " + str(tmp_path / "cut" / "checkpoints" / "checkpoint-4") in log_text
    assert "run_name: again" in (tmp_path / "cut" / "config.yaml").read_text()  # a harmless key, saved once checked
    a = load_file(full["adapter_dir"] / "adapter_model.safetensors")
    b = load_file(resumed["adapter_dir"] / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)
    # and the run did move away from its initial adapter (the comparison is not between two untrained ones)
    assert any(t.abs().sum() > 0 for n, t in a.items() if "lora_B" in n)


def test_resume_skips_a_checkpoint_whose_trainer_state_was_cut_off(tmp_path):
    # a save killed while writing trainer_state.json (written last) leaves the start of it: the checkpoint before it
    # is the one to continue from, not a bare "Expecting ',' delimiter" from transformers' reader
    from tuner.train import _resume_point

    state = json.dumps({"global_step": 4, "max_steps": 8, "log_history": []}, indent=2)
    for step in (4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-6" / "trainer_state.json").write_text(state[:20])
    notes = []
    latest, prior = _resume_point(tmp_path, tmp_path / "metrics.json", notes)
    assert latest == tmp_path / "checkpoint-4" and prior == {}
    assert [n for _, n in notes] == [
        f"--resume: {tmp_path / 'checkpoint-6'} is incomplete (no whole trainer_state.json, an interrupted save); "
        "skipped"
    ]


def test_sampling_is_a_pure_function_of_seed_epoch_index():
    group = Group(query="q", pos=["p0", "p1"], neg=[f"n{i}" for i in range(10)])
    first = sample_group(group, 4, seed=1, epoch=0, index=3)
    assert first == sample_group(group, 4, seed=1, epoch=0, index=3)
    epochs = {tuple(sample_group(group, 4, seed=1, epoch=e, index=3)["docs"]) for e in range(6)}
    assert len(epochs) > 1  # negatives are resampled each epoch
    assert len(set(first["docs"][1:])) == 3 and first["docs"][0] in group.pos
    sampler = EpochSampler(5, seed=7)
    order0 = list(sampler)
    sampler.set_epoch(1)
    order1 = list(sampler)
    assert {i for _, i in order0} == set(range(5)) and all(e == 1 for e, _ in order1)
    assert [i for _, i in order0] != [i for _, i in order1]  # a new order each epoch
    sampler.set_epoch(0)
    assert list(sampler) == order0


def test_qlora_trains_on_cpu(tiny_model_dir, beir, tmp_path):
    result = train(
        tiny_config(
            tiny_model_dir,
            beir,
            tmp_path / "q",
            "model.load_in_4bit=true",
            "model.gradient_checkpointing=true",
            "model.bnb_4bit_compute_dtype=float32",
            "train.max_steps=3",
        )
    )
    model = result["model"]
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)
    assert (result["adapter_dir"] / "adapter_model.safetensors").is_file()


def test_wandb_offline_records_eval_metric(tiny_model_dir, beir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = train(
        tiny_config(
            tiny_model_dir,
            beir,
            tmp_path / "w",
            "tracking.report_to=wandb",
            "tracking.project=tuner-test",
            "tracking.tags=[ci, tiny]",
            "tracking.run_name=tiny run/1",
            "tracking.log_model=true",
            "eval.beir=" + str(beir),
            "eval.split=test",
            "eval.top_k=6",
            "eval.steps=2",
            "eval.before=true",
            "train.max_steps=4",
        )
    )
    runs = sorted((result["output_dir"] / "logs" / "wandb").glob("offline-run-*"))
    assert runs, os.listdir(result["output_dir"] / "logs")
    # wandb's service process writes the run file asynchronously; give it a moment to flush after finish()
    deadline = time.monotonic() + 30
    while True:
        records = b"".join(p.read_bytes() for p in runs[-1].rglob("*") if p.is_file())
        if b"delta/ndcg@10" in records or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert b"eval/ndcg@10" in records
    assert b"train/loss" in records and b"train/pos_top1" in records
    # the summary compares runs: base, final and their delta, and the comparison table
    for key in (b"base/ndcg@10", b"final/ndcg@10", b"delta/ndcg@10", b"first_stage/ndcg@10", b"eval/comparison"):
        assert key in records, key
    # and the dev queries the training data covers apart from the rest (all unseen here: seen has no figures)
    for key in (b"unseen/delta/ndcg@10", b"unseen/final/ndcg@10", b"unseen/queries", b"seen/queries"):
        assert key in records, key
    assert b"seen/delta/ndcg@10" not in records.replace(b"unseen/delta", b"")
    assert b"tuner-test" in records and b"tiny" in records
    # tracking.log_model: the adapter folder (weights, tokenizer, tuner.json) and metrics.json as a model artifact
    # named after the run, the final figures its metadata
    for entry in (b"adapter/adapter_model.safetensors", b"adapter/tuner.json", b"adapter/tokenizer.json"):
        assert entry in records, entry
    assert b"tiny-run-1" in records and b'"final/ndcg@10"' in records and b"metrics.json" in records


def test_a_sweep_trial_logs_to_the_agents_run_in_its_own_directory(tmp_path, monkeypatch):
    """A wandb agent starts each trial with WANDB_RUN_ID set: the run tuner starts is that one (the sweep sees its
    metric), and `output.dir=.../$WANDB_RUN_ID` (recipes/sweeps/) gives each trial its own run directory."""
    from tuner.config import load_config
    from tuner.tracking import WANDB_RUN_ID, start_tracking

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_RUN_ID", "trial7x")
    config = load_config(
        None, ["tracking.report_to=wandb", "tracking.project=tuner-test", f"output.dir={tmp_path}/sweep/$WANDB_RUN_ID"]
    )
    out = tmp_path / "sweep" / "trial7x"
    assert config.output.dir == str(out)
    run = start_tracking(config, out, main=True)
    try:
        assert run.id == "trial7x"
        assert (out / "logs" / WANDB_RUN_ID).read_text().strip() == "trial7x"  # what a --resume would continue
    finally:
        run.finish()


def test_a_wandb_that_cannot_start_a_run_is_one_line_before_the_base_is_measured(
    tiny_model_dir, beir, tmp_path, monkeypatch
):
    """tracking.report_to=wandb with no API key (the GPU recipes' default): wandb's UsageError was a traceback, raised
    after the model had loaded and the base had been measured (minutes on a 4B base). It is a ConfigError naming the
    field and the ways out, before the base is scored."""
    import wandb

    def no_key(**kwargs):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", no_key)
    measured = []
    monkeypatch.setattr(RankEval, "base", lambda self, model: measured.append(model) or {})
    config = tiny_config(
        tiny_model_dir, beir, tmp_path / "w", "tracking.report_to=wandb", "eval.beir=" + str(beir), "eval.split=test"
    )
    with pytest.raises(ConfigError) as err:
        train(config)
    message = str(err.value)
    assert "\n" not in message and message.startswith("tracking.report_to=wandb: ")
    assert "No API key configured" in message and "WANDB_MODE=offline" in message and "report_to=none" in message
    assert measured == []


# ------------------------------------------------------------------ a finished run: guards on resume and re-run
@pytest.fixture(scope="module")
def finished(tiny_model_dir, beir, tmp_path_factory):
    """A finished 2-step run with train.save_steps=0 (the helper's default): checkpoint only at the end."""
    out = tmp_path_factory.mktemp("finished") / "run"
    return train(tiny_config(tiny_model_dir, beir, out, "train.max_steps=2"))


def _snapshot(out):
    return {
        p: p.read_bytes()
        for p in (out / "config.yaml", out / "metrics.json", out / "adapter/adapter_model.safetensors")
    }


def test_save_steps_zero_checkpoints_at_the_end_and_resumes(finished, tiny_model_dir, beir, tmp_path):
    out = finished["output_dir"]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-2"]
    # the weights have the mode a plain open() gives, not safetensors' private 0600
    for path in (out / "adapter", out / "checkpoints"):
        assert {p: stat.S_IMODE(p.stat().st_mode) for p in path.rglob("*")} == {
            p: default_mode(p.is_dir()) for p in path.rglob("*")
        }
    assert {"optimizer.pt", "scheduler.pt", "trainer_state.json"} <= {
        p.name for p in (out / "checkpoints/checkpoint-2").iterdir()
    }
    # resumable, with the harmless keys changed (and the run directory spelled differently: a copy)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    # what `tuner instruct --apply` / `calibrate --apply` store in the adapter's tuner.json after the run
    meta_file = copy / "adapter" / "tuner.json"
    meta = json.loads(meta_file.read_text()) | {"instruction": "Judge relevance", "calibration": {"a": 1.0, "b": 0.0}}
    meta_file.write_text(json.dumps(meta))
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    harmless = ("train.max_steps=2", "train.logging_steps=5", "tracking.run_name=again", "name=renamed")
    resumed = train(tiny_config(tiny_model_dir, beir, copy, *harmless), resume=True)
    assert resumed["metrics"]["train"]["global_step"] == 2
    assert resumed["metrics"] == finished["metrics"] and resumed["adapter_dir"] == copy / "adapter"
    # nothing was left to do: no file of the run changed (no evaluation re-run, no adapter re-saved)
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
    # a run cut off after its last checkpoint, before the adapter was saved: --resume evaluates and saves it
    shutil.rmtree(copy / "adapter")
    resumed = train(tiny_config(tiny_model_dir, beir, copy, *harmless), resume=True)
    # nothing was left to train: the finished run's loss and runtime stand (not this call's 0.0 and 0.001 s)
    assert resumed["metrics"]["train"] == finished["metrics"]["train"]
    assert json.loads((copy / "metrics.json").read_text())["train"] == finished["metrics"]["train"]
    a = load_file(finished["adapter_dir"] / "adapter_model.safetensors")
    b = load_file(resumed["adapter_dir"] / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_a_changed_recipe_is_refused_and_keeps_config_yaml(finished, tiny_model_dir, beir):
    out = finished["output_dir"]
    before = _snapshot(out)
    changed = tiny_config(tiny_model_dir, beir, out, "train.max_steps=4", "lora.r=4", "tracking.run_name=x")
    with pytest.raises(ConfigError) as err:
        train(changed, resume=True)
    msg = str(err.value)
    assert "train.max_steps: saved 2, new 4" in msg and "lora.r: saved 8, new 4" in msg, msg
    assert "tracking" not in msg and "\n" not in msg and str(out / "config.yaml") in msg
    assert _snapshot(out) == before


def test_resume_refuses_training_data_changed_since_the_run_started(finished, tiny_model_dir, beir, tmp_path):
    """The recipe was compared on --resume, the data it names was not: a training file edited or regenerated under
    the same path was trained on for the rest of the run without a word (walk7)."""
    from tuner.train_setup import DATA_RECORD, check_resume_data, write_data_record

    record = json.loads((finished["output_dir"] / DATA_RECORD).read_text())
    assert sorted(record) == ["data.beir corpus", "data.beir qrels/train.tsv", "data.beir queries"]
    assert all(len(entry["sha256"]) == 64 and entry["bytes"] > 0 for entry in record.values())

    run = tmp_path / "run"
    shutil.copytree(finished["output_dir"], run)
    config = tiny_config(tiny_model_dir, beir, run, "train.max_steps=2")
    edited = json.loads((run / DATA_RECORD).read_text())
    edited["data.beir qrels/train.tsv"]["sha256"] = "0" * 64  # as if the qrels had been rewritten since
    (run / DATA_RECORD).write_text(json.dumps(edited))
    with pytest.raises(ConfigError, match=r"--resume: data.beir qrels/train.tsv \(.*train.tsv\) changed since"):
        train(config, resume=True)

    rows = tmp_path / "groups.jsonl"
    rows.write_text('{"query": "q", "pos": ["p"], "neg": ["n"]}\n', encoding="utf-8")
    own = tiny_config(tiny_model_dir, beir, tmp_path / "own", "data.beir=null", f"data.train_file=[{rows}]")
    write_data_record(tmp_path, own)
    check_resume_data(tmp_path / DATA_RECORD, own)  # unchanged: resumes
    rows.write_text('{"query": "q", "pos": ["p"], "neg": ["n2"]}\n', encoding="utf-8")  # same size, new content
    with pytest.raises(ConfigError, match=r"data.train_file \(.*groups.jsonl\) changed since the run"):
        check_resume_data(tmp_path / DATA_RECORD, own)
    check_resume_data(tmp_path / "absent.json", own)  # a run from before the record: resumed as before


def test_cli_resume_with_a_changed_recipe_exits_2_with_one_line(finished, capsys):
    from tuner.cli import main

    out = finished["output_dir"]
    before = _snapshot(out)
    # the run's own config.yaml is a complete recipe: resumed with one changed override
    assert main(["train", str(out / "config.yaml"), "train.lr=1e-3", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.lr: saved 0.005, new 0.001" in err, err
    assert _snapshot(out) == before


def test_cli_ctrl_c_names_the_checkpoint_to_resume_from_or_says_there_is_none(finished, monkeypatch, capsys):
    import yaml

    import tuner.train
    from tuner.cli import main

    def interrupted(config, resume=False, callbacks=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(tuner.train, "train", interrupted)
    out = finished["output_dir"]
    assert main(["train", str(out / "config.yaml"), "--resume"]) == 130
    assert f"--resume` continues from {out / 'checkpoints' / 'checkpoint-2'}" in capsys.readouterr().err
    recipe = yaml.safe_load((out / "config.yaml").read_text())
    recipe["output"]["dir"] = str(out.parent / "fresh")
    (out.parent / "fresh.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", str(out.parent / "fresh.yaml")]) == 130
    err = capsys.readouterr().err
    assert "before its first checkpoint was saved: nothing to resume" in err and "--resume` continues" not in err


def test_rerun_into_a_finished_run_is_refused_unless_overwrite(finished, tiny_model_dir, beir, tmp_path):
    out = finished["output_dir"]
    before = _snapshot(out)
    with pytest.raises(ConfigError, match="already holds a finished run") as err:
        train(tiny_config(tiny_model_dir, beir, out, "train.max_steps=2"))
    assert str(out) in str(err.value) and "new output.dir" in str(err.value) and "delete" in str(err.value)
    assert _snapshot(out) == before
    # output.overwrite=true starts over: the old adapter, metrics and checkpoints are replaced, not mixed in
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "adapter" / "stale.txt").write_text("from the first run")
    redone = train(tiny_config(tiny_model_dir, beir, copy, "train.max_steps=1", "output.overwrite=true"))
    assert not (copy / "adapter" / "stale.txt").exists()
    assert [p.name for p in (copy / "checkpoints").iterdir()] == ["checkpoint-1"]
    assert redone["metrics"]["train"]["global_step"] == 1


@contextlib.contextmanager
def _held_by_another_process(lock):
    """`lock` held (flock) by a live process of this host, as a run training into its folder holds it; yields its
    pid."""
    import subprocess
    import sys

    lock.parent.mkdir(parents=True, exist_ok=True)
    code = (
        "import fcntl, json, os, socket, sys, time\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "os.write(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname(), 'started': 'then'}).encode())\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_second_train_into_a_run_being_trained_stops_before_it_writes(finished, tiny_model_dir, beir, tmp_path):
    """A second `tuner train` into the output.dir of one still running rewrote its config.yaml and metrics.json (with
    output.overwrite it deleted its adapter and checkpoints). The run's lock names the live process and stops it
    before it writes; once that process is gone (however it ended) the lock is free, whatever its file says."""
    from tuner.train_setup import LOCK_FILE

    out = tmp_path / "run"
    shutil.copytree(finished["output_dir"], out)
    lock = out / "logs" / LOCK_FILE
    overwrite = tiny_config(tiny_model_dir, beir, out, "train.max_steps=1", "output.overwrite=true")
    with _held_by_another_process(lock) as pid:
        before = _snapshot(out)
        with pytest.raises(ConfigError, match=rf"being trained by another tuner train \(pid {pid} on .*, since then\)"):
            train(overwrite)
        assert _snapshot(out) == before and (out / "checkpoints").is_dir()  # nothing rewritten, nothing deleted
    # the holder was killed, its record left in the file: the lock is free, held while training, emptied at the end
    assert json.loads(lock.read_text())["pid"] == pid
    held = []

    class Peek(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            held.append(json.loads(lock.read_text())["pid"])

    assert train(overwrite, callbacks=[Peek()])["metrics"]["train"]["global_step"] == 1
    assert held == [os.getpid()] and lock.read_text() == ""


def test_a_run_lock_is_the_flock_not_the_file(tmp_path):
    """A second lock in this very process is refused too (a notebook training twice into one folder), naming this
    process; a lock file nobody holds, whatever it says (a killed run's record, one cut off mid-write), is free."""
    from tuner.train_setup import LOCK_FILE, run_lock

    lock = tmp_path / "logs" / LOCK_FILE
    with run_lock(tmp_path):
        with pytest.raises(ConfigError, match=rf"\(pid {os.getpid()} on "), run_lock(tmp_path):
            pass
        assert json.loads(lock.read_text())["pid"] == os.getpid()  # the refusal left the holder's lock alone
    for leftover in ('{"pid": 1, "host": "elsewhere", "started": "then"}', '{"pid": 1'):
        lock.write_text(leftover)
        with run_lock(tmp_path):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
        assert lock.read_text() == ""


def test_a_file_system_without_locks_trains_unguarded(tmp_path, monkeypatch, caplog):
    """flock fails with ENOLCK on some network mounts: that stopped every run there with an OSError."""
    import errno
    import fcntl

    from tuner.train_setup import run_lock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level("WARNING", logger="tuner.train"), run_lock(tmp_path):
        pass
    assert "cannot lock it" in caplog.text and "would not be stopped" in caplog.text


def test_only_rank_0_of_a_launch_takes_the_run_lock(tiny_model_dir, beir, tmp_path, monkeypatch):
    """Under torchrun every rank runs train() on one host: rank 1 taking the lock would find rank 0's and stop the
    launch. The launcher's RANK says which process holds it; the others neither take nor check it."""
    from tuner import train_setup
    from tuner.train_setup import LOCK_FILE, run_lock

    out = tmp_path / "run"
    lock = out / "logs" / LOCK_FILE
    with _held_by_another_process(lock):  # rank 0
        with run_lock(out, main=False):
            pass
        with pytest.raises(ConfigError, match="being trained by another tuner train"), run_lock(out, main=True):
            pass

    class Taken(Exception):
        pass

    mains = []

    def record(out, main=True):
        mains.append(main)
        raise Taken

    monkeypatch.setattr(train_setup, "run_lock", record)
    config = tiny_config(tiny_model_dir, beir, tmp_path / "r", "train.max_steps=1")
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(Taken):
            train(config)
    monkeypatch.delenv("RANK")
    with pytest.raises(Taken):
        train(config)
    assert mains == [False, True, True]


def test_make_demo_leaves_the_checkpoints_of_a_run_being_trained(tmp_path, monkeypatch):
    """`make demo` while another demo trains into the same folder: scripts/demo.py deleted its checkpoints itself
    before train() took the run lock; the lock now stops it first (output.overwrite clears them after the lock)."""
    import importlib.util
    from pathlib import Path

    from tuner.train_setup import LOCK_FILE

    path = Path(__file__).resolve().parent.parent / "scripts" / "demo.py"
    spec = importlib.util.spec_from_file_location("demo", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    monkeypatch.chdir(tmp_path)  # the demo moves to the checkout: put the test's directory back afterwards
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):  # the demo's, undone after
        monkeypatch.setenv(name, os.environ.get(name, value))
    out = tmp_path / "run"
    (out / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    lock = out / "logs" / LOCK_FILE
    with _held_by_another_process(lock), pytest.raises(ConfigError, match="being trained by another tuner train"):
        demo.main([f"output.dir={out}"])
    assert (out / "checkpoints" / "checkpoint-5").is_dir()


def test_only_the_main_process_writes_metrics_json(tiny_model_dir, beir, tmp_path, monkeypatch):
    from tuner.trainer import RerankTrainer

    # this process as a rank other than 0 of a multi-process run: each rank's final metrics (its own runtime)
    # would replace rank 0's, the last writer winning
    monkeypatch.setattr(RerankTrainer, "is_world_process_zero", lambda self: False)
    result = train(tiny_config(tiny_model_dir, beir, tmp_path / "r1", "train.max_steps=1"))
    assert (result["adapter_dir"] / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "r1" / "metrics.json").exists()


# ---------------------------------------------------------- an interrupted run with evaluations: its records
@pytest.fixture(scope="module")
def evaluated_resume(tiny_model_dir, beir, tmp_path_factory):
    """A 4-step run evaluated at steps 2 and 4, interrupted after its checkpoint at step 2 (and after its
    evaluation there), then resumed; tracked by an offline wandb run. Returns the run directory, its metrics.json
    before the resume and the resumed call's result."""
    out = tmp_path_factory.mktemp("evaluated") / "run"
    evals = ("eval.beir=" + str(beir), "eval.split=test", "eval.top_k=6", "eval.steps=2", "eval.before=true")
    common = ("train.max_steps=4", "train.save_steps=2", "tracking.report_to=wandb", *evals)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_SILENT", "true")
        with pytest.raises(_Crash):
            train(tiny_config(tiny_model_dir, beir, out, *common), callbacks=[_CrashAfterSave(2)])
        before = json.loads((out / "metrics.json").read_text())
        base_calls = []  # the base evaluations the resumed call runs
        measure = RankEval.base
        env.setattr(RankEval, "base", lambda self, model: base_calls.append(1) or measure(self, model))
        resumed = train(tiny_config(tiny_model_dir, beir, out, *common), resume=True)
    resumed["base_calls"] = len(base_calls)
    return out, before, resumed


def test_resume_keeps_the_dev_history_before_the_checkpoint(evaluated_resume):
    out, before, resumed = evaluated_resume
    assert [e["step"] for e in before["dev"]["history"]] == [2]
    written = json.loads((out / "metrics.json").read_text())
    # the evaluation at step 2 (made before the interruption) is kept, the one at step 4 added after it
    assert [e["step"] for e in written["dev"]["history"]] == [2, 4]
    assert written["dev"]["history"][0] == before["dev"]["history"][0]
    assert resumed["metrics"]["dev"]["history"] == written["dev"]["history"]


def test_resume_continues_the_wandb_run(evaluated_resume):
    out = evaluated_resume[0]
    # one offline folder per call (offline-run-<time>-<id>), both for the same run: `wandb sync` adds them up
    runs = sorted((out / "logs" / "wandb").glob("offline-run-*"))
    ids = {p.name.rsplit("-", 1)[1] for p in runs}
    assert len(runs) == 2 and len(ids) == 1, runs
    assert (out / "logs" / "wandb-run-id").read_text().strip() in ids
    # no tracking.log_model: the weights are not uploaded
    records = b"".join(p.read_bytes() for p in runs[-1].rglob("*") if p.is_file())
    assert b"adapter_model.safetensors" not in records


def test_resume_reuses_the_recorded_base_metrics(evaluated_resume):
    _, before, resumed = evaluated_resume
    # measured once, by the interrupted call; the resumed call reads them back instead of scoring the dev set again
    assert resumed["base_calls"] == 0
    assert resumed["metrics"]["dev"]["base"] == before["dev"]["base"] and before["dev"]["base"]
    # its per-query figures too (kept in logs/): the seen / unseen parts still get their paired test
    unseen = resumed["metrics"]["dev"]["training_overlap"]["parts"]["unseen"]
    assert unseen["base"] == pytest.approx(before["dev"]["base"], abs=1e-12)  # every dev query is unseen here
    assert unseen["final_vs_base"]["queries"] == unseen["queries"] == 4
    from tuner.train import _recorded_base

    dev, inputs = before["dev"], before["eval_inputs"]
    assert _recorded_base(before, "dev", inputs, dev["name"], dev["first_stage"]) == dev["base"]
    # measured again when anything it depends on differs: the settings, the set, its candidates or qrels
    changed = json.loads(json.dumps(inputs))
    changed["eval"]["top_k"] += 1
    assert _recorded_base(before, "dev", changed, dev["name"], dev["first_stage"]) is None
    assert _recorded_base(before, "dev", inputs, "other", dev["first_stage"]) is None
    moved = {k: v + 0.01 for k, v in dev["first_stage"].items()}
    assert _recorded_base(before, "dev", inputs, dev["name"], moved) is None
    assert (
        _recorded_base(
            {k: v for k, v in before.items() if k != "eval_inputs"}, "dev", inputs, dev["name"], dev["first_stage"]
        )
        is None
    )  # a metrics.json that does not say what it was measured on
    assert _recorded_base(before, "ood", inputs, dev["name"], dev["first_stage"]) is None


def test_a_run_evaluated_only_before_and_after_keeps_its_base_for_resume(tiny_model_dir, beir, tmp_path, monkeypatch):
    """With eval.steps=0 nothing evaluates during training: the base measured before it is written to
    metrics.json at once, so a run stopped before its end does not measure it again on --resume."""
    out = tmp_path / "run"
    evals = ("eval.beir=" + str(beir), "eval.split=test", "eval.top_k=6", "eval.steps=0", "eval.before=true")
    common = ("train.max_steps=2", "train.save_steps=1", *evals)
    with pytest.raises(_Crash):
        train(tiny_config(tiny_model_dir, beir, out, *common), callbacks=[_CrashAfterSave(1)])
    before = json.loads((out / "metrics.json").read_text())
    assert before["dev"]["base"] and "train" not in before
    base_calls = []
    measure = RankEval.base
    monkeypatch.setattr(RankEval, "base", lambda self, model: base_calls.append(1) or measure(self, model))
    _as_a_new_process()
    resumed = train(tiny_config(tiny_model_dir, beir, out, *common), resume=True)
    assert base_calls == [] and resumed["metrics"]["dev"]["base"] == before["dev"]["base"]
    assert resumed["metrics"]["train"]["global_step"] == 2 and resumed["metrics"]["dev"]["final"]


def test_resumed_run_reports_the_whole_runs_loss_and_time(evaluated_resume):
    out, _, resumed = evaluated_resume
    figures = resumed["metrics"]["train"]
    assert json.loads((out / "metrics.json").read_text())["train"] == figures
    # the loss was logged at every step (train.logging_steps=1): the whole run's mean is the mean of the 4 logs,
    # not transformers' mean over steps 3 and 4 only
    logged = json.loads((out / "checkpoints/checkpoint-4/trainer_state.json").read_text())["log_history"]
    losses = {e["step"]: e["loss"] for e in logged if "loss" in e}
    assert sorted(losses) == [1, 2, 3, 4]
    assert figures["train_loss"] == pytest.approx(sum(losses.values()) / 4, rel=1e-6)
    assert "train_loss_from_step" not in figures and "runtime_from_step" not in figures
    # the log says them too, next to transformers' closing line, which counts this call's steps only
    said = f"--resume: the run's figures (metrics.json): train_loss={figures['train_loss']:.4g} over steps 1-4, "
    assert said in (out / "logs" / "train.log").read_text()
    # the checkpoint carries the time up to it; the run's time adds this call's to it
    clock = json.loads((out / "checkpoints/checkpoint-2/trainer_state.json").read_text())["stateful_callbacks"]
    before = clock["RunClock"]["attributes"]["totals"]
    assert 0 < before["train_runtime"] < figures["train_runtime"] and before["seconds"] < figures["seconds"]
    # the rates are the whole run's too: 4 steps of 2 groups over its runtime (not over this call's runtime)
    assert figures["train_steps_per_second"] == pytest.approx(4 / figures["train_runtime"], rel=1e-2, abs=1e-3)
    assert figures["train_samples_per_second"] == pytest.approx(8 / figures["train_runtime"], rel=1e-2, abs=1e-3)


def test_whole_run_loss_needs_the_losses_up_to_the_checkpoint():
    from tuner.train import _whole_run_loss

    # windows of 2 steps: steps 1-2 mean 4.0, steps 3-4 mean 2.0; resumed at 4, steps 5-6 mean 1.0
    logs = [{"loss": 4.0, "step": 2}, {"eval_ndcg@10": 0.5, "step": 2}, {"loss": 2.0, "step": 4}]
    assert _whole_run_loss(logs, 4, 1.0, 6) == pytest.approx((8 + 4 + 2) / 6)
    # resumed at 3: step 3 was never logged, its loss is not in the checkpoint
    assert _whole_run_loss(logs[:2], 3, 1.0, 6) is None


# ------------------------------------------------------------------------------- best checkpoint, early stopping
def _scripted_dev(monkeypatch, primary: list[float]) -> list[int]:
    """Dev evaluations that return `primary` in turn (then its last value), so that when the metric peaks is known;
    returns the list of evaluated steps' call numbers."""
    from tuner.train_setup import RankEval

    calls: list[int] = []

    def evaluate(self, model):
        value = primary[min(len(calls), len(primary) - 1)]
        calls.append(len(calls))
        self.last_per_query = {}
        return {"ndcg@10": value, "mrr@10": value, "recall@100": value}

    monkeypatch.setattr(RankEval, "__call__", evaluate)
    return calls


def test_early_stopping_ends_the_run_and_keeps_its_best_checkpoint(tiny_model_dir, beir, tmp_path, monkeypatch):
    """Evaluations every 2 steps peak at step 4, then fail to improve twice: the run stops at step 8 of 20, and
    its adapter is checkpoint-4's weights (not step 8's), with the figures measured on them."""
    calls = _scripted_dev(monkeypatch, [0.5, 0.7, 0.6, 0.65, 0.7])
    common = ("eval.beir=" + str(beir), "eval.steps=2", "train.save_steps=2", "train.max_steps=20")
    result = train(tiny_config(tiny_model_dir, beir, tmp_path / "run", *common, "train.early_stopping_patience=2"))
    metrics = result["metrics"]
    assert metrics["train"]["global_step"] == 8 and metrics["train"]["stopped_early"] == {"step": 8, "of": 20}
    assert metrics["dev"]["final_checkpoint"] == "checkpoint-4" and metrics["dev"]["final"]["ndcg@10"] == 0.7
    assert len(calls) == 5  # 4 during training, 1 on the best checkpoint's weights
    assert [h["step"] for h in metrics["dev"]["history"]] == [2, 4, 6, 8]  # that 5th is not a step of training
    saved = load_file(result["adapter_dir"] / "adapter_model.safetensors")
    ckpts = tmp_path / "run" / "checkpoints"
    best = load_file(ckpts / "checkpoint-4" / "adapter_model.safetensors")
    last = load_file(ckpts / "checkpoint-8" / "adapter_model.safetensors")
    assert saved.keys() == best.keys() and saved
    assert all(torch.equal(saved[k], best[k]) for k in saved)
    assert not all(torch.equal(saved[k], last[k]) for k in saved)  # training did move on after step 4
    log = (tmp_path / "run" / "logs" / "train.log").read_text()
    assert "stopped early at step 8 of 20: dev ndcg@10 did not improve for 2 evaluations" in log
    assert json.loads((result["adapter_dir"] / "tuner.json").read_text())["eval"]["final"]["ndcg@10"] == 0.7

    # without patience, load_best trains to the end and still keeps the best; with save_total_limit 1 that is the
    # only checkpoint left, and a --resume of the finished run still has nothing to do (it is not the last step)
    _scripted_dev(monkeypatch, [0.5, 0.7, 0.6, 0.65, 0.6, 0.6, 0.6])
    keep_one = (*common[:3], "train.max_steps=10", "train.load_best=true", "train.save_total_limit=1")
    plain = train(tiny_config(tiny_model_dir, beir, tmp_path / "all", *keep_one))
    assert plain["metrics"]["train"]["global_step"] == 10 and "stopped_early" not in plain["metrics"]["train"]
    assert plain["metrics"]["dev"]["final_checkpoint"] == "checkpoint-4"
    assert [p.name for p in (tmp_path / "all" / "checkpoints").iterdir()] == ["checkpoint-4"]
    again = train(tiny_config(tiny_model_dir, beir, tmp_path / "all", *keep_one), resume=True)
    assert again["model"] is None and again["metrics"]["train"]["global_step"] == 10


def test_a_resumed_run_stops_early_where_the_uninterrupted_one_did(tiny_model_dir, beir, tmp_path, monkeypatch, capsys):
    """The patience counter is in the checkpoint: a run cut after step 6 (one evaluation without improvement
    counted) stops at step 8 when resumed, not 2 evaluations later."""
    common = ("eval.beir=" + str(beir), "eval.steps=2", "train.save_steps=2", "train.max_steps=20",
              "train.early_stopping_patience=2")  # fmt: skip
    _scripted_dev(monkeypatch, [0.5, 0.7, 0.6])
    with pytest.raises(_Crash):
        train(tiny_config(tiny_model_dir, beir, tmp_path / "cut", *common), callbacks=[_CrashAfterSave(6)])
    _scripted_dev(monkeypatch, [0.65, 0.7])  # the resumed call's evaluations: step 8, then the best's weights
    resumed = train(tiny_config(tiny_model_dir, beir, tmp_path / "cut", *common), resume=True)
    assert resumed["metrics"]["train"]["global_step"] == 8
    assert resumed["metrics"]["dev"]["final_checkpoint"] == "checkpoint-4"
    # the run has ended (it stopped early): a further --resume has nothing left to do, and trains no more steps,
    # and says so (in a new process too, where logging is not set up yet when it finds out)
    _as_a_new_process()
    log_before = (tmp_path / "cut" / "logs" / "train.log").read_bytes()
    again = train(tiny_config(tiny_model_dir, beir, tmp_path / "cut", *common), resume=True)
    assert again["model"] is None and again["metrics"]["train"]["global_step"] == 8
    assert "finished at step 8" in capsys.readouterr().out  # on the console; the finished run's log is as it was
    assert (tmp_path / "cut" / "logs" / "train.log").read_bytes() == log_before

    # cut off right after the checkpoint where patience ran out (before the adapter was saved): resumed, it
    # trains no further step, and ends as the uninterrupted run did
    _scripted_dev(monkeypatch, [0.5, 0.7, 0.6, 0.65])
    with pytest.raises(_Crash):
        train(tiny_config(tiny_model_dir, beir, tmp_path / "late", *common), callbacks=[_CrashAfterSave(8)])
    _scripted_dev(monkeypatch, [0.7])
    late = train(tiny_config(tiny_model_dir, beir, tmp_path / "late", *common), resume=True)
    assert late["metrics"]["train"]["global_step"] == 8
    assert late["metrics"]["train"]["stopped_early"] == {"step": 8, "of": 20}
    assert late["metrics"]["dev"]["final_checkpoint"] == "checkpoint-4"
    saved = load_file(late["adapter_dir"] / "adapter_model.safetensors")
    best = load_file(tmp_path / "late" / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors")
    assert saved.keys() == best.keys() and all(torch.equal(saved[k], best[k]) for k in saved)


def test_best_checkpoint_settings_need_evaluations_and_checkpoints(tiny_model_dir, beir, tmp_path):
    dev = "eval.beir=" + str(beir)
    with pytest.raises(ConfigError, match=r"train.early_stopping_patience: picks among the evaluations"):
        tiny_config(tiny_model_dir, beir, tmp_path / "x", "train.early_stopping_patience=2")  # no dev set
    with pytest.raises(ConfigError, match=r"train.load_best: picks among the evaluations .* eval.steps > 0"):
        tiny_config(tiny_model_dir, beir, tmp_path / "x", dev, "train.load_best=true")
    with pytest.raises(ConfigError, match=r"train.load_best: needs a checkpoint at each evaluation"):
        tiny_config(tiny_model_dir, beir, tmp_path / "x", dev, "eval.steps=2", "train.load_best=true")
    # saves every other evaluation: transformers would record the best value at a step it has no checkpoint of
    with pytest.raises(ConfigError, match=r"set train.save_steps to eval.steps \(2\), got 4"):
        tiny_config(tiny_model_dir, beir, tmp_path / "x", dev, "eval.steps=2", "train.save_steps=4",
                    "train.early_stopping_patience=1")  # fmt: skip
    with pytest.raises(ConfigError, match=r"train.early_stopping_patience: must be >= 1"):
        tiny_config(tiny_model_dir, beir, tmp_path / "x", dev, "eval.steps=2", "train.save_steps=2",
                    "train.early_stopping_patience=0")  # fmt: skip


def test_the_seed_changes_the_negatives_and_the_order():
    """`train.seed` picks the run's draw: another seed gives other negatives and another group order (a seed left out
    of either would make every seed of a sweep train on the same data)."""
    group = Group(query="q", pos=["p0", "p1"], neg=[f"n{i}" for i in range(10)])
    draws = {seed: [sample_group(group, 4, seed=seed, epoch=0, index=i)["docs"] for i in range(5)] for seed in (1, 2)}
    assert draws[1] != draws[2]
    orders = {seed: [i for _, i in EpochSampler(10, seed=seed)] for seed in (1, 2)}
    assert sorted(orders[1]) == sorted(orders[2]) == list(range(10)) and orders[1] != orders[2]


def test_the_trainers_sampler_is_seeded_with_train_seed():
    """The Trainer builds its sampler with the run's seed (`train.seed`, TrainingArguments.seed)."""
    from types import SimpleNamespace

    from tuner.trainer import RerankTrainer

    trainer = object.__new__(RerankTrainer)  # (only the sampler it builds is under test)
    trainer.args, trainer.train_dataset = SimpleNamespace(seed=11), list(range(9))
    sampler = trainer._get_train_sampler()
    assert (sampler.seed, len(sampler)) == (11, 9) and trainer.epoch_sampler is sampler
    assert list(sampler) == list(EpochSampler(9, seed=11))


def test_the_run_clock_adds_this_calls_time_to_the_checkpoints():
    """A checkpoint saved by a resumed call carries the whole run's time: a run resumed twice still reports the
    time of all three calls (the first call's is in the totals the second call started from)."""
    from tuner.trainer import RunClock

    clock = RunClock(started=time.time() - 5.0, before={"seconds": 100.0, "train_runtime": 60.0})
    clock.train_started = time.time() - 3.0
    totals = clock.state()["attributes"]["totals"]
    assert 105.0 <= totals["seconds"] < 110.0 and 63.0 <= totals["train_runtime"] < 68.0
    fresh = RunClock(started=time.time() - 5.0).totals()
    assert 5.0 <= fresh["seconds"] < 10.0 and fresh["train_runtime"] == 0.0  # not in Trainer.train yet


@pytest.mark.parametrize(
    "override",
    [
        "train.seed=43",  # another data order and LoRA init: not the run that was interrupted
        "data.group_size=6",
        "data.instruction=Find the topic",
        "loss.temperature=0.5",
        "lora.alpha=8",
        "model.max_length=64",
        "eval.top_k=7",  # the dev figures before and after the checkpoint would measure different things
        "eval.steps=250",
    ],
)
def test_resume_refuses_a_change_to_what_decides_the_numbers(override, tmp_path):
    """`--resume` continues the same run: a key that decides the weights, the data or the evaluation may not change
    (only where and how often numbers are reported may: `RESUME_SAFE_KEYS`)."""
    from tuner.config import load_config
    from tuner.train_setup import check_resume_config

    recipe = ["model.tiny=true", "data.beir=/data/x", "eval.beir=/data/x", f"output.dir={tmp_path}"]
    load_config(None, recipe).save(tmp_path / "config.yaml")
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"--resume: the recipe differs .* in {key}: saved "):
        check_resume_config(tmp_path / "config.yaml", load_config(None, [*recipe, override]))
    harmless = ["train.logging_steps=3", "tracking.run_name=again", "name=renamed", "eval.base_cache_dir=/tmp/c"]
    check_resume_config(tmp_path / "config.yaml", load_config(None, [*recipe, *harmless]))


def test_the_model_artifact_of_a_run_named_in_any_script_or_length_is_logged(tmp_path):
    """tracking.log_model: wandb takes artifact names of ASCII letters, digits, '-', '_' and '.', up to 128; a run
    named "Überlauf ..." (`\\w` kept the Ü) or longer made wandb.Artifact raise after the run had trained."""
    from tuner.tracking import log_model_artifact

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "tuner.json").write_text("{}", encoding="utf-8")
    (tmp_path / "metrics.json").write_text("{}", encoding="utf-8")

    class Run:
        name = "Überlauf lr 2e-4/" + "x" * 200

        def __init__(self):
            self.logged = []

        def log_artifact(self, artifact):
            self.logged.append(artifact)

    run = Run()
    log_model_artifact(run, tmp_path / "adapter", tmp_path / "metrics.json", {"dev": {"final": {"ndcg@10": 0.5}}})
    (artifact,) = run.logged
    assert artifact.name == ("-berlauf-lr-2e-4-" + "x" * 200)[:128]
    assert artifact.metadata["final/ndcg@10"] == 0.5


class _FakeTracker:
    """What summarize_to_tracker and log_model_artifact use of a wandb run: its summary, log and log_artifact."""

    name = "run"

    def __init__(self):
        self.summary: dict = {}
        self.logged: list = []

    def log(self, row, **kwargs):
        self.logged.append(row)

    def log_artifact(self, artifact):
        self.logged.append(artifact)


def _overlap_record() -> dict:
    part = {
        "queries": 3,
        "meaning": "...",
        "first_stage": {"ndcg@10": 0.4},
        "base": {"ndcg@10": 0.5},
        "final": {"ndcg@10": 0.7},
        "final_vs_base": {"delta": 0.2, "p_randomization": 0.03},
    }
    dev = {
        "name": "scifact/test",
        "first_stage": {"ndcg@10": 0.45},
        "base": {"ndcg@10": 0.55},
        "final": {"ndcg@10": 0.6},
        "training_overlap": {"parts": {"seen": part, "unseen": {"queries": 0, "meaning": "..."}}},
    }
    return {"dev": dev}


def test_the_seen_and_unseen_summary_has_the_stages_of_the_whole_set_and_its_p():
    """README: the summary holds first_stage/, base/, final/ and delta/, "the same under ood/, seen/ and unseen/".
    seen/ and unseen/ had final/ and delta/ only, and no p-value, where train.log prints "(p = ...)": a delta
    could not be read next to the base it is measured from, nor its paired test compared across runs."""
    from tuner.tracking import summarize_to_tracker

    tracker = _FakeTracker()
    summarize_to_tracker(tracker, _overlap_record())
    s = tracker.summary
    assert s["seen/first_stage/ndcg@10"] == 0.4 and s["seen/base/ndcg@10"] == 0.5 and s["seen/final/ndcg@10"] == 0.7
    assert s["seen/delta/ndcg@10"] == pytest.approx(0.2) and s["seen/p"] == 0.03 and s["seen/queries"] == 3
    # an empty part has its count alone
    assert [k for k in s if k.startswith("unseen/")] == ["unseen/queries"]


@pytest.mark.parametrize(
    ("env", "override", "project"),
    [("team-proj", None, "team-proj"), ("team-proj", "mine", "mine"), (None, None, "tuner")],
)
def test_the_wandb_project_is_the_recipes_else_wandb_project_else_tuner(tmp_path, monkeypatch, env, override, project):
    """WANDB_PROJECT, the variable wandb (and transformers' callback) reads, was silently replaced by the field's
    default "tuner", which tuner passed to wandb.init as if the user had chosen it; the shipped GPU recipes spelled
    that default out too. A recipe's tracking.project still wins, as wandb.init's argument wins over the variable."""
    from tuner.config import load_config
    from tuner.tracking import start_tracking

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    if env is None:
        monkeypatch.delenv("WANDB_PROJECT", raising=False)
    else:
        monkeypatch.setenv("WANDB_PROJECT", env)
    config = load_config(None, ["tracking.report_to=wandb", *([f"tracking.project={override}"] if override else [])])
    run = start_tracking(config, tmp_path / "run", main=True)
    try:
        assert run.project == project
    finally:
        run.finish()


@pytest.mark.parametrize("recipe", ["qwen3-reranker-4b-lora", "qwen3-reranker-4b-qlora", "qwen3-reranker-4b-distill"])
def test_the_wandb_recipes_leave_the_project_to_wandb_project(recipe):
    from pathlib import Path

    from tuner.config import load_config

    root = Path(__file__).resolve().parents[1]
    assert load_config(root / "recipes" / f"{recipe}.yaml", []).tracking.project is None


@pytest.mark.parametrize(("env", "override", "group"), [(None, "lr-sweep", "lr-sweep"), ("from-env", None, "from-env")])
def test_the_wandb_group_is_a_recipe_field_else_wandb_run_group(tmp_path, monkeypatch, env, override, group):
    """Runs compared together in wandb are a group; a recipe could set project, entity, name and tags but not the
    group (only the WANDB_RUN_GROUP variable, which the README never named)."""
    from tuner.config import load_config
    from tuner.tracking import start_tracking

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    if env is None:
        monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    else:
        monkeypatch.setenv("WANDB_RUN_GROUP", env)
    config = load_config(None, ["tracking.report_to=wandb", *([f"tracking.group={override}"] if override else [])])
    run = start_tracking(config, tmp_path / "run", main=True)
    try:
        assert run.group == group
    finally:
        run.finish()


def test_tensorboard_gets_the_figures_the_wandb_summary_has_and_the_recipe(tmp_path):
    """tracking.report_to=tensorboard held the Trainer's curves only (train/*, eval/* during training, and
    TrainingArguments as text): no first stage, base, final, delta, out-of-domain or seen/unseen figure, nor the
    recipe (loss kind, LoRA rank), so two runs could not be compared there as the wandb summary compares them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tuner.config import load_config
    from tuner.tracking import run_summary, summarize_to_tensorboard

    config = load_config(None, ["tracking.report_to=tensorboard", "loss.kind=pointwise"])
    record = _overlap_record()
    summarize_to_tensorboard(tmp_path, record, config, step=30)
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    summary = run_summary(record)[0]
    assert set(scalars) == {k for k, v in summary.items() if isinstance(v, (int, float))}
    assert scalars["final/ndcg@10"] == [(30, pytest.approx(0.6))]
    assert scalars["seen/base/ndcg@10"] == [(30, pytest.approx(0.5))]
    assert scalars["delta/ndcg@10"] == [(30, pytest.approx(0.05))]
    tensors = events.Tags()["tensors"]
    recipe = events.Tensors("recipe/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "kind: pointwise" in recipe and "eval/comparison/text_summary" in tensors
    # the HPARAMS tab: the recipe's fields against the final figures
    assert "_hparams_/experiment" in events.PluginTagToContent("hparams")


def test_the_comparison_table_has_the_seen_and_unseen_rows():
    """The eval/comparison table (wandb, tensorboard) had the whole dev set and the out-of-domain set only; the
    seen / unseen split, which says whether a gain is memory, was in the summary keys alone."""
    from tuner.tracking import run_summary

    _, columns, rows = run_summary(_overlap_record())
    assert columns == ["set", "system", "ndcg@10"]
    assert [r[:2] for r in rows] == [
        ["scifact/test", "first_stage"],
        ["scifact/test", "base"],
        ["scifact/test", "final"],
        ["scifact/test seen (3)", "first_stage"],
        ["scifact/test seen (3)", "base"],
        ["scifact/test seen (3)", "final"],
    ]
    assert rows[-1][2] == 0.7


def test_resume_data_record_of_a_saved_dataset_folder(tmp_path, tiny_model_dir, beir):
    """data.train_file may be a folder (datasets' save_to_disk, a hub dataset's local copy): the data record hashed
    it as a file and the run stopped with IsADirectoryError before training."""
    import datasets

    from tuner.train_setup import DATA_RECORD, check_resume_data, write_data_record

    folder = tmp_path / "saved"
    datasets.Dataset.from_list([{"query": "q", "pos": ["p"], "neg": ["n"]}]).save_to_disk(str(folder))
    config = tiny_config(tiny_model_dir, beir, tmp_path / "run", "data.beir=null", f"data.train_file={folder}")
    write_data_record(tmp_path, config)
    record = json.loads((tmp_path / DATA_RECORD).read_text())
    assert record["data.train_file"]["bytes"] > 0 and len(record["data.train_file"]["sha256"]) == 64
    check_resume_data(tmp_path / DATA_RECORD, config)  # unchanged: resumes
    datasets.Dataset.from_list([{"query": "q", "pos": ["p"], "neg": ["n2"]}]).save_to_disk(str(folder))
    with pytest.raises(ConfigError, match=r"data.train_file \(.*saved\) changed since the run"):
        check_resume_data(tmp_path / DATA_RECORD, config)
