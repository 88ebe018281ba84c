"""First-stage retrieval: BM25 through `bm25s`, with the index cached on disk, and TREC run files."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

Run = dict[str, list[tuple[str, float]]]  # query id → [(doc id, score)], best first
# bm25s' defaults, named so that a cached index is keyed by them (Lucene's BM25 with k1 1.5, b 0.75)
BM25_PARAMS = {"k1": 1.5, "b": 0.75, "method": "lucene"}


def corpus_fingerprint(corpus: Mapping[str, Mapping[str, str]]) -> str:
    """A short hash of ids and texts: a cached index is reused only for the same corpus."""
    h = hashlib.sha256()
    for doc_id in sorted(corpus):
        doc = corpus[doc_id]
        h.update(f"{doc_id}\x00{doc.get('title', '')}\x00{doc.get('text', '')}\x01".encode())
    return h.hexdigest()[:16]


class BM25:
    """BM25 over a BEIR corpus (title + text), English stopwords and stemming when PyStemmer is present."""

    def __init__(self, corpus: Mapping[str, Mapping[str, str]], cache_dir: str | Path | None = None) -> None:
        import bm25s

        self.doc_ids = list(corpus)
        self._stemmer = _stemmer()
        # The key covers how the index was built, not only the corpus: an index built without PyStemmer, reused
        # once it is installed, got stemmed queries against unstemmed terms (SciFact nDCG@10 0.48 for 0.69, with
        # no error), and another bm25s may store or score differently.
        settings = {
            "stemmer": "english" if self._stemmer is not None else None,
            "stopwords": "en",
            "bm25s": getattr(bm25s, "__version__", "?"),
            "params": BM25_PARAMS,
        }
        cache = None
        if cache_dir:  # (the fingerprint reads the whole corpus: ~1 s for 300k documents, for nothing without a cache)
            key = hashlib.sha256((corpus_fingerprint(corpus) + json.dumps(settings, sort_keys=True)).encode())
            cache = Path(cache_dir) / f"bm25-{key.hexdigest()[:16]}"
        if cache is not None and (cache / "params.index.json").is_file():
            self.index = bm25s.BM25.load(str(cache))
            self.doc_ids = json.loads((cache / "doc_ids.json").read_text(encoding="utf-8"))
            self.cached = True
            return
        texts = [f"{corpus[d].get('title', '')} {corpus[d].get('text', '')}".strip() for d in self.doc_ids]
        tokens = bm25s.tokenize(texts, stopwords="en", stemmer=self._stemmer, show_progress=False)
        self.index = bm25s.BM25(**BM25_PARAMS)
        self.index.index(tokens, show_progress=False)
        self.cached = False
        if cache is not None:
            # build in a temporary folder and rename, so that an interrupted run never leaves half an index
            from tuner.files import atomic_dir

            with atomic_dir(cache) as tmp:
                self.index.save(str(tmp), show_progress=False)
                (tmp / "doc_ids.json").write_text(json.dumps(self.doc_ids), encoding="utf-8")

    def search(self, queries: Mapping[str, str], k: int = 100) -> Run:
        """Top-`k` documents for each query, best first."""
        import bm25s

        qids = list(queries)
        if not qids:
            return {}
        k = min(k, len(self.doc_ids))
        tokens = bm25s.tokenize([queries[q] for q in qids], stopwords="en", stemmer=self._stemmer, show_progress=False)
        # every core this process may use (bm25s' -1 takes os.cpu_count(), the host's, in a container): queries are
        # scored independently, so the results are the same; 4000 queries over 300k documents took 10.5 s on one
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = threads if len(qids) > 50 else 0  # (bm25s' chunk of queries per thread is 50)
        docs, scores = self.index.retrieve(tokens, k=k, show_progress=False, n_threads=threads)
        run: Run = {}
        for row, qid in enumerate(qids):
            run[qid] = [(self.doc_ids[int(d)], float(s)) for d, s in zip(docs[row], scores[row], strict=True)]
        return run


def _stemmer():
    try:
        import Stemmer

        return Stemmer.Stemmer("english")
    except ImportError:  # bm25s works without stemming; results are a little weaker
        return None


def write_run(run: Run, path: str | Path, tag: str = "tuner", digits: int | None = 6) -> None:
    """Write a TREC run file (`qid Q0 docid rank score tag`) atomically.

    `digits` decimals per score; None writes the shortest text that reads back as the same float, so that
    trec_eval (which breaks score ties by doc id) ranks the file exactly as the scores did.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(run_lines(run, tag, digits))
    os.replace(tmp, path)


def run_lines(run: Run, tag: str = "tuner", digits: int | None = 6) -> Iterator[str]:
    """The lines of a TREC run file (`qid Q0 docid rank score tag\\n`), each query's documents in the order given
    (see `write_run` for `digits`)."""
    for qid, ranked in run.items():
        for rank, (doc_id, score) in enumerate(ranked, 1):
            text = repr(float(score)) if digits is None else f"{score:.{digits}f}"
            yield f"{qid} Q0 {doc_id} {rank} {text} {tag}\n"


def _raise_duplicate(path: Path, qid: str) -> None:
    """Name both lines of a document ranked twice for `qid` (trec_eval refuses such a run; a dict would keep
    one score silently). Rereads the file: only on this error path, so that reading keeps no per-line index."""
    from tuner.data.beir import DataError

    first: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0] != qid:
                continue
            doc = parts[2]
            if doc in first:
                raise DataError(
                    f"{path}:{n}: docid {doc!r} ranked twice for query {qid!r} (first on line {first[doc]})"
                )
            first[doc] = n


def read_run(path: str | Path) -> Run:
    """Read a TREC run file; each query's documents are sorted best first by score."""
    from tuner.data.beir import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such run file")
    run: Run = {}
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 6:
                    raise DataError(f"{path}:{n}: expected 6 columns (qid Q0 docid rank score tag), got {len(parts)}")
                try:
                    int(parts[3])
                except ValueError:
                    raise DataError(f"{path}:{n}: rank {parts[3]!r} is not an integer") from None
                try:
                    score = float(parts[4])
                except ValueError:
                    raise DataError(f"{path}:{n}: score {parts[4]!r} is not a number") from None
                if math.isnan(score):  # NaN has no order: the ranking would be arbitrary
                    raise DataError(f"{path}:{n}: score {parts[4]!r} is not a number")
                run.setdefault(parts[0], []).append((parts[2], score))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 ({err.reason} at byte {err.start})") from None
    for qid, ranked in run.items():
        if len({doc for doc, _ in ranked}) != len(ranked):
            _raise_duplicate(path, qid)
        ranked.sort(key=lambda x: -x[1])
    return run
