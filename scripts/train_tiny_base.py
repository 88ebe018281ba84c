"""Pretrain the tiny general base reranker shipped in models/tiny-reranker (CPU, plain PyTorch loop).

    python scripts/make_base_data.py --out runs/base-data.jsonl
    python scripts/train_tiny_base.py --data runs/base-data.jsonl --out models/tiny-reranker --minutes 10

The model is a Qwen3ForCausalLM (`tuner.tiny.tiny_config` with two 128-wide heads, 3 layers, hidden 64, real
151,669-token vocabulary, tied embeddings) scored exactly as served: prompts from `tuner.contract.PromptEncoder`,
batches from `tuner.head.collate`, logits from `tuner.head.yes_no_logits`. It starts from the lexical-matching
weights of `tiny_base_init.py` (`--init random` for plain random weights, which do not learn in this budget) and
is trained on the groups of `make_base_data.py`. Loss: listwise softmax cross-entropy over each group (positive
first) plus `--distill` x KL towards the softmax of the group's BM25 teacher scores. Optimiser: AdamW, linear
warm-up then cosine decay over the wall-clock budget (so a run ends on time on a slow, shared CPU; the steps
reached are logged in `training_log.json`), or over `--max-steps` when given (same steps on any machine).

Only the embedding rows of tokens that occur in the training prompts are trained (a small trainable table
added to the frozen full table and merged into it on save): the other ~135k rows keep their initial values,
and the step does not pay for a dense 151k x hidden gradient. The `yes` and `no` rows (the scoring head, tied
to the embedding) are never in that table.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's `tuner`, not an installed copy

from tuner.contract import PromptEncoder, load_tokenizer
from tuner.data.groups import load_groups
from tuner.head import collate, yes_no_logits
from tuner.tiny import tiny_config

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN_COLLECTIONS = ("medline", "cisi", "cranfield")


class DeltaEmbedding(nn.Module):
    """Frozen full embedding + trainable rows for a set of active token ids (merged back by `merge`)."""

    def __init__(self, base: nn.Embedding, active_ids: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        vocab = base.weight.shape[0]
        remap = torch.full((vocab,), len(active_ids), dtype=torch.long)
        remap[active_ids] = torch.arange(len(active_ids))
        self.register_buffer("remap", remap, persistent=False)
        self.register_buffer("active_ids", active_ids, persistent=False)
        self.delta = nn.Parameter(torch.zeros(len(active_ids), base.weight.shape[1]))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        table = torch.cat([self.delta, self.delta.new_zeros(1, self.delta.shape[1])])  # last row: inactive ids
        return self.base(input_ids) + F.embedding(self.remap[input_ids], table)

    @torch.no_grad()
    def merge(self) -> nn.Embedding:
        self.base.weight[self.active_ids] += self.delta.to(self.base.weight.dtype)
        return self.base


def group_loss(logits: torch.Tensor, teacher: torch.Tensor | None, distill: float, temperature: float) -> torch.Tensor:
    """Listwise CE (positive at column 0) + `distill` x KL(teacher softmax || student softmax). Shapes [groups, n]."""
    log_p = logits.log_softmax(-1)
    loss = -log_p[:, 0].mean()
    if teacher is not None and distill > 0:
        target = (teacher / temperature).softmax(-1)
        loss = loss + distill * F.kl_div(log_p, target, reduction="batchmean")
    return loss


def ndcg_at_10(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> float:
    """Mean nDCG@10 over the judged queries of `run` (pytrec_eval)."""
    import pytrec_eval

    judged = {q: r for q, r in qrels.items() if q in run}
    evaluator = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10"})
    per_query = evaluator.evaluate({q: run[q] for q in judged})
    return sum(v["ndcg_cut_10"] for v in per_query.values()) / max(1, len(per_query))


def rerank_ndcg(model, encoder: PromptEncoder, beir, candidates, batch: int = 32) -> float:
    """nDCG@10 of `model` reranking `candidates` ({qid: [doc ids]}) of a BEIR split."""
    from tuner.contract import document_text

    triples, keys = [], []
    for qid, docs in candidates.items():
        for d in docs:
            triples.append((beir.queries[qid], document_text(beir.corpus[d]), None))
            keys.append((qid, d))
    ids = encoder.encode_many(triples)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    scores: dict[int, float] = {}
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            b = collate([ids[i] for i in rows], encoder.tokenizer.pad_token_id)
            out = yes_no_logits(
                model, b["input_ids"], b["attention_mask"], b["last_index"], encoder.yes_id, encoder.no_id
            )
            scores.update(zip(rows, out.tolist(), strict=True))
    run: dict[str, dict[str, float]] = {}
    for i, (qid, d) in enumerate(keys):
        run.setdefault(qid, {})[d] = scores[i]
    return ndcg_at_10(run, beir.qrels)


def corpus_token_ids(tokenizer) -> list[list[int]]:
    """Token ids of every document of the pretraining collections (for document frequencies)."""
    from tuner.contract import document_text
    from tuner.data.beir import load_beir

    texts = []
    for name in PRETRAIN_COLLECTIONS:
        texts += [document_text(d) for d in load_beir(ROOT / "data" / name, "test").corpus.values()]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="runs/base-data.jsonl", help="groups from make_base_data.py")
    parser.add_argument("--out", default="models/tiny-reranker")
    parser.add_argument("--init", choices=("lexical", "random"), default="lexical", help="see tiny_base_init.py")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=160, help="prompt tokens (documents are cut)")
    parser.add_argument("--max-query-words", type=int, default=40, help="skip longer training queries")
    parser.add_argument("--eval-max-length", type=int, default=256, help="prompt tokens for the Medline check")
    parser.add_argument("--groups-per-step", type=int, default=4)
    parser.add_argument("--negatives", type=int, default=4, help="negatives per group")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--embed-lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--distill", type=float, default=1.0, help="weight of the BM25-teacher KL term")
    parser.add_argument("--temperature", type=float, default=3.0, help="BM25 score temperature for the teacher")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget (0: none)")
    parser.add_argument(
        "--max-steps", type=int, default=0, help="train this many steps, schedule by steps (0: by time)"
    )
    parser.add_argument("--eval-every", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    from transformers import Qwen3ForCausalLM

    tokenizer = load_tokenizer()
    encoder = PromptEncoder(tokenizer, max_length=args.max_length)
    groups = load_groups(args.data)
    n_dev = 200
    dev_groups, train_groups = groups[:n_dev], groups[n_dev:]

    def encode_groups(gs) -> tuple[list[list[list[int]]], list[list[float]]]:
        """Prompt ids per group (positive first) in one tokenizer call; groups whose query does not fit the
        prompt budget (some long CISI requests) or that have too few negatives are skipped."""
        gs = [g for g in gs if len(g.neg) >= args.negatives and len(g.query.split()) <= args.max_query_words]
        triples = [(g.query, d, None) for g in gs for d in [g.pos[0], *g.neg[: args.negatives]]]
        ids = encoder.encode_many(triples)
        n = args.negatives + 1
        teach = [[*(g.pos_scores or [0.0])[:1], *(g.neg_scores or [0.0] * n)[: args.negatives]] for g in gs]
        return [ids[i * n : (i + 1) * n] for i in range(len(gs))], teach

    t0 = time.time()
    # tokenizing ~60k prompts takes minutes on a busy CPU: keep them next to the data for reruns
    cache = Path(f"{args.data}.ids-{args.max_length}-{args.negatives}-{args.max_query_words}.pt")
    if cache.is_file():
        encoded, teacher = torch.load(cache)
    else:
        encoded, teacher = encode_groups(train_groups)
        torch.save((encoded, teacher), cache)
    print(f"encoded {len(encoded)} groups in {time.time() - t0:.0f}s")

    if args.init == "lexical":
        from tiny_base_init import base_config, lexical_init, token_idf

        model = Qwen3ForCausalLM(base_config(args.layers))
        idf = token_idf(corpus_token_ids(tokenizer), model.config.vocab_size)
        lexical_init(
            model,
            idf,
            sink_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
            query_marker_id=tokenizer.convert_tokens_to_ids("Query"),
            doc_marker_id=tokenizer.convert_tokens_to_ids("<Document"),
            yes_id=encoder.yes_id,
            no_id=encoder.no_id,
            seed=args.seed,
        )
    else:
        model = Qwen3ForCausalLM(tiny_config(args.layers, args.hidden, args.heads, args.kv_heads))
    base_embed = model.model.embed_tokens
    base_embed.weight.requires_grad_(False)  # also the tied lm_head: the yes/no head stays as initialised
    active = sorted({t for e in encoded for seq in e for t in seq} - {encoder.yes_id, encoder.no_id})
    model.model.embed_tokens = DeltaEmbedding(base_embed, torch.tensor(active))
    print(f"trainable embedding rows: {len(active)}")

    layer_params = [p for n, p in model.named_parameters() if p.requires_grad and "delta" not in n]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in layer_params if p.ndim >= 2], "weight_decay": 0.01, "lr": args.lr},
            {"params": [p for p in layer_params if p.ndim < 2], "weight_decay": 0.0, "lr": args.lr},
            {"params": [model.model.embed_tokens.delta], "weight_decay": 0.0, "lr": args.embed_lr},
        ]
    )
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    budget_s = args.minutes * 60 if args.minutes > 0 else float("inf")

    from tuner.data.beir import load_beir

    medline = load_beir(ROOT / "data" / "medline", "test")
    from tuner.retrieval import BM25

    cands = {q: [d for d, _ in hits] for q, hits in BM25(medline.corpus).search(medline.queries, k=20).items()}
    dev_encoded, _ = encode_groups(dev_groups)
    eval_encoder = PromptEncoder(tokenizer, max_length=args.eval_max_length)

    def evaluate(step: int) -> dict:
        model.eval()
        with torch.inference_mode():
            hits = 0
            for e in dev_encoded:
                b = collate(e, tokenizer.pad_token_id)
                lg = yes_no_logits(
                    model, b["input_ids"], b["attention_mask"], b["last_index"], encoder.yes_id, encoder.no_id
                )
                hits += int(lg.argmax().item() == 0)
        report = {
            "step": step,
            "dev_group_acc": hits / len(dev_encoded),
            "medline_ndcg10": rerank_ndcg(model, eval_encoder, medline, cands),
            "minutes": (time.time() - t_start) / 60,
        }
        print(json.dumps(report), flush=True)
        model.train()
        return report

    t_start = time.time()
    history = [evaluate(0)]
    step, order, cursor, running = 0, list(range(len(encoded))), len(encoded), []
    model.train()
    while True:
        elapsed = time.time() - t_start
        if elapsed > budget_s or (args.max_steps and step >= args.max_steps):
            break
        if cursor + args.groups_per_step > len(order):
            random.shuffle(order)
            cursor = 0
        batch_idx = order[cursor : cursor + args.groups_per_step]
        cursor += args.groups_per_step
        # warm-up by steps; cosine decay over --max-steps when given (a rerun takes the same steps on any CPU),
        # else over the wall-clock budget
        frac = step / args.max_steps if args.max_steps else min(1.0, elapsed / budget_s)
        scale = min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * frac))
        for g, lr in zip(optimizer.param_groups, base_lrs, strict=True):
            g["lr"] = lr * scale
        rows = [seq for i in batch_idx for seq in encoded[i]]
        b = collate(rows, tokenizer.pad_token_id)
        logits = yes_no_logits(
            model, b["input_ids"], b["attention_mask"], b["last_index"], encoder.yes_id, encoder.no_id
        )
        t = torch.tensor([teacher[i] for i in batch_idx]) if args.distill > 0 else None
        loss = group_loss(logits.view(len(batch_idx), -1), t, args.distill, args.temperature)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        running.append(loss.item())
        if step % 100 == 0:
            print(f"step {step} loss {sum(running) / len(running):.4f} {elapsed / 60:.1f} min", flush=True)
            running = []
        if step % args.eval_every == 0:
            history.append(evaluate(step))
    history.append(evaluate(step))

    model.model.embed_tokens = model.model.embed_tokens.merge()
    model.tie_weights()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    summary = {
        "command_args": vars(args),
        "steps": step,
        "train_minutes": (time.time() - t_start) / 60,
        "train_groups": len(encoded),
        "history": history,
    }
    (out / "training_log.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"saved {out} after {step} steps")


if __name__ == "__main__":
    main()
