"""Training files: grouped rows and labeled pairs, read into `Group`s with errors that name file, line and field.

Two row shapes are accepted (one file may mix them):

- grouped (FlagEmbedding's field names): `{"query", "pos": [...], "neg": [...], "instruction"?, "pos_scores"?,
  "neg_scores"?, "qid"?}`; `neg` may be left out (no negatives);
- labeled pairs: `{"query", "document", "label", "instruction"?}`, grouped per (query, instruction) in order of
  first appearance: `label > 0` → positive, otherwise negative (binary or graded labels; integer grades above 1
  are kept as the positives' `pos_grades`, the gains of nDCG when the file is evaluated). A CSV/TSV file holds
  labeled pairs, one per row, under a header naming the columns (`query`, `document`, `label`, and optionally
  `title` (the document's), `instruction`, `qid`);
- listwise rows, sentence-transformers' listwise layout: `{"query", "docs" (or "documents"): [...], "labels": [...],
  "instruction"?, "qid"?}`, one label per document read as a labeled pair's (grouped per (query, instruction));
- triplets, sentence-transformers' layout: `{"query" (or "anchor"), "positive", "negative"?, "negative_1"?, ...}`
  (its `mine_hard_negatives` output, triplet and n-tuple datasets), grouped per (query, instruction) like pairs,
  each document once. A CSV/TSV file may hold them too (a header with `positive` instead of `document, label`).

A document is a non-empty string or `{"title"?, "text"?}` with at least one of the two (a title alone is a document).

A folder written by `datasets.Dataset.save_to_disk` (or a `DatasetDict`'s, read at its split) goes through
`datasets.load_from_disk`.

Local JSONL/JSON files are read line by line here rather than through `datasets`: Arrow needs one type per
column (a file that mixes string and `{title, text}` documents cannot be loaded by its JSON builder), and its
errors do not name the line. CSV/TSV goes through the standard library's `csv` for the same reason (and to keep
every cell a string until the label is checked). Parquet files and hub dataset ids go through `datasets`; their
rows are named by row number.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import math
import random
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tuner.contract import document_text
from tuner.data.beir import DataError, is_beir_folder, jsonl_lines, utf8_lines
from tuner.data.schema import MAX_GRADE, MAX_TEACHER_SCORE, Group
from tuner.files import decode_utf8, json_error_place, json_error_reason, similar_names

log = logging.getLogger(__name__)

_GROUP_KEYS = {"query", "pos", "neg", "instruction", "pos_scores", "neg_scores", "qid", "pos_grades"}
_PAIR_KEYS = {"query", "document", "label", "instruction", "qid"}
_TRIPLET_KEYS = {"query", "anchor", "positive", "documents", "instruction", "qid"}  # + negative, negative_1, ...
_LIST_KEYS = {"query", "docs", "documents", "labels", "instruction", "qid"}
READ_FIELDS = (
    _GROUP_KEYS | _PAIR_KEYS | _TRIPLET_KEYS | _LIST_KEYS | {"negative"}
)  # what a typo'd field name is compared with
_NEGATIVE_KEY = re.compile(r"negative(?:_(\d+))?")
_LOCAL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet", ".csv", ".tsv", ".csv.gz", ".tsv.gz")
_LIST_REPR = re.compile(r"""\s*\[\s*['"].*['"]\s*\]\s*""", re.DOTALL)  # str(['a', 'b']), as to_csv writes a list
_TABLE_COLUMNS = ("query", "document", "label")  # required in a CSV/TSV header; "title", "instruction", "qid" optional


@dataclass
class LoadResult:
    """Groups plus what a check reports besides them.

    Attributes:
        groups: one per grouped row, one per (query, instruction) of pair rows that has a positive (every one
            with `require_positive=False`).
        rows: rows read.
        errors: messages for bad rows (only filled when loading with `collect_errors=True`).
        skipped_no_positive: pair-file queries whose labels were all <= 0 (no training signal; left out).
        unknown_fields: field name → first row that has it, for fields no loader reads (often a typo,
            such as "negs", that would silently drop data).
        unknown_shape: field name → the fields that first row's shape reads (what a typo is compared with).
        fractional_labels: pair rows with a label strictly between 0 and 1, and the first of them: each counts as
            a positive (label > 0), which probability-like labels (0.2 "barely relevant") do not mean.
        negative_labels: pair rows with a label below 0, and the first of them: each counts as a negative, as 0
            does, which scores (a logit, a -1 to 1 similarity) do not mean.
    """

    groups: list[Group] = field(default_factory=list)
    rows: int = 0
    errors: list[str] = field(default_factory=list)
    skipped_no_positive: int = 0
    unknown_fields: dict[str, str] = field(default_factory=dict)
    unknown_shape: dict[str, frozenset[str]] = field(default_factory=dict)
    fractional_labels: int = 0
    first_fractional: str | None = None
    negative_labels: int = 0
    first_negative: str | None = None


# ------------------------------------------------------------------------------------------------ reading
def _is_gz(path: Path) -> bool:
    return path.suffix == ".gz"


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, value) per non-blank line (`tuner.data.beir.jsonl_lines`: a bad line is a `DataError` value).

    A file that opens with `[` is often one JSON array saved under a JSONL name: its first line (a list of objects,
    or invalid JSON when the array spans lines) gets an error that says so.
    """
    array = _first_char(path) == "["
    for n, value in jsonl_lines(path):
        where = f"{path}:{n}"
        if array:
            array = False
            hint = (
                "the file holds one JSON array, not JSON Lines: name it .json (read as an array of rows) or write one "
                "object per line"
            )
            if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
                value = DataError(f"{where}: a row must be a JSON object, got list; {hint}")
            elif isinstance(value, DataError):
                value = DataError(f"{value}; {hint}")
        yield where, value


def _iter_json_array(path: Path) -> Iterator[tuple[str, Any]]:
    # the file's bytes and text are gone once it is parsed (a helper's locals): kept alive beside the parsed rows
    # while they are yielded, they tripled the memory of a large .json (3.2 GB for 1.05 GB of rows, 1.2 as JSONL)
    for n, row in enumerate(_read_json_array(path), 1):
        yield f"{path}: row {n}", row


def _read_json_array(path: Path) -> list:
    opener = gzip.open if _is_gz(path) else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read ({err})") from None
    text = decode_utf8(raw, path, DataError)
    del raw
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        line, column = json_error_place(text, err)
        raise DataError(f"{path}:{line}: invalid JSON ({json_error_reason(err)} at column {column})") from None
    except ValueError:  # an integer of more than 4300 digits (Python's limit on reading one)
        raise DataError(f"{path}: invalid JSON (a number of more than 4300 digits)") from None
    if isinstance(value, Mapping) and isinstance(value.get("data"), list):
        value = value["data"]  # {"data": [...]}, the other layout `datasets`' JSON builder reads
    if not isinstance(value, list):
        raise DataError(f"{path}: a JSON file must hold a list of rows (or be JSONL, one row per line)")
    return value


def _iter_table(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, pair or triplet row) per data row of a CSV (comma) or TSV (tab) file with a header row.

    CSV follows RFC 4180 (a quoted cell may hold commas, quotes and line breaks; the location is the line its row
    starts on). TSV is read unquoted, as in the IANA format: a cell ends at a tab or line break, so a document
    that opens with a `"` cannot swallow the lines after it; a cell quoted whole the way Python's csv module and
    pandas write TSV (wrapped in quotes, inner quotes doubled) is unquoted. A row with the wrong number of cells
    comes as a `DataError` value. The label stays text until `parse_pair` checks it. The file is streamed, not loaded.
    """
    tsv = path.name.lower().removesuffix(".gz").endswith(".tsv")
    kind = "TSV (tab-separated)" if tsv else "CSV (comma-separated)"
    csv.field_size_limit(2**31 - 1)  # the default 128 KiB cell limit would refuse a long document
    source = _TableLines(path)
    # strict: text after a closing quote is an error, not glued onto the cell. Without it, a quote that closes late
    # (`q,"doc one,1` ... `q3,"doc three",1` two lines on) reads the rows between into one cell, silently.
    reader = csv.reader(source, delimiter="\t", quoting=csv.QUOTE_NONE) if tsv else csv.reader(source, strict=True)
    yield from _table_rows(path, reader, kind, tsv, source)


