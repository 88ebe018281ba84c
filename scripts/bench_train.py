#!/usr/bin/env python
"""Training throughput and peak memory of the 4B shape (random weights) with bf16 LoRA and QLoRA, on one GPU.

Uses the training code path (`tuner.modeling.load_base` / `attach_lora`, the yes−no head, the listwise loss) on
8 groups x 8 documents of variable length (mean ~385 tokens), gradient checkpointing on, as in anchors.md.

    python scripts/bench_train.py [--steps 6] [--modes lora qlora] [--workdir /tmp/tuner-bench]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps (after 2 warm-up steps)")
    parser.add_argument("--modes", nargs="+", default=["lora", "qlora"], choices=["lora", "qlora"])
    parser.add_argument("--workdir", default="/tmp/tuner-bench", help="where the random 4B checkpoint is written")
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    args = parser.parse_args()

    import torch

    from tuner.contract import load_tokenizer
    from tuner.head import collate, yes_no_logits
    from tuner.losses import listwise_loss
    from tuner.modeling import attach_lora, load_base, trainable_summary
    from tuner.tiny import random_model

    if not torch.cuda.is_available():
        print("bench_train: needs a CUDA GPU")
        return 1
    ckpt = Path(args.workdir) / "qwen3-4b-random"
    if not (ckpt / "config.json").is_file():
        # written once so that both modes go through the real loading path (4-bit quantization happens at load)
        model = random_model("Qwen3-Reranker-4B", "cuda", torch.bfloat16)
        model.save_pretrained(ckpt)
        load_tokenizer().save_pretrained(ckpt)
        del model
        torch.cuda.empty_cache()

    gen = torch.Generator().manual_seed(0)
    rows = args.groups * args.group_size
    lengths = torch.randint(200, 570, (rows,), generator=gen).tolist()  # mean ~385
    ids = [torch.randint(1000, 150000, (n,), generator=gen).tolist() for n in lengths]
    batch = collate(ids, 151643, "cuda")
    results = []
    for mode in args.modes:
        torch.cuda.reset_peak_memory_stats()
        model = load_base(
            ckpt,
            dtype="bfloat16",
            load_in_4bit=mode == "qlora",
            compute_dtype="bfloat16",
            gradient_checkpointing=True,
            device="cuda",
        )
        model = attach_lora(model, r=16, alpha=32, dropout=0.05)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        for step in range(2 + args.steps):
            if step == 2:
                torch.cuda.synchronize()
                start = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = yes_no_logits(model, **batch, yes_id=9693, no_id=2152)
            loss = listwise_loss(logits.view(args.groups, args.group_size))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        result = {
            "mode": mode,
            "device": torch.cuda.get_device_name(),
            "real_tokens_per_s": round(sum(lengths) * args.steps / seconds),
            "s_per_step": round(seconds / args.steps, 3),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "rows_per_step": rows,
            "mean_tokens": round(sum(lengths) / rows),
            "params": trainable_summary(model),
            "loss": float(loss),
        }
        print(json.dumps(result), flush=True)
        results.append(result)
        del model, opt, params
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
