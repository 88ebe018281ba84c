"""Benchmark `tuner serve`: requests/s and p50/p95 latency at several concurrencies, next to offline scoring.

    python scripts/bench_serve.py                          # a tiny random model (CPU-friendly smoke run)
    python scripts/bench_serve.py --model EXPORT_DIR --concurrency 1,8,32,64 --requests 400 --docs 20

Both sides use the same loaded `Reranker` in the same process and run: the offline figures are the ceiling the
server's batching is measured against (`server docs/s ÷ offline docs/s`).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing tuner

WORDS = [
    "wing",
    "lift",
    "drag",
    "thrust",
    "engine",
    "fuel",
    "protein",
    "cell",
    "gene",
    "tumour",
    "vaccine",
    "climate",
    "ocean",
    "graph",
    "theorem",
    "proof",
    "pressure",
    "velocity",
    "turbulence",
    "boundary",
    "layer",
    "mutation",
    "receptor",
    "enzyme",
    "carbon",
    "ice",
    "model",
    "data",
    "network",
]


def workload(n_requests: int, docs: int, doc_words: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n_requests):
        query = " ".join(rng.choice(WORDS) for _ in range(6))
        out.append(
            (
                query,
                [
                    " ".join(rng.choice(WORDS) for _ in range(rng.randint(doc_words // 2, doc_words)))
                    for _ in range(docs)
                ],
            )
        )
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def drive(url: str, requests: list[tuple[str, list[str]]], concurrency: int) -> list[float]:
    """Send every request with `concurrency` clients; return the latencies (seconds)."""
    import httpx

    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=concurrency)) as c:

        async def client(k: int) -> None:
            for i in range(k, len(requests), concurrency):
                query, docs = requests[i]
                start = time.perf_counter()
                r = await c.post("/v1/rerank", json={"query": query, "documents": docs, "return_documents": False})
                r.raise_for_status()
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(client(k) for k in range(concurrency)))
    return latencies


def main() -> None:
    from tuner.cli.common import add_scoring_path_args, scoring_path_kwargs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="export / model directory (default: a random tiny model)")
    parser.add_argument("--concurrency", default="1,4,16,32", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=96, help="requests per concurrency level")
    parser.add_argument("--docs", type=int, default=10, help="documents per request")
    parser.add_argument("--doc-words", type=int, default=60, help="words per document (at most)")
    parser.add_argument("--max-batch-tokens", type=int, help="server token budget per forward pass")
    parser.add_argument("--device", help="cpu, cuda ... (default: cuda if available)")
    parser.add_argument("--dtype", help="bfloat16 / float32 (default: bf16 on GPU, fp32 on CPU)")
    add_scoring_path_args(parser)  # --prefix-reuse, --packing: the served and the offline Reranker alike
    parser.add_argument("--json", help="also write the figures here (JSON, atomically)")
    args = parser.parse_args()

    import torch
    import uvicorn

    from tuner.scoring import Reranker
    from tuner.serve import create_app

    model = args.model
    if model is None:
        from tuner.tiny import write_tiny_model

        model = str(write_tiny_model(Path(tempfile.mkdtemp()) / "tiny", layers=2, hidden=64))
    reranker = Reranker.from_pretrained(
        model, device=args.device, dtype=args.dtype, show_progress=False, **scoring_path_kwargs(args)
    )
    reqs = workload(args.requests, args.docs, args.doc_words)
    n_docs = args.requests * args.docs

    # Offline figures, measured on a worker thread like the server's: on a busy CPU, OpenMP's thread team in the
    # main thread can run many times slower than in a fresh thread, which would flatter the server.
    def offline() -> tuple[float, float]:
        reranker.score(*reqs[0])  # warm-up
        start = time.perf_counter()
        for query, docs in reqs:  # one call per request: no cross-request batching
            reranker.score(query, docs)
        per_request = time.perf_counter() - start
        start = time.perf_counter()
        reranker.score_pairs([(q, d) for q, docs in reqs for d in docs])  # all pairs in one call: the ceiling
        return per_request, time.perf_counter() - start

    timings: list[tuple[float, float]] = []
    worker = threading.Thread(target=lambda: timings.append(offline()))
    worker.start()
    worker.join()
    per_request, one_call = timings[0]

    app = create_app(
        reranker, model_name="bench", max_documents=max(args.docs, 1000), max_batch_tokens=args.max_batch_tokens
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    asyncio.run(drive(url, reqs[:4], 2))  # warm-up

    device = str(reranker.device) + (f" ({torch.cuda.get_device_name()})" if reranker.device.type == "cuda" else "")
    print(f"model {model}  device {device}  dtype {next(reranker.model.parameters()).dtype}")
    print(
        f"{args.requests} requests x {args.docs} documents, <= {args.doc_words} words each; torch threads "
        f"{torch.get_num_threads()}; prefix reuse {args.prefix_reuse}, packing {'on' if args.packing else 'off'}"
    )
    print()
    print(f"{'path':<34}{'req/s':>9}{'docs/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'vs offline':>12}")
    print(
        f"{'offline, one call per request':<34}{args.requests / per_request:>9.1f}{n_docs / per_request:>10.1f}"
        f"{1000 * per_request / args.requests:>10.1f}{'':>10}{1.0:>12.2f}"
    )
    print(
        f"{'offline, all pairs in one call':<34}{'':>9}{n_docs / one_call:>10.1f}{'':>10}{'':>10}"
        f"{per_request / one_call:>12.2f}"
    )
    record = {
        "model": str(model),
        "device": device,
        "dtype": str(next(reranker.model.parameters()).dtype),
        "requests": args.requests,
        "docs_per_request": args.docs,
        "doc_words_max": args.doc_words,
        "prefix_reuse": args.prefix_reuse,
        "packing": args.packing,
        "offline_per_request_docs_per_s": round(n_docs / per_request, 2),
        "offline_one_call_docs_per_s": round(n_docs / one_call, 2),
        "server": [],
    }

    def save() -> None:
        """The JSON so far, atomically: after the offline figures and after each concurrency level, so that a run
        cut short by a time limit (scripts/gpu_bench.sh) keeps what it measured."""
        if not args.json:
            return
        import json

        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(out)

    save()
    for concurrency in [int(x) for x in args.concurrency.split(",")]:
        start = time.perf_counter()
        latencies = asyncio.run(drive(url, reqs, concurrency))
        wall = time.perf_counter() - start
        p50 = statistics.median(latencies)
        p95 = statistics.quantiles(latencies, n=20)[-1] if len(latencies) >= 20 else max(latencies)
        label = f"server, {concurrency} concurrent clients"
        print(
            f"{label:<34}{args.requests / wall:>9.1f}{n_docs / wall:>10.1f}{1000 * p50:>10.1f}{1000 * p95:>10.1f}"
            f"{per_request / wall:>12.2f}"
        )
        record["server"].append(
            {
                "concurrency": concurrency,
                "docs_per_s": round(n_docs / wall, 2),
                "p50_ms": round(1000 * p50, 1),
                "p95_ms": round(1000 * p95, 1),
                "vs_offline_per_request": round(per_request / wall, 3),
                "vs_offline_one_call": round(one_call / wall, 3),
            }
        )
        save()
    if args.json:
        print(f"wrote {args.json}")
    server.should_exit = True
    thread.join(30)


if __name__ == "__main__":
    main()
