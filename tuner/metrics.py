"""Ranking metrics: nDCG@k, MRR@k, MAP@k, Recall@k, Precision@k. Pure Python, no model, no I/O.

The definitions are trec_eval's (the ones pytrec_eval and BEIR report), so figures are comparable with
published numbers:

- Ranking: documents are ordered by score descending, ties by document id descending (byte order), exactly
  as trec_eval orders a run; the order of the input list does not matter. A document listed twice counts
  once (its first score).
- Relevance: a qrels grade >= 1 is relevant; grade 0 and unjudged documents are not relevant.
- nDCG@k (`ndcg_cut_k`): DCG = sum over the top k of gain / log2(rank + 1) with gain = the graded relevance;
  the ideal DCG uses every judged document of the query (not only retrieved ones), best grades first.
- MRR@k: 1 / rank of the first relevant document within the top k, else 0 (trec_eval's `recip_rank` on a
  run cut to k).
- MAP@k (`map_cut_k`): sum of precision at the rank of each relevant document within the top k, divided by the
  number of relevant documents of the query (not by min(R, k)).
- Recall@k (`recall_k`): relevant documents in the top k / relevant documents of the query.
- Precision@k (`P_k`): relevant documents in the top k / k (a short list still divides by k).

A query with no relevant document scores 0 on every metric. Averages run over the queries of the qrels that
the run answers; with `missing="zero"`, qrels queries absent from the run count as 0 (trec_eval `-c`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "DEFAULT_METRICS",
    "Qrels",
    "RunLike",
    "check_metrics",
    "evaluate_per_query",
    "evaluate_run",
    "mean",
    "parse_metric",
    "ranked_ids",
]

Qrels = Mapping[str, Mapping[str, int]]  # query id → {doc id → graded relevance}
# query id → [(doc id, score)] or {doc id: score}; the order of the input does not matter (see module doc).
RunLike = Mapping[str, Sequence[tuple[str, float]] | Mapping[str, float]]

DEFAULT_METRICS: tuple[str, ...] = ("ndcg@10", "mrr@10", "map@100", "recall@100")

_NAMES = {
    "ndcg": "ndcg",
    "ndcg_cut": "ndcg",
    "mrr": "mrr",
    "recip_rank": "mrr",
    "map": "map",
    "map_cut": "map",
    "recall": "recall",
    "r": "recall",
    "p": "precision",
    "precision": "precision",
}
_METRIC_RE = re.compile(r"^\s*([a-z_]+)\s*(?:[@.](\d+))?\s*$", re.IGNORECASE)


def parse_metric(name: str) -> tuple[str, int | None]:
    """`"ndcg@10"` → `("ndcg", 10)`; `"mrr"` → `("mrr", None)` (no cutoff). Raise `ValueError` on unknown names."""
    match = _METRIC_RE.match(name)
    kind = _NAMES.get(match.group(1).lower()) if match else None
    if kind is None:
        raise ValueError(f"unknown metric {name!r}; use one of ndcg@k, mrr@k, map@k, recall@k, p@k")
    k = int(match.group(2)) if match.group(2) else None
    if k is not None and k < 1:
        raise ValueError(f"metric {name!r}: the cutoff must be >= 1")
    if k is None and kind in ("ndcg", "recall", "precision"):
        raise ValueError(f"metric {name!r} needs a cutoff, e.g. {kind}@10")
    return kind, k


def check_metrics(names: Sequence[str]) -> list[str]:
    """The metrics of a report (a recipe's `eval.metrics`, `tuner eval --metrics`), checked: at least one, each a
    name `parse_metric` takes, none twice. Raise `ValueError` with the first problem; return the names as given."""
    if not names:
        raise ValueError("must name at least one metric (the first is the primary one)")
    seen: dict[tuple[str, int | None], str] = {}
    for name in names:
        parsed = parse_metric(name)
        if parsed in seen:  # a report and its table had the column twice
            raise ValueError(f"metric {name!r} is named twice (as {seen[parsed]!r} before)")
        seen[parsed] = name
    return list(names)


def ranked_ids(ranking: Sequence[tuple[str, float]] | Mapping[str, float]) -> list[str]:
    """Document ids in trec_eval order: score descending, then doc id descending; duplicates dropped."""
    items = ranking.items() if isinstance(ranking, Mapping) else ranking
    best: dict[str, float] = {}
    for doc_id, score in items:
        best.setdefault(str(doc_id), float(score))
    # Two stable sorts: first by id descending, then by score descending (ties keep the id order).
    ids = sorted(best, reverse=True)
    ids.sort(key=lambda d: best[d], reverse=True)
    return ids


def _dcg(gains: Iterable[float]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains) if g > 0)


def _one(kind: str, k: int | None, ranked: Sequence[str], judged: Mapping[str, int], num_rel: int) -> float:
    if num_rel == 0:
        return 0.0
    top = ranked if k is None else ranked[:k]
    if kind == "ndcg":
        ideal = _dcg(sorted((g for g in judged.values() if g > 0), reverse=True)[:k])
        return _dcg(judged.get(d, 0) for d in top) / ideal
    if kind == "mrr":
        for rank, doc in enumerate(top, 1):
            if judged.get(doc, 0) > 0:
                return 1.0 / rank
        return 0.0
    if kind == "map":
        hits, total = 0, 0.0
        for rank, doc in enumerate(top, 1):
            if judged.get(doc, 0) > 0:
                hits += 1
                total += hits / rank
        return total / num_rel
    hits = sum(1 for d in top if judged.get(d, 0) > 0)
    if kind == "recall":
        return hits / num_rel
    return hits / k  # precision


def evaluate_per_query(
    qrels: Qrels,
    run: RunLike,
    metrics: Sequence[str] = DEFAULT_METRICS,
    missing: str = "skip",
) -> dict[str, dict[str, float]]:
    """Metrics of each query: `{qid: {metric: value}}`, for the queries of `qrels`.

    Args:
        qrels: query id → {doc id → grade}.
        run: query id → ranked candidates, as `[(doc id, score)]` or `{doc id: score}`.
        metrics: names such as `ndcg@10`, `mrr@10`, `map@100`, `recall@100`, `p@10` (also trec_eval spellings
            `ndcg_cut.10`, `recip_rank`, `map_cut.100`, `P.10`).
        missing: `"skip"` leaves out qrels queries the run lacks (trec_eval default); `"zero"` scores them 0.
    """
    if missing not in ("skip", "zero"):
        raise ValueError(f"missing must be 'skip' or 'zero', not {missing!r}")
    parsed = [(name, *parse_metric(name)) for name in metrics]
    out: dict[str, dict[str, float]] = {}
    for qid, judged in qrels.items():
        if qid not in run and missing == "skip":
            continue
        ranked = ranked_ids(run.get(qid, ()))
        num_rel = sum(1 for g in judged.values() if g > 0)
        out[qid] = {name: _one(kind, k, ranked, judged, num_rel) for name, kind, k in parsed}
    return out


def mean(per_query: Mapping[str, Mapping[str, float]], metrics: Sequence[str] | None = None) -> dict[str, float]:
    """Average of per-query values over queries (0.0 for an empty set)."""
    if metrics is None:
        metrics = list(next(iter(per_query.values()), {}))
    n = len(per_query)
    return {m: (sum(v[m] for v in per_query.values()) / n if n else 0.0) for m in metrics}


def evaluate_run(
    qrels: Qrels,
    run: RunLike,
    metrics: Sequence[str] = DEFAULT_METRICS,
    missing: str = "skip",
) -> dict[str, float]:
    """Mean of each metric over queries (see `evaluate_per_query` for the arguments)."""
    return mean(evaluate_per_query(qrels, run, metrics, missing), metrics)
