"""Which evaluation queries the training data already covers: the seen / unseen split of `tuner eval --train-data`.

A tuned reranker can gain on a test set by remembering documents rather than by learning the domain: SciFact's
test claims are new, but most of their relevant abstracts are also positives of training claims, and on the tiny
model the whole gain sits on those queries. The split puts an evaluation query in **seen** when its text is a
training query or one of its relevant documents is a training positive, and in **unseen** otherwise; the report
then gives every system's metrics and paired test on each part, so "did it learn the domain?" is one command.

Texts are compared after whitespace and case folding (`normalize`), by a hash of that (`text_key`): a training
file carries texts, not the collection's ids, and the same abstract reaches both sides through different tools.
`tuner train` writes the view of the groups it trained on into the run folder (`TRAINING_VIEW`), so that
`tuner eval` on the run's adapter splits by exactly those. Nothing here needs a model.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.contract import document_text
from tuner.data.beir import is_beir_folder

__all__ = [
    "MEANING",
    "SEEN",
    "TRAINING_VIEW",
    "UNSEEN",
    "TrainingView",
    "eval_overlap",
    "groups_view",
    "normalize",
    "run_config",
    "runs_of_adapter",
    "runs_view",
    "seen_counts",
    "split_queries",
    "text_key",
    "trained_queries",
    "training_view",
    "union",
    "write_view",
]

TRAINING_VIEW = "training_view.json.gz"  # in a run folder: the view of the groups `tuner train` trained on

SEEN = "seen"
UNSEEN = "unseen"
# what report.md says each part holds
MEANING = {
    SEEN: "the query is a training query, or one of its relevant documents is a training positive",
    UNSEEN: "neither the query nor any of its relevant documents is in the training data",
}


def normalize(text: str) -> str:
    """Whitespace runs → one space, case folded: how query and document texts are compared across sources."""
    return " ".join(text.split()).casefold()


def text_key(text: str) -> str:
    """The key a text is compared by: 16 hex digits of the SHA-1 of its normalized form (a run folder stores keys,
    not the training texts; 64 bits make a collision among millions of texts a ~1e-7 event)."""
    return hashlib.sha1(normalize(text).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class TrainingView:
    """What a training source holds, as the split needs it.

    Attributes:
        source: how reports name it (a path, with the split or the run's recipe key).
        queries: `text_key`s of the query texts.
        positives: `text_key`s of the documents judged relevant to a training query.
        groups: training queries read (groups of a file, judged queries of a BEIR split).
    """

    source: str
    queries: frozenset[str]
    positives: frozenset[str]
    groups: int


def groups_view(groups: Iterable[Any], source: str = "training groups") -> TrainingView:
    """The view of `Group`s already in memory (what `tuner train` trains on, after `data.drop_dev_queries`)."""
    return _view(source, ((g.query, g.pos) for g in groups))


def _view(source: str, pairs: Iterable[tuple[str, Iterable[Any]]]) -> TrainingView:
    queries, positives, n = set(), set(), 0
    for query, docs in pairs:
        n += 1
        queries.add(text_key(query))
        positives.update(text_key(document_text(d)) for d in docs)
    return TrainingView(source, frozenset(queries), frozenset(positives), n)


def _beir_pairs(folder: Path, split: str) -> list[tuple[str, list[Any]]]:
    """A BEIR split's judged queries with their relevant documents (grade > 0): the positives that `tuner mine` and
    `data.beir` training turn into groups (mining adds negatives only)."""
    from tuner.data.beir import load_beir

    data = load_beir(folder, split)
    return [
        (data.queries[q], [data.corpus[d] for d, g in judged.items() if g > 0 and d in data.corpus])
        for q, judged in data.qrels.items()
        if any(g > 0 for g in judged.values())
    ]


def file_source_name(source: str | Path, split: str | None) -> str:
    """How reports name a training file, or the split file of a folder of them."""
    return f"{source} ({split})" if split and Path(source).is_dir() else str(source)


def _source_pairs(
    source: str, split: str | None, max_groups: int | None, as_trained: bool = False
) -> tuple[str, list[tuple[str, list[Any]]]]:
    """How reports name a training source, and its (query, positives) in training order, up to `max_groups`;
    `as_trained`: only the groups training keeps (with a positive and a negative)."""
    path = Path(source)
    if is_beir_folder(path):
        name, pairs = f"{source} ({split or 'train'} qrels)", _beir_pairs(path, split or "train")
    else:
        from tuner.data import load_groups

        name = file_source_name(source, split)
        groups = load_groups(source, split)
        if as_trained:
            groups = [g for g in groups if g.pos and g.neg]
        pairs = [(g.query, g.pos) for g in groups]
    return name, pairs if max_groups is None else pairs[:max_groups]


def run_config(run_dir: str | Path):
    """The recipe of a tuner run folder (the `config.yaml` that `tuner train` writes) when it names training data
    (`data.train_file` or `data.beir`), else None."""
    saved = Path(run_dir) / "config.yaml"
    if not saved.is_file():
        return None
    from tuner.config import load_config

    config = load_config(saved)
    return config if config.data.train_file or config.data.beir else None


def _dev_query_texts(config) -> set[str]:
    """The dev queries a run evaluated on (eval.data or eval.beir's split, sampled as training samples them), whose
    training groups `data.drop_dev_queries` left out."""
    ev, seed = config.eval, config.train.seed
    if ev.data:
        from tuner.evaluate import Evaluator

        queries = Evaluator.from_groups(ev.data, ev.split, ev.max_queries, seed, show_progress=False).queries
        return {normalize(t) for t in queries.values()}
    if ev.beir:
        from tuner.data.beir import load_beir
        from tuner.evaluate import sample_queries

        data = load_beir(ev.beir, ev.split)
        keep = sample_queries([q for q in data.qrels if q in data.queries], ev.max_queries, seed)
        return {normalize(data.queries[q]) for q in keep}
    return set()


def write_view(view: TrainingView, path: str | Path) -> Path:
    """Store a view (keys only, no text) as gzipped JSON, atomically."""
    from tuner.files import atomic_write

    doc = {"source": view.source, "groups": view.groups, "queries": sorted(view.queries)}
    doc["positives"] = sorted(view.positives)
    return atomic_write(path, gzip.compress(json.dumps(doc).encode("utf-8"), mtime=0))


def _read_view(path: Path, run: Path) -> TrainingView:
    try:
        doc = json.loads(gzip.decompress(path.read_bytes()))
        keys = {k: doc[k] for k in ("queries", "positives")}
        for name, value in keys.items():
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"'{name}' is not a list of keys")
        return TrainingView(
            f"{doc['source']}, as run {run} trained on",
            frozenset(keys["queries"]),
            frozenset(keys["positives"]),
            int(doc["groups"]),
        )
    except (OSError, EOFError, zlib.error, ValueError, KeyError, TypeError) as err:  # truncated, corrupt, other
        raise ValueError(
            f"{path}: not a training view tuner train wrote ({err}); --train-data names the data"
        ) from None


def _run_view(run: Path) -> TrainingView:
    if (run / TRAINING_VIEW).is_file():  # what the run trained on, recorded by it
        return _read_view(run / TRAINING_VIEW, run)
    # a run from before tuner recorded its view: rebuilt from its recipe (BEIR mining may have left out a query
    # this counts)
    config = run_config(run)
    if config is None:
        raise FileNotFoundError(f"{run / 'config.yaml'}: the run names no training data (data.train_file or data.beir)")
    data = config.data
    sources = [(file, None) for file in data.train_files] or [(data.beir, data.split)]
    try:
        read = [_source_pairs(source, split, None, as_trained=True) for source, split in sources]
        name = " + ".join(n for n, _ in read)
        pairs = [pair for _, some in read for pair in some][: data.max_groups]
        dev = _dev_query_texts(config) if data.drop_dev_queries else set()
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"{run / 'config.yaml'}: the run's training or dev data cannot be read ({err}); name the training data "
            "with --train-data"
        ) from None
    kept = [(q, docs) for q, docs in pairs if normalize(q) not in dev]
    if len(kept) < len(pairs):
        name += f" less its {len(pairs) - len(kept)} dev queries (data.drop_dev_queries)"
    return _view(f"{name}, from run {run}'s config.yaml", kept)


def training_view(source: str | Path, split: str | None = None) -> TrainingView:
    """Read the queries and positives of a training source.

    Args:
        source: a training-format file or folder (what `tuner train`'s `data.train_file` takes, a hub dataset id
            included), a BEIR folder (its `split` qrels: the judged queries and relevant documents), or a tuner
            run folder (what its `config.yaml` trained on: the training data up to `data.max_groups`, less the
            groups of dev queries that `data.drop_dev_queries` left out).
        split: file stem in a folder of training files, or the BEIR qrels split (default "train").

    Raises:
        DataError / FileNotFoundError: the source (or the run's recorded data) cannot be read; the message names it.
    """
    path = Path(str(source))
    is_run = path.is_dir() and not is_beir_folder(path) and (path / "config.yaml").is_file()
    if split and (is_run or path.is_file()):
        raise ValueError(
            f"{source}: a split names a file in a folder of training files, a BEIR qrels split or a hub split; "
            f"this is a {'run folder' if is_run else 'file'}"
        )
    if is_run:
        return _run_view(path)
    return _view(*_source_pairs(str(source), split, None))


def union(views: Sequence[TrainingView]) -> TrainingView:
    """One view of several training sources (a merge of adapters from several runs)."""
    if len(views) == 1:
        return views[0]
    return TrainingView(
        " + ".join(v.source for v in views),
        frozenset().union(*(v.queries for v in views)),
        frozenset().union(*(v.positives for v in views)),
        sum(v.groups for v in views),
    )


def runs_of_adapter(adapter: str | Path) -> list[Path]:
    """The tuner run folders an adapter (or a fully fine-tuned model) comes from: `RUN/adapter`, `RUN/model`,
    `RUN/checkpoints/checkpoint-N`, or the runs of every source of a `tuner merge` (its tuner.json's
    `merge.sources`); [] when it is none of these.

    Raises:
        ValueError: a merge with a source that comes from no run (its training data is unknown: a split by the other
            sources' data alone would call queries unseen that it trained on).
    """
    from tuner.loading import read_meta, run_weights

    folder = Path(run_weights(adapter))  # a run folder given for its adapter/ (or model/)
    sources = (((read_meta(folder) if folder.is_dir() else {}) or {}).get("merge") or {}).get("sources")
    if sources:  # first: a merge saved inside one of its sources' runs comes from all of them
        runs: list[Path] = []
        for source in sources:
            found = runs_of_adapter(source)
            if not found:
                raise ValueError(
                    f"{folder} merges {source}, which comes from no tuner run: --train-data names the data"
                )
            runs += [r for r in found if r not in runs]
        return runs
    for run in (folder.parent, folder.parent.parent if folder.parent.name == "checkpoints" else None):
        if run is not None and (run / "config.yaml").is_file():
            return [run]
    return []


def runs_view(adapter: str | Path) -> tuple[list[Path], TrainingView | None]:
    """The tuner runs an adapter (or a fully fine-tuned model) comes from (`runs_of_adapter`) and one view of what
    they trained on; ([], None) when it comes from no run.

    Raises:
        OSError / ValueError: a run's training data cannot be read, or a merge has a source from no run.
    """
    runs = runs_of_adapter(adapter)
    return runs, union([training_view(run) for run in runs]) if runs else None


def trained_queries(model: str | Path, adapter: str | Path | None, queries: Iterable[str]) -> tuple[int, list[Path]]:
    """How many distinct texts of `queries` the tuner run(s) of `adapter` (or of `model`: an adapter, a checkpoint, a
    merge or a fully fine-tuned RUN/model) trained on, and those runs. (0, []) for a model from no run, and for a
    run whose training data can no longer be read (this is a check for a warning, not a reason to fail)."""
    try:
        runs, view = runs_view(adapter or model)
    except (OSError, ValueError):
        return 0, []
    if view is None:
        return 0, []
    return sum(text_key(q) in view.queries for q in set(queries)), runs


def split_queries(
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    documents: Mapping[str, Any],
    view: TrainingView,
) -> dict[str, Any]:
    """Each evaluation query's part (SEEN / UNSEEN) and why.

    Args:
        queries: query id → text (the evaluated queries).
        qrels: query id → {doc id → grade}; a grade > 0 is relevant.
        documents: doc id → document, holding at least every relevant document of `qrels`.
        view: the training source (see `training_view`).

    Returns:
        `{"part": {qid: SEEN | UNSEEN}, "query_in_training": n, "positive_in_training": n, "relevant_documents": n,
        "relevant_documents_in_training": n}`: the counts of seen queries by reason (a query can have both) and of
        the distinct relevant documents.
    """
    part: dict[str, str] = {}
    by_query = by_doc = 0
    relevant: dict[str, bool] = {}
    for q, text in queries.items():
        rel = [d for d, g in qrels.get(q, {}).items() if g > 0 and d in documents]
        for d in rel:
            if d not in relevant:
                relevant[d] = text_key(document_text(documents[d])) in view.positives
        q_seen = text_key(text) in view.queries
        d_seen = any(relevant[d] for d in rel)
        by_query += q_seen
        by_doc += d_seen
        part[q] = SEEN if q_seen or d_seen else UNSEEN
    return {
        "part": part,
        "query_in_training": by_query,
        "positive_in_training": by_doc,
        "relevant_documents": len(relevant),
        "relevant_documents_in_training": sum(relevant.values()),
    }


def eval_overlap(view: TrainingView, evaluation: str | Path, split: str | None = None) -> dict[str, Any]:
    """`split_queries` of an evaluation set against a training view, before any model is trained: a BEIR folder's
    `split` (default test) qrels, or a labeled file's groups (their positives as the relevant documents); of a folder
    of labeled files (or a hub dataset), the `split` file, default test as `tuner eval --data` reads it.

    Returns:
        `split_queries`'s counts (without the per-query parts) with `queries` and `seen` (how many are seen).
    """
    path = Path(str(evaluation))
    if is_beir_folder(path):
        from tuner.data.beir import load_beir

        data = load_beir(path, split or "test")
        queries, qrels, corpus = data.queries, data.qrels, data.corpus
    else:
        from tuner.data import load_groups
        from tuner.data.groups import groups_as_collection

        # (a folder's train file by load_groups' default: the training side, not what tuner eval scores)
        beir = groups_as_collection(load_groups(evaluation, split or "test"), path.name).beir
        queries, qrels, corpus = beir.queries, beir.qrels, beir.corpus
    return seen_counts(split_queries(queries, qrels, corpus, view))


def seen_counts(split: Mapping[str, Any]) -> dict[str, Any]:
    """`split_queries`'s counts without its per-query parts, with `queries` and `seen` (how many are seen)."""
    parts = split["part"]
    counts = {k: v for k, v in split.items() if k != "part"}
    return {"queries": len(parts), "seen": sum(p == SEEN for p in parts.values()), **counts}