class _TableLines:
    """A table file's text lines for csv; a bad byte (a DataError) stops it, naming the line. It keeps the lines of
    the row being read (`row`, cleared by the reader's caller before each row), to re-read a row whose quote never
    closes and name where that quote opened."""

    def __init__(self, path: Path):
        self.path = path
        self.row: list[str] = []
        self.read_all = False

    def __iter__(self) -> Iterator[str]:
        for _, line in utf8_lines(self.path):
            if isinstance(line, DataError):
                raise line
            self.row.append(line)
            yield line
        self.read_all = True

    def unclosed_cells(self) -> list[str] | None:
        """The current row's cells read leniently if the file ended inside it (a quoted cell never closed), else None.
        Strict csv raises there; the lenient reader returns the row with the rest of the file in its last cell."""
        return next(csv.reader(self.row), None) if self.read_all else None


def _unclosed_quote(path: Path, start: int, cells: list[str], end: int) -> tuple[str, DataError]:
    """(location, error) for a CSV row (starting on line `start`) that the file ended inside of.

    The lenient reader reads the rest of the file into the cell whose quote never closes (the row's last).
    """
    opened = start + sum(cell.count("\n") for cell in cells[:-1])  # the line breaks of the quoted cells before it
    where = f"{path}:{opened}"
    return where, DataError(
        f"{where}: a quoted field opened on this line is never closed (no closing '\"'; the rest of the file, to line "
        f"{end}, was read into it)"
    )


def _unquote_tsv(cell: str) -> str:
    """A TSV cell quoted whole by a CSV writer (wrapped in quotes, inner ones doubled) unquoted; others as they are."""
    if len(cell) >= 2 and cell[0] == cell[-1] == '"' and '"' not in cell[1:-1].replace('""', ""):
        return cell[1:-1].replace('""', '"')
    return cell


def _table_rows(path: Path, reader, kind: str, tsv: bool, source: _TableLines) -> Iterator[tuple[str, Any]]:
    start = 1
    try:
        source.row.clear()
        header = next(reader, None)
        while header is not None and not any(cell.strip() for cell in header):
            start = reader.line_num + 1
            source.row.clear()
            header = next(reader, None)  # blank lines before the header
    except csv.Error as err:
        cells = source.unclosed_cells()
        if cells is not None:
            raise _unclosed_quote(path, start, cells, reader.line_num)[1] from None
        raise DataError(f"{path}:{reader.line_num}: not valid {kind} ({err})") from None
    if header is None:
        return
    columns = [_unquote_tsv(cell).strip().lower() if tsv else cell.strip().lower() for cell in header]
    repeated = sorted({c for c in columns if columns.count(c) > 1 and c})
    if repeated:
        raise DataError(f"{path}:{reader.line_num}: the header names {', '.join(repeated)} more than once")
    st_shaped = "anchor" in columns or any(_NEGATIVE_KEY.fullmatch(c) for c in columns)
    triplets = ("positive" in columns or st_shaped) and "document" not in columns
    if triplets:  # sentence-transformers' (query | anchor, positive, negative, negative_1, ...)
        required: tuple[str, ...] = ("query", "anchor", "positive")
        missing = [] if "query" in columns or "anchor" in columns else ["query"]
        missing += [] if "positive" in columns else ["positive"]
    else:
        required = _TABLE_COLUMNS
        missing = [c for c in _TABLE_COLUMNS if c not in columns]
    if missing:
        other = next((sep for sep in (";", "\t", ",", "|") if len(header) == 1 and sep in header[0]), None)
        hint = f"; its header is one cell split by {other!r}: the file's separator is not the suffix's" if other else ""
        if not hint and missing in (["positive"], ["document"], ["label"]):
            hint = _renamed_column_hint({c: "" for c in columns}, missing[0])
        raise DataError(
            f"{path}:{reader.line_num}: a {kind} training file needs a header row naming the columns "
            f"{', '.join(_TABLE_COLUMNS)} (optional: title, instruction, qid), or query, positive, negative... for "
            f"triplets; this one has {', '.join(header)} "
            f"(missing {', '.join(missing)}){hint}"
        )
    start = reader.line_num + 1
    while True:
        try:
            source.row.clear()
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            unclosed = source.unclosed_cells()
            if unclosed is not None:
                yield _unclosed_quote(path, start, unclosed, reader.line_num)
                return
            late = (
                f": a quoted cell of this row closes only on line {reader.line_num}, with text after its closing "
                "'\"' (is a quote in this row unbalanced?)"
                if reader.line_num > start
                else ""
            )
            yield f"{path}:{start}", DataError(f"{path}:{start}: not valid {kind} ({err}){late}")
            start = reader.line_num + 1
            continue
        where, start = f"{path}:{start}", reader.line_num + 1
        if not any(cell.strip() for cell in cells):
            continue  # a blank line
        if tsv:
            cells = [_unquote_tsv(cell) for cell in cells]
        if len(cells) != len(columns):
            yield where, DataError(f"{where}: {len(cells)} cells, the header names {len(columns)} columns")
            continue
        row: dict[str, Any] = {}
        for name, cell in zip(columns, cells, strict=True):
            row[name] = cell if cell != "" or name in required else None  # an empty optional cell: not given
        listed = next((n for n in columns if _LIST_REPR.fullmatch(row[n] or "") and n not in ("query", "label")), None)
        if listed is not None:  # pandas / datasets' to_csv of a list column (ST's labeled-list): one string
            yield (
                where,
                DataError(
                    f"{where}: column '{listed}' holds a Python list written as text ({_shown(row[listed])}): a "
                    f"{kind} cell is one document; save list columns as JSONL or Parquet"
                ),
            )
            continue
        if not triplets:
            row["label"] = _number(row["label"])
            title = row.pop("title", None)
            if title:
                row["document"] = {"title": title, "text": row["document"]}
        yield where, row


