"""Rerank first-stage candidates with a `Reranker` and score the result against qrels.

`Evaluator` is the one evaluator of the project: `tuner eval` calls it for the base, the tuned model and any
comparison, and training calls it every N steps on the live (PEFT) model. It returns `{metric: value}` with
`ndcg@10` as the primary metric, and the first stage's metrics on the same queries and candidates
(`first_stage_metrics()`), so a reranker is always judged next to the order it started from.

Scores are the raw yes−no logits (ranking by the sigmoid would tie saturated scores). Candidate sets are
encoded and scored in chunks of queries; inside a chunk the reranker length-sorts the prompts into token-budget
batches, and only Python floats are kept, never score tensors.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuner.metrics import DEFAULT_METRICS, Qrels, evaluate_per_query, mean, ranked_ids
from tuner.retrieval import Run

if TYPE_CHECKING:
    from tuner.data.beir import BeirData

log = logging.getLogger(__name__)

__all__ = ["EvalResult", "Evaluator", "first_stage_run", "sample_queries"]

_UNSET: Any = object()
# how reports and logs name the first stage of `Evaluator.from_groups`: the groups' documents in a seeded random order
RANDOM_ORDER = "random order"
# Encoded prompts are kept between calls (training evaluates the same pairs every N steps) while their total
# stays under this many tokens (int32: 4 bytes each).
CACHE_TOKENS = 50_000_000


@dataclass
class EvalResult:
    """One system's evaluation: mean metrics, per-query metrics and its ranked lists.

    Attributes:
        label: the system's name in reports.
        metrics: metric → mean over queries.
        per_query: query id → {metric → value}.
        run: query id → [(doc id, score)] in trec_eval order (scores are yes−no logits for rerankers).
        seconds: wall time of scoring (0 for the first stage).
        pairs: (query, document) pairs scored.
        info: free-form facts for the report (model path, instruction, ...).
    """

    label: str
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    run: Run
    seconds: float = 0.0
    pairs: int = 0
    info: dict[str, Any] = field(default_factory=dict)


def sample_queries(qids: Sequence[str], n: int | None, seed: int = 0) -> list[str]:
    """`n` query ids drawn reproducibly (all of them, in input order, when `n` is None or >= len)."""
    qids = list(qids)
    if n is None or n >= len(qids):
        return qids
    keep = set(random.Random(seed).sample(qids, n))
    return [q for q in qids if q in keep]


def first_stage_run(
    corpus: Mapping[str, Mapping[str, str]],
    queries: Mapping[str, str],
    candidates: str | Path | Run = "bm25",
    top_k: int = 100,
    cache_dir: str | Path | None = None,
) -> Run:
    """Candidates for `queries`: BM25 over `corpus` (`"bm25"`), a TREC run file, or a ready `Run`."""
    from tuner.retrieval import BM25, read_run

    if isinstance(candidates, Mapping):
        return {q: list(candidates[q]) for q in queries if q in candidates}
    if str(candidates).lower() == "bm25":
        return BM25(corpus, cache_dir=cache_dir).search(queries, k=top_k)
    run = read_run(candidates)
    missing = [q for q in queries if q not in run]
    if queries and len(missing) == len(queries):
        from tuner.data.beir import DataError

        raise DataError(
            f"{candidates}: none of the {len(queries)} judged queries has a line in this run file (its query ids: "
            f"{_examples(run)}; the split's: {_examples(queries)}); is it the run of another split or dataset?"
        )
    if missing:
        log.warning(
            "%s: %d of %d judged queries have no candidates in this run file (e.g. %s); they count 0 for every system",
            candidates,
            len(missing),
            len(queries),
            _examples(missing),
        )
    return {q: run[q] for q in queries if q in run}


def _relevant_not_in_corpus(folder: str | Path, data: BeirData, qids: Sequence[str]) -> str:
    """The warning for judged-relevant documents (grade > 0) of the queries `qids` that the corpus lacks, or ""
    when none: no system can retrieve them, yet recall and nDCG count them (as BEIR's and trec_eval's figures do),
    so every system's figures are lower than the corpus allows."""
    missing = {
        q: docs for q in qids if (docs := [d for d, g in data.qrels[q].items() if g > 0 and d not in data.corpus])
    }
    if not missing:
        return ""
    from tuner.data.beir import _find

    corpus_name = _find(Path(folder), "corpus").name
    docs = sum(len(d) for d in missing.values())
    first = next(iter(missing))
    return (
        f"{data.qrels_path}: {docs} judged-relevant document{'s' if docs != 1 else ''} of {len(missing)} "
        f"quer{'ies' if len(missing) != 1 else 'y'} {'are' if docs != 1 else 'is'} not in {corpus_name} "
        f"(e.g. {first} → {missing[first][0]}): {'they count' if docs != 1 else 'it counts'} as relevant and "
        "never retrieved, which lowers every system's recall, nDCG and MAP"
    )


