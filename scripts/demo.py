#!/usr/bin/env python
"""`make demo`: the embedded default end to end on CPU.

Trains `recipes/tiny-cpu.yaml` (a random tiny Qwen3 + LoRA on SciFact train groups with BM25 negatives), evaluates
BM25, the base and the tuned model on SciFact *test* queries (BM25 top-k reranked; no training query is ever
evaluated), scores a sample query with the saved adapter, and prints the figures and where the outputs are.

    python scripts/demo.py [--recipe recipes/tiny-cpu.yaml] [section.key=value ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's tuner, also when not installed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "tiny-cpu.yaml"), help="recipe to run")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo never reaches a hub
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.chdir(ROOT)  # the recipe's relative paths (data/, runs/) are relative to the checkout

    from tuner.config import load_config
    from tuner.train import train
    from tuner.train_setup import output_dir_for

    config = load_config(args.recipe, args.overrides)
    out = output_dir_for(config)
    # A demo starts from scratch: train() drops an earlier demo's checkpoints and outputs (output.overwrite), once it
    # holds the run lock (not here: a demo still training into `out` keeps them)
    config.output.overwrite = True
    print(f"tuner demo: training {args.recipe} -> {out}", flush=True)

    start = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - start
    dev = result["metrics"]["dev"]
    metrics = list(config.eval.metrics)
    steps = result["metrics"]["train"]["global_step"]
    base_name = "random tiny" if config.model.tiny else config.model.name_or_path
    lines = ["| system | collection | " + " | ".join(metrics) + " |", "|---|---|" + "---:|" * len(metrics)]
    for section, note in (("dev", "in-domain test queries, never trained on"), ("ood", "out-of-domain check")):
        record = result["metrics"].get(section) or {}
        for label, key in (
            ("BM25 (first stage)", "first_stage"),
            (f"base ({base_name})", "base"),
            (f"tuned (base + LoRA, {steps} steps)", "final"),
        ):
            values = record.get(key)
            if values:
                name = f"{record.get('name', section)} ({note})"
                lines.append(f"| {label} | {name} | " + " | ".join(f"{values[m]:.4f}" for m in metrics) + " |")
    table = "\n".join(lines)
    print(f"\nBM25 top-{config.eval.top_k} reranked\n{table}")
    if dev.get("best"):
        print(f"best {metrics[0]} during training: {dev['best']['value']:.4f} ({dev['best']['checkpoint']})")
    if dev.get("base") and dev.get("final"):
        delta = dev["final"][metrics[0]] - dev["base"][metrics[0]]
        print(f"tuned - base on {dev.get('name', 'dev')}: {delta:+.4f} {metrics[0]}")
    # where the gain comes from: the test queries whose relevant documents the training data holds, and the rest
    split = []
    for name, part in ((dev.get("training_overlap") or {}).get("parts") or {}).items():
        st = part.get("final_vs_base")
        if st:
            p = "< 0.0001" if st["p_randomization"] < 1e-4 else f"= {st['p_randomization']:.4f}"
            split.append(
                f"- {name} ({part['queries']} queries: {part['meaning']}): base {part['base'][metrics[0]]:.4f} -> "
                f"tuned {part['final'][metrics[0]]:.4f} ({st['delta']:+.4f}, paired randomization p {p})"
            )
    if split:
        print(f"\n{metrics[0]} by what the training data holds\n" + "\n".join(split))
    split_md = f"\n{metrics[0]} by what the training data holds:\n\n" + "\n".join(split) + "\n" if split else ""
    (out / "demo_report.md").write_text(f"# tuner demo ({config.name})\n\n{table}\n{split_md}", encoding="utf-8")

    # The saved adapter, loaded the way a user would, on one test query and its BM25 top 3.
    from tuner.data.beir import load_beir
    from tuner.retrieval import BM25
    from tuner.scoring import Reranker

    reranker = Reranker.from_pretrained(
        result["adapter_dir"], device="cpu", dtype="float32", max_length=config.model.max_length
    )
    test = load_beir(config.eval.beir, config.eval.split)
    qid = next(iter(test.qrels))
    top = BM25(test.corpus, cache_dir=out / "cache").search({qid: test.queries[qid]}, k=3)[qid]
    docs = [test.corpus[d] for d, _ in top]
    # raw yes−no logits: the tiny model's probabilities sit near 0, while its ranking is what was trained
    logits = reranker.score(test.queries[qid], docs, normalize=False)
    print(f"\nsample query {qid}: {test.queries[qid]!r} (yes−no logit, BM25 top 3)")
    for (doc_id, _), logit in zip(top, logits, strict=True):
        mark = "relevant" if test.qrels[qid].get(doc_id, 0) > 0 else ""
        print(f"  {logit:+7.2f}  {doc_id:<10} {test.corpus[doc_id]['title'][:70]}  {mark}")

    # One command from adapter to every format, each loaded back and parity-checked before it is kept.
    from tuner.export import export

    exports = out / "export"
    report = export(out, exports, formats=("adapter", "merged", "seq-cls"), device="cpu", overwrite=True)
    worst = max(r["max_abs_logit_delta"] for r in report["formats"].values())
    print(f"\nexported adapter, merged and seq-cls to {exports} (parity gate passed, max |Δ logit| {worst:.1e})")

    print(f"\ntrained and evaluated in {seconds / 60:.1f} min")
    print(f"adapter (PEFT + tokenizer + tuner.json): {result['adapter_dir']}")
    print(f"metrics: {out / 'metrics.json'}   config: {out / 'config.yaml'}   log: {out / 'logs' / 'train.log'}")
    print(f"score with it:  tuner score --model {result['adapter_dir']} --query '...' --documents docs.jsonl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