def _number(cell: str) -> Any:
    """A label cell as an int or float (`true`/`false`, as pandas writes booleans, are 1 and 0); text that is not a
    number stays text (parse_pair names it)."""
    if cell.strip().lower() in ("true", "false"):
        return int(cell.strip().lower() == "true")
    for kind in (int, float):
        try:
            return kind(cell.strip())
        except ValueError:
            pass
    return cell


def _first_char(path: Path) -> str:
    opener = gzip.open if _is_gz(path) else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4096)
    except (OSError, EOFError, zlib.error) as err:  # zlib.error: a corrupt .gz stream (not an OSError)
        raise DataError(f"{path}: cannot read ({err})") from None
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    return chr(text[0]) if text else ""


def _iter_datasets(source: str, split: str | None, **kwargs) -> Iterator[tuple[str, Any]]:
    """Rows of a Parquet file or a hub dataset through `datasets`."""
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - `datasets` is in the data extra
        raise DataError(f"{source}: reading it needs `datasets` (pip install tuner[data])") from err
    try:
        ds = datasets.load_dataset(*kwargs.pop("args"), split=split or "train", **kwargs)
    except Exception as err:  # datasets raises its own hierarchy (DatasetNotFoundError, ArrowInvalid, ...)
        raise DataError(f"{source}: cannot load ({type(err).__name__}: {err})") from None
    for n, row in enumerate(ds, 1):
        yield f"{source}: row {n}", row


def _check_hub_reachable(name: str) -> None:
    """A hub dataset id (or a mistyped local path read as one) on a machine that cannot reach the hub: one error
    at once. `datasets` retried the request with backoff for about 25 s, printed huggingface_hub's "thrown while
    requesting HEAD" line, then said "Couldn't reach 'NAME' on the Hub". One request without retries decides;
    any answer but a network failure (no README.md, a gated or missing dataset) is left to `datasets` to say. A
    dataset in the hub cache, or offline mode, is not asked about: `datasets` reads it from the cache."""
    import datasets
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

    cached = Path(constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}"
    if datasets.config.HF_HUB_OFFLINE or constants.HF_HUB_OFFLINE or cached.is_dir():
        return
    try:
        get_hf_file_metadata(hf_hub_url(name, "README.md", repo_type="dataset"), retry_on_errors=False)
    except Exception as err:  # every hub failure is either a network one (said here) or left to datasets
        from tuner.loading import _hub_unreachable

        if not _hub_unreachable(err):
            return
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise DataError(
            f"{name}: not a local file or folder, and the Hugging Face Hub could not be reached to look it up as a "
            f"dataset ({type(err).__name__}: {reason}); check the network (or HF_ENDPOINT), or give a local path"
        ) from None


def _iter_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    """Rows of a local Parquet file, read with pyarrow batch by batch. Not through `datasets`, which wrote a copy
    of the file into its cache on every read, printed its own log lines and progress bars, and called an empty
    file "An error occurred while generating the dataset"."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:  # pragma: no cover - pyarrow comes with `datasets`, in the data extra
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install tuner[data])") from err
    n = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                n += 1
                yield f"{path}: row {n}", row
    except (OSError, pa.ArrowException) as err:
        where = f"{path}: after row {n}" if n else str(path)
        raise DataError(f"{where}: cannot read as Parquet ({type(err).__name__}: {err})") from None


def _iter_saved(path: Path) -> Iterator[tuple[str, Any]]:
    """Rows of a folder `datasets.Dataset.save_to_disk` wrote."""
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - `datasets` is in the data extra
        raise DataError(f"{path}: reading it needs `datasets` (pip install tuner[data])") from err
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:  # datasets raises its own hierarchy (FileNotFoundError, ArrowInvalid, ...)
        raise DataError(f"{path}: cannot load the saved dataset ({type(err).__name__}: {err})") from None
    for n, row in enumerate(ds, 1):
        yield f"{path}: row {n}", row


def resolve_path(path_or_id: str | Path, split: str | None = None) -> Path | None:
    """The local file to read, or None for a hub id. A folder holds `<split>.jsonl|.json|.parquet|.csv|.tsv`, or is
    one that `datasets`' `save_to_disk` wrote (a Dataset's folder, or a DatasetDict's `<split>` folder), or a hub
    dataset's files with `data/<split>-*` (then the folder itself)."""
    path = Path(path_or_id)
    if path.is_dir():
        saved = _saved_dataset(path, split) or _hub_layout(path, split)
        if saved is not None:
            return saved
        if is_beir_folder(path):
            raise DataError(
                f"{path}: a BEIR folder, not a file of training rows: evaluate on it with --beir (eval.beir), or "
                "turn it into groups with `tuner mine --beir`"
            )
        name = split or "train"
        for suffix in _LOCAL_SUFFIXES:
            if (path / f"{name}{suffix}").is_file():
                return path / f"{name}{suffix}"
        present = sorted(p.name for p in path.iterdir() if p.is_file() and p.name.lower().endswith(_LOCAL_SUFFIXES))
        have = (
            f"; it has {', '.join(present[:5])}{', ...' if len(present) > 5 else ''} (pick one with the split)"
            if present
            else ""
        )
        hub = _hub_splits(path)
        if hub:  # a hub dataset's copy without this split: its splits, not "no file" alone
            have = f"; its data/ has the split{'s' if len(hub) > 1 else ''} {', '.join(hub)} (pick one with the split)"
        raise DataError(f"{path}: no {name}.jsonl, .json, .parquet, .csv or .tsv in this folder{have}")
    if path.is_file():
        return path
    text = str(path_or_id)
    looks_local = text.startswith((".", "/", "~")) or text.endswith(_LOCAL_SUFFIXES) or text.count("/") > 1
    if looks_local:
        raise DataError(f"{path}: no such file{_near_misses(path)}")
    with_suffix = [f"{text}{suffix}" for suffix in _LOCAL_SUFFIXES if Path(f"{text}{suffix}").is_file()]
    if with_suffix:  # "mytrain" beside mytrain.jsonl: the file the user meant, not a hub id
        raise DataError(f"{path}: no such file; did you mean {', '.join(with_suffix)}?")
    # "data/trian" where ./data is a folder: a mistyped local path, not the hub dataset "data/trian" (asking the
    # hub costs half a minute of retries on an offline machine before it fails)
    owner = text.split("/")[0]
    if text.count("/") == 1 and Path(owner).expanduser().is_dir():
        raise DataError(
            f"{path}: no such file{_near_misses(path)} (read as a local path, not a hub dataset id, because "
            f"{owner}/ is a folder here)"
        )
    return None


