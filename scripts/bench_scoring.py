"""Scoring throughput: the model card's reference code vs `Reranker`, side by side in one run.

    python scripts/bench_scoring.py                      # tiny random model on CPU (what `make bench` runs)
    python scripts/bench_scoring.py --shape 4b --pairs 512 --device cuda   # Qwen3-Reranker-4B shape, random weights

Pairs come from a BEIR folder's test queries with their BM25 candidates (`--beir data/scifact`) or from the
documented synthetic length mix (query 8-40 words, document 40-600 words; the default). Prints docs/s,
peak memory (CUDA allocator peak; on CPU, sampled RSS growth, a rough figure) and max |Δ score| against the
reference, and writes the figures as JSON with the device name.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuner.contract import load_tokenizer
from tuner.modeling import uncompile_layers
from tuner.reference import reference_scores
from tuner.scoring import Reranker

WORDS = (
    "protein cell gene tumour vaccine climate ocean graph theorem proof engine wing lift drag airflow pressure "
    "velocity patient therapy dose trial cohort risk model network layer signal receptor binding enzyme library "
    "catalogue retrieval index query document relevance judgement boundary layer turbulence shock wave"
).split()


def synthetic_pairs(n: int, seed: int = 0) -> list[tuple[str, str, None]]:
    """Query 8-40 words, document 40-600 words (about 1.3 Qwen3 tokens per word here)."""
    rng = random.Random(seed)
    queries = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) for _ in range(max(1, n // 32))]
    return [
        (queries[i % len(queries)], " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 600))), None)
        for i in range(n)
    ]


def beir_pairs(folder: str, n: int, depth: int) -> list[tuple[str, dict, None]]:
    from tuner.data.beir import load_beir
    from tuner.retrieval import BM25

    data = load_beir(folder, "test")
    run = BM25(data.corpus).search(data.queries, k=depth)
    pairs = [(data.queries[q], data.corpus[d], None) for q in run for d, _ in run[q]]
    return pairs[:n]


class PeakMemory:
    """Peak memory of one phase: CUDA allocator peak, or sampled process RSS growth on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            import psutil

            self._proc = psutil.Process()
            self.base = self._proc.memory_info().rss
            self._stop = False
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, self._proc.memory_info().rss - self.base)
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop = True
            self._thread.join()


def timed(fn, device: torch.device, repeats: int):
    """Best of `repeats` timed runs (after one warm-up run), with the peak memory of the last one."""
    fn()  # warm-up: kernels, allocator, tokenizer caches
    best = float("inf")
    for _ in range(repeats):
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
    return out, best, mem.peak


