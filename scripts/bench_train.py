#!/usr/bin/env python
"""Training throughput and peak memory, side by side: the naive path against tuner's paths.

One command, on a GPU (the 4B shape, random weights) or on CPU (the tiny model; the default without CUDA):

    python scripts/bench_train.py                       # every path the device supports
    python scripts/bench_train.py --paths naive packed  # a subset

Paths (same prompts, same LoRA r16 all-linear, listwise loss over groups, AdamW on the adapter):
  naive   full-vocabulary logits at every position (`model(...).logits`, then the last position's yes/no),
          one right-padded batch in data order, HF-default gradient checkpointing: what generic SFT code gives.
  tuner   the 4B LoRA recipe's settings: 2-row head on the last token only, length-sorted padded chunks of at
          most --batch-tokens, non-reentrant checkpointing (`tuner.packing.sorted_chunks`).
  packed  prompts packed into rows of --row-tokens with restarting position_ids, no padding
          (`tuner.packing.pack_rows`); flex_attention on CUDA when available, sdpa otherwise.
  qlora   the tuner path on a 4-bit NF4 base (bitsandbytes; CUDA only, skipped on CPU).

Data: the synthetic mix documented in docs/benchmarks/README.md (query 8-40 tokens, document 40-600 tokens,
in the contract's prompt; CPU default: documents 40-200 and 4 x 4 prompts, so the run takes a couple of
minutes). Real tokens/s counts prompt tokens only (no padding). Peak memory: the CUDA allocator's peak, or on
CPU the process's resident set size sampled every 5 ms (a rough figure, labelled as such). % of ceiling (GPU):
6 x non-embedding params x real tokens/s over the card's dense bf16 peak. Writes JSON with the device name.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# dense bf16 tensor-core peaks (FLOP/s), by a substring of torch.cuda.get_device_name()
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}
PATHS = ["naive", "tuner", "packed", "qlora"]


def synthetic_prompts(
    encoder, groups: int, group_size: int, doc_max: int, seed: int, fixed_len: int | None = None
) -> list[list[int]]:
    """Prompt ids in the contract's layout with random query (8-40) and document (40-doc_max) tokens.

    With `fixed_len`, every prompt is cut or extended (document tokens) to exactly that many tokens.
    """
    import torch

    from tuner.contract import DEFAULT_INSTRUCTION

    tok = encoder.tokenizer
    head = tok.encode(f"<Instruct>: {DEFAULT_INSTRUCTION}\n<Query>: ", add_special_tokens=False)
    mid = tok.encode("\n<Document>: ", add_special_tokens=False)
    gen = torch.Generator().manual_seed(seed)

    def rand(lo: int, hi: int) -> list[int]:
        n = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        return torch.randint(1000, 150000, (n,), generator=gen).tolist()

    prompts = []
    for _ in range(groups):
        query = rand(8, 40)
        for _ in range(group_size):
            fixed = encoder.prefix_ids + head + query + mid
            doc = rand(40, doc_max)
            if fixed_len is not None:
                need = fixed_len - len(fixed) - len(encoder.suffix_ids)
                doc = (doc * (need // len(doc) + 1))[:need]
            prompts.append(fixed + doc + encoder.suffix_ids)
    return prompts


class RssPeak:
    """Peak resident set size of this process while active (CPU stand-in for the CUDA allocator's peak)."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        page = os.sysconf("SC_PAGE_SIZE")

        def sample():
            while not self._stop.is_set():
                with open("/proc/self/statm") as f:
                    self.peak = max(self.peak, int(f.read().split()[1]) * page)
                time.sleep(0.005)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def non_embedding_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)