def _saved_dataset(path: Path, split: str | None) -> Path | None:
    """The folder `datasets.Dataset.save_to_disk` wrote (`state.json` + `dataset_info.json`), or a
    `DatasetDict.save_to_disk` folder's `<split>` (default train) subfolder; None for any other folder."""
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        return path
    if not (path / "dataset_dict.json").is_file():
        return None
    name = split or "train"
    if (path / name / "state.json").is_file():
        return path / name
    splits = sorted(p.name for p in path.iterdir() if (p / "state.json").is_file())
    raise DataError(
        f"{path}: a saved DatasetDict (datasets' save_to_disk) without a {name!r} split; "
        f"it has {', '.join(splits) or 'none'} (pick one with the split)"
    )


def _hub_layout(path: Path, split: str | None) -> Path | None:
    """A local copy of a hub dataset repository (`git clone`, `snapshot_download`, `push_to_hub`'s layout): the
    folder itself when its `data/` holds `<split>-*` or `<split>.*` files (default train), else None."""
    data = path / "data"
    if data.is_dir() and any(_is_split_file(f, split or "train") for f in data.iterdir()):
        return path
    return None


def _hub_splits(path: Path) -> list[str]:
    """The splits of a hub dataset's local copy (`data/<split>-*` or `data/<split>.*` files), [] for none."""
    data = path / "data"
    if not data.is_dir():
        return []
    suffixes = (*_LOCAL_SUFFIXES, ".arrow")  # data files, not a README.md or LICENSE beside them
    names = {f.name.split(".")[0].split("-")[0] for f in data.iterdir() if f.name.lower().endswith(suffixes)}
    return sorted(n for n in names if n and any(_is_split_file(f, n) for f in data.iterdir()))


def _is_split_file(file: Path, split: str) -> bool:
    """`train-00000-of-00001.parquet` or `train.jsonl` for the split `train` (the hub's data/ file names)."""
    return file.is_file() and (file.name.startswith(f"{split}-") or file.name.split(".")[0] == split)


def _near_misses(path: Path) -> str:
    """ "; did you mean ...?" for files beside `path` with a similar name, else ""."""
    close = similar_names(path)  # "trian" finds train.jsonl
    return f"; did you mean {', '.join(str(p) for p in close)}?" if close else ""


def iter_rows(path_or_id: str | Path, split: str | None = None) -> Iterator[tuple[str, Any]]:
    """(location, raw row) from a local JSONL/JSON/Parquet file, a folder with `<split>.*`, or a hub id.

    A JSONL line that cannot be decoded comes as (location, `DataError`); a file that cannot be read raises.
    """
    path = resolve_path(path_or_id, split)
    if path is None:
        _check_hub_reachable(str(path_or_id))
        yield from _iter_datasets(str(path_or_id), split, args=(str(path_or_id),))
        return
    if path.is_dir() and (path / "state.json").is_file():  # a saved Dataset (`_saved_dataset`)
        yield from _iter_saved(path)
        return
    if path.is_dir():  # a hub dataset's files (`_hub_layout`): this split's files of its data/, through datasets
        name = split or "train"
        files = sorted(f for f in (path / "data").iterdir() if _is_split_file(f, name))
        builders = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".arrow": "arrow"}
        builder = builders.get(files[0].suffix.lower())
        if builder is None or any(f.suffix.lower() != files[0].suffix.lower() for f in files):
            raise DataError(f"{path}/data: cannot read its {name} files {', '.join(f.name for f in files[:3])}")
        yield from _iter_datasets(str(path), name, args=(builder,), data_files={name: [str(f) for f in files]})
        return
    name = path.name.lower()
    if name.endswith(".parquet"):
        yield from _iter_parquet(path)
    elif name.removesuffix(".gz").endswith((".csv", ".tsv")):
        yield from _iter_table(path)
    elif name.endswith((".json", ".json.gz")) and _first_char(path) in ("[", "{") and _is_json_document(path):
        yield from _iter_json_array(path)
    else:
        yield from _iter_jsonl(path)


def _is_json_document(path: Path) -> bool:
    """A `.json` file is one JSON document if it starts with `[`, is `{"data": [...]}`, or spans lines."""
    if _first_char(path) == "[":
        return True
    opener = gzip.open if _is_gz(path) else open
    with opener(path, "rb") as f:
        first = f.readline()
    try:
        value = json.loads(first)
    except ValueError:  # not JSON, not UTF-8, or a number too long to read: the JSON reader names the problem
        return True
    # the first line is a whole object: JSONL named .json, unless it is the {"data": [...]} layout
    return isinstance(value, Mapping) and isinstance(value.get("data"), list) and "query" not in value


# --------------------------------------------------------------------------------------------- validating
def _text(value: Any, where: str, field_name: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field_name}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field '{field_name}' is empty text")
    return value


def _document(value: Any, where: str, field_name: str) -> str | dict[str, str]:
    if isinstance(value, str):
        return _text(value, where, field_name)
    if isinstance(value, Mapping):
        # a title alone is a document (a product name, a heading), as in scoring (`contract.document_text`)
        if value.get("text") is None and value.get("title") is None:
            keys = ", ".join(repr(k) for k in value) or "(none)"
            raise DataError(f"{where}: field '{field_name}' is an object without 'text' (or 'title'): keys {keys}")
        title = value.get("title")
        if title is not None and not isinstance(title, str):
            raise DataError(f"{where}: field '{field_name}.title' must be a string, got {type(title).__name__}")
        text = "" if value.get("text") is None else value["text"]
        if not isinstance(text, str):
            raise DataError(f"{where}: field '{field_name}.text' must be a string, got {type(text).__name__}")
        if not text.strip() and not (title or "").strip():
            raise DataError(f"{where}: field '{field_name}' is empty text")
        return {"title": title or "", "text": text} if title else {"text": text}
    raise DataError(
        f"{where}: field '{field_name}' must be a string or a {{title, text}} object, got {type(value).__name__}"
    )


def _documents(row: Mapping, key: str, where: str, required: bool) -> list:
    if key not in row or row[key] is None:
        if required:
            raise DataError(f"{where}: missing field '{key}'")
        return []
    value = row[key]
    if not isinstance(value, list):
        raise DataError(f"{where}: field '{key}' must be a list of documents, got {type(value).__name__}")
    return [_document(doc, where, f"{key}[{i}]") for i, doc in enumerate(value)]


def _finite(value: Any) -> bool:
    """Whether a value is a number that is finite as a float (an integer of 400 digits is not: float() overflows)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _shown(value: Any) -> str:
    """`repr(value)` for an error, cut short (a 400-digit integer would fill the terminal)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


