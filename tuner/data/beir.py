"""BEIR folders: `corpus.jsonl[.gz]`, `queries.jsonl`, `qrels/<split>.tsv`.

Hand-written rather than through `datasets`: BEIR qrels are headered TSV with string ids, and every error
must name the file and line, which a generic loader does not do.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.data.schema import MAX_GRADE
from tuner.files import decode_utf8, json_error_place, json_error_reason, similar_names, utf16_hint

# How a JSON value that should have been a string is named in an error (JSON's words, not Python's).
_JSON_KIND = {
    type(None): "null",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    list: "a list",
    dict: "an object",
}


class DataError(ValueError):
    """Bad input data; the message names the file, line and field."""


@dataclass
class BeirData:
    """A BEIR collection restricted to one split's judged queries.

    Attributes:
        corpus: doc id → `{"title", "text"}`.
        queries: query id → text (only queries with qrels in the split).
        qrels: query id → {doc id → graded relevance}; 0 means judged non-relevant.
        name: folder name.
        qrels_path: the qrels file read (None when the qrels came from elsewhere, e.g. a training file's groups).
        qrels_lines: (query id, doc id) → the line of `qrels_path` that judges it (the last, when judged twice), so
            that a later check names the line.
    """

    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    name: str = ""
    qrels_path: Path | None = None
    qrels_lines: dict[tuple[str, str], int] = field(default_factory=dict)

    def qrels_place(self, qid: str, doc_id: str) -> str:
        """Where a judgment was read: `FILE:LINE` of the qrels, else the collection's name."""
        if self.qrels_path is None:
            return self.name
        line = self.qrels_lines.get((qid, doc_id))
        return f"{self.qrels_path}:{line}" if line else str(self.qrels_path)


def utf8_lines(path: str | Path) -> Iterator[tuple[int, str | DataError]]:
    """(line number, text) per line of a text file (`.gz` too), decoded line by line so that a bad byte names its
    line: such a line comes as a `DataError` value; a BOM on the first line is dropped. A file that cannot be read
    raises `DataError`."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    where = f"{path}:{n}: not UTF-8 text ({err.reason} at byte {err.start} of the line)"
                    yield n, DataError(where + (utf16_hint(raw) if n == 1 else ""))
                    continue
                yield n, line.removeprefix("\ufeff") if n == 1 else line
    except (OSError, EOFError, zlib.error) as err:  # zlib.error: a corrupt .gz stream (not an OSError)
        raise DataError(f"{path}: cannot read ({err})") from None


def jsonl_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) per non-blank line of a JSONL(.gz) file; raise `DataError` if it cannot be read.

    A line that is not UTF-8 (see `utf8_lines`) or not JSON comes as a `DataError` value, so that a check can go
    on past it.
    """
    for n, line in utf8_lines(path):
        if isinstance(line, DataError):
            yield n, line
        elif line.strip():
            text = line.rstrip("\r\n")  # a line cut inside a string is unterminated, not "invalid control character"
            try:
                yield n, json.loads(text)
            except json.JSONDecodeError as err:
                column = json_error_place(text, err)[1]
                yield n, DataError(f"{path}:{n}: invalid JSON ({json_error_reason(err)} at column {column})")
            except ValueError:  # an integer of more than 4300 digits (Python's limit on reading one)
                yield n, DataError(f"{path}:{n}: invalid JSON (a number of more than 4300 digits)")


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, object) from a JSONL(.gz) file; raise `DataError` naming file and line."""
    for n, value in jsonl_lines(path):
        if isinstance(value, DataError):
            raise value
        yield n, value


def is_beir_folder(path: str | Path) -> bool:
    """Whether `path` is a BEIR folder (it holds `corpus.jsonl[.gz]`)."""
    path = Path(path)
    return path.is_dir() and any((path / f"corpus{s}").is_file() for s in (".jsonl", ".jsonl.gz"))


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder}: no {stem}.jsonl or {stem}.jsonl.gz (is this a BEIR folder?)")


def read_qrels(path: str | Path, lines: dict[tuple[str, str], int] | None = None) -> dict[str, dict[str, int]]:
    """`query-id<TAB>corpus-id<TAB>score` under a header line (BEIR), or space-separated; also accepts 4-column TREC
    qrels. A file without a judgment raises `DataError`. `lines`, when given, is filled with (query id, doc id) →
    line number."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such qrels file")
    qrels: dict[str, dict[str, int]] = {}
    text = decode_utf8(path.read_bytes(), path, DataError)  # a BOM before the header is dropped
    header = False
    for n, row in enumerate(csv.reader(io.StringIO(text, newline=""), delimiter="\t"), 1):
        if not row:
            continue
        if len(row) == 1 and len(row[0].split()) in (3, 4):  # TREC's own files separate by spaces, not tabs
            row = row[0].split()
        if n == 1 and row[0].strip().lower() in ("query-id", "qid", "query_id"):  # a header, either separator
            header = True
            continue
        if len(row) == 4:  # TREC: qid iter docid rel
            row = [row[0], row[2], row[3]]
        if len(row) != 3:
            raise DataError(
                f"{path}:{n}: expected 3 tab-separated columns (query-id, corpus-id, score) or TREC's 4 "
                "(qid iter docid rel)"
            )
        try:
            score = int(row[2])
        except ValueError:
            raise DataError(f"{path}:{n}: score {row[2]!r} is not an integer") from None
        if score > MAX_GRADE:
            raise DataError(
                f"{path}:{n}: score {row[2]!r} is above {MAX_GRADE}, the largest relevance grade (rescale the grades, "
                "e.g. to 0-4)"
            )
        qrels.setdefault(row[0].strip(), {})[row[1].strip()] = score
        if lines is not None:
            lines[(row[0].strip(), row[1].strip())] = n
    if not qrels:  # before a caller builds an index for nothing, or averages over no query
        raise DataError(f"{path}: no judgments ({'only a header' if header else 'the file is empty'})")
    return qrels


