#!/usr/bin/env python
"""Does training on grades pay? Cranfield (graded 1-4) split by query, the tiny recipe trained with
`data.positives_per_group` 1 (grades unused), 2 and 4 (graded listwise targets), each evaluated on the held-out
queries (BM25 top-k reranked, graded nDCG) against the base and BM25. Every arm has the same group size (8: the
tiny recipe's 4 documents leave no room for 4 positives), steps and seed, so it sees as many documents.

    python scripts/graded_cranfield.py [--arms 1,2,4] [--steps 300] [--seeds 42] [--out runs/graded-cranfield]

The split is seeded and by query: a test query is never trained on. Cranfield's score-0 qrel of each query (the
paper the question was written from, see data/cranfield/README.md) is left out of the training qrels: it is no
positive there (BM25 may still draw it as a negative, in every arm alike); the test qrels keep it, as every
evaluator does. Prints a table and writes
`<out>/graded.json`. About 2.5 minutes per arm and seed on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def split_cranfield(source: Path, folder: Path, train_queries: int, seed: int) -> dict[str, int]:
    """A BEIR folder with `qrels/train.tsv` (train_queries queries, score-0 rows left out) and `qrels/test.tsv`."""
    rows = [line.split("\t") for line in (source / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    qids = sorted({r[0] for r in rows}, key=int)
    random.Random(seed).shuffle(qids)
    train = set(qids[:train_queries])
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    for name in ("corpus.jsonl.gz", "queries.jsonl"):
        shutil.copyfile(source / name, folder / name)
    header = "query-id\tcorpus-id\tscore\n"
    train_rows = [r for r in rows if r[0] in train and int(r[2]) > 0]
    test_rows = [r for r in rows if r[0] not in train]
    for split, part in (("train", train_rows), ("test", test_rows)):
        (folder / "qrels" / f"{split}.tsv").write_text(header + "".join("\t".join(r) + "\n" for r in part))
    return {"train_queries": len(train), "test_queries": len(qids) - len(train), "train_qrels": len(train_rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default="1,2,4", help="data.positives_per_group values to compare")
    parser.add_argument("--steps", type=int, default=300, help="train.max_steps of each run")
    parser.add_argument("--seeds", default="42", help="train.seed values (each arm runs once per seed)")
    parser.add_argument("--train-queries", type=int, default=150, help="Cranfield queries trained on (of 225)")
    parser.add_argument("--group-size", type=int, default=8, help="data.group_size of every arm (above the largest)")
    parser.add_argument("--top-k", type=int, default=30, help="BM25 candidates reranked per test query")
    parser.add_argument("--out", default=str(ROOT / "runs" / "graded-cranfield"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.chdir(ROOT)

    from tuner.config import load_config
    from tuner.train import train

    out = Path(args.out)
    beir = out / "beir"
    split = split_cranfield(ROOT / "data" / "cranfield", beir, args.train_queries, seed=0)
    print(f"Cranfield split by query: {split}", flush=True)
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for k in [int(a) for a in args.arms.split(",")]:
            run = out / f"k{k}-seed{seed}"
            config = load_config(
                ROOT / "recipes" / "tiny-cpu.yaml",
                [
                    f"data.beir={beir}",
                    "data.split=train",
                    f"data.positives_per_group={k}",
                    f"data.group_size={args.group_size}",
                    f"train.max_steps={args.steps}",
                    f"train.seed={seed}",
                    "train.save_steps=0",
                    f"eval.beir={beir}",
                    "eval.split=test",
                    f"eval.top_k={args.top_k}",
                    "eval.metrics=[ndcg@10,ndcg@5,mrr@10]",
                    "eval.ood=null",
                    f"output.dir={run}",
                    "output.overwrite=true",
                ],
            )
            dev = train(config)["metrics"]["dev"]
            results.append(
                {
                    "positives_per_group": k,
                    "seed": seed,
                    **{key: dev.get(key) for key in ("first_stage", "base", "final")},
                }
            )
            print(json.dumps(results[-1]), flush=True)
    (out / "graded.json").write_text(
        json.dumps({"split": split, "top_k": args.top_k, "steps": args.steps, "runs": results}, indent=1) + "\n"
    )
    metrics = ["ndcg@10", "ndcg@5", "mrr@10"]
    print("\n| system | seed | " + " | ".join(metrics) + " |\n|---|---:|" + "---:|" * len(metrics))
    first = results[0]
    for label, values in (("BM25", first["first_stage"]), ("base", first["base"])):
        print(f"| {label} | | " + " | ".join(f"{values[m]:.4f}" for m in metrics) + " |")
    for r in results:
        label = f"tuned, positives_per_group {r['positives_per_group']}"
        print(f"| {label} | {r['seed']} | " + " | ".join(f"{r['final'][m]:.4f}" for m in metrics) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