def _scores(row: Mapping, key: str, docs_key: str, n_docs: int, where: str, what: str = "scores") -> list[float] | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise DataError(f"{where}: field '{key}' must be a list of numbers, got {type(value).__name__}")
    out = []
    for i, s in enumerate(value):
        if not _finite(s):
            raise DataError(f"{where}: field '{key}[{i}]' must be a finite number, got {_shown(s)}")
        if what == "scores" and abs(s) > MAX_TEACHER_SCORE:
            bound = f"{MAX_TEACHER_SCORE:,.0f}"
            raise DataError(
                f"{where}: field '{key}[{i}]' must lie between -{bound} and {bound} (a teacher score: a logit, a "
                f"probability or a similarity), got {_shown(s)}"
            )
        out.append(float(s))
    if len(out) != n_docs:
        raise DataError(f"{where}: field '{key}' has {len(out)} {what} for {n_docs} documents in '{docs_key}'")
    return out


def _grades(row: Mapping, n_pos: int, where: str) -> list[int] | None:
    """A grouped row's `pos_grades`: one integer grade from 1 to `MAX_GRADE` per positive (2.0 is 2), or None."""
    values = _scores(row, "pos_grades", "pos", n_pos, where, what="grades")
    if values is None:
        return None
    for i, g in enumerate(values):
        if g != int(g) or g < 1:
            raise DataError(f"{where}: field 'pos_grades[{i}]' must be an integer >= 1, got {g!r}")
        if g > MAX_GRADE:
            raise DataError(_above_max_grade(where, f"pos_grades[{i}]", row["pos_grades"][i]))
    return [int(g) for g in values]


def _above_max_grade(where: str, field_name: str, value: Any) -> str:
    return (
        f"{where}: field '{field_name}' must be at most {MAX_GRADE}, the largest relevance grade, got "
        f"{_shown(value)} (rescale the grades, e.g. to 0-4)"
    )


def _pair_grades(labels: list[float]) -> list[int] | None:
    """The grades of a pair group's positives: kept when every positive label is an integer and one is above 1.

    Fractional labels (0.7: a soft or averaged judgment) have no grade scale to keep: those positives count
    as grade 1, as binary labels do.
    """
    if all(x == int(x) for x in labels) and any(x > 1 for x in labels):
        return [int(x) for x in labels]
    return None


def _instruction(row: Mapping, where: str) -> str | None:
    value = row.get("instruction")
    if value is not None and not isinstance(value, str):
        raise DataError(f"{where}: field 'instruction' must be a string, got {type(value).__name__}")
    return value


def _qid(row: Mapping, where: str) -> str | None:
    value = row.get("qid")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: field 'qid' must be a string or an integer, got {type(value).__name__}")
    return str(value)


def parse_group(row: Any, where: str, require_positive: bool = True) -> Group:
    """Validate one grouped row and return its `Group` (an empty `pos` only without `require_positive`)."""
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    if "pos" not in row and ("anchor" in row or _negative_keys(row)):  # an ST triplet / n-tuple without 'positive'
        raise DataError(
            f"{where}: missing field 'positive' (a sentence-transformers triplet / n-tuple row: query or anchor, "
            f"positive, negative...){_renamed_column_hint(row, 'positive')}"
        )
    if "pos" not in row and "labels" in row and "docs" not in row and "documents" not in row:
        raise DataError(
            f"{where}: missing field 'docs' (a sentence-transformers listwise row: query, docs, labels)"
            f"{_renamed_column_hint(row, 'docs')}"
        )
    if "query" not in row or row["query"] is None:
        raise DataError(f"{where}: missing field 'query'")
    query = _text(row["query"], where, "query")
    pos = _documents(row, "pos", where, required=True)
    if not pos and require_positive:
        raise DataError(f"{where}: field 'pos' is empty (a group needs at least one positive)")
    neg = _documents(row, "neg", where, required=False)
    return Group(
        query=query,
        pos=pos,
        neg=neg,
        instruction=_instruction(row, where),
        pos_scores=_scores(row, "pos_scores", "pos", len(pos), where),
        neg_scores=_scores(row, "neg_scores", "neg", len(neg), where),
        qid=_qid(row, where),
        pos_grades=_grades(row, len(pos), where),
    )


def parse_pair(row: Mapping, where: str) -> tuple[str, str | None, str | dict, float, str | None]:
    """Validate one labeled pair: (query, instruction, document, label, qid)."""
    if "query" not in row or row["query"] is None:
        raise DataError(f"{where}: missing field 'query'")
    query = _text(row["query"], where, "query")
    if "document" not in row or row["document"] is None:
        hint = _renamed_column_hint(row, "document") if "document" not in row else ""
        raise DataError(f"{where}: missing field 'document'{hint}")
    document = _document(row["document"], where, "document")
    if "label" not in row or row["label"] is None:
        raise DataError(
            f"{where}: missing field 'label'{_renamed_column_hint(row, 'label') if 'label' not in row else ''}"
        )
    label = row["label"]
    if isinstance(label, bool):
        label = int(label)
    if not _finite(label):
        raise DataError(f"{where}: field 'label' must be a number, got {_shown(label)}")
    if label > MAX_GRADE:  # a positive's label is its grade (an integer one, the gain of nDCG)
        raise DataError(_above_max_grade(where, "label", label))
    return query, _instruction(row, where), document, float(label), _qid(row, where)


def _renamed_column_hint(row: Mapping, wanted: str) -> str:
    """'; is 'answer' it? ...' for a row whose text field tuner does not read may be the missing `wanted` one:
    sentence-transformers' mine_hard_negatives keeps the input dataset's column names (question, answer, ...)."""
    if wanted == "label":
        if "score" not in row:
            return ""
        return (
            "; its 'score' (sentence-transformers' mine_hard_negatives with output_scores=True) is the miner's "
            "similarity, not a relevance label: mine with output_scores=False for 0/1 labels"
        )
    others = [
        str(k)
        for k, v in row.items()
        if (k not in READ_FIELDS or (wanted == "docs" and k == "positive"))
        and not _NEGATIVE_KEY.fullmatch(str(k))
        and isinstance(v, list if wanted == "docs" else (str, Mapping))
    ]
    if not others:
        return ""
    return (
        f"; is {others[0]!r} it? rename that column to {wanted!r} (sentence-transformers' mine_hard_negatives keeps "
        "the input dataset's column names)"
    )


def _is_pair(row: Any) -> bool:
    return isinstance(row, Mapping) and "pos" not in row and ("document" in row or "label" in row)


def _is_listwise(row: Any) -> bool:
    return (
        isinstance(row, Mapping)
        and "pos" not in row
        and "labels" in row
        and ("docs" in row or "documents" in row)
        and not _is_pair(row)
    )


