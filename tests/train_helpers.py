"""Small data and configs for the training tests (a BEIR folder built from strings, a tiny recipe)."""

from __future__ import annotations

import json
from pathlib import Path

from tuner.config import Config, load_config

TOPICS = [
    ("cats", "feline", "whiskers purr kitten"),
    ("volcano", "lava", "magma eruption crater"),
    ("guitar", "chord", "strings fret melody"),
    ("bread", "yeast", "flour oven dough"),
    ("comet", "orbit", "ice tail perihelion"),
    ("tennis", "racket", "serve volley court"),
    ("coffee", "espresso", "beans roast crema"),
    ("glacier", "ice", "moraine crevasse snow"),
    ("bridge", "girder", "span truss cable"),
    ("bees", "hive", "honey pollen queen"),
]


def write_beir(folder: Path) -> Path:
    """A BEIR folder: 10 topics x 3 documents; train qrels on 6 topics, test qrels on the other 4."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus, queries, train, test = [], [], [], []
    for t, (word, near, extra) in enumerate(TOPICS):
        for k in range(3):
            corpus.append(
                {"_id": f"d{t}-{k}", "title": f"{word} {near}", "text": f"notes on {word} and {near}: {extra} ({k})"}
            )
        # "notes" is in every document: BM25 scores every candidate above zero (mining drops zero scores)
        queries.append({"_id": f"q{t}", "text": f"notes about {word} {near}?"})
        (train if t < 6 else test).append((f"q{t}", f"d{t}-0"))
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in corpus) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(r) for r in queries) + "\n")
    (folder / "qrels").mkdir(exist_ok=True)
    for split, rows in (("train", train), ("test", test)):
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t1" for q, d in rows]
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def tiny_config(model_dir: Path, beir: Path, out: Path, *overrides: str) -> Config:
    """A recipe that trains the conftest tiny model for a few CPU steps on `beir`'s train split."""
    base = [
        f"model.name_or_path={model_dir}",
        "model.dtype=float32",
        "model.max_length=96",
        f"data.beir={beir}",
        "data.split=train",
        "data.mine_depth=30",
        "data.num_negatives=8",
        "data.group_size=4",
        "lora.r=8",
        "lora.alpha=16",
        "lora.dropout=0.0",
        "train.lr=5e-3",
        "train.warmup=0",
        "train.scheduler=linear",
        "train.max_steps=6",
        "train.batch_groups=2",
        "train.precision=fp32",
        "train.logging_steps=1",
        "train.save_steps=0",
        "eval.before=false",
        "tracking.report_to=none",
        f"output.dir={out}",
        "name=test-tiny",
    ]
    return load_config(None, base + list(overrides))


def random_lora(model_dir: Path, seed: int = 0, **load_kwargs):
    """The tiny model (fp32, CPU) with a LoRA r16 whose A and B are both random.

    LoRA B starts at zero (then A gets no gradient); equivalence tests need every adapter tensor to carry a real
    value and gradient.
    """
    import torch

    from tuner.modeling import attach_lora, load_base

    torch.manual_seed(seed)
    model = attach_lora(load_base(model_dir, dtype="float32", device="cpu", **load_kwargs), r=16, alpha=32, dropout=0.0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.05)
    return model


def random_adapter(base_dir, out_dir, seed: int = 0) -> Path:
    """A saved PEFT adapter (r4, all linear layers) on `base_dir` whose B matrices are random (not zero), so that it
    scores unlike its base; returns `out_dir`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")
    )
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    model.save_pretrained(out_dir)
    return out_dir
