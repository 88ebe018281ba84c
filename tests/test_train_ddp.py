"""Two CPU processes (torchrun, gloo) train the tiny recipe together: both ranks step, one adapter is saved, and
the evaluation is split between the ranks (each scores its share, both get the single-process metrics)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import tiny_config, write_beir

ROOT = Path(__file__).resolve().parent.parent


def _torchrun(recipe: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]
    cmd += ["-m", "tuner", "train", str(recipe)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _free_port() -> int:
    # torchrun's --master_port 0 does not pick a port with the static rendezvous; ask the OS for one
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="torchrun not installed",
)
def test_two_cpu_processes_gloo(tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir")
    out = tmp_path / "run"
    recipe = tmp_path / "ddp.yaml"
    overrides = ["train.max_steps=3", "train.ddp_backend=gloo", f"eval.beir={beir}", "eval.split=test"]
    overrides.append("train.batch_tokens=300")  # several sorted chunks per forward: DDP sees each layer used repeatedly
    overrides.append(f"eval.base_cache_dir={tmp_path / 'base-cache'}")  # the base measured here, read back below
    tiny_config(tiny_model_dir, beir, out, *overrides, "eval.before=true").save(recipe)
    _torchrun(recipe)
    notes = [json.loads((out / "logs" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [n["world_size"] for n in notes] == [2, 2]
    assert [n["global_step"] for n in notes] == [3, 3]
    adapters = list(out.rglob("adapter_model.safetensors"))
    assert [p.parent.name for p in adapters if "checkpoint-" not in str(p)] == ["adapter"]
    assert json.loads((out / "adapter" / "tuner.json").read_text())["recipe"] == "test-tiny"
    assert "pos_top1=" in (out / "logs" / "train.log").read_text()  # the ranks' windows summed (a collective)

    # evaluation: base before training + final after it, each split between the ranks and gathered
    from tuner.evaluate import Evaluator
    from tuner.scoring import Reranker

    evaluator = Evaluator.from_beir(beir, "test", top_k=100)
    pairs = [n["eval_pairs_scored"] for n in notes]
    assert all(p > 0 for p in pairs) and sum(pairs) == 2 * evaluator.num_pairs
    final = json.loads((out / "metrics.json").read_text())["dev"]["final"]
    assert notes[0]["dev_final"] == notes[1]["dev_final"] == final
    # the gathered metrics are the single-process ones of the saved adapter
    alone = evaluator(Reranker.from_pretrained(out / "adapter", device="cpu", dtype="float32", max_length=96))
    assert final.keys() <= alone.keys() and final
    for name, value in final.items():
        assert abs(alone[name] - value) < 1e-6, name

    # a second run of the same base reads the base's figures from the cache on rank 0 and shares them with rank 1
    # (the ranks must agree: measuring is a collective): only the final evaluation is scored
    again = tmp_path / "again"
    tiny_config(tiny_model_dir, beir, again, *overrides, "eval.before=true", "train.max_steps=1").save(recipe)
    _torchrun(recipe)
    notes = [json.loads((again / "logs" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sum(n["eval_pairs_scored"] for n in notes) == evaluator.num_pairs
    metrics = [json.loads((run / "metrics.json").read_text())["dev"]["base"] for run in (out, again)]
    assert metrics[0] == metrics[1] and metrics[0]