def parse_listwise(row: Mapping, where: str) -> tuple[str, str | None, list, list[float], str | None]:
    """Validate one listwise row `{"query", "docs" (or "documents"), "labels"}` (sentence-transformers' listwise
    layout): (query, instruction, documents, labels, qid); each label is read as a pair's label."""
    if "query" not in row or row["query"] is None:
        raise DataError(f"{where}: missing field 'query'")
    query = _text(row["query"], where, "query")
    key = "docs" if "docs" in row else "documents"
    docs, labels = row[key], row["labels"]
    if not isinstance(docs, list) or not docs:
        raise DataError(f"{where}: field '{key}' must be a non-empty list of documents, got {_shown(docs)}")
    if not isinstance(labels, list) or len(labels) != len(docs):
        got = f"{len(labels)} labels" if isinstance(labels, list) else _shown(labels)
        raise DataError(f"{where}: field 'labels' must be a list of one label per document ({len(docs)}), got {got}")
    documents = [_document(d, where, f"{key}[{i}]") for i, d in enumerate(docs)]
    values = []
    for i, label in enumerate(labels):
        label = int(label) if isinstance(label, bool) else label
        if not _finite(label):
            raise DataError(f"{where}: field 'labels[{i}]' must be a number, got {_shown(label)}")
        if label > MAX_GRADE:
            raise DataError(_above_max_grade(where, f"labels[{i}]", label))
        values.append(float(label))
    return query, _instruction(row, where), documents, values, _qid(row, where)


def _is_triplet(row: Any) -> bool:
    return isinstance(row, Mapping) and "pos" not in row and "positive" in row and not _is_pair(row)


def _negative_keys(row: Mapping) -> list[str]:
    """`negative`, `negative_1`, `negative_2`, ... of a triplet / n-tuple row, in number order."""
    found = [(m, str(k)) for k in row if (m := _NEGATIVE_KEY.fullmatch(str(k)))]
    return [k for m, k in sorted(found, key=lambda mk: int(mk[0].group(1) or 0))]


def parse_triplet(row: Mapping, where: str) -> tuple[str, str | None, list, list, str | None]:
    """Validate one triplet / n-tuple row: (query, instruction, positives, negatives, qid).

    Also the samples of sentence-transformers' CrossEncoderRerankingEvaluator: `positive` a list of documents, with
    `negative` a list, or `documents` (the candidates; those that are not a positive are negatives).
    """
    name = "query" if "query" in row else "anchor"
    if row.get(name) is None:
        raise DataError(f"{where}: missing field 'query' (or 'anchor')")
    query = _text(row[name], where, name)
    if row["positive"] is None:
        raise DataError(f"{where}: missing field 'positive'")
    if isinstance(row["positive"], list) and "labels" in row:  # mine_hard_negatives' labeled-list, renamed
        raise DataError(
            f"{where}: field 'positive' holds a list of documents with 'labels': a sentence-transformers listwise "
            "row names them 'docs' (query, docs, labels); rename that column to 'docs'"
        )
    if not isinstance(row["positive"], list):
        positives = [_document(row["positive"], where, "positive")]
    elif not row["positive"]:
        raise DataError(f"{where}: field 'positive' is an empty list (a group needs at least one positive)")
    else:
        positives = [_document(d, where, f"positive[{i}]") for i, d in enumerate(row["positive"])]
    negatives: list = []
    for key in [*_negative_keys(row), *(["documents"] if "documents" in row else [])]:
        value = row[key]
        if isinstance(value, list):
            negatives += [_document(d, where, f"{key}[{i}]") for i, d in enumerate(value)]
        elif value is not None:
            negatives.append(_document(value, where, key))
    if "documents" in row:  # the evaluator's candidates hold its positives too
        positive_keys = {_doc_key(d) for d in positives}
        negatives = [d for d in negatives if _doc_key(d) not in positive_keys]
    return query, _instruction(row, where), positives, negatives, _qid(row, where)


class _RowGroups:
    """The groups of a file's rows, in file order: a grouped row is a group of its own; the pair and triplet rows of
    one (query, instruction) feed one group, made at the first of them."""

    def __init__(self) -> None:
        self.order: list[Group | tuple[str, str | None]] = []  # grouped rows' groups, pair / triplet groups' keys
        self.pairs: dict[tuple[str, str | None], Group] = {}
        self.seen: dict[tuple[str, str | None], set[str]] = {}  # triplet rows: the documents their group already has
        # pair rows: their positives' labels, for grades
        self.pos_labels: dict[tuple[str, str | None], list[float]] = {}

    def add(self, row: Any, where: str, result: LoadResult, require_positive: bool) -> None:
        """Validate one row (`DataError` if it is bad) and add it to its group; a pair row's odd label is counted in
        `result`."""
        if _is_triplet(row):
            self._add_triplet(*parse_triplet(row, where))
        elif _is_listwise(row):  # one labeled pair per document
            query, instruction, documents, labels, qid = parse_listwise(row, where)
            for document, label in zip(documents, labels, strict=True):
                self._add_pair(query, instruction, document, label, qid)
                _count_odd_label(result, label, where)
        elif _is_pair(row):
            query, instruction, document, label, qid = parse_pair(row, where)
            self._add_pair(query, instruction, document, label, qid)
            _count_odd_label(result, label, where)
        else:
            self.order.append(parse_group(row, where, require_positive))

    def _group_for(self, query: str, instruction: str | None, qid: str | None) -> Group:
        """The group of pair / triplet rows with this query and instruction (made at its first row)."""
        key = (query, instruction)
        if key not in self.pairs:
            self.pairs[key] = Group(query=query, pos=[], neg=[], instruction=instruction, qid=qid)
            self.order.append(key)
        return self.pairs[key]

    def _add_triplet(
        self, query: str, instruction: str | None, positives: list, negatives: list, qid: str | None
    ) -> None:
        group = self._group_for(query, instruction, qid)
        known_docs = self.seen.setdefault((query, instruction), set())
        for document, side in [(d, group.pos) for d in positives] + [(d, group.neg) for d in negatives]:
            text = _doc_key(document)
            if text not in known_docs:  # a positive repeats on every row of its query: once is enough
                known_docs.add(text)
                side.append(document)

    def _add_pair(
        self, query: str, instruction: str | None, document: str | dict, label: float, qid: str | None
    ) -> None:
        group = self._group_for(query, instruction, qid)
        (group.pos if label > 0 else group.neg).append(document)
        if label > 0:
            self.pos_labels.setdefault((query, instruction), []).append(label)

    def finish(self, result: LoadResult, require_positive: bool) -> None:
        """Give pair groups their grades and put the groups in `result` in file order, leaving out (and counting)
        the pair / triplet groups without a positive when `require_positive`."""
        for key, labels in self.pos_labels.items():
            if len(labels) == len(self.pairs[key].pos):  # not a group that triplet rows also fed (no grades for those)
                self.pairs[key].pos_grades = _pair_grades(labels)
        for item in self.order:
            if isinstance(item, Group):
                result.groups.append(item)
            elif self.pairs[item].pos or not require_positive:
                result.groups.append(self.pairs[item])
            else:
                result.skipped_no_positive += 1


