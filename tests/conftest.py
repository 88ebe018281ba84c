"""Shared fixtures: one tiny random Qwen3 reranker with the real tokenizer, built once per test session."""

from __future__ import annotations

import os

import pytest

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Under pytest-xdist (`make test`: one worker per core) each worker, and the processes its tests start (the CLI, DDP
# ranks), gets its share of the cores: torch's default of a thread per core in every worker oversubscribes them.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))
    os.environ.setdefault("MKL_NUM_THREADS", str(_share))


@pytest.fixture(scope="session")
def tokenizer():
    from tuner.contract import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from tuner.tiny import write_tiny_model

    # Larger-than-default init spread so that scores differ visibly between documents (a near-constant
    # scorer would let ordering bugs pass).
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model", layers=2, hidden=64, seed=0)


@pytest.fixture(scope="session")
def tiny_reranker(tiny_model_dir):
    from tuner.scoring import Reranker

    return Reranker.from_pretrained(tiny_model_dir, device="cpu", dtype="float32")


# The mini BEIR slice (tests/mini_beir.py) of test_evaluate and test_instruct: built once per test module.
@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory):
    from mini_beir import write_beir

    return write_beir(tmp_path_factory.mktemp("beir") / "mini")


@pytest.fixture(scope="module")
def evaluator(beir_dir):
    from tuner.evaluate import Evaluator

    return Evaluator.from_beir(beir_dir, "test", candidates="bm25", top_k=5, show_progress=False)