def build(path: str, ckpt: Path, cuda: bool, dtype: str, seed: int):
    import torch

    from tuner.modeling import attach_lora, load_base

    attn = "sdpa"
    if path == "packed" and cuda:
        try:
            from torch.nn.attention.flex_attention import flex_attention  # noqa: F401

            attn = "flex_attention"
        except ImportError:
            pass
    model = load_base(
        ckpt,
        dtype=dtype,
        attn_implementation=attn,
        load_in_4bit=path == "qlora",
        compute_dtype="bfloat16",
        gradient_checkpointing=path != "naive",
        device="cuda" if cuda else "cpu",
    )
    n_params = non_embedding_params(model)
    if path == "naive":  # what a user gets from `gradient_checkpointing_enable()` with no arguments
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    torch.manual_seed(seed)  # same adapter init on every path
    model = attach_lora(model, r=16, alpha=32, dropout=0.05)
    return model, attn, n_params


def make_step(path: str, model, prompts, args, pad_id: int, yes_id: int, no_id: int, device):
    """A closure returning the logits [n] for this path (the batch is built inside: it is part of the cost)."""
    from tuner.head import collate
    from tuner.packing import chunked_yes_no_logits, pack_rows, packed_yes_no_logits, sorted_chunks

    if path == "naive":

        def logits():
            batch = collate(prompts, pad_id, device)
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # [b, L, V]
            last = out[range(len(prompts)), batch["last_index"]]
            return (last[:, yes_id] - last[:, no_id]).float()

    elif path == "packed":

        def logits():
            packed = pack_rows(prompts, pad_id, row_tokens=args.row_tokens, device=device)
            return packed_yes_no_logits(model, **packed, yes_id=yes_id, no_id=no_id)

    else:

        def logits():
            chunks = sorted_chunks(prompts, pad_id, args.batch_tokens, device)
            return chunked_yes_no_logits(model, chunks, yes_id, no_id)

    return logits