def _count_odd_label(result: LoadResult, label: float, where: str) -> None:
    """Count a pair label strictly between 0 and 1 (a positive) or below 0 (a negative), and note the first of
    each: the warnings name them."""
    if 0 < label < 1:
        result.fractional_labels += 1
        result.first_fractional = result.first_fractional or str(where)
    elif label < 0:
        result.negative_labels += 1
        result.first_negative = result.first_negative or str(where)


def read_groups(
    path_or_id: str | Path,
    split: str | None = None,
    collect_errors: bool = False,
    max_errors: int = 50,
    require_positive: bool = True,
    warn: bool = True,
) -> LoadResult:
    """Read and validate every row; the workhorse behind `load_groups` and `tuner data check`.

    Args:
        path_or_id: a JSONL/JSON/Parquet/CSV/TSV file, a folder with `<split>.<one of those>`, or a hub dataset id.
        split: folder file stem or hub split (default "train").
        collect_errors: keep going after a bad row and record up to `max_errors` messages (for `data check`);
            otherwise the first bad row raises `DataError`. Unreadable files always raise.
        max_errors: cap on recorded messages.
        require_positive: leave out pair queries without a positive label (counted in `skipped_no_positive`) and
            reject grouped rows with an empty `pos`, as training and ranking metrics need; False keeps them (their
            negatives are labeled data all the same: calibration counts them).
        warn: log what the result counts (queries left out, fractional and negative labels); False for a caller
            that reports them itself (`tuner data check`), so that each is said once.
    """
    result = LoadResult()
    grouped = _RowGroups()
    for where, row in iter_rows(path_or_id, split):
        result.rows += 1
        try:
            if isinstance(row, DataError):
                raise row
            _note_unknown_fields(row, where, result.unknown_fields, result.unknown_shape)
            grouped.add(row, where, result, require_positive)
        except DataError as err:
            if not collect_errors:
                raise
            _keep_error(result.errors, str(err), max_errors)
    if result.rows == 0:
        raise DataError(f"{path_or_id}: no rows")
    grouped.finish(result, require_positive)
    if warn:
        _warn_about(path_or_id, result)
    return result


def _note_unknown_fields(
    row: Any, where: str, found: dict[str, str], shapes: dict[str, frozenset[str]] | None = None
) -> None:
    """Record in `found` each field of the row that its shape's loader does not read, at the first row with it,
    and in `shapes` the fields that shape reads."""
    if isinstance(row, Mapping):
        known = (
            _PAIR_KEYS
            if _is_pair(row)
            else _TRIPLET_KEYS
            if _is_triplet(row)
            else _LIST_KEYS
            if _is_listwise(row)
            else _GROUP_KEYS
        )
        # the negatives of a triplet row, and of one missing its 'positive' (an error that names it)
        triplet_like = "pos" not in row and not _is_pair(row)
        if triplet_like and "labels" in row:  # a listwise row missing its 'docs' (an error that names it)
            known = _LIST_KEYS
        for key in row.keys() - known - (set(_negative_keys(row)) if triplet_like else set()):
            if str(key) not in found and shapes is not None:
                shapes[str(key)] = frozenset(known | ({"negative"} if known is _TRIPLET_KEYS else set()))
            found.setdefault(str(key), where)


def _keep_error(errors: list[str], message: str, max_errors: int) -> None:
    """Add a bad row's message to `errors`, whose last line says so once there are more than `max_errors`."""
    if len(errors) < max_errors:
        errors.append(message)
    else:
        errors[-1] = f"... more errors not shown (stopped listing at {max_errors})"


def _warn_about(path_or_id: str | Path, result: LoadResult) -> None:
    """Log what the result counts: queries left out for want of a positive, fractional and negative labels."""
    if result.skipped_no_positive:
        log.warning("%s: %d queries have no positive label and were left out", path_or_id, result.skipped_no_positive)
    if result.fractional_labels:
        log.warning("%s", fractional_warning(result))
    if result.negative_labels:
        log.warning("%s", negative_warning(result))


def fractional_warning(result: LoadResult) -> str:
    """What a pair file with labels strictly between 0 and 1 is told (training log and `data check`)."""
    return (
        f"{result.fractional_labels} pair labels lie strictly between 0 and 1 (first: {result.first_fractional}); "
        "each counts as a positive (label > 0). If they are probabilities or soft scores, threshold them into 0/1 "
        "labels, or give them as teacher scores (pos_scores / neg_scores) with loss.kind=distill"
    )


def negative_warning(result: LoadResult) -> str:
    """What a pair file with labels below 0 is told (training log and `data check`)."""
    return (
        f"{result.negative_labels} pair labels lie below 0 (first: {result.first_negative}); each counts as a "
        "negative (label <= 0), as 0 does. If they are scores (logits, similarities from -1 to 1), threshold them "
        "into 0/1 labels, or give them as teacher scores (pos_scores / neg_scores) with loss.kind=distill"
    )


def load_groups(path_or_id: str | Path, split: str | None = None, require_positive: bool = True) -> list[Group]:
    """Read grouped rows and/or labeled pairs into `Group`s; the first bad row raises `DataError`.

    Args:
        path_or_id: a local `.jsonl`/`.json`/`.parquet`/`.csv`/`.tsv` file (`.gz` allowed for JSON and CSV/TSV),
            a folder holding `<split>.<one of those>`, or a hub dataset id (when the hub is reachable).
        split: folder file stem or hub split; default "train".
        require_positive: as training and evaluation need, a query without a positive is left out (pairs, with a
            warning) or an error (a grouped row's empty `pos`); False keeps it, with its negatives (calibration).

    Returns:
        Groups in file order (pairs grouped by (query, instruction) at their first appearance). Pair queries
        without any positive label are left out with a warning, unless `require_positive` is False.

    Raises:
        DataError: the message names the file, line (or row) and field of the first bad row.
    """
    return read_groups(path_or_id, split, require_positive=require_positive).groups


# ------------------------------------------------------------------------------------------ collections
@dataclass
class GroupCollection:
    """Groups seen as a BEIR-style collection: what evaluation and mining need from a training-format file.

    Attributes:
        beir: corpus (every distinct document of the groups, `{"title", "text"}`, ids `d1`, `d2`, ... in order of
            first appearance), queries and qrels (a group's positives, at their `pos_grades` or else grade 1);
            query ids are the groups' `qid` or `q<row>`, made unique (a repeated qid 7 of row 4 becomes `7#4`).
        documents: query id → its group's document ids, positives first, each once (a document that is both a
            positive and a negative of one group counts as the positive).
        instructions: query id → the group's instruction (None: the default).
    """

    beir: Any
    documents: dict[str, list[str]]
    instructions: dict[str, str | None]


def _as_titled(document: str | Mapping[str, Any]) -> dict[str, str]:
    if isinstance(document, str):
        return {"title": "", "text": document}
    return {"title": str(document.get("title") or ""), "text": str(document.get("text") or "")}


def _doc_key(document: str | Mapping[str, Any]) -> str:
    """One key for one document however it is written ("x", {"text": "x"} and {"title": "", "text": "x"} alike)."""
    return json.dumps(_as_titled(document), sort_keys=True, ensure_ascii=False)