def read_corpus(corpus_path: str | Path) -> dict[str, dict[str, str]]:
    """A BEIR `corpus.jsonl[.gz]`: doc id → `{"title", "text"}`; a bad row raises `DataError` naming its line."""
    corpus_path = Path(corpus_path)
    corpus: dict[str, dict[str, str]] = {}
    first_line: dict[str, int] = {}  # doc id → line it was defined on, to name both lines of a duplicate
    for n, row in read_jsonl(corpus_path):
        if not isinstance(row, dict) or "_id" not in row:
            raise DataError(f"{corpus_path}:{n}: a corpus row needs an '_id' field")
        text = row.get("text")
        if not isinstance(text, str):  # "" is fine (some BEIR corpora have empty documents); missing is not
            got = "missing" if "text" not in row else f"{_JSON_KIND.get(type(text), 'a value')}, not a string"
            raise DataError(f"{corpus_path}:{n}: field 'text' is {got}")
        doc_id = str(row["_id"])
        if doc_id in first_line:
            raise DataError(f"{corpus_path}:{n}: duplicate _id {doc_id!r} (first on line {first_line[doc_id]})")
        first_line[doc_id] = n
        corpus[doc_id] = {"title": str(row.get("title") or ""), "text": text}
    return corpus


def read_queries(queries_path: str | Path) -> dict[str, str]:
    """A BEIR `queries.jsonl[.gz]`: query id → text, every row; a bad row raises `DataError` naming its line."""
    queries: dict[str, str] = {}
    query_line: dict[str, int] = {}
    for n, row in read_jsonl(queries_path):
        if not isinstance(row, dict) or "_id" not in row or "text" not in row:
            raise DataError(f"{queries_path}:{n}: a query row needs '_id' and 'text'")
        if not isinstance(row["text"], str):  # str(None) would become the query "None"
            raise DataError(
                f"{queries_path}:{n}: field 'text' is {_JSON_KIND.get(type(row['text']), 'a value')}, not a string"
            )
        qid = str(row["_id"])
        if qid in query_line:
            raise DataError(f"{queries_path}:{n}: duplicate _id {qid!r} (first on line {query_line[qid]})")
        query_line[qid] = n
        queries[qid] = row["text"]
    return queries


def load_beir(folder: str | Path, split: str = "test") -> BeirData:
    """Load a BEIR folder's corpus, and the queries and qrels of `split`."""
    folder = Path(folder)
    if not folder.is_dir():
        close = similar_names(folder, folders_only=True)  # `--beir data/scifakt` finds data/scifact
        hint = f"; did you mean {', '.join(str(p) for p in close)}?" if close else ""
        raise DataError(f"{folder}: no such directory{hint}")
    corpus = read_corpus(_find(folder, "corpus"))
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
        raise DataError(f"{qrels_path}: no qrels for split {split!r} (available: {', '.join(splits) or 'none'})")
    qrels_lines: dict[tuple[str, str], int] = {}
    qrels = read_qrels(qrels_path, qrels_lines)
    queries_path = _find(folder, "queries")
    queries = {qid: text for qid, text in read_queries(queries_path).items() if qid in qrels}
    missing = [q for q in qrels if q not in queries]
    if missing:
        ids = "1 query id has" if len(missing) == 1 else f"{len(missing)} query ids have"
        raise DataError(f"{qrels_path}: {ids} no text in {queries_path} (e.g. {missing[0]!r})")
    return BeirData(
        corpus=corpus, queries=queries, qrels=qrels, name=folder.name, qrels_path=qrels_path, qrels_lines=qrels_lines
    )
