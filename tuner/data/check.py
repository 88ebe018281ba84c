"""`tuner data check`: validate a training file (or a BEIR folder) and describe it before GPU hours are spent."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.contract import DEFAULT_MAX_LENGTH, document_text
from tuner.data.beir import load_beir
from tuner.data.groups import READ_FIELDS, consistent_groups, fractional_warning, negative_warning, read_groups
from tuner.data.schema import Group


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (`p` in [0, 100]) of a non-empty sequence; 0 for an empty one."""
    if not values:
        return 0
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    """min / median (p50) / p95 / max."""
    return {
        "min": min(values) if values else 0,
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "max": max(values) if values else 0,
    }


@dataclass
class CheckReport:
    """What `check_file` found. `ok` is False when any row was bad.

    Attributes:
        path: what was checked.
        rows: rows read; groups: groups built from them.
        errors: one message per bad row (file, line or row, field).
        warnings: problems that do not stop training (duplicates, conflicts, groups without negatives).
        stats: figures for printing, see `check_file`.
    """

    path: str
    rows: int = 0
    groups: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    # the groups read (`check_file`), for what else the check reports on them (`data check --against`)
    loaded: list[Group] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return not self.errors


def group_stats(groups: Sequence[Group]) -> tuple[dict[str, Any], list[str]]:
    """Counts that need no tokenizer, plus warnings: duplicates, pos/neg conflicts, groups without negatives."""
    warnings: list[str] = []
    seen: dict[tuple[str, str | None], int] = {}
    duplicates = 0
    for i, g in enumerate(groups):
        key = (g.query, g.instruction)
        if key in seen:
            duplicates += 1
        else:
            seen[key] = i
    no_neg = sum(1 for g in groups if not g.neg)
    # what training leaves out: documents both positive and negative for a query (each once, and the negative
    # copies dropped), documents repeated within a group
    cleaned = consistent_groups(groups)[1]
    repeats = cleaned.repeats
    stats = {
        "queries": len(seen),
        "duplicate_queries": duplicates,
        "pos_per_query": summary([len(g.pos) for g in groups]),
        "neg_per_query": summary([len(g.neg) for g in groups]),
        "groups_without_negatives": no_neg,
        "pos_neg_conflicts": len(cleaned.conflicting),
        "repeated_in_group": repeats,
        "negatives_left_out": cleaned.conflicts,
        "with_teacher_scores": sum(1 for g in groups if g.pos_scores is not None or g.neg_scores is not None),
        "with_graded_positives": sum(1 for g in groups if g.pos_grades is not None),
        "instructions": len({g.instruction for g in groups if g.instruction is not None}),
    }
    if duplicates:
        warnings.append(
            f"{_n(duplicates, 'group')} {_v(duplicates, 'repeats', 'repeat')} an earlier group's query "
            "(same query and instruction): training samples each group apart and evaluation scores each as a "
            "query of its own; if they are one query's documents, merge them into one group"
        )
    if cleaned.conflicting:
        warnings.append(
            f"{_n(stats['pos_neg_conflicts'], 'document')} {_v(stats['pos_neg_conflicts'], 'is', 'are')} both "
            f"positive and negative for {_v(stats['pos_neg_conflicts'], 'its', 'their')} query "
            f"(e.g. {cleaned.example}); training leaves such negatives out"
        )
    if repeats:
        warnings.append(
            f"{_n(repeats, 'document')} {_v(repeats, 'repeats', 'repeat')} an earlier document of its group; "
            "training keeps one copy"
        )
    if no_neg:
        warnings.append(
            f"{_n(no_neg, 'group')} {_v(no_neg, 'has', 'have')} no negatives "
            f"({_v(no_neg, 'it adds', 'they add')} nothing to a listwise loss)"
        )
    return stats, warnings


TOKEN_CHUNK = 4096  # prompts tokenized at once by `token_stats`