def groups_as_collection(groups: Sequence[Group], name: str = "") -> GroupCollection:
    """The one mapping of groups onto ids, shared by `Evaluator.from_groups` and `tuner mine --data`."""
    from tuner.data.beir import BeirData

    corpus: dict[str, dict[str, str]] = {}
    ids: dict[str, str] = {}  # document as JSON → id
    beir = BeirData(corpus=corpus, queries={}, qrels={}, name=name)
    documents: dict[str, list[str]] = {}
    instructions: dict[str, str | None] = {}
    for n, group in enumerate(groups, 1):
        qid = group.qid if group.qid is not None else f"q{n}"
        k = 1
        while qid in beir.queries:  # a repeated qid (or one like a generated `q<row>`): never overwrite a query
            qid, k = f"{group.qid or 'q'}{'#' if group.qid else ''}{n}{'-' + str(k) if k > 1 else ''}", k + 1
        own: dict[str, None] = {}
        relevant: dict[str, int] = {}
        grades = group.pos_grades or [1] * len(group.pos)
        for document, grade in list(zip(group.pos, grades, strict=True)) + [(d, 0) for d in group.neg]:
            doc = _as_titled(document)
            key = _doc_key(doc)
            if key not in ids:
                ids[key] = f"d{len(ids) + 1}"
                corpus[ids[key]] = doc
            doc_id = ids[key]
            if doc_id not in own:
                own[doc_id] = None
            if grade:  # a positive listed twice keeps its higher grade
                relevant[doc_id] = max(grade, relevant.get(doc_id, 0))
        beir.queries[qid], beir.qrels[qid] = group.query, relevant
        documents[qid], instructions[qid] = list(own), group.instruction
    return GroupCollection(beir, documents, instructions)


def text_key(document: str | Mapping[str, Any]) -> str:
    """A document as the model reads it (the contract's rendering, outer whitespace aside): two documents with one
    key are one input to the reranker, however they are written."""
    return document_text(document).strip()


@dataclass
class Cleaned:
    """What `consistent_groups` took out: negatives that are a positive of their query, repeated documents."""

    conflicts: int = 0  # negatives left out (copies)
    conflicting: set[tuple[str, str | None, str]] = field(default_factory=set)  # (query, instruction, text) each once
    repeats: int = 0
    groups_changed: int = 0
    example: str = ""  # one conflict, for the warning: query and document, shortened


def consistent_groups(groups: Sequence[Group]) -> tuple[list[Group], Cleaned]:
    """Groups a loss can learn from: no document both positive and negative for one query, none twice in a group.

    A negative whose text (`text_key`) is a positive of its query (same query and instruction, in any of that
    query's groups) is dropped, as evaluation does (`groups_as_collection` counts it as the positive). Teaching it
    both ways in one step pulls its score up and down at once, and `tuner data check` warns about it. A document
    listed twice among a group's positives keeps its first place, at the higher of its grades; one listed twice
    among the negatives keeps its first place. Teacher scores go with the copy kept. Groups with nothing to drop
    are returned as they are (the same objects), so clean data trains on exactly what it did before.

    No library does this on our `Group`s: sentence-transformers' `mine_hard_negatives` keeps positives out of the
    negatives it mines, but a user's own file reaches training without such a check.
    """
    positives: dict[tuple[str, str | None], set[str]] = {}
    for group in groups:
        positives.setdefault((group.query, group.instruction), set()).update(text_key(d) for d in group.pos)
    cleaned = Cleaned()
    out: list[Group] = []
    for group in groups:
        grades = group.pos_grades or [1] * len(group.pos)
        first: dict[str, int] = {}  # text → index among the kept positives
        pos_keep: list[int] = []
        kept_grades: list[int] = []
        for i, document in enumerate(group.pos):
            key = text_key(document)
            if key in first:
                kept_grades[first[key]] = max(kept_grades[first[key]], grades[i])
                continue
            first[key] = len(pos_keep)
            pos_keep.append(i)
            kept_grades.append(grades[i])
        own_positives = positives[(group.query, group.instruction)]
        seen: set[str] = set()
        neg_keep: list[int] = []
        conflicts = 0
        for j, document in enumerate(group.neg):
            key = text_key(document)
            if key in own_positives:
                conflicts += 1
                cleaned.conflicting.add((group.query, group.instruction, key))
                cleaned.example = cleaned.example or f"query {group.query[:60]!r}: {key[:60]!r}"
            elif key not in seen:
                seen.add(key)
                neg_keep.append(j)
        repeats = len(group.pos) - len(pos_keep) + len(group.neg) - len(neg_keep) - conflicts
        if not conflicts and not repeats:
            out.append(group)
            continue
        cleaned.conflicts += conflicts
        cleaned.repeats += repeats
        cleaned.groups_changed += 1
        out.append(
            replace(
                group,
                pos=[group.pos[i] for i in pos_keep],
                neg=[group.neg[j] for j in neg_keep],
                pos_scores=None if group.pos_scores is None else [group.pos_scores[i] for i in pos_keep],
                neg_scores=None if group.neg_scores is None else [group.neg_scores[j] for j in neg_keep],
                pos_grades=None if group.pos_grades is None else kept_grades,
            )
        )
    return out, cleaned


# --------------------------------------------------------------------------------------------- writing
def write_groups(groups: Iterable[Group], path: str | Path) -> Path:
    """Write groups as JSONL atomically (temp file in the same folder, then rename); returns the path."""
    from tuner.files import atomic_open

    with atomic_open(path) as f:
        for group in groups:
            f.write(json.dumps(group.to_json(), ensure_ascii=False) + "\n")
    return Path(path)


# --------------------------------------------------------------------------------------------- splitting
def split_groups(groups: Sequence[Group], dev_fraction: float, seed: int = 0) -> tuple[list[Group], list[Group]]:
    """Split groups into train and dev by query, seeded, so that no query text is in both.

    Rows that share a query text go to the same side. The dev side gets `round(dev_fraction * queries)`
    queries (at least one when the fraction is positive and there are two or more queries). Both sides keep
    the input order.

    Args:
        groups: groups to split.
        dev_fraction: share of distinct queries for dev, in [0, 1).
        seed: the same seed and input give the same split.
    """
    if not 0.0 <= dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be in [0, 1), got {dev_fraction}")
    queries = list(dict.fromkeys(g.query for g in groups))
    n_dev = round(dev_fraction * len(queries))
    if dev_fraction > 0 and n_dev == 0 and len(queries) > 1:
        n_dev = 1
    n_dev = min(n_dev, len(queries) - 1) if queries else 0
    rng = random.Random(seed)
    dev_queries = set(rng.sample(sorted(queries), n_dev))  # sorted: independent of input order
    train = [g for g in groups if g.query not in dev_queries]
    dev = [g for g in groups if g.query in dev_queries]
    return train, dev
