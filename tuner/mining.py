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

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.contract import document_text
from tuner.data.beir import BeirData, DataError
from tuner.data.groups import groups_as_collection, write_groups
from tuner.data.schema import Group

__all__ = ["MiningStats", "ScoreCache", "mine_for_groups", "mine_negatives", "write_groups"]

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


def _logits(reranker: Any, query: str, docs: list, names: list[str], instruction: str | None) -> list[float]:
    """The reranker's logits of `query` with each of `docs`; a NaN/inf one is named by the query and `names[i]`
    (the reranker names it by its place in this call, "pair 0", which names no query)."""
    try:
        return [
            float(x) for x in reranker.score_pairs([(query, d) for d in docs], instruction=instruction, normalize=False)
        ]
    except ValueError as err:
        from tuner.scoring import NonFiniteScoresError

        if not isinstance(err, NonFiniteScoresError) or err.index is None:
            raise
        raise NonFiniteScoresError(f"query {query!r}, {names[err.index]}: {err}", err.index) from None


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
    pos_logits = _logits(reranker, query, pos_docs, [f"positive {n}" for n in range(len(pos_docs))], instruction)
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
        logits = _logits(reranker, query, [_doc(corpus, d) for d in ids], [f"document {d!r}" for d in ids], instruction)
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


SCORES_FORMAT = 1  # a scores file of another format is not resumed


class ScoreCache:
    """A reranker whose yes−no logits are appended to a file as they come, and read back instead of recomputed by a
    resumed run: mining with a 4B reranker takes hours, and an interruption (Ctrl-C, a preempted job, out of
    memory) lost them all. Hand-written: no library keeps a resumable per-pair score log of our prompt.

    The file is JSONL: a first line `{"format", "settings"}` (what decides the scores besides the pairs: the model,
    adapter, instruction, max_length, dtype), then `{"k": key, "x": logit}` per pair, the key a hash of (instruction,
    query, document text). A call whose pairs are all in the file returns them; any other call scores all its
    pairs, as the uninterrupted run did, so the same options give the same batches and the same file out. Mining
    options may change on a resume: a pair's logit does not depend on them. The lines are flushed after each call
    and synced at most every `sync_seconds`; a line cut by a crash is skipped.

    Args:
        reranker: a `Reranker` (anything with `score_pairs(pairs, instruction=..., normalize=False)`).
        path: the scores file.
        settings: JSON-serializable; a resume with other settings is refused, naming what differs.
        resume: read an existing file (required to exist); without it an existing file is refused.
    """

    def __init__(
        self, reranker: Any, path: str | Path, settings: dict[str, Any], resume: bool, sync_seconds: float = 2.0
    ) -> None:
        self.reranker, self.path, self.settings = reranker, Path(path), settings
        self.scores: dict[str, float] = {}
        self.reused = 0  # pairs read back instead of scored
        self.sync_seconds, self._synced = sync_seconds, time.monotonic()
        self.check_start(self.path, resume)
        self._cut_line = False  # the file read back ends inside a line (a crash mid-write)
        if resume:
            self._read()
        self._file = None

    @staticmethod
    def check_start(path: str | Path, resume: bool) -> None:
        """Refuse a new run over an interrupted run's scores, and a resume with none (before any model loads)."""
        path = Path(path)
        if resume and not path.is_file():
            raise ValueError(f"--resume: no {path} to continue (start without --resume)")
        if not resume and path.exists():
            raise ValueError(
                f"{path}: the reranker scores of an interrupted tuner mine; continue it with --resume (they are read "
                "back, not recomputed), or delete it to start over"
            )

    def _read(self) -> None:
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        self._cut_line = lines[-1] != ""
        try:
            head = json.loads(lines[0])
        except ValueError:
            raise ValueError(
                f"--resume: {self.path}:1 is not a scores file's first line; delete it to start over"
            ) from None
        if not isinstance(head, dict) or head.get("format") != SCORES_FORMAT:
            raise ValueError(f"--resume: {self.path} was written by another version of tuner mine; delete it")
        then = head.get("settings") or {}
        differ = sorted(k for k in {*then, *self.settings} if then.get(k) != self.settings.get(k))
        if differ:
            shown = "; ".join(f"{k}: {then.get(k)!r} then, {self.settings.get(k)!r} now" for k in differ)
            raise ValueError(
                f"--resume: {self.path} holds scores of another reranker set-up ({shown}); rerun with the same "
                f"--reranker and options, or delete {self.path} to start over"
            )
        for line in lines[1:]:
            try:
                entry = json.loads(line)
                self.scores[entry["k"]] = float(entry["x"])
            except (ValueError, TypeError, KeyError):
                continue  # a blank end, or the last line cut by the crash: that pair is scored again

    @staticmethod
    def key(instruction: str | None, query: str, document: Any) -> str:
        text = json.dumps([instruction, query, document_text(document)], ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    def score_pairs(self, pairs, instruction: str | None = None, normalize: bool = False) -> list[float]:
        if normalize:
            raise ValueError("ScoreCache keeps yes−no logits: call it with normalize=False")
        keys = [self.key(instruction, query, document) for query, document in pairs]
        if all(k in self.scores for k in keys):
            self.reused += len(keys)
            return [self.scores[k] for k in keys]
        logits = [float(x) for x in self.reranker.score_pairs(pairs, instruction=instruction, normalize=False)]
        self._append(keys, logits)
        return logits

    def _append(self, keys: list[str], logits: list[float]) -> None:
        if self._file is None:
            new = not self.path.exists()
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (held for the run; closed by close())
            if new:
                self._file.write(json.dumps({"format": SCORES_FORMAT, "settings": self.settings}) + "\n")
            elif self._cut_line:
                self._file.write("\n")  # after a line cut by the crash, not onto it
                self._cut_line = False
        lines = [json.dumps({"k": k, "x": x}) for k, x in zip(keys, logits, strict=True) if k not in self.scores]
        self._file.write("".join(line + "\n" for line in lines))
        self._file.flush()
        self.scores.update(zip(keys, logits, strict=True))
        if time.monotonic() - self._synced >= self.sync_seconds:
            os.fsync(self._file.fileno())
            self._synced = time.monotonic()

    def close(self, remove: bool = False) -> None:
        """Close the file (synced); `remove`: delete it (the mined output is written)."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        if remove:
            self.path.unlink(missing_ok=True)


def negatives_histogram(groups: Iterable[Group]) -> dict[int, int]:
    """Number of groups per negative count (for reports)."""
    hist: dict[int, int] = {}
    for g in groups:
        hist[len(g.neg)] = hist.get(len(g.neg), 0) + 1
    return dict(sorted(hist.items()))