def run_path(path: str, ckpt: Path, prompts, args, cuda: bool, enc) -> dict:
    import torch

    from tuner.losses import listwise_loss

    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with RssPeak() as rss:
        model, attn, n_params = build(path, ckpt, cuda, "bfloat16" if cuda else "float32", args.seed)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        logits_fn = make_step(path, model, prompts, args, enc.tokenizer.pad_token_id, enc.yes_id, enc.no_id, device)
        first_logits, losses = None, []
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                logits = logits_fn()
            loss = listwise_loss(logits.view(args.groups, args.group_size))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if first_logits is None:
                first_logits = logits.detach().float().cpu()
            losses.append(loss.item())
        if cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / args.steps
    real = sum(len(p) for p in prompts)
    tps = real / seconds
    result = {
        "path": path,
        "attn": attn,
        "real_tokens_per_step": real,
        "real_tokens_per_s": round(tps, 1),
        "s_per_step": round(seconds, 4),
        "non_embedding_params": n_params,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "first_logits": first_logits.tolist(),
    }
    if cuda:
        result["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        result["peak_mem_kind"] = "cuda max_memory_allocated"
        peak = next((v for k, v in PEAK_BF16.items() if k in torch.cuda.get_device_name()), None)
        if peak:
            result["pct_flop_ceiling"] = round(100 * 6 * n_params * tps / peak, 1)
    else:
        result["peak_mem_gib"] = round(rss.peak / 2**30, 2)
        result["peak_mem_kind"] = "process peak RSS (rough; includes the Python process and earlier paths' leftovers)"
    del model, opt
    gc.collect()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", nargs="+", default=PATHS, choices=PATHS)
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 6 on GPU, 2 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2 GPU, 1 CPU)")
    parser.add_argument("--groups", type=int, default=None, help="queries per step (default 8 GPU, 4 CPU)")
    parser.add_argument("--group-size", type=int, default=None, help="documents per query (default 8 GPU, 4 CPU)")
    parser.add_argument("--doc-max", type=int, default=None, help="longest document (default 600 GPU, 200 CPU)")
    parser.add_argument("--batch-tokens", type=int, default=None, help="tuner path chunk budget (16384 / 2048)")
    parser.add_argument("--row-tokens", type=int, default=None, help="packed row capacity (default 8192 / 1024)")
    parser.add_argument("--fixed-len", type=int, default=None, help="every prompt exactly N tokens (memory target)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/tuner-bench", help="where the random checkpoint is written")
    parser.add_argument("--json", default=None, help="output JSON (default WORKDIR/bench_train-<device>.json)")
    args = parser.parse_args()

    import torch

    from tuner.contract import PromptEncoder, load_tokenizer
    from tuner.tiny import random_model, write_tiny_model

    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    gpu = dict(steps=6, warmup=2, groups=8, group_size=8, doc_max=600, batch_tokens=16384, row_tokens=8192)
    cpu = dict(steps=2, warmup=1, groups=4, group_size=4, doc_max=200, batch_tokens=2048, row_tokens=1024)
    for key, value in (gpu if cuda else cpu).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    workdir = Path(args.workdir)
    if cuda:
        device_name = torch.cuda.get_device_name()
        ckpt = workdir / "qwen3-4b-random"
        if not (ckpt / "config.json").is_file():
            # written once so that every path goes through the real loading path (4-bit quantizes at load)
            model = random_model("Qwen3-Reranker-4B", "cuda", torch.bfloat16)
            model.save_pretrained(ckpt)
            load_tokenizer().save_pretrained(ckpt)
            del model
            torch.cuda.empty_cache()
    else:
        device_name = f"cpu ({os.cpu_count()} cores, torch {torch.__version__})"
        ckpt = workdir / "tiny-random"
        if not (ckpt / "config.json").is_file():
            write_tiny_model(ckpt)
    enc = PromptEncoder(load_tokenizer(), max_length=8192)
    prompts = synthetic_prompts(enc, args.groups, args.group_size, args.doc_max, args.seed, args.fixed_len)
    lengths = [len(p) for p in prompts]
    print(
        f"device: {device_name}; model: {ckpt.name}; {args.groups} x {args.group_size} prompts/step, "
        f"{sum(lengths)} real tokens (mean {sum(lengths) / len(lengths):.0f}, max {max(lengths)}); "
        f"{args.warmup} warm-up + {args.steps} timed steps",
        flush=True,
    )
    results = []
    for path in args.paths:
        if path == "qlora" and not cuda:
            print("qlora: skipped (bitsandbytes 4-bit training needs CUDA)", flush=True)
            continue
        print(f"{path}: running ...", flush=True)
        results.append(run_path(path, ckpt, prompts, args, cuda, enc))
    naive = next((r for r in results if r["path"] == "naive"), None)
    for r in results:
        if naive is not None:
            r["speedup_vs_naive"] = round(r["real_tokens_per_s"] / naive["real_tokens_per_s"], 2)
            diff = torch.tensor(r["first_logits"]) - torch.tensor(naive["first_logits"])
            r["first_logits_max_abs_diff_vs_naive"] = float(diff.abs().max())
    mem_label = "peak GiB (CUDA)" if cuda else "peak RSS GiB (rough)"
    header = f"| path | attn | real tok/s | s/step | {mem_label} | % ceiling | x naive | logits diff vs naive |"
    print("\n" + header + "\n" + "|---" * 8 + "|")
    for r in results:
        print(
            f"| {r['path']} | {r['attn']} | {r['real_tokens_per_s']:.0f} | {r['s_per_step']:.3f} | "
            f"{r['peak_mem_gib']:.2f} | {r.get('pct_flop_ceiling', '-')} | {r.get('speedup_vs_naive', '-')} | "
            f"{r.get('first_logits_max_abs_diff_vs_naive', float('nan')):.2e} |"
        )
    out = Path(args.json) if args.json else workdir / f"bench_train-{'cuda' if cuda else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "device": device_name,
        "model": "Qwen3-Reranker-4B shape, random weights" if cuda else "tiny Qwen3 (2 layers, hidden 64), random",
        "config": {k: v for k, v in vars(args).items() if k not in ("json", "workdir")},
        "prompt_lengths": lengths,
        "results": [{k: v for k, v in r.items() if k != "first_logits"} for r in results],
    }
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(out)  # atomic
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