def _examples(ids, n: int = 3) -> str:
    ids = list(ids)
    return ", ".join(ids[:n]) + (", ..." if len(ids) > n else "") if ids else "none"


class Evaluator:
    """Rerank the top-`top_k` candidates of each query and compute ranking metrics.

    Args:
        queries: query id → text. Only queries that also have qrels are evaluated.
        corpus: doc id → `{"title", "text"}` (or a string).
        qrels: query id → {doc id → grade}.
        candidates: the first stage, query id → [(doc id, score)]. A judged query without candidates counts 0
            for every system (so a first stage that drops queries cannot flatter anyone).
        top_k: candidates reranked per query (cut in trec_eval order: score desc, doc id desc).
        instruction: instruction for every pair; None → the reranker's default (its `tuner.json` or the
            model card's); `""` → no instruction.
        name: the evaluation's name (progress bars, logs).
        metrics: metric names (see `tuner.metrics`); the first is not necessarily primary, `primary_metric` is.
        primary_metric: the metric training selects on.
        chunk_pairs: pairs encoded and scored per chunk (bounds memory on large candidate sets).
        show_progress: progress bar over pairs; None → only for 1,000 pairs or more.
        query_instructions: query id → its own instruction (a training file's per-row `instruction`), used where
            the call's instruction is the default (None); an explicit instruction (or `""`) applies to all.
    """

    def __init__(
        self,
        queries: Mapping[str, str],
        corpus: Mapping[str, Any],
        qrels: Qrels,
        candidates: Run,
        top_k: int = 100,
        instruction: str | None = None,
        name: str = "dev",
        metrics: Sequence[str] = DEFAULT_METRICS,
        primary_metric: str = "ndcg@10",
        chunk_pairs: int = 1024,
        show_progress: bool | None = None,
        query_instructions: Mapping[str, str | None] | None = None,
    ) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.name = name
        self.top_k = top_k
        self.instruction = instruction
        self.metrics = tuple(metrics)
        self.primary_metric = primary_metric
        if primary_metric not in self.metrics:
            self.metrics = (primary_metric, *self.metrics)
        self.chunk_pairs = chunk_pairs
        self.show_progress = show_progress
        self.qids = [q for q in qrels if q in queries]
        if not self.qids:
            raise ValueError(f"{name}: no query has both text and qrels")
        self.queries = {q: queries[q] for q in self.qids}
        given = query_instructions or {}
        self.query_instructions = {q: given[q] for q in self.qids if given.get(q) is not None}
        self.qrels = {q: dict(qrels[q]) for q in self.qids}
        self.candidates: dict[str, list[str]] = {}
        for q in self.qids:
            docs = ranked_ids(candidates.get(q, ()))[:top_k]
            unknown = [d for d in docs if d not in corpus]
            if unknown:
                raise ValueError(
                    f"{name}: candidate document {unknown[0]!r} of query {q!r} is not in the corpus "
                    f"({len(unknown)} unknown ids for this query)"
                )
            self.candidates[q] = docs
        self.corpus = {d: corpus[d] for docs in self.candidates.values() for d in docs}
        # the relevant documents, also those the first stage missed: what `tuner eval --train-data` compares with
        # the training positives (tuner.overlap)
        self.relevant_documents = {
            d: corpus[d] for q in self.qids for d, g in self.qrels[q].items() if g > 0 and d in corpus
        }
        self.first_stage = {q: [(d, float(s)) for d, s in _cut(candidates.get(q, ()), top_k)] for q in self.qids}
        self._cache: dict[tuple, list[list[np.ndarray]]] = {}
        self._first_stage_result: EvalResult | None = None
        self.first_stage_name = "first stage"  # how logs name the candidates' own order (from_groups: RANDOM_ORDER)
        # what a report should say about the set (from_beir: judged-relevant documents the corpus lacks)
        self.warnings: list[str] = []

    @classmethod
    def from_beir(
        cls,
        folder: str | Path,
        split: str = "test",
        candidates: str | Path = "bm25",
        top_k: int = 100,
        max_queries: int | None = None,
        seed: int = 0,
        cache_dir: str | Path | None = None,
        **kwargs: Any,
    ) -> Evaluator:
        """Evaluator on a BEIR folder's split with BM25 (or run-file) candidates; `max_queries` samples queries."""
        from tuner.data.beir import load_beir

        data = load_beir(folder, split)
        keep = sample_queries([q for q in data.qrels if q in data.queries], max_queries, seed)
        queries = {q: data.queries[q] for q in keep}
        unfindable = _relevant_not_in_corpus(folder, data, keep)
        if unfindable:
            log.warning("%s", unfindable)
        run = first_stage_run(data.corpus, queries, candidates, top_k, cache_dir)
        kwargs.setdefault("name", f"{data.name}/{split}")
        try:
            evaluator = cls(queries, data.corpus, {q: data.qrels[q] for q in keep}, run, top_k=top_k, **kwargs)
        except ValueError as err:
            if str(candidates).lower() == "bm25" or "not in the corpus" not in str(err):
                raise
            # the ids came from the run file: name it, and the corpus it does not match
            raise ValueError(f"{candidates}: {err} (corpus {Path(folder) / 'corpus.jsonl[.gz]'})") from None
        evaluator.warnings = [unfindable] if unfindable else []
        return evaluator

    @classmethod
    def from_groups(
        cls,
        path_or_id: str | Path,
        split: str | None = None,
        max_queries: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> Evaluator:
        """Evaluator on a training-format file (grouped rows or labeled pairs, e.g. `tuner data split`'s dev part):
        each group's positives and negatives are its query's candidates, its positives the qrels (at the
        group's `pos_grades`, the gains of nDCG, or grade 1).

        The file gives no first-stage order (grouped rows list the positives first), so the candidates come in a
        seeded random order, which is what `first_stage_result` reports: the chance level the rerankers are
        judged next to. Identical documents of one group count once (a positive wins); groups without a negative
        have nothing to rank and are left out. Per-row instructions are kept (`query_instructions`).
        """
        from tuner.data import load_groups
        from tuner.data.groups import groups_as_collection

        collection = groups_as_collection(load_groups(path_or_id, split), Path(str(path_or_id)).name)
        rng = random.Random(seed)
        run: Run = {}
        no_negative = 0
        for qid, docs in collection.documents.items():
            if len(collection.beir.qrels[qid]) == len(docs):
                no_negative += 1
                continue
            order = list(docs)
            rng.shuffle(order)
            run[qid] = [(d, float(len(order) - i)) for i, d in enumerate(order)]
        if no_negative:
            log.info("%s: left out %d groups without a negative (nothing to rank)", path_or_id, no_negative)
        if not run:
            raise ValueError(f"{path_or_id}: no group has a negative, so there is nothing to rank")
        queries, corpus, qrels = collection.beir.queries, collection.beir.corpus, collection.beir.qrels
        instructions = collection.instructions
        keep = sample_queries(list(run), max_queries, seed)
        kwargs.setdefault("name", Path(str(path_or_id)).name)
        evaluator = cls(
            {q: queries[q] for q in keep},
            corpus,
            {q: qrels[q] for q in keep},
            {q: run[q] for q in keep},
            top_k=max(len(run[q]) for q in keep),
            query_instructions=instructions,
            **kwargs,
        )
        evaluator.first_stage_name = RANDOM_ORDER
        return evaluator

    # ------------------------------------------------------------------------------------------- metrics
    @property
    def num_pairs(self) -> int:
        """(query, document) pairs one evaluation scores."""
        return sum(len(d) for d in self.candidates.values())

    def score_run(self, run: Run, label: str = "run") -> EvalResult:
        """Metrics of any run on this evaluator's queries (missing queries count 0)."""
        per_query = evaluate_per_query(self.qrels, run, self.metrics, missing="zero")
        ordered = {q: _cut(run.get(q, ()), None) for q in self.qids}
        return EvalResult(label, mean(per_query, self.metrics), per_query, ordered)

    def first_stage_result(self, label: str = "first stage") -> EvalResult:
        """The first stage's top-`top_k` candidates, evaluated as they come (computed once)."""
        if self._first_stage_result is None:
            self._first_stage_result = self.score_run(self.first_stage, label)
        self._first_stage_result.label = label
        return self._first_stage_result

    def first_stage_metrics(self) -> dict[str, float]:
        """`{metric: value}` of the first stage on the same queries and candidates."""
        return dict(self.first_stage_result().metrics)

    # ------------------------------------------------------------------------------------------- rerank
    def _shard_qids(self, shard: tuple[int, int] | None) -> list[str]:
        # shard (rank, world): query i goes to rank i % world, the same split on every rank
        return self.qids if shard is None else self.qids[shard[0] :: shard[1]]

    def _chunks(self, shard: tuple[int, int] | None = None) -> list[list[str]]:
        chunks, current, size = [], [], 0
        for q in self._shard_qids(shard):
            if current and size + len(self.candidates[q]) > self.chunk_pairs:
                chunks.append(current)
                current, size = [], 0
            current.append(q)
            size += len(self.candidates[q])
        if current:
            chunks.append(current)
        return chunks

    def _encoded(
        self, reranker, instruction: str | None, shard: tuple[int, int] | None = None
    ) -> Iterator[tuple[list[str], list]]:
        """(query ids, prompt ids) per chunk, encoded lazily; kept per tokenizer, budget, instruction and shard."""
        enc = reranker.encoder
        effective = reranker.instruction if instruction is None else instruction
        tok = enc.tokenizer
        key = (type(tok).__name__, getattr(tok, "name_or_path", ""), len(tok), enc.max_length, enc.safe_text, effective)
        key += (shard,)
        chunks = self._chunks(shard)
        if key in self._cache:
            yield from zip(chunks, self._cache[key], strict=True)
            return
        kept: list[list[np.ndarray]] | None = []
        tokens = 0
        for qids in chunks:
            triples = [
                (
                    self.queries[q],
                    self.corpus[d],
                    self.query_instructions.get(q) if instruction is None else instruction,
                )
                for q in qids
                for d in self.candidates[q]
            ]
            # int32 arrays: a tenth of the memory of Python int lists; collate accepts any sequence
            ids = [np.asarray(x, dtype=np.int32) for x in reranker.encode(triples)]
            tokens += sum(len(x) for x in ids)
            if kept is not None and tokens <= CACHE_TOKENS:
                kept.append(ids)
            else:
                kept = None  # too large to keep: encode again next time
            yield qids, ids
        if kept is not None:
            self._cache[key] = kept

    def rerank(
        self,
        reranker,
        instruction: str | None = _UNSET,
        label: str = "reranker",
        shard: tuple[int, int] | None = None,
    ) -> tuple[Run, float]:
        """Reranked lists `{qid: [(doc id, logit)]}` in trec_eval order, and the scoring wall time (s).

        `shard=(rank, world)` reranks only this rank's share of the queries (every world-th one, so the ranks
        together cover each query once); the caller gathers the runs.
        """
        from tqdm.auto import tqdm

        from tuner.scoring import check_finite, prefix_groups

        instruction = self.instruction if instruction is _UNSET else instruction
        model = reranker.model
        was_training = bool(getattr(model, "training", False))
        saved_progress = reranker.show_progress
        show = self.show_progress if self.show_progress is not None else self.num_pairs >= 1000
        show = show and (shard is None or shard[0] == 0)
        run: Run = {}
        start = time.perf_counter()
        try:
            model.eval()  # dropout off while evaluating inside training; restored below
            reranker.show_progress = False  # one bar for the whole evaluation, not one per chunk
            total = sum(len(self.candidates[q]) for q in self._shard_qids(shard))
            with tqdm(total=total, desc=f"{self.name}: {label}", unit="pair", disable=not show) as bar:
                for qids, ids in self._encoded(reranker, instruction, shard):
                    # one group per query (its candidates share query and instruction): prefix reuse, if on
                    groups = prefix_groups([q for q in qids for _ in self.candidates[q]])
                    logits = reranker.logits_for_ids(ids, groups=groups)
                    pairs = [(q, d) for q in qids for d in self.candidates[q]]
                    check_finite(logits, lambda i, p=pairs: f"query {p[i][0]!r}, document {p[i][1]!r}")
                    pos = 0
                    for q in qids:
                        docs = self.candidates[q]
                        scored = dict(zip(docs, logits[pos : pos + len(docs)], strict=True))
                        run[q] = [(d, scored[d]) for d in ranked_ids(scored)]
                        pos += len(docs)
                    bar.update(len(logits))
        finally:
            reranker.show_progress = saved_progress
            if was_training:
                model.train()
        return run, time.perf_counter() - start

    def evaluate(
        self,
        model,
        tokenizer=None,
        instruction: str | None = _UNSET,
        label: str | None = None,
        **reranker_kwargs: Any,
    ) -> EvalResult:
        """Rerank with `model` (a `Reranker`, or a model with its `tokenizer`) and evaluate.

        Args:
            model: a `tuner.scoring.Reranker`, or a causal-LM / seq-cls / PEFT model (then `tokenizer` is needed).
            tokenizer: the model's tokenizer when `model` is not a `Reranker`.
            instruction: overrides the evaluator's instruction for this call (`""` → none).
            label: the system's name in reports.
            reranker_kwargs: passed to `Reranker(...)` when wrapping a bare model (`max_length`, `batch_tokens`).
        """
        reranker = _as_reranker(model, tokenizer, reranker_kwargs)
        label = label or getattr(reranker, "name", None) or "reranker"
        instruction = self.instruction if instruction is _UNSET else instruction
        run, seconds = self.rerank(reranker, instruction, label)
        result = self.score_run(run, label)
        result.seconds, result.pairs = seconds, self.num_pairs
        result.info["instruction"] = reranker.instruction if instruction is None else instruction
        return result

    def __call__(self, model, tokenizer=None, instruction: str | None = _UNSET, **kwargs: Any) -> dict[str, float]:
        """`{metric: mean}` of `model` reranking the candidates (see `evaluate`); `primary_metric` is the key."""
        return dict(self.evaluate(model, tokenizer, instruction, **kwargs).metrics)


def _cut(ranking, k: int | None) -> list[tuple[str, float]]:
    scores: dict[str, float] = {}
    for d, s in ranking.items() if isinstance(ranking, Mapping) else ranking:
        scores.setdefault(str(d), float(s))
    ids = ranked_ids(scores)
    return [(d, float(scores[d])) for d in (ids if k is None else ids[:k])]


def _as_reranker(model, tokenizer, kwargs: dict[str, Any]):
    from tuner.scoring import Reranker

    if isinstance(model, Reranker):
        return model
    if hasattr(model, "logits_for_ids") and hasattr(model, "encoder"):  # Reranker-like
        return model
    if tokenizer is None:
        raise TypeError("evaluating a bare model needs its tokenizer: evaluator(model, tokenizer)")
    kwargs.setdefault("show_progress", False)
    return Reranker(model, tokenizer, **kwargs)
