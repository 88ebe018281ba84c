#!/usr/bin/env python
"""Does training on grades pay? Cranfield (graded 1-4) split by query, the tiny recipe trained with
`data.positives_per_group` 1 (grades unused), 2 and 4 (graded listwise targets).

Each run is evaluated on the held-out queries against the base and BM25: BM25 top-k reranked, graded nDCG, and
`grade_order`, the fraction of pairs of relevant documents of different grades (per test query) ordered by grade.
Every arm has the same group size (8: the tiny recipe's 4 documents leave no room for 4 positives), steps and
seed, so it sees as many documents.

    python scripts/graded_cranfield.py [--arms 1,2,4] [--steps 300] [--seeds 42] [--out runs/graded-cranfield]
    python scripts/graded_cranfield.py --recipe recipes/qwen3-reranker-4b-lora.yaml --steps 600   (the 4B, on a GPU)

The split is seeded and by query: a test query is never trained on. Cranfield's score-0 qrel of each query (the
paper the question was written from, see data/cranfield/README.md) is no positive in training and is taken out of
the mined negatives (`<out>/train-seed<N>.jsonl`, mined with the recipe's settings); the test qrels keep it, as
every evaluator does. Prints a table and writes `<out>/graded.json`. About 5 minutes per arm and seed on 2 CPU cores.
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


def split_cranfield(source: Path, folder: Path, train_queries: int, seed: int) -> tuple[dict[str, int], dict]:
    """A BEIR folder with `qrels/train.tsv` (train_queries queries, score-0 rows left out) and `qrels/test.tsv`;
    also returns each training query's score-0 documents (its source paper)."""
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
    sources: dict[str, set[str]] = {}
    for q, d, g in rows:
        if q in train and int(g) == 0:
            sources.setdefault(q, set()).add(d)
    counts = {"train_queries": len(train), "test_queries": len(qids) - len(train), "train_qrels": len(train_rows)}
    return counts, sources


def training_groups(beir: Path, sources: dict, config, ungraded: bool, path: Path) -> dict[str, int]:
    """Mine the training split as `tuner train` would (the recipe's settings and seed), then drop each query's
    source paper from its negatives (data/cranfield/README.md: not a negative) and, `ungraded`, the grades."""
    from tuner.data.beir import load_beir
    from tuner.data.groups import text_key, write_groups
    from tuner.mining import mine_negatives

    data = load_beir(beir, "train")
    d = config.data
    groups = mine_negatives(
        data,
        depth=d.mine_depth,
        range_min=d.mine_range_min,
        num_negatives=d.num_negatives,
        seed=config.train.seed,
        cache_dir=path.parent / "cache",
        show_progress=False,
    )
    dropped = 0
    for g in groups:
        banned = {text_key(data.corpus[doc]) for doc in sources.get(g.qid, ())}
        kept = [n for n in g.neg if text_key(n) not in banned]
        dropped += len(g.neg) - len(kept)
        g.neg = kept
        if ungraded:
            g.pos_grades = None
    write_groups(groups, path)
    return {"groups": len(groups), "source_papers_dropped_from_negatives": dropped}


def grade_order(reranker, beir: Path, split: str) -> float:
    """Among each query's relevant documents (of `split`): the fraction of pairs of different grades that the
    reranker orders by grade (ties count half), over all pairs. What graded targets teach, apart from nDCG, which
    also counts relevant above irrelevant."""
    from tuner.data.beir import load_beir

    data = load_beir(beir, split)
    right = pairs = 0.0
    for qid, judged in data.qrels.items():
        docs = [(d, g) for d, g in judged.items() if g > 0]
        scores = reranker.score(data.queries[qid], [data.corpus[d] for d, _ in docs], normalize=False)
        for i in range(len(docs)):
            for j in range(i + 1, len(docs)):
                if docs[i][1] != docs[j][1]:
                    pairs += 1
                    agree = (scores[i] - scores[j]) * (docs[i][1] - docs[j][1])
                    right += 0.5 if agree == 0 else float(agree > 0)
    return right / pairs