def flash_only_check(reranker: Reranker) -> str:
    """Score a few padded batches with SDPA limited to its flash kernel: "ok" when the padded path reaches attention
    without a mask (as `tuner.head.last_hidden` intends), else the error SDPA raised."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            reranker.score("a query", ["a short document", "a much longer document " * 40, "mid-sized text " * 9])
        return "ok"
    except RuntimeError as err:
        return f"failed: {str(err)[:300]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["tiny", "4b", "0.6b"], default="tiny")
    ap.add_argument(
        "--model",
        default=None,
        help="load the weights from this checkpoint directory (e.g. the random 4B one scripts/gpu_bench.sh writes) "
        "instead of building a random --shape model; with --st, a directory whose tokenizer has the chat template "
        "is loaded by sentence-transformers as it is (no merged copy is written)",
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on GPU, float32 on CPU")
    ap.add_argument("--pairs", type=int, default=None, help="default: 512 on GPU, 64 on CPU")
    ap.add_argument("--beir", help="BEIR folder: use its test queries' BM25 candidates instead of synthetic pairs")
    ap.add_argument("--depth", type=int, default=100, help="BM25 depth per query with --beir")
    ap.add_argument("--max-length", type=int, default=8192)
    ap.add_argument(
        "--ref-batch", type=int, default=None, help="batch size of the model-card code (default 16 on GPU, 4 on CPU)"
    )
    ap.add_argument("--batch-tokens", type=int, default=None, help="Reranker token budget per batch")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--variants",
        default="plain,prefix,packed",
        help="Reranker paths to time, comma-separated, run in this order: plain, prefix, packed, compiled, "
        "compiled-prefix (default: plain,prefix,packed)",
    )
    ap.add_argument(
        "--st", action="store_true", help="also time sentence-transformers' CrossEncoder on a merged export"
    )
    ap.add_argument(
        "--packed-attn",
        default=None,
        help="attention kernel of the packed variant (default: flex_attention on CUDA, which skips the blocks "
        "between a row's prompts, where sdpa materialises a mask and computes them; sdpa on CPU)",
    )
    ap.add_argument("--out", default="runs/bench/scoring.json")
    args = ap.parse_args()

    device = torch.device(args.device)
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[
        args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    ]
    n = args.pairs or (512 if device.type == "cuda" else 64)
    # On CPU the card's full-vocabulary logits alone take batch x length x 151,669 x 4 bytes (7 GB at 16 x 718).
    ref_batch = args.ref_batch or (16 if device.type == "cuda" else 4)
    torch.manual_seed(0)
    tokenizer = load_tokenizer()
    if args.model:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            args.model, dtype=dtype, attn_implementation="sdpa", device_map=str(device)
        ).eval()
    elif args.shape == "tiny":
        from tuner.tiny import write_tiny_model

        tmp = tempfile.mkdtemp(prefix="tuner-bench-")
        model_dir = write_tiny_model(Path(tmp) / "tiny", layers=4, hidden=128, heads=4, kv_heads=2)
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    else:
        from tuner.tiny import random_model

        model = random_model("Qwen3-Reranker-4B" if args.shape == "4b" else "Qwen3-Reranker-0.6B", device, dtype)

    pairs = beir_pairs(args.beir, n, args.depth) if args.beir else synthetic_pairs(n)
    # Queries arrive with many candidates each (as in reranking): shared-prefix reuse can apply.
    pairs.sort(key=lambda p: p[0])
    lengths = [len(x) for x in Reranker(model, tokenizer, max_length=args.max_length).encode(pairs)]
    mean_tokens = sum(lengths) / len(lengths)

    def run_reference():
        return reference_scores(model, tokenizer, pairs, max_length=args.max_length, batch_size=ref_batch)

    variants = {
        "plain": ("tuner Reranker (sorted token budget, 2-row head)", {}),
        "prefix": ("  + shared-prefix KV reuse", {"prefix_reuse": "auto"}),
        "packed": ("  + packed rows (position ids restart)", {"packing": True}),  # under --packed-attn
        "compiled": ("  + compiled decoder layers (torch.compile, dynamic)", {"compile": True}),
        "compiled-prefix": ("  + compiled layers, shared-prefix KV reuse", {"compile": True, "prefix_reuse": "auto"}),
    }
    compiled_keys = [k for k, (_, kwargs) in variants.items() if kwargs.get("compile")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    out = Path(args.out)
    rows: list[tuple] = []
    ref_row: list[tuple] = []

    def save() -> None:
        """The JSON so far (atomically), after every path: a run cut short by a time limit keeps its figures."""
        paths = {}
        for key, label, scores, seconds, peak, settings in ref_row + rows:
            entry = {"label": label, "docs_per_s": n / seconds, "seconds": seconds, "peak_bytes": peak}
            if ref_row:
                t_ref, ref = ref_row[0][3], ref_row[0][2]
                entry["speedup_vs_reference"] = t_ref / seconds
                entry["max_abs_delta_probability"] = max(abs(a - b) for a, b in zip(ref, scores, strict=True))
            paths[key] = {**entry, "settings": settings}
        result = {
            "device": name,
            "device_type": device.type,
            "shape": args.shape,
            "model": args.model or "random weights",
            "dtype": str(dtype),
            "pairs": n,
            "mean_tokens": mean_tokens,
            "source": args.beir or "synthetic",
            "torch": torch.__version__,
            "paths": paths,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_suffix(".tmp")
        tmp_out.write_text(json.dumps(result, indent=2), encoding="utf-8")
        os.replace(tmp_out, out)

    def reference_phase() -> None:
        ref, t_ref, m_ref = timed(run_reference, device, args.repeats)
        ref_row.append(
            ("reference", "model-card reference (left pad, full vocab)", ref, t_ref, m_ref, {"batch": ref_batch})
        )
        save()

    # On CPU the peak is sampled RSS growth, and RSS does not shrink after the reference's multi-GB logits, so the
    # smaller phases run first there; on CUDA the reference runs first (the allocator's peak is reset per phase).
    if device.type == "cuda":
        reference_phase()
    keys = args.variants.split(",")
    for key in keys:
        if key not in variants:
            raise SystemExit(f"unknown variant {key!r}; choose from {', '.join(variants)}")

    packed_attn = args.packed_attn or ("flex_attention" if device.type == "cuda" else "sdpa")

    def run_variant(key: str) -> None:
        label, kwargs = variants[key]
        eager_attn = model.config._attn_implementation
        if kwargs.get("packing") and packed_attn != eager_attn:
            model.set_attn_implementation(packed_attn)
            label = f"{label}, {packed_attn}"
        try:
            reranker = Reranker(model, tokenizer, max_length=args.max_length, batch_tokens=args.batch_tokens, **kwargs)
            settings = {"batch_tokens": reranker.batch_tokens, "attn": model.config._attn_implementation, **kwargs}
            if kwargs.get("compile"):  # what a server pays once at start: the first pass over this length mix
                t0 = time.perf_counter()
                reranker.score_pairs(pairs)
                settings["first_pass_seconds"] = time.perf_counter() - t0
            scores, seconds, peak = timed(lambda r=reranker: r.score_pairs(pairs), device, args.repeats)
            if key == "plain" and device.type == "cuda":
                settings["flash_attention_only"] = flash_only_check(reranker)
        finally:
            if model.config._attn_implementation != eager_attn:
                model.set_attn_implementation(eager_attn)
        rows.append((key, label, scores, seconds, peak, settings))
        save()

    # In the order asked for: `compile` compiles the model's layers in place, and they are made eager again after
    # each compiled variant, so a compiled path can run early (gpu_bench.sh puts the likeliest way to the target
    # right after plain, before a time limit could cut it) and the eager ones after it still time the eager model.
    for key in keys:
        run_variant(key)
        if key in compiled_keys:
            uncompile_layers(model)
    if args.st:
        # sentence-transformers' CrossEncoder on what `tuner export --format merged` writes: the causal LM, the
        # tokenizer and the chat template that renders the contract's prompt.
        from sentence_transformers import CrossEncoder

        from tuner.chat_template import build_chat_template
        from tuner.contract import document_text

        template = build_chat_template(None)
        if args.model and getattr(load_tokenizer(args.model), "chat_template", None) == template:
            merged_dir = Path(args.model)  # already what a merged export holds: weights, tokenizer, template
        else:
            merged_dir = Path(tempfile.mkdtemp(prefix="tuner-bench-merged-"))
            tokenizer.chat_template = template
            model.save_pretrained(merged_dir)
            tokenizer.save_pretrained(merged_dir)
        st = CrossEncoder(
            str(merged_dir), max_length=args.max_length, device=str(device), model_kwargs={"dtype": dtype}
        )
        st_pairs = [(q, document_text(d)) for q, d, _ in pairs]
        sigmoid = torch.nn.Sigmoid()

        def run_st():
            return st.predict(st_pairs, batch_size=32, activation_fn=sigmoid, show_progress_bar=False).tolist()

        scores, seconds, peak = timed(run_st, device, args.repeats)
        rows.append(("st", "sentence-transformers CrossEncoder (merged export)", scores, seconds, peak, {"batch": 32}))
        del st
        save()
    if not ref_row:
        reference_phase()

    (_, _, ref, t_ref, _, _) = ref_row[0]
    print(f"\nscoring benchmark: {args.shape} shape, {dtype}, {device} [{name}]")
    print(
        f"{n} pairs, mean {mean_tokens:.0f} tokens per prompt (max {max(lengths)}), threads {torch.get_num_threads()}"
    )
    print(f"{'path':52s} {'docs/s':>9s} {'speed-up':>9s} {'peak MiB':>9s} {'max|Δp|':>9s}")
    for _, label, scores, seconds, peak, _ in ref_row + rows:
        delta = max(abs(a - b) for a, b in zip(ref, scores, strict=True))
        print(f"{label:52s} {n / seconds:9.1f} {t_ref / seconds:8.2f}x {peak / 2**20:9.1f} {delta:9.2e}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
