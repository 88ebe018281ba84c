"""Test helpers: a training-run directory with a non-zero LoRA adapter on the tiny model (as the trainer writes)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

RUN_INSTRUCTION = "Given a scientific claim, retrieve abstracts that support it"


def make_run(root: Path, base_dir: Path, seed: int = 1) -> Path:
    """Write `root/adapter` (PEFT LoRA all-linear with random non-zero lora_B, tokenizer, tuner.json); return root."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuner.contract import PromptEncoder, load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)  # non-zero, so that the adapter changes scores
    adapter = root / "adapter"
    peft_model.save_pretrained(adapter)
    tokenizer = load_tokenizer()
    tokenizer.save_pretrained(adapter)
    encoder = PromptEncoder(tokenizer, max_length=512)
    meta = {
        "base_model": str(base_dir),
        "instruction": RUN_INSTRUCTION,
        "max_length": 512,
        "yes_token_id": encoder.yes_id,
        "no_token_id": encoder.no_id,
        "tuner_version": "0.1.0",
        "contract": encoder.metadata(),
        "recipe": {"name": "tiny", "data": {"train": "data/scifact"}, "lora": {"r": 4}},
        "eval": {
            "bm25": {"ndcg@10": 0.662},
            "base": {"ndcg@10": 0.196},
            "tuned": {"ndcg@10": 0.358},
            "best": {"checkpoint": "checkpoints/checkpoint-30", "value": 0.358},
        },
        "calibration": {"temperature": 2.0, "bias": 0.25},
    }
    (adapter / "tuner.json").write_text(json.dumps(meta), encoding="utf-8")
    # the trainer saves the resolved recipe next to adapter/; exports carry it
    (root / "config.yaml").write_text("name: tiny\ndata:\n  beir: data/scifact\n  group_size: 4\n", encoding="utf-8")
    return root
