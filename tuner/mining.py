"""Hard-negative mining: BM25 candidates from a BEIR collection → training groups.

For each judged query: retrieve the top `depth` documents with BM25, keep ranks `[range_min, range_max)`
(0-based, so `range_min=5` skips the first five), drop every judged positive, every document whose text
equals a positive's or an earlier candidate's, and every document that shares no term with the query (BM25
score 0: an arbitrary pick, not a hard negative), then take `num_negatives` of the rest (random sample or the
top ones). Optionally a `Reranker` filters likely false negatives (candidates that score within a margin of
the query's weakest positive, as sentence-transformers' `mine_hard_negatives` does) and writes its scores as
teacher scores.

Defaults and why (sentence-transformers' `mine_hard_negatives` defaults to the top 3 with no range or margin,
and its published recipes skip the top 10, sample from the top 50-100 at random and take 5; FlagEmbedding's
`hn_mine.py` samples 15 from ranks 2-200):
- `num_negatives=7`: groups of 1 positive + 7 negatives, the ratio the Qwen maintainers advise (~1:8) and
  ms-swift's default;
- `range_min=5`: sparse judgments (SciFact has ~1.1 positives per query) leave relevant but unjudged
  documents near the top of BM25; skipping the first few lowers false negatives while staying hard;
- `range_max=depth=100`: deep enough for 7 negatives even after filtering, and cheap for BM25;
- `sampling="random"`: diverse negatives rather than near-duplicates of the top few;
- `margin=0.1` (relative, on the probability scale): a candidate the reranker scores within 10% of the
  query's weakest positive is more likely an unjudged positive than a negative.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.contract import document_text
from tuner.data.beir import BeirData, DataError
from tuner.data.groups import groups_as_collection, write_groups
from tuner.data.schema import Group

__all__ = ["MiningStats", "mine_for_groups", "mine_negatives", "write_groups"]

DEFAULT_DEPTH = 100
DEFAULT_RANGE_MIN = 5
DEFAULT_RANGE_MAX = 100
DEFAULT_NUM_NEGATIVES = 7
DEFAULT_MARGIN = 0.1


@dataclass
class MiningStats:
    """What a mining run did, for logs and reports.

    Attributes:
        queries: judged queries with at least one positive in the corpus.
        groups: groups written (queries with at least one negative).
        no_negatives: (query id, query text) of the judged queries left without a group: no BM25 candidate in the
            rank range, or none the reranker kept.
        full: groups with `num_negatives` negatives.
        filtered: candidates the reranker dropped as likely false negatives.
        scored_pairs: pairs the reranker scored.
    """

    queries: int = 0
    groups: int = 0
    full: int = 0
    filtered: int = 0
    # judged positives left out because their document has no text (title and text empty): a group with one
    # fails `tuner data check` and training; and judged queries left out because their own text is empty
    skipped: list[str] = field(default_factory=list)
    scored_pairs: int = 0
    no_negatives: list[tuple[str | None, str]] = field(default_factory=list)


def _doc(corpus: Mapping[str, Mapping[str, str]], doc_id: str) -> dict[str, str]:
    doc = corpus[doc_id]
    title = doc.get("title") or ""
    return {"title": title, "text": doc.get("text") or ""} if title else {"text": doc.get("text") or ""}


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def mine_negatives(
    beir: BeirData,
    *,
    depth: int = DEFAULT_DEPTH,
    range_min: int = DEFAULT_RANGE_MIN,
    range_max: int = DEFAULT_RANGE_MAX,
    num_negatives: int = DEFAULT_NUM_NEGATIVES,
    sampling: str = "random",
    seed: int = 0,
    cache_dir: str | Path | None = None,
    reranker: Any = None,
    margin: float | None = DEFAULT_MARGIN,
    absolute_margin: float | None = None,
    max_score: float | None = None,
    teacher_scores: bool = False,
    instruction: str | None = None,
    show_progress: bool = True,
    stats: MiningStats | None = None,
    instructions: Mapping[str, str | None] | None = None,
) -> list[Group]:
    """Mine hard negatives for every judged query of a BEIR split.

    Args:
        beir: collection from `load_beir(folder, split)`.
        depth: BM25 candidates per query.
        range_min: 0-based rank where sampling starts (the top `range_min` are skipped).
        range_max: 0-based rank where sampling stops (exclusive); capped at `depth`.
        num_negatives: negatives per group (fewer when the range runs out).
        sampling: "random" (seeded sample from the range) or "top" (the best-ranked survivors).
        seed: with the same seed and data the output is identical; each query draws from its own stream
            (seeded by seed and query id), so a query's negatives do not depend on the other queries.
        cache_dir: folder for the BM25 index (built once, reused for the same corpus).
        reranker: optional `tuner.scoring.Reranker` (anything with `score_pairs(pairs, instruction=...,
            normalize=False)` returning yes−no logits) for the false-negative filter and teacher scores.
        margin: with a reranker, drop a candidate whose probability is above `(1 - margin) * p_pos`, where
            `p_pos` is the query's weakest positive's probability. `None` turns the relative test off.
        absolute_margin: with a reranker, also drop a candidate whose probability is above `p_pos - margin`.
        max_score: with a reranker, also drop a candidate whose probability is above this.
        teacher_scores: with a reranker, write its yes−no logits as `pos_scores` / `neg_scores`.
        instruction: instruction used when scoring with the reranker (None → contract default); it is not
            written into the groups.
        show_progress: tqdm progress bars.
        stats: filled in place when given.
        instructions: query id → that query's own instruction, which the reranker scores it with in place of
            `instruction` (the rows of a training file that carry one: their teacher scores and false-negative
            filter are those of the prompt they train with).

    Returns:
        One group per query that got at least one negative, in qrels order; `qid` is set.

    Raises:
        DataError: a judged positive is missing from the corpus.
        ValueError: inconsistent options.
    """
    from tqdm.auto import tqdm

    from tuner.retrieval import BM25

    if not 0 <= range_min < range_max:
        raise ValueError(f"need 0 <= range_min < range_max, got {range_min} and {range_max}")
    if depth < 1 or num_negatives < 1:
        raise ValueError(f"depth and num_negatives must be positive, got {depth} and {num_negatives}")
    if sampling not in ("random", "top"):
        raise ValueError(f"sampling must be 'random' or 'top', got {sampling!r}")
    if teacher_scores and reranker is None:
        raise ValueError("teacher_scores needs a reranker")
    stats = stats if stats is not None else MiningStats()
    range_max = min(range_max, depth)

    positives: dict[str, list[str]] = {}
    for qid, judged in beir.qrels.items():
        pos_ids = [d for d, rel in judged.items() if rel > 0]
        missing = [d for d in pos_ids if d not in beir.corpus]
        if missing:
            raise DataError(
                f"{beir.qrels_place(qid, missing[0])}: qrels query {qid!r} judges document {missing[0]!r} relevant, "
                "and the corpus has no such _id (are the qrels from another version of the collection?)"
            )
        if not beir.queries.get(qid, "").strip():
            if pos_ids:
                stats.skipped.append(f"query {qid!r} has no text")
            continue
        empty = [d for d in pos_ids if not document_text(beir.corpus[d]).strip()]
        stats.skipped += [f"query {qid!r}: its positive {d!r} has no text" for d in empty]
        pos_ids = [d for d in pos_ids if d not in empty]
        if pos_ids:
            positives[qid] = pos_ids
    stats.queries = len(positives)

    index = BM25(beir.corpus, cache_dir=cache_dir)
    run = index.search({q: beir.queries[q] for q in positives}, k=depth)

    # Queries that share a text (SciFact train has two such pairs) share their positives: one query's
    # positive must not become the other's negative.
    pos_by_text: dict[str, set[str]] = {}
    for qid, pos_ids in positives.items():
        pos_by_text.setdefault(beir.queries[qid].strip(), set()).update(pos_ids)

    groups: list[Group] = []
    for qid in tqdm(positives, desc="mining", unit="query", disable=not show_progress):
        judged_pos = pos_by_text[beir.queries[qid].strip()]
        # texts taken: the positives', then each candidate's (a text the corpus holds under two ids is one
        # document: its second copy is no second negative)
        taken = {document_text(beir.corpus[d]).strip() for d in judged_pos}
        candidates = []
        for d, score in run.get(qid, [])[range_min:range_max]:
            text = document_text(beir.corpus[d]).strip()
            if score > 0 and d not in judged_pos and text not in taken:
                candidates.append(d)
                taken.add(text)
        if sampling == "random":
            # A per-query stream: string seeds hash with SHA-512, so this is stable across processes.
            random.Random(f"{seed}:{qid}").shuffle(candidates)
        query = beir.queries[qid]
        pos_docs = [_doc(beir.corpus, d) for d in positives[qid]]
        if reranker is None:
            neg_ids, neg_logits, pos_logits = candidates[:num_negatives], None, None
        else:
            neg_ids, neg_logits, pos_logits = _filter_with_reranker(
                reranker,
                query,
                pos_docs,
                candidates,
                beir.corpus,
                num_negatives,
                (instructions or {}).get(qid) or instruction,
                margin,
                absolute_margin,
                max_score,
                stats,
            )
        if not neg_ids:
            stats.no_negatives.append((qid, query))
            continue
        group = Group(query=query, pos=pos_docs, neg=[_doc(beir.corpus, d) for d in neg_ids], qid=qid)
        grades = [int(beir.qrels[qid][d]) for d in positives[qid]]
        if any(g > 1 for g in grades):  # graded qrels (Cranfield's 1-4): kept for nDCG on the mined file
            group.pos_grades = grades
        if teacher_scores:
            group.pos_scores, group.neg_scores = pos_logits, neg_logits
        groups.append(group)
        stats.full += len(neg_ids) >= num_negatives
    stats.groups = len(groups)
    return groups


def mine_for_groups(
    groups: Sequence[Group],
    *,
    corpus: Mapping[str, Mapping[str, str]] | None = None,
    name: str = "",
    stats: MiningStats | None = None,
    **kwargs: Any,
) -> list[Group]:
    """Hard negatives for the groups of a training-format file (e.g. pairs of queries and positives alone).

    The collection BM25 searches is every document of the file (positives and negatives, each once) plus
    `corpus` (doc id → `{"title", "text"}`, e.g. `tuner.data.beir.read_corpus`); a group's positives are its
    qrels. Each group gets freshly mined negatives in place of its own (which are in the pool, so BM25 finds
    them again when they are hard); its instruction and qid are kept, and a reranker scores the group with its
    instruction (else `instruction`). `kwargs` are `mine_negatives`'s options.
    """
    collection = groups_as_collection(groups, name)
    beir = collection.beir
    if corpus:
        known = {(d["title"], d["text"]) for d in beir.corpus.values()}
        for doc_id, doc in corpus.items():
            title, text = str(doc.get("title") or ""), str(doc.get("text") or "")
            if (title, text) not in known:  # a file document repeated in the corpus: once in the pool
                beir.corpus[f"corpus:{doc_id}"] = {"title": title, "text": text}
    originals = dict(zip(collection.documents, groups, strict=True))  # one query id per group, in file order
    stats = stats if stats is not None else MiningStats()
    mined = mine_negatives(beir, stats=stats, instructions=collection.instructions, **kwargs)
    for group in mined:
        original = originals[group.qid]
        group.instruction, group.qid = original.instruction, original.qid
    stats.no_negatives = [(originals[qid].qid, query) for qid, query in stats.no_negatives]
    return mined


def _filter_with_reranker(
    reranker: Any,
    query: str,
    pos_docs: list[dict[str, str]],
    candidates: list[str],
    corpus: Mapping[str, Mapping[str, str]],
    num_negatives: int,
    instruction: str | None,
    margin: float | None,
    absolute_margin: float | None,
    max_score: float | None,
    stats: MiningStats,
) -> tuple[list[str], list[float], list[float]]:
    """Score candidates in sampling order, a chunk at a time, until enough pass the margin tests.

    Scoring lazily keeps the cost near (positives + 2 x num_negatives) pairs per query instead of the whole
    rank range; the result equals filtering the whole range and then taking the first survivors.
    """
    pos_logits = [
        float(x) for x in reranker.score_pairs([(query, d) for d in pos_docs], instruction=instruction, normalize=False)
    ]
    stats.scored_pairs += len(pos_docs)
    p_pos = min(_sigmoid(x) for x in pos_logits)
    limit = math.inf
    if margin is not None:
        limit = min(limit, (1.0 - margin) * p_pos)
    if absolute_margin is not None:
        limit = min(limit, p_pos - absolute_margin)
    if max_score is not None:
        limit = min(limit, max_score)
    kept: list[str] = []
    kept_logits: list[float] = []
    chunk = max(2 * num_negatives, 8)
    for start in range(0, len(candidates), chunk):
        ids = candidates[start : start + chunk]
        logits = reranker.score_pairs([(query, _doc(corpus, d)) for d in ids], instruction=instruction, normalize=False)
        stats.scored_pairs += len(ids)
        for d, x in zip(ids, logits, strict=True):
            if _sigmoid(float(x)) > limit:
                stats.filtered += 1
                continue
            kept.append(d)
            kept_logits.append(float(x))
            if len(kept) == num_negatives:
                return kept, kept_logits, pos_logits
    return kept, kept_logits, pos_logits


def negatives_histogram(groups: Iterable[Group]) -> dict[int, int]:
    """Number of groups per negative count (for reports)."""
    hist: dict[int, int] = {}
    for g in groups:
        hist[len(g.neg)] = hist.get(len(g.neg), 0) + 1
    return dict(sorted(hist.items()))
