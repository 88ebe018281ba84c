#!/usr/bin/env python
"""Training throughput and peak memory, side by side: the naive path against tuner's paths.

One command, on a GPU (the 4B shape, random weights) or on CPU (the tiny model; the default without CUDA):

    python scripts/bench_train.py                       # every path the device supports
    python scripts/bench_train.py --paths naive packed  # a subset

Paths (same prompts, same LoRA r16 all-linear, listwise loss over groups, AdamW on the adapter):
  naive      full-vocabulary logits at every position (`model(...).logits`, then the last position's yes/no),
             one right-padded batch in data order, HF-default gradient checkpointing: what generic SFT code gives.
  tuner      the 4B LoRA recipe's settings, through the trainer's own forward
             (`tuner.score_forward.install_score_forward`): 2-row head on the last token only,
             `train.batching=sorted` (length-sorted padded chunks of at most --batch-tokens), non-reentrant
             checkpointing of every layer.
  packed     `train.batching=packed`: rows of --row-tokens with restarting position_ids, no padding;
             flex_attention on CUDA when available (skips the blocks between prompts), sdpa otherwise.
  half-ckpt  tuner with `model.checkpoint_ratio=0.5` (every other layer keeps its activations).
  liger      tuner with `model.liger_kernel=true` (CUDA and liger-kernel only; else skipped).
  qlora      the tuner path on a 4-bit NF4 base (bitsandbytes; CUDA only, else skipped).
  compiled   tuner with `train.compile=true` (torch.compile of every decoder layer; the untimed steps compile).
A path that fails (out of memory, a missing package) is reported with its error; the others still run.

Numerics: before its warm-up, each path runs one untimed step with dropout off and every lora_B set to the same
seeded values, and its loss, logits and LoRA gradients are compared with the naive path's (the issue's "same
numbers" check: within 1e-5 on CPU in fp32, bf16 tolerance on a GPU; qlora's base is quantized, so its numbers
differ by design).

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
# name: (batching, options); every path but naive goes through the trainer's score forward
PATHS = {
    "naive": ("naive", {}),
    "tuner": ("sorted", {}),
    "packed": ("packed", {}),
    "half-ckpt": ("sorted", {"checkpoint_ratio": 0.5}),
    "qlora": ("sorted", {"load_in_4bit": True}),
    "liger": ("sorted", {"liger_kernel": True}),  # patches transformers' Qwen3 module too: undone after the path
    "compiled": ("sorted", {"compile": True}),  # last: its compile is the longest step of a GPU run
}
CPU_DEFAULT = ["naive", "tuner", "packed", "half-ckpt"]
NUMERICS_CHECK = (
    "before its timed steps, each path runs one step on the same prompts with dropout off and every lora_B set to "
    "the same seeded values (0.01 x N(0, 1)); its loss, logits and LoRA gradients are compared with the naive "
    "path's: loss_abs_diff_vs_naive, logits_max_abs_diff_vs_naive, grad_rel_err_vs_naive (||g - g_naive|| / "
    "||g_naive|| over all LoRA tensors), grad_max_abs_diff_vs_naive"
)


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
    """Weights outside the embedding and lm_head; a 4-bit bitsandbytes weight packs two values per stored byte."""
    return sum(
        p.numel() * (2 if type(p).__name__ == "Params4bit" else 1)
        for n, p in model.named_parameters()
        if "embed_tokens" not in n and "lm_head" not in n
    )


def build(path: str, ckpt: Path, cuda: bool, dtype: str, seed: int):
    import torch

    from tuner.modeling import attach_lora, compile_layers, load_base

    batching, options = PATHS[path]
    attn = "sdpa"
    if batching == "packed" and cuda:
        try:
            from torch.nn.attention.flex_attention import flex_attention  # noqa: F401

            attn = "flex_attention"
        except ImportError:
            pass
    model = load_base(
        ckpt,
        dtype=dtype,
        attn_implementation=attn,
        load_in_4bit=options.get("load_in_4bit", False),
        compute_dtype="bfloat16",
        gradient_checkpointing=path != "naive",
        checkpoint_ratio=options.get("checkpoint_ratio", 1.0),
        liger_kernel=options.get("liger_kernel", False),
        device="cuda" if cuda else "cpu",
    )
    n_params = non_embedding_params(model)
    if path == "naive":  # what a user gets from `gradient_checkpointing_enable()` with no arguments
        # (named activation_checkpointing_enable from transformers 5.2x on; the device machine's 5.17 has the old name)
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
        model.enable_input_require_grads()
    torch.manual_seed(seed)  # same adapter init on every path
    model = attach_lora(model, r=16, alpha=32, dropout=0.05)
    if options.get("compile"):
        compile_layers(model)
    return model, attn, n_params


def make_step(path: str, model, prompts, args, pad_id: int, yes_id: int, no_id: int, device):
    """A closure returning the logits [n] for this path (the batch is built inside: it is part of the cost)."""
    from tuner.head import collate
    from tuner.packing import pack_rows, sorted_chunks
    from tuner.score_forward import install_score_forward

    if path == "naive":

        def logits():
            batch = collate(prompts, pad_id, device)
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # [b, L, V]
            last = out[range(len(prompts)), batch["last_index"]]
            return (last[:, yes_id] - last[:, no_id]).float()

        return logits
    install_score_forward(model, yes_id, no_id)  # the forward `tuner train` runs, fed what its collator builds
    if PATHS[path][0] == "packed":
        return lambda: model(**pack_rows(prompts, pad_id, row_tokens=args.row_tokens, device=device))
    return lambda: model(chunks=sorted_chunks(prompts, pad_id, args.batch_tokens, device))


# kernel / op name fragments → where the time goes (first match wins; checked lower-case)
CATEGORIES = [
    ("attention", ("flash", "attention", "sdpa", "flex", "fmha", "softmax")),
    ("matmul", ("gemm", "matmul", "addmm", "aten::mm", "aten::bmm", "linear", "cutlass", "nvjet", "sm90_xmma")),
    ("optimizer", ("adam", "foreach", "multi_tensor")),
    ("norm", ("rms", "norm", "rsqrt")),
    ("copy / cast", ("copy", "memcpy", "memset", "cast", "to_copy", "cat", "index", "fill", "zero")),
]


def where_the_time_goes(step, cuda: bool, top: int = 15) -> dict:
    """One more step under torch.profiler: its device (CUDA) or CPU self time by category, and the top ops.

    What the note has to explain when a target is missed: attention vs matmuls vs elementwise work vs copies.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    if cuda:  # the kernels themselves: a CPU op's device time is that of the kernels it launched (counted twice)
        from torch.autograd import DeviceType

        events = [e for e in events if e.device_type == DeviceType.CUDA]

    def self_us(e) -> float:
        if cuda:
            return float(getattr(e, "self_device_time_total", 0.0) or getattr(e, "self_cuda_time_total", 0.0))
        return float(e.self_cpu_time_total)

    rows = sorted(((e.key, self_us(e), e.count) for e in events if self_us(e) > 0), key=lambda r: -r[1])
    total = sum(us for _, us, _ in rows) or 1.0
    buckets: dict[str, float] = {}
    for name, us, _ in rows:
        low = name.lower()
        cat = next((c for c, keys in CATEGORIES if any(k in low for k in keys)), "elementwise / other")
        buckets[cat] = buckets.get(cat, 0.0) + us
    return {
        "clock": "CUDA kernel self time" if cuda else "CPU op self time",
        "total_ms": round(total / 1000, 2),
        "share": {c: round(us / total, 3) for c, us in sorted(buckets.items(), key=lambda kv: -kv[1])},
        "top": [{"name": n[:120], "ms": round(us / 1000, 2), "calls": c} for n, us, c in rows[:top]],
    }


