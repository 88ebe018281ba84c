"""`tuner rerank`: rerank the first-stage candidates of many queries from files, with no labels, resumably.

Two inputs:
- JSONL, one query per line: `{"query", "documents": [str | {"title"?, "text"} | {"id", "text", "title"?}], "id"?,
  "instruction"?}`, written back as JSONL in input order, one line per query:
  `{"id"?, "query", "results": [{"index", "id"?, "score"}, ...]}`, best first (ties in input order, as
  `Reranker.rank`);
- a TREC run file with a BEIR folder's texts (`corpus.jsonl[.gz]`, `queries.jsonl`): each query's top `depth`
  candidates (cut in trec_eval order, as `tuner eval` cuts them), written back as a TREC run file.

Queries are scored in chunks of up to `chunk_pairs` pairs, one `Reranker.score_pairs` call each, so that its
length-sorted token-budget batches span queries. Each chunk's lines are appended to `OUT.partial` and flushed to
disk, and `OUT.partial.json` records how many queries (and bytes) are done and what they were scored from and with;
the partial is renamed onto OUT at the end. An interrupted run leaves both; `resume=True` continues after the
recorded queries once the record matches this input, model and options, and gives the file an uninterrupted run
would have written (a chunk starts where the last written one ended, so every later chunk is the same).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.contract import PromptTextError
from tuner.data.beir import _JSON_KIND, DataError

# Pairs per `score_pairs` call (and per flush of the partial file): enough for the token-budget batches to fill
# across queries, little to score again after a crash.
CHUNK_PAIRS = 2048
# The record's format; a partial written by another format is not resumed.
RECORD_VERSION = 1
_WEIGHTS = ("*.safetensors", "*.bin", "adapter_config.json")


@dataclass
class Query:
    """One query to rerank: its text, its documents as the reranker reads them, and what the output names.

    Attributes:
        text: the query.
        documents: strings or `{"title", "text"}` mappings.
        doc_ids: one id per document (None where a document has none), or None when no document has one.
        qid: the query's id (a JSONL row's "id", a run file's qid), or None.
        instruction: the row's own instruction, or None.
        line: the JSONL line it was read from (None for a run file's query).
    """

    text: str
    documents: list
    doc_ids: list | None = None
    qid: Any = None
    instruction: str | None = None
    line: int | None = None


def _kind(value: Any) -> str:
    """A JSON value's kind as an error names it ("a string", "a list", ...)."""
    return "a string" if isinstance(value, str) else _JSON_KIND.get(type(value), type(value).__name__)


def _check_id(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: field 'id' must be a string or an integer, got {_kind(value)}")


def read_jsonl_queries(path: str | Path) -> Iterator[Query]:
    """The queries of a JSONL file, one per non-blank line, checked; a bad line raises `DataError` naming it."""
    from tuner.data.beir import jsonl_lines

    path = Path(path)
    for n, row in jsonl_lines(path):
        if isinstance(row, DataError):
            raise row
        where = f"{path}:{n}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object with 'query' and 'documents', got {_kind(row)}")
        for key in ("query", "documents"):
            if key not in row:
                keys = ", ".join(repr(k) for k in row) or "(none)"
                raise DataError(f"{where}: missing field {key!r} (the row's fields: {keys})")
        query = row["query"]
        if not isinstance(query, str):
            raise DataError(f"{where}: field 'query' must be a string, got {_kind(query)}")
        if not query.strip():
            raise DataError(f"{where}: field 'query' is empty")
        documents = row["documents"]
        if not isinstance(documents, list):
            raise DataError(f"{where}: field 'documents' must be a list, got {_kind(documents)}")
        if "id" in row:
            _check_id(row["id"], where)
        instruction = row.get("instruction")
        if instruction is not None and not isinstance(instruction, str):
            raise DataError(f"{where}: field 'instruction' must be a string, got {_kind(instruction)}")
        ids = [_document_id(doc, f"{where}: documents[{i}]") for i, doc in enumerate(documents)]
        has_ids = any(i is not None for i in ids)
        yield Query(query, documents, ids if has_ids else None, row.get("id"), instruction, n)


def _document_id(document: Any, where: str) -> Any:
    """A JSONL row's document checked (a string, or an object with 'text' and/or 'title' and an optional 'id');
    returns its id, or None."""
    if isinstance(document, str):
        return None
    if not isinstance(document, dict):
        raise DataError(f"{where}: expected a string or an object with 'text', got {_kind(document)}")
    if "text" not in document and document.get("title") is None:
        keys = ", ".join(repr(k) for k in document) or "(none)"
        raise DataError(f"{where}: a document object needs a 'text' (or 'title') field; got keys {keys}")
    for key in ("text", "title"):
        value = document.get(key)
        if value is not None and not isinstance(value, str):
            raise DataError(f"{where}: field {key!r} must be a string, got {_kind(value)}")
    if "id" in document:
        _check_id(document["id"], where)
    return document.get("id")


def read_run_queries(run_path: str | Path, beir: str | Path, depth: int) -> list[Query]:
    """Each query of a TREC run file with its top `depth` candidates (trec_eval order: score descending, then doc
    id descending), their texts from the BEIR folder `beir`; ids the folder lacks raise `DataError` (how many, and
    the first with its line)."""
    from tuner.data.beir import _find, read_corpus, read_queries
    from tuner.files import similar_names
    from tuner.metrics import ranked_ids
    from tuner.retrieval import read_run

    folder = Path(beir)
    if not folder.is_dir():
        close = similar_names(folder, folders_only=True)
        raise DataError(f"{folder}: no such directory" + (f"; did you mean {close[0]}?" if close else ""))
    run = read_run(run_path)
    if not run:
        raise DataError(f"{run_path}: no candidates (the file is empty or blank)")
    queries_path = _find(folder, "queries")
    texts = read_queries(queries_path)
    unknown = [q for q in run if q not in texts]
    if unknown:
        raise DataError(
            f"{run_path}:{_first_line(run_path, unknown[0])}: {_of(len(unknown), len(run), 'query ids')} not in "
            f"{queries_path} (the first: {unknown[0]!r}); is it the run of another dataset?"
        )
    corpus_path = _find(folder, "corpus")
    corpus = read_corpus(corpus_path)
    queries, missing = [], {}
    for qid, ranked in run.items():
        ids = ranked_ids(ranked)[:depth]
        for doc_id in ids:
            if doc_id not in corpus:
                missing.setdefault(doc_id, qid)
        queries.append(Query(texts[qid], [corpus.get(d) for d in ids], ids, qid))
    if missing:
        doc_id, qid = next(iter(missing.items()))
        from tuner.data.check import _n, _v

        ids = f"{_n(len(missing), 'document id')} {_v(len(missing), 'is', 'are')}"
        raise DataError(
            f"{run_path}:{_first_line(run_path, qid, doc_id)}: {ids} not in {corpus_path} "
            f"(the first: {doc_id!r}, a top-{depth} candidate of query {qid!r})"
        )
    return queries


def _of(n: int, total: int, what: str) -> str:
    """`1 of the 7 query ids is`, `2 of the 7 query ids are`."""
    from tuner.data.check import _v  # data check's singular / plural

    return f"{n} of the {total} {what} {_v(n, 'is', 'are')}"


def _first_line(path: str | Path, qid: str, doc_id: str | None = None) -> int:
    """The first line of a run file that ranks `doc_id` (any document when None) for `qid` (on the error path
    only: reading keeps no line numbers)."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if parts and parts[0] == qid and (doc_id is None or parts[2] == doc_id):
                return n
    return 0


def source_identity(source: str | Path | None) -> dict[str, Any] | None:
    """What identifies a model or adapter without loading it: a local folder by its path and its weight files'
    names, sizes and modification times (`tuner.base_cache.model_identity`, which adapters' folders pass too), a hub
    id by itself (its commit is known once it is downloaded: `hub_snapshot`, part of `effective_settings`). A tuner
    run's folder is identified by the weights it stands for (`tuner.loading.run_weights`: its adapter/ or model/)."""
    from tuner.base_cache import model_identity
    from tuner.loading import run_weights

    if source is None:
        return None
    source = run_weights(source)
    path = Path(source).expanduser()
    if not path.is_dir():
        return {"hub_id": str(source)}
    found = model_identity(str(source))
    if found is not None:
        return found
    files = sorted({f for pattern in _WEIGHTS for f in path.glob(pattern)})
    return {
        "folder": str(path.resolve()),
        "files": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files],
    }


def hub_snapshot(source: str | Path | None) -> str | None:
    """The commit of a hub id's snapshot in the local cache (once it has loaded, the one it loaded); None for a local
    folder. Not part of `source_identity`: a first run downloads the model after the partial's record is checked,
    so the commit is there only on a resume, which would then be refused."""
    from tuner.base_cache import model_identity

    if source is None or Path(str(source)).expanduser().is_dir():
        return None
    return (model_identity(str(source)) or {}).get("commit")


def effective_settings(
    reranker, instruction: str | None, raw: bool, model: str | None = None, adapter: str | None = None
) -> dict[str, Any]:
    """What decides a loaded reranker's scores beyond its weights: the default instruction, prompt budget,
    calibration (unless raw logits) and dtype; and the snapshots of `model` and `adapter` when they are hub ids."""
    dtype = next(reranker.model.parameters()).dtype
    return {
        "instruction": reranker.instruction if instruction is None else instruction,
        "max_length": reranker.max_length,
        "calibration": None if raw else reranker.calibration,
        "dtype": str(dtype).removeprefix("torch."),
        "hub_snapshots": {"model": hub_snapshot(model), "adapter": hub_snapshot(adapter)},
    }


class Rerank:
    """One `tuner rerank` job: its input read and checked, its output paths checked, a partial to resume matched
    against this input and options (all before a model loads), then `run(reranker)`.

    Args:
        out: the output file (JSONL for a JSONL input, a TREC run file for a run file).
        input: a JSONL file of queries; or `candidates` (a TREC run file) with `beir` (a BEIR folder) and `depth`.
        options: what else the output depends on and a resumed partial must share (model and adapter identity, top
            k, probabilities or logits: `source_identity`, ...), compared as given.
        resume: continue `OUT.partial`; without it an existing partial is refused, naming it.
        overwrite: replace an existing `out`; without it an existing `out` is refused.
        top_k: keep each query's best K (None or 0: every candidate).
        raw: yes−no logits instead of probabilities.
        instruction: the instruction of pairs whose row gives none (None: the model's default).
        chunk_pairs: pairs per `score_pairs` call and per flush of the partial.
    """

    def __init__(
        self,
        out: str | Path,
        *,
        input: str | Path | None = None,
        candidates: str | Path | None = None,
        beir: str | Path | None = None,
        depth: int = 100,
        options: dict[str, Any] | None = None,
        resume: bool = False,
        overwrite: bool = False,
        top_k: int | None = None,
        raw: bool = False,
        instruction: str | None = None,
        chunk_pairs: int = CHUNK_PAIRS,
    ) -> None:
        from tuner.files import check_output_file, sha256_file

        if (input is None) == (candidates is None):
            raise ValueError("give one input: a JSONL file of queries, or a run file of candidates with a BEIR folder")
        self.out = Path(out)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.record_path = self.out.with_name(self.out.name + ".partial.json")
        check_output_file(self.out, "--out")
        if self.out.exists() and not overwrite:
            raise ValueError(f"--out {self.out} already exists; choose another file or pass --overwrite")
        self.resume = resume
        found = [p for p in (self.partial, self.record_path) if p.exists()]
        if found and not resume:
            raise ValueError(
                f"{found[0]}: a partial output of an earlier run is there; continue it with --resume, or delete "
                f"{' and '.join(map(str, (self.partial, self.record_path)))} to start over"
            )
        if resume and not found:
            raise ValueError(f"--resume: no {self.partial} to continue (start without --resume)")
        self.top_k, self.raw, self.instruction = top_k or None, raw, instruction
        self.chunk_pairs = chunk_pairs
        self.source = Path(input if input is not None else candidates)
        if input is not None:
            self.format = "jsonl"
            self._input = Path(input)
            if self._input.is_dir():
                raise DataError(f"{self._input}: a folder; --input takes a JSONL file, one query per line")
            if not self._input.is_file():
                from tuner.files import similar_names

                close = similar_names(self._input)  # `--input queries.jsnol` finds queries.jsonl
                raise DataError(f"{self._input}: no such file" + (f"; did you mean {close[0]}?" if close else ""))
            files = {"input": self._input}
            self._queries: list[Query] | None = None
            counts = [len(q.documents) for q in read_jsonl_queries(self._input)]  # every line checked up front
        else:
            self.format = "trec"
            from tuner.data.beir import _find

            self._queries = read_run_queries(candidates, beir, depth)
            files = {"candidates": Path(candidates), "corpus": _find(Path(beir), "corpus")}
            files["queries"] = _find(Path(beir), "queries")
            counts = [len(q.documents) for q in self._queries]
        if not counts:
            raise DataError(f"{input or candidates}: no queries (the file is empty or blank)")
        self.num_queries, self.num_pairs = len(counts), sum(counts)
        self._counts = counts
        inputs = {role: {"path": str(path.resolve()), "sha256": sha256_file(path)} for role, path in files.items()}
        self.key = {
            "version": RECORD_VERSION,
            "format": self.format,
            "inputs": inputs,
            "options": {"depth": depth if candidates is not None else None, "top_k": self.top_k, "raw": raw}
            | (options or {}),
        }
        self.record: dict[str, Any] | None = None
        self._lock: int | None = None
        if resume:
            if self.partial.is_file():  # else _read_record names the missing partial
                self._hold(os.open(self.partial, os.O_RDWR))
            try:
                self.record = self._read_record()
                self._compare("input", _inputs_digest(self.record["key"]), _inputs_digest(self.key))
                self._compare("options", self.record["key"]["options"], self.key["options"])
            except BaseException:
                self.release()  # a refused resume does not keep the partial's fd and lock
                raise
        self.done = self.queries_done  # queries in the partial, as `run` writes them

    def _hold(self, fd: int) -> None:
        """Keep `fd` (the partial) with an advisory `flock` on it until the job ends: a second `tuner rerank
        --resume` of the same output while this one runs (a second terminal, a scheduler's retry) appended to the
        same partial, and the file came out with queries twice or cut. The kernel drops the lock with the process
        however it ends. Without `fcntl`, or on a file system without locks, unguarded as before."""
        from tuner.files import lock_exclusive

        self._lock = fd
        try:
            taken = lock_exclusive(fd)
        except OSError:  # a file system without locks: unguarded
            return
        if not taken:
            self.release()
            raise ValueError(
                f"{self.partial} is being written by another tuner rerank now; wait for it to end (then --resume "
                "continues it if it stopped)"
            )

    def release(self) -> None:
        """Let go of the partial's lock (the CLI's process ending does it too)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # ---------------------------------------------------------------------------------------------- record
    def _read_record(self) -> dict[str, Any]:
        for path in (self.partial, self.record_path):
            if not path.is_file():
                raise ValueError(
                    f"--resume: {path} is missing, so {self.partial} cannot be continued; delete "
                    f"{self.partial if path == self.record_path else self.record_path} to start over"
                )
        try:
            record = json.loads(self.record_path.read_text(encoding="utf-8"))
            done, size = int(record["queries_done"]), int(record["bytes"])
            if not isinstance(record["settings"], dict) or not {"inputs", "options"} <= set(record["key"]):
                raise ValueError("no inputs, options or settings")
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"--resume: {self.record_path} is unreadable ({err}); delete it and {self.partial} to start over"
            ) from None
        if record["key"].get("version") != RECORD_VERSION:
            raise ValueError(
                f"--resume: {self.partial} was written by another version of tuner rerank; delete it and "
                f"{self.record_path} to start over"
            )
        if record["key"].get("format") != self.format:
            was = {"jsonl": "a JSONL --input", "trec": "a --candidates run file"}.get(record["key"].get("format"), "?")
            raise ValueError(
                f"--resume: {self.partial} was written from {was}, not from this one; rerun with the same input, or "
                f"delete it and {self.record_path} to start over"
            )
        if self.partial.stat().st_size < size or done > self.num_queries:
            raise ValueError(
                f"--resume: {self.partial} holds less than {self.record_path} says was written (the file was cut or "
                f"replaced); delete both to start over"
            )
        return record

    def _compare(self, what: str, then: dict[str, Any], now: dict[str, Any]) -> None:
        then = json.loads(json.dumps(then, default=str))  # as JSON stores it (tuples become lists)
        now = json.loads(json.dumps(now, default=str))
        differ = [k for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]
        if differ:
            shown = "; ".join(f"{k}: {_short(then.get(k))} then, {_short(now.get(k))} now" for k in differ)
            raise ValueError(
                f"--resume: {self.partial} was written with another {what} ({shown}); rerun with the same {what}, "
                f"or delete {self.partial} and {self.record_path} to start over"
            )

    def _write_record(self, done: int, size: int, pairs: int, settings: dict[str, Any]) -> None:
        from tuner.files import atomic_write

        record = {"key": self.key, "settings": settings, "queries_done": done, "pairs_done": pairs, "bytes": size}
        record["queries"], record["pairs"] = self.num_queries, self.num_pairs
        atomic_write(self.record_path, json.dumps(record, indent=1, ensure_ascii=False, default=str) + "\n")

    def check(self, settings: dict[str, Any]) -> None:
        """Refuse to resume a partial scored with other model settings (see `effective_settings`)."""
        if self.record is not None:
            self._compare("model settings", self.record["settings"], settings)

    @property
    def queries_done(self) -> int:
        """Queries the partial holds (0 for a new run)."""
        return int(self.record["queries_done"]) if self.record else 0

    # ------------------------------------------------------------------------------------------------- run
    def _place(self, chunk: Sequence[Query], index: int, part: str = "document") -> str:
        """Where the `index`-th pair of a chunk comes from: `FILE:LINE` and its field (`part`: the query, the
        instruction, or by default `documents[i]`)."""
        for query in chunk:
            if index < len(query.documents):
                break
            index -= len(query.documents)
        if query.line is None:  # a run file's query: its line that ranks the document
            line = _first_line(self.source, query.qid, query.doc_ids[index])
            document = f", document {query.doc_ids[index]!r}" if part == "document" else ""
            return f"{self.source}:{line}: query {query.qid!r}{document}"
        field = f"documents[{index}]" if part == "document" else f"field {part!r}"
        if part == "instruction" and query.instruction is None:
            field = "--instruction"
        return f"{self.source}:{query.line}: {field}"

    def queries(self) -> Iterator[Query]:
        return iter(self._queries) if self._queries is not None else read_jsonl_queries(self._input)

    def chunks(self, start: int = 0) -> Iterator[list[Query]]:
        """The queries from the `start`-th on, in chunks of at most `chunk_pairs` pairs (a larger query alone)."""
        chunk: list[Query] = []
        size = 0
        for n, query in enumerate(self.queries()):
            if n < start:
                continue
            if chunk and size + len(query.documents) > self.chunk_pairs:
                yield chunk
                chunk, size = [], 0
            chunk.append(query)
            size += len(query.documents)
        if chunk:
            yield chunk

    def lines(self, query: Query, scores: Sequence[float]) -> str:
        """The output lines of one query."""
        if self.format == "trec":
            from tuner.metrics import ranked_ids
            from tuner.retrieval import run_lines

            by_id = dict(zip(query.doc_ids, scores, strict=True))
            ranked = [(d, by_id[d]) for d in ranked_ids(by_id)[: self.top_k]]
            return "".join(run_lines({query.qid: ranked}, tag="tuner", digits=None))
        from tuner.scoring import best_first

        results = []
        for i in best_first(scores, self.top_k):
            result: dict[str, Any] = {"index": i}
            if query.doc_ids is not None and query.doc_ids[i] is not None:
                result["id"] = query.doc_ids[i]
            result["score"] = scores[i]
            results.append(result)
        row = ({"id": query.qid} if query.qid is not None else {}) | {"query": query.text, "results": results}
        return json.dumps(row, ensure_ascii=False) + "\n"

    def run(self, reranker, settings: dict[str, Any], show_progress: bool = True) -> dict[str, Any]:
        """Score what is left into the partial, chunk by chunk, and rename it onto `out`. `settings` (see
        `effective_settings`) must match a resumed partial's. Returns `{"queries", "pairs", "queries_scored",
        "pairs_scored", "seconds"}` (scored: by this call)."""
        from tqdm.auto import tqdm

        from tuner.scoring import NonFiniteScoresError

        self.check(settings)
        done = self.queries_done
        size = int(self.record["bytes"]) if self.record else 0
        pairs = sum(self._counts[:done])
        if self.record is None:
            self._write_record(0, 0, 0, settings)
        start = time.perf_counter()
        scored = 0
        saved_progress = reranker.show_progress
        reranker.show_progress = False  # one bar for the run, not one per chunk
        try:
            if self._lock is None:
                self._hold(os.open(self.partial, os.O_RDWR | os.O_CREAT, 0o644))
            with (
                open(self.partial, "r+b" if self.record else "wb") as f,
                tqdm(total=self.num_pairs, initial=pairs, desc="rerank", unit="pair", disable=not show_progress) as bar,
            ):
                f.truncate(size)  # a chunk written after the record's last update is scored again
                f.seek(size)
                for chunk in self.chunks(done):
                    triples = [(q.text, d, q.instruction) for q in chunk for d in q.documents]
                    try:
                        scores = reranker.score_pairs(triples, instruction=self.instruction, normalize=not self.raw)
                    except PromptTextError as err:  # an over-long query or instruction: named by its line
                        raise DataError(f"{self._place(chunk, err.index, err.part)}: {err}") from None
                    except NonFiniteScoresError as err:  # "pair N" of the chunk: named by its line too
                        where = self._place(chunk, err.index) if err.index is not None else str(self.source)
                        raise NonFiniteScoresError(
                            f"{where} (pair {err.index} of the chunk scored): {err}", err.index
                        ) from None
                    text, pos = [], 0
                    for q in chunk:
                        text.append(self.lines(q, scores[pos : pos + len(q.documents)]))
                        pos += len(q.documents)
                    data = "".join(text).encode("utf-8")
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                    done, size, pairs, scored = done + len(chunk), size + len(data), pairs + pos, scored + pos
                    self._write_record(done, size, pairs, settings)
                    self.done = done
                    bar.update(pos)
        except BaseException:
            self.release()  # the partial is kept for --resume; a Python caller's job does not hold it on
            raise
        finally:
            reranker.show_progress = saved_progress
        seconds = time.perf_counter() - start
        os.replace(self.partial, self.out)
        self.record_path.unlink(missing_ok=True)
        self.release()
        return {
            "queries": self.num_queries,
            "pairs": self.num_pairs,
            "queries_scored": self.num_queries - self.queries_done,
            "pairs_scored": scored,
            "seconds": seconds,
        }


def _inputs_digest(key: dict[str, Any]) -> dict[str, str]:
    """The input files by role and content (not path: a moved input is the same input)."""
    return {role: entry["sha256"][:12] for role, entry in key["inputs"].items()}


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."
