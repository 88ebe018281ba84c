"""Evidence for the tiny base reranker: SciFact test nDCG@10 of BM25, a random model of the same shape, the
base, and the base after a few minutes of LoRA on SciFact train (plain PyTorch loop, CPU).

    PYTHONPATH=. python scripts/eval_tiny_base.py --model models/tiny-reranker --k 20 --lora-minutes 6

All rerankers score BM25's top-k of each SciFact test query through `tuner.scoring.Reranker` (the serving
path); nDCG@10 by pytrec_eval. Also written as JSON to `--out`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's `tuner`, not an installed copy

from train_tiny_base import ndcg_at_10

from tuner.contract import document_text, load_tokenizer
from tuner.data.beir import load_beir
from tuner.head import collate, yes_no_logits
from tuner.retrieval import BM25
from tuner.scoring import Reranker

ROOT = Path(__file__).resolve().parents[1]


def rerank(reranker: Reranker, beir, run) -> float:
    """nDCG@10 of `reranker` on the candidates of `run` ({qid: [(doc id, bm25)]})."""
    pairs, keys = [], []
    for qid, hits in run.items():
        for d, _ in hits:
            pairs.append((beir.queries[qid], document_text(beir.corpus[d])))
            keys.append((qid, d))
    scores = reranker.score_pairs(pairs, normalize=False)
    out: dict[str, dict[str, float]] = {}
    for (qid, d), s in zip(keys, scores, strict=True):
        out.setdefault(qid, {})[d] = s
    return ndcg_at_10(out, beir.qrels)


def lora_adapt(model, tokenizer, groups, minutes: float, max_length: int, lr: float, seed: int, per_step: int = 4):
    """LoRA r16 (all linear layers) on `groups` (1 positive + 3 negatives) with listwise CE, for `minutes`."""
    from peft import LoraConfig, get_peft_model

    from tuner.contract import PromptEncoder

    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    encoder = PromptEncoder(tokenizer, max_length=max_length)
    groups = [g for g in groups if len(g.neg) >= 3]
    ids = encoder.encode_many([(g.query, d, None) for g in groups for d in [g.pos[0], *g.neg[:3]]])
    encoded = [ids[i * 4 : (i + 1) * 4] for i in range(len(groups))]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    start, step, losses = time.time(), 0, []
    budget = minutes * 60
    order: list[int] = []
    while time.time() - start < budget:
        if len(order) < per_step:
            order = list(range(len(encoded)))
            rng.shuffle(order)
        batch = [order.pop() for _ in range(per_step)]
        frac = (time.time() - start) / budget
        for g in optimizer.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
        b = collate([s for i in batch for s in encoded[i]], tokenizer.pad_token_id)
        logits = yes_no_logits(
            model, b["input_ids"], b["attention_mask"], b["last_index"], encoder.yes_id, encoder.no_id
        )
        loss = -logits.view(per_step, 4).log_softmax(-1)[:, 0].mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        step += 1
    model.eval()
    first, last = losses[: min(50, len(losses))], losses[-min(50, len(losses)) :]
    info = {
        "steps": step,
        "minutes": (time.time() - start) / 60,
        "loss_first50": sum(first) / len(first),
        "loss_last50": sum(last) / len(last),
        "train_groups": len(encoded),
    }
    return model, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "tiny-reranker"))
    parser.add_argument("--k", type=int, default=20, help="BM25 candidates per query")
    parser.add_argument("--max-length", type=int, default=256, help="prompt tokens when reranking")
    parser.add_argument("--lora-minutes", type=float, default=6.0, help="0 skips the LoRA check")
    parser.add_argument("--lora-max-length", type=int, default=224)
    parser.add_argument("--lora-lr", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-random", action="store_true")
    parser.add_argument("--out", default="runs/eval-tiny-base.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import Qwen3ForCausalLM

    tokenizer = load_tokenizer()
    test = load_beir(ROOT / "data" / "scifact", "test")
    run = BM25(test.corpus).search({q: test.queries[q] for q in test.qrels}, k=args.k)
    report: dict = {"k": args.k, "max_length": args.max_length, "queries": len(run)}
    report["bm25"] = ndcg_at_10({q: dict(h) for q, h in run.items()}, test.qrels)
    print(json.dumps(report), flush=True)

    def timed(name: str, reranker: Reranker) -> None:
        t = time.time()
        report[name] = rerank(reranker, test, run)
        report[f"{name}_seconds"] = round(time.time() - t, 1)
        print(json.dumps({name: report[name], "seconds": report[f"{name}_seconds"]}), flush=True)

    base = Reranker.from_pretrained(args.model, dtype=torch.float32, max_length=args.max_length, show_progress=False)
    if not args.skip_random:
        torch.manual_seed(args.seed)
        rand = Qwen3ForCausalLM(copy.deepcopy(base.model.config)).float().eval()  # same shape, random weights
        timed("random", Reranker(rand, tokenizer, max_length=args.max_length, show_progress=False))
    timed("base", base)

    if args.lora_minutes > 0:
        from tuner.mining import mine_negatives

        train = load_beir(ROOT / "data" / "scifact", "train")
        groups = mine_negatives(train, num_negatives=3, seed=args.seed, show_progress=False)
        model, info = lora_adapt(
            base.model, tokenizer, groups, args.lora_minutes, args.lora_max_length, args.lora_lr, args.seed
        )
        report["lora"] = info
        print(json.dumps({"lora": info}), flush=True)
        timed("tuned", Reranker(model, tokenizer, max_length=args.max_length, show_progress=False))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