def qwen3_module_state() -> dict:
    """transformers' Qwen3 modeling module's names; liger-kernel replaces some of them (RMSNorm, MLP, RoPE) for
    every model built afterwards in the process, not only for the model it is given."""
    from transformers.models.qwen3 import modeling_qwen3

    return dict(vars(modeling_qwen3))


def restore_qwen3_module(state: dict) -> None:
    """Undo what a path changed in the Qwen3 modeling module, so the next path builds the stock model."""
    from transformers.models.qwen3 import modeling_qwen3

    for name, value in state.items():
        if vars(modeling_qwen3).get(name) is not value:
            setattr(modeling_qwen3, name, value)


def skip_reason(path: str, cuda: bool) -> str | None:
    """Why `path` cannot run on this machine, or None."""
    if path == "qlora" and not cuda:
        return "bitsandbytes 4-bit training needs CUDA"
    if path == "liger":
        try:
            from tuner.modeling import require_liger

            require_liger()
        except ValueError as err:
            return str(err)
    return None


def lora_numerics(model, logits_fn, groups: int, group_size: int, cuda: bool, seed: int = 0) -> dict:
    """Loss, logits and every LoRA gradient of one fixed step, for comparing the paths (issue 7's numerics check).

    At init lora_B is zero: the forward would not see the adapter and lora_A's gradient would be zero, so every
    lora_B is set to the same seeded values on every path (in name order), and dropout is switched off (its masks
    depend on the batch layout). Afterwards the weights and dropout are restored and the gradients cleared, so the
    timed steps train the usual init.
    """
    import torch

    from tuner.losses import listwise_loss

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    saved = {n: p.detach().clone() for n, p in params.items() if "lora_B" in n}
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    old_p = [m.p for m in drops]
    gen = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            for n in sorted(saved):
                params[n].copy_(0.01 * torch.randn(params[n].shape, generator=gen))
        for m in drops:
            m.p = 0.0
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            logits = logits_fn()
        loss = listwise_loss(logits.view(groups, group_size))
        loss.backward()
        grads = {n: p.grad.detach().float().cpu() for n, p in params.items() if p.grad is not None}
    finally:
        for m, p in zip(drops, old_p, strict=True):
            m.p = p
        with torch.no_grad():
            for n, value in saved.items():
                params[n].copy_(value)
        model.zero_grad(set_to_none=True)
    return {"loss": loss.item(), "logits": logits.detach().float().cpu(), "grads": grads, "trainable": len(params)}