def grade_orders(config, adapter, beir: Path) -> dict[str, float]:
    from tuner.scoring import Reranker

    m = config.model
    kw = {"dtype": m.dtype, "max_length": m.max_length, "show_progress": False}  # the device: cuda when there is one
    reranker = Reranker.from_pretrained(m.name_or_path, adapter=adapter, **kw)
    return {f"grade_order_{split}": grade_order(reranker, beir, split) for split in ("test", "train")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default="1,2,4", help="data.positives_per_group values to compare")
    parser.add_argument("--steps", type=int, default=300, help="train.max_steps of each run")
    parser.add_argument("--seeds", default="42", help="train.seed values (each arm runs once per seed)")
    parser.add_argument("--train-queries", type=int, default=150, help="Cranfield queries trained on (of 225)")
    parser.add_argument("--group-size", type=int, default=8, help="data.group_size of every arm (above the largest)")
    parser.add_argument(
        "--negatives", type=int, default=None, help="instead of --group-size: group_size = positives + this per arm"
    )
    parser.add_argument(
        "--ungraded", action="store_true", help="train on the same positives without grades (the test keeps them)"
    )
    parser.add_argument("--top-k", type=int, default=30, help="BM25 candidates reranked per test query")
    parser.add_argument("--out", default=str(ROOT / "runs" / "graded-cranfield"))
    parser.add_argument(
        "--recipe", default=str(ROOT / "recipes" / "tiny-cpu.yaml"), help="recipe of every run (a GPU one for 4B)"
    )
    parser.add_argument("overrides", nargs="*", help="more section.key=value overrides for every run")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.chdir(ROOT)

    from tuner.config import load_config
    from tuner.train import train

    out = Path(args.out)
    beir = out / "beir"
    split, sources = split_cranfield(ROOT / "data" / "cranfield", beir, args.train_queries, 0)
    print(f"Cranfield split by query: {split}", flush=True)
    metrics = ["ndcg@10", "ndcg@5", "mrr@10"]
    results, base, mined_seeds = [], None, set()
    for seed in [int(s) for s in args.seeds.split(",")]:
        for k in [int(a) for a in args.arms.split(",")]:
            size = args.group_size if args.negatives is None else k + args.negatives
            tag = "-ungraded" if args.ungraded else ""
            run = out / f"k{k}-g{size}-seed{seed}{tag}"
            overrides = [
                "data.beir=null",
                f"data.train_file={out / f'train-seed{seed}{tag}.jsonl'}",
                f"data.positives_per_group={k}",
                f"data.group_size={size}",
                f"train.max_steps={args.steps}",
                f"train.seed={seed}",
                "train.save_steps=0",
                f"eval.beir={beir}",
                "eval.split=test",
                f"eval.top_k={args.top_k}",
                f"eval.metrics=[{','.join(metrics)}]",
                "eval.ood=null",
                f"output.dir={run}",
                "output.overwrite=true",
            ]
            config = load_config(args.recipe, overrides + args.overrides)
            if seed not in mined_seeds:  # once per seed in this call: a file left by another split is never read
                mined = training_groups(beir, sources, config, args.ungraded, Path(config.data.train_file))
                print(f"training groups (seed {seed}): {mined}", flush=True)
                mined_seeds.add(seed)
            result = train(config)
            dev = result["metrics"]["dev"]
            if base is None:
                base = {"bm25": dev["first_stage"], "base": {**dev["base"], **grade_orders(config, None, beir)}}
            final = {**dev["final"], **grade_orders(config, result["adapter_dir"], beir)}
            results.append({"positives_per_group": k, "group_size": size, "seed": seed, "final": final})
            print(json.dumps(results[-1]), flush=True)
    report = {"split": split, "top_k": args.top_k, "steps": args.steps, **base, "runs": results}
    (out / "graded.json").write_text(json.dumps(report, indent=1) + "\n")
    columns = [*metrics, "grade_order_test", "grade_order_train"]
    print("\n| system | group | seed | " + " | ".join(columns) + " |\n|---|---:|---:|" + "---:|" * len(columns))
    for label, values in (("BM25", base["bm25"]), ("base", base["base"])):
        print(f"| {label} | | | " + " | ".join(f"{values[m]:.4f}" if m in values else "" for m in columns) + " |")
    for r in results:
        label = f"tuned, positives_per_group {r['positives_per_group']}"
        cells = " | ".join(f"{r['final'][m]:.4f}" for m in columns)
        print(f"| {label} | {r['group_size']} | {r['seed']} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