def token_stats(
    groups: Sequence[Group], max_length: int, tokenizer: Any = None, show_progress: bool = False
) -> dict[str, Any]:
    """Token lengths with the contract's tokenizer: queries, and full prompts (prefix + body + suffix).

    Prompts are measured untruncated, so `truncated` counts the pairs whose document `max_length` would cut.
    `show_progress`: a progress bar on stderr when there are enough pairs to take a while (4 chunks or more; about
    a minute per 150k pairs on 2 cores).
    """
    from tqdm.auto import tqdm

    from tuner.contract import PromptEncoder, load_tokenizer

    tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
    encoder = PromptEncoder(tokenizer, max_length=1 << 30)
    queries = list(dict.fromkeys(g.query for g in groups))
    query_lengths = [len(ids) for ids in tokenizer(queries, add_special_tokens=False)["input_ids"]]
    triples = list(dict.fromkeys((g.query, document_text(d), g.instruction) for g in groups for d in (*g.pos, *g.neg)))
    # in chunks, keeping only the lengths: one call over every pair held each prompt's text, encoding and ids at
    # once (5.6 GB for a 211 MB file of 20k groups of 8; 0.8 GB in chunks, the same figures)
    prompt_lengths: list[int] = []
    show = show_progress and len(triples) >= 4 * TOKEN_CHUNK
    with tqdm(total=len(triples), desc="counting tokens", unit="pair", disable=not show) as bar:
        for start in range(0, len(triples), TOKEN_CHUNK):
            chunk = triples[start : start + TOKEN_CHUNK]
            prompt_lengths += [len(ids) for ids in encoder.encode_many(chunk)]
            bar.update(len(chunk))
    truncated = sum(1 for n in prompt_lengths if n > max_length)
    return {
        "max_length": max_length,
        "query_tokens": summary(query_lengths),
        "prompt_tokens": summary(prompt_lengths),
        "pairs": len(prompt_lengths),
        "truncated": truncated,
    }