def compare_numerics(got: dict, ref: dict) -> dict:
    """How far one path's `lora_numerics` is from the reference path's: loss, logits and LoRA gradients."""
    import torch

    out = {
        "loss_abs_diff_vs_naive": abs(got["loss"] - ref["loss"]),
        "logits_max_abs_diff_vs_naive": float((got["logits"] - ref["logits"]).abs().max()),
    }
    if sorted(got["grads"]) != sorted(ref["grads"]):
        out["grads_differ"] = "not the same LoRA tensors got a gradient"
        return out
    diff = torch.stack([(got["grads"][n] - g).pow(2).sum() for n, g in ref["grads"].items()]).sum()
    norm = torch.stack([g.pow(2).sum() for g in ref["grads"].values()]).sum()
    out["grad_rel_err_vs_naive"] = float((diff / norm).sqrt())  # ||g - g_naive|| / ||g_naive||, all LoRA tensors
    out["grad_max_abs_diff_vs_naive"] = max(float((got["grads"][n] - g).abs().max()) for n, g in ref["grads"].items())
    return out


def run_path(path: str, ckpt: Path, prompts, args, cuda: bool, enc) -> dict:
    import torch

    from tuner.losses import listwise_loss

    device = torch.device("cuda" if cuda else "cpu")
    gc.collect()  # the last path's model (the score forward's closure makes a cycle) must not count in this peak
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with RssPeak() as rss:
        model, attn, n_params = build(path, ckpt, cuda, "bfloat16" if cuda else "float32", args.seed)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        logits_fn = make_step(path, model, prompts, args, enc.tokenizer.pad_token_id, enc.yes_id, enc.no_id, device)
        losses = []

        def step() -> None:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                logits = logits_fn()
            loss = listwise_loss(logits.view(args.groups, args.group_size))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())

        # untimed, before the warm-up steps: it warms up all but a compiled path (dropout off is another graph)
        numerics = lora_numerics(model, logits_fn, args.groups, args.group_size, cuda, args.seed)
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
            step()
        if cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / args.steps
        profile = where_the_time_goes(step, cuda) if path in (args.profile or []) else None
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
        # every LoRA tensor should get a nonzero gradient in the numerics step
        "lora_tensors": numerics["trainable"],
        "lora_tensors_without_grad": numerics["trainable"]
        - sum(bool(g.abs().max() > 0) for g in numerics["grads"].values()),
        "numerics": numerics,
    }
    if profile is not None:
        result["profile"] = profile
    if cuda:
        result["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        result["peak_mem_kind"] = "cuda max_memory_allocated"
        peak = next((v for k, v in PEAK_BF16.items() if k in torch.cuda.get_device_name()), None)
        if peak:
            result["pct_flop_ceiling"] = round(100 * 6 * n_params * tps / peak, 1)
    else:
        result["peak_mem_gib"] = round(rss.peak / 2**30, 2)
        result["peak_mem_kind"] = "process peak RSS (rough; includes the Python process and earlier paths' leftovers)"
    model = opt = logits_fn = None  # free the weights before the next path (gc below)
    gc.collect()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_help = "default: all on CUDA; on CPU " + " ".join(CPU_DEFAULT)
    parser.add_argument("--paths", nargs="+", default=None, choices=list(PATHS), help=default_help)
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 4 on GPU, 2 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps after the numerics step (default 1)")
    parser.add_argument("--groups", type=int, default=None, help="queries per step (default 8 GPU, 4 CPU)")
    parser.add_argument("--group-size", type=int, default=None, help="documents per query (default 8 GPU, 4 CPU)")
    parser.add_argument("--doc-max", type=int, default=None, help="longest document (default 600 GPU, 200 CPU)")
    parser.add_argument("--batch-tokens", type=int, default=None, help="tuner path chunk budget (16384 / 2048)")
    parser.add_argument("--row-tokens", type=int, default=None, help="packed row capacity (default 8192 / 1024)")
    parser.add_argument("--fixed-len", type=int, default=None, help="every prompt exactly N tokens (memory target)")
    parser.add_argument(
        "--profile", nargs="*", choices=list(PATHS), help="after timing, profile one more step of these paths"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/tuner-bench", help="where the random checkpoint is written")
    parser.add_argument("--json", default=None, help="output JSON (default WORKDIR/bench_train-<device>.json)")
    args = parser.parse_args()

    import torch

    from tuner.contract import PromptEncoder, load_tokenizer
    from tuner.tiny import write_random_model, write_tiny_model

    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    gpu = dict(steps=4, warmup=1, groups=8, group_size=8, doc_max=600, batch_tokens=16384, row_tokens=8192)
    cpu = dict(steps=2, warmup=1, groups=4, group_size=4, doc_max=200, batch_tokens=2048, row_tokens=1024)
    for key, value in (gpu if cuda else cpu).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    workdir = Path(args.workdir)
    if cuda:
        device_name = torch.cuda.get_device_name()
        ckpt = workdir / "qwen3-4b-random"
        if not (ckpt / "config.json").is_file():
            # written once so that every path goes through the real loading path (4-bit quantizes at load); with
            # the export's chat template, bench_scoring.py --model --st and bench_serve.py load the same directory
            write_random_model(ckpt, "Qwen3-Reranker-4B", "cuda", torch.bfloat16, chat_template=True)
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
    out = Path(args.json) if args.json else workdir / f"bench_train-{'cuda' if cuda else 'cpu'}.json"
    results, skipped = [], []

    def save() -> None:
        """Write the JSON (atomically) after every path: a run cut short by a time limit keeps what it measured."""
        naive = next((r for r in results if r["path"] == "naive"), None)
        for r in results:
            if naive is not None:
                r["speedup_vs_naive"] = round(r["real_tokens_per_s"] / naive["real_tokens_per_s"], 2)
                if "loss_abs_diff_vs_naive" not in r:  # once per path; then only naive's gradients are kept
                    r.update(compare_numerics(r["numerics"], naive["numerics"]))
                    if r is not naive:
                        r["numerics"] = None
        payload = {
            "device": device_name,
            "model": "Qwen3-Reranker-4B shape, random weights" if cuda else "tiny Qwen3 (2 layers, hidden 64), random",
            "config": {k: v for k, v in vars(args).items() if k not in ("json", "workdir")},
            "prompt_lengths": lengths,
            "numerics_check": NUMERICS_CHECK,
            "results": [{k: v for k, v in r.items() if k != "numerics"} for r in results],
            "not_run": skipped,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        tmp.replace(out)

    for path in args.paths or (list(PATHS) if cuda else CPU_DEFAULT):
        why = skip_reason(path, cuda)
        if why:
            print(f"{path}: skipped ({why})", flush=True)
            skipped.append({"path": path, "skipped": why})
        else:
            print(f"{path}: running ...", flush=True)
            patched = qwen3_module_state()
            try:
                results.append(run_path(path, ckpt, prompts, args, cuda, enc))
            except Exception as err:  # one path's failure (OOM, a kernel) must not cost the others' figures
                print(f"{path}: FAILED {type(err).__name__}: {err}", flush=True)
                skipped.append({"path": path, "error": f"{type(err).__name__}: {str(err)[:500]}"})
            finally:
                restore_qwen3_module(patched)
            gc.collect()  # here, not in `except`: the exception's traceback holds the failed path's model
            if cuda:
                torch.cuda.empty_cache()
        save()
    mem_label = "peak GiB (CUDA)" if cuda else "peak RSS GiB (rough)"
    header = (
        f"| path | attn | real tok/s | s/step | {mem_label} | % ceiling | x naive "
        "| vs naive: loss Δ | grad rel err | logits Δ |"
    )
    print("\n" + header + "\n" + "|---" * 10 + "|")

    def sci(value) -> str:  # "-" where there is nothing to compare with (a run without the naive path)
        return "-" if value is None or value != value else f"{value:.1e}"

    for r in results:
        print(
            f"| {r['path']} | {r['attn']} | {r['real_tokens_per_s']:.0f} | {r['s_per_step']:.3f} | "
            f"{r['peak_mem_gib']:.2f} | {r.get('pct_flop_ceiling', '-')} | {r.get('speedup_vs_naive', '-')} | "
            f"{sci(r.get('loss_abs_diff_vs_naive'))} | {sci(r.get('grad_rel_err_vs_naive'))} | "
            f"{sci(r.get('logits_max_abs_diff_vs_naive'))} |"
        )
    if any(r["lora_tensors_without_grad"] for r in results):
        print("WARNING: some LoRA tensors got no gradient in the numerics step (lora_tensors_without_grad)")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