def check_file(
    path: str | Path,
    split: str | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    tokens: bool = True,
    tokenizer: Any = None,
    show_progress: bool = False,
) -> CheckReport:
    """Validate every row of a grouped/pairs file and gather the figures `tuner data check` prints.

    Args:
        path: file, folder with `<split>.*`, or hub id (see `load_groups`).
        split: folder file stem or hub split.
        max_length: prompt token budget whose truncation is counted.
        tokens: measure token lengths (needs the tokenizer; a few seconds per 10k pairs).
        tokenizer: a loaded Qwen3 tokenizer (default: the shipped one).
        show_progress: a progress bar while counting tokens, for a large file (see `token_stats`).

    Raises:
        DataError: the file cannot be read at all (missing, not UTF-8 JSON document, ...).
    """
    loaded = read_groups(path, split, collect_errors=True, warn=False)  # its warnings are the report's, said once
    report = CheckReport(path=str(path), rows=loaded.rows, groups=len(loaded.groups), errors=list(loaded.errors))
    report.loaded = loaded.groups
    stats, warnings = group_stats(loaded.groups)
    stats["empty_texts"] = sum(1 for e in loaded.errors if "empty text" in e)
    stats["pair_queries_without_positive"] = loaded.skipped_no_positive
    for key, where in loaded.unknown_fields.items():
        # compared with the fields of the row's own shape: a triplet row's 'scores' is not 'pos_scores', which
        # only grouped rows have
        close = difflib.get_close_matches(key, sorted(loaded.unknown_shape.get(key, READ_FIELDS)), n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        warnings.append(f"{where}: field {key!r} is not read by tuner (first row that has it){hint}")
    stats["fractional_labels"] = loaded.fractional_labels
    if loaded.fractional_labels:
        warnings.append(fractional_warning(loaded))
    stats["negative_labels"] = loaded.negative_labels
    if loaded.negative_labels:
        warnings.append(negative_warning(loaded))
    if loaded.skipped_no_positive:
        n = loaded.skipped_no_positive
        warnings.append(
            f"{_n(n, 'pair-file query', 'pair-file queries')} {_v(n, 'has', 'have')} no positive label and "
            f"{_v(n, 'was', 'were')} left out"
        )
    if tokens and loaded.groups:
        stats.update(token_stats(loaded.groups, max_length, tokenizer, show_progress))
        if stats["truncated"]:
            warnings.append(
                f"{stats['truncated']} of {stats['pairs']} pairs are longer than {max_length} tokens; "
                "their documents will be cut"
            )
    report.stats, report.warnings = stats, warnings
    return report


def check_beir(folder: str | Path, split: str = "test") -> CheckReport:
    """Load a BEIR folder's split (every error names file and line) and count what mining will see."""
    beir = load_beir(folder, split)
    report = CheckReport(path=str(folder))
    rel = [sum(1 for r in judged.values() if r > 0) for judged in beir.qrels.values()]
    judged_missing = [(q, d) for q, judged in beir.qrels.items() for d in judged if d not in beir.corpus]
    missing = {d for _, d in judged_missing}
    empty = sum(1 for d in beir.corpus.values() if not (d["title"].strip() or d["text"].strip()))
    report.stats = {
        "split": split,
        "documents": len(beir.corpus),
        "queries": len(beir.queries),
        "qrels": sum(len(j) for j in beir.qrels.values()),
        "pos_per_query": summary(rel),
        "queries_without_positive": sum(1 for n in rel if n == 0),
        "judged_docs_missing_from_corpus": len(missing),
        "empty_documents": empty,
    }
    if judged_missing:
        q, d = judged_missing[0]
        in_all = _n(len(missing), "judged document")
        report.errors.append(
            f"{beir.qrels_place(q, d)}: judged document {d!r} is not in the corpus ({in_all} missing in all)"
        )
    if empty:
        report.warnings.append(f"{_n(empty, 'corpus document')} {_v(empty, 'has', 'have')} no title and no text")
    if n := report.stats["queries_without_positive"]:
        report.warnings.append(
            f"{_n(n, 'query', 'queries')} {_v(n, 'has', 'have')} no relevant document (no grade above 0): "
            f"evaluation counts {_v(n, 'it', 'them')} as 0 on every metric for every system, and mining makes no "
            f"group for {_v(n, 'it', 'them')}"
        )
    return report


def _fmt_summary(s: dict[str, float], keys: Sequence[str] = ("min", "p50", "max")) -> str:
    return " / ".join(f"{s[k]:g}" for k in keys) + f"  ({' / '.join(keys)})"


def _n(count: int, word: str, plural: str | None = None) -> str:
    """`1 group`, `2 groups`."""
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _v(count: int, one: str, many: str) -> str:
    return one if count == 1 else many


_ROW_PLACE = re.compile(r"^(.*?(?::\d+|: row \d+)): ")  # FILE:LINE (JSONL, CSV) or SOURCE: row N (datasets)


def _row_place(error: str) -> str:
    """The row an error names: `FILE:LINE`, or `SOURCE: row N` for Parquet, saved and hub datasets (its first
    ': ' alone made every row of those one row: '50 errors' of '1 rejected')."""
    match = _ROW_PLACE.match(error)
    return match.group(1) if match else error.split(": ", 1)[0]


def format_report(report: CheckReport) -> str:
    """Human-readable lines for the terminal."""
    s = report.stats
    bad_rows = len({_row_place(e) for e in report.errors if ": " in e})
    rejected = f" ({bad_rows} rejected, see the error{'s' if bad_rows != 1 else ''} below)" if bad_rows else ""
    lines = [f"{report.path}"]
    if "documents" in s:  # a BEIR folder
        lines += [
            f"  split: {s['split']}",
            f"  documents: {s['documents']}",
            f"  queries: {s['queries']}    qrels: {s['qrels']}",
            f"  positives per query: {_fmt_summary(s['pos_per_query'])}",
            f"  queries without positive: {s['queries_without_positive']}",
            f"  empty documents: {s['empty_documents']}",
        ]
    else:
        lines += [
            f"  rows: {report.rows}{rejected}    groups: {report.groups}    queries: {s.get('queries', 0)}",
            f"  positives per query: {_fmt_summary(s['pos_per_query'])}" if report.groups else "",
            f"  negatives per query: {_fmt_summary(s['neg_per_query'])}" if report.groups else "",
            f"  duplicate queries: {s.get('duplicate_queries', 0)}",
            f"  documents both positive and negative: {s.get('pos_neg_conflicts', 0)}"
            + (
                f" (negative copies training leaves out: {s['negatives_left_out']})"
                if s.get("negatives_left_out")
                else ""
            ),
            f"  documents repeated within a group: {s.get('repeated_in_group', 0)}",
            f"  empty texts (rejected rows): {s['empty_texts']}" if s.get("empty_texts") else "",
            f"  groups with teacher scores: {s.get('with_teacher_scores', 0)}",
            f"  groups with graded positives (nDCG gains; weighed in training with data.positives_per_group > 1 "
            f"and a listwise target): "
            f"{s['with_graded_positives']}"
            if s.get("with_graded_positives")
            else "",
        ]
        if "prompt_tokens" in s:
            keys = ("p50", "p95", "max")
            lines += [
                f"  query tokens: {_fmt_summary(s['query_tokens'], keys)}",
                f"  prompt tokens: {_fmt_summary(s['prompt_tokens'], keys)}  over {s['pairs']} distinct pairs",
                f"  truncated at max_length {s['max_length']}: {_n(s['truncated'], 'pair')} "
                f"({100 * s['truncated'] / max(1, s['pairs']):.1f}%)",
            ]
    lines = [line for line in lines if line]
    lines += [f"warning: {w}" for w in report.warnings]
    lines += [f"error: {e}" for e in report.errors]
    lines.append(
        f"{'OK' if report.ok else 'FAILED'}: {_n(len(report.errors), 'error')}, {_n(len(report.warnings), 'warning')}"
    )
    return "\n".join(lines)
