"""The evaluation report: paired statistics, `metrics.json`, `per_query.jsonl`, run files, `report.md`, `report.png`.

Every figure in `report.md` and `report.png` is read from the same summary that becomes `metrics.json`, so the
three cannot disagree. Comparisons are paired by query against a reference system (the first model listed):
mean delta, wins / ties / losses, a paired t-test and a paired randomization (sign-flip) test.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tuner.evaluate import RANDOM_ORDER, EvalResult
from tuner.files import atomic_path, make_output_dir, save_figure
from tuner.metrics import Qrels, mean, parse_metric, ranked_ids

__all__ = [
    "build_summary",
    "check_report_targets",
    "crosscheck_pytrec_eval",
    "paired_stats",
    "plot_deltas",
    "prepare_out_dir",
    "render_markdown",
    "slug",
    "write_report",
]

TIE_TOLERANCE = 1e-9  # per-query differences this small are ties (float noise, not a win)
_PRETTY = {"ndcg": "nDCG", "mrr": "MRR", "map": "MAP", "recall": "Recall", "precision": "P"}


def pretty_metric(name: str) -> str:
    """`ndcg@10` → `nDCG@10`."""
    kind, k = parse_metric(name)
    return _PRETTY[kind] + (f"@{k}" if k else "")


def slug(text: str) -> str:
    """A file-name-safe form of a system label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._").lower() or "run"


def prepare_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """Create the output folder and check that a file can be written in it, before any scoring is done.

    Raises `ValueError` naming `flag` (eval, instruct and calibrate all call it `--out`) and the folder at fault: a
    file where a folder is wanted, no permission, a read-only or full disk (`tuner.files.make_output_dir`), so
    that a report folder that cannot be written fails in seconds, not after hours of scoring.
    """
    return make_output_dir(path, flag)


# ------------------------------------------------------------------------------------------ statistics
def paired_stats(
    reference: Sequence[float], other: Sequence[float], resamples: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """Paired comparison of per-query values (same query order in both).

    Returns:
        `delta` (mean of other − reference), `wins` / `ties` / `losses` (queries where other is better / equal /
        worse), `p_ttest` (two-sided paired t-test, scipy) and `p_randomization` (two-sided sign-flip test with
        `resamples` draws, add-one smoothed). p-values are 1.0 when every difference is 0 and None when the test
        is undefined (e.g. one query, or all differences equal and non-zero for the t-test).
    """
    a, b = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in length: {a.shape} vs {b.shape}")
    diff = b - a
    n = diff.size
    out: dict[str, Any] = {
        "delta": float(diff.mean()) if n else 0.0,
        "wins": int((diff > TIE_TOLERANCE).sum()),
        "ties": int((np.abs(diff) <= TIE_TOLERANCE).sum()),
        "losses": int((diff < -TIE_TOLERANCE).sum()),
        "queries": int(n),
        "p_ttest": None,
        "p_randomization": None,
    }
    if n == 0 or np.all(np.abs(diff) <= TIE_TOLERANCE):
        out["p_ttest"] = out["p_randomization"] = 1.0 if n else None
        return out
    if n > 1:
        from scipy.stats import ttest_rel

        with warnings.catch_warnings():  # equal non-zero differences: scipy warns, and the NaN below says it
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(ttest_rel(b, a).pvalue)
        out["p_ttest"] = None if math.isnan(p) else p
    rng = np.random.default_rng(seed)
    observed = abs(diff.mean())
    extreme = 0
    for start in range(0, resamples, 1000):  # blocks bound memory on large query sets
        size = min(1000, resamples - start)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(size, n))
        extreme += int((np.abs((signs * diff).mean(axis=1)) >= observed - 1e-12).sum())
    out["p_randomization"] = (extreme + 1) / (resamples + 1)
    return out


def crosscheck_pytrec_eval(qrels: Qrels, run: Mapping[str, Sequence[tuple[str, float]]], per_query) -> float | None:
    """Largest |ours − trec_eval| over queries and metrics, computed through pytrec_eval; None if not installed.

    MRR@k is checked as trec_eval's `recip_rank` on the run cut to its top k; a query the run lacks is left out
    (pytrec_eval does not see it; ours counts it 0 in the means).
    """
    try:
        import pytrec_eval
    except ImportError:
        return None
    names = {"ndcg": "ndcg_cut", "map": "map_cut", "recall": "recall", "precision": "P"}
    metrics = list(next(iter(per_query.values()), {}))
    judged = {q: dict(v) for q, v in qrels.items() if q in run}
    as_dict = {q: {d: float(s) for d, s in run[q]} for q in judged if run[q]}
    worst = 0.0
    for metric in metrics:
        kind, k = parse_metric(metric)
        if kind == "mrr":
            cut = as_dict if k is None else {q: {d: r[d] for d in ranked_ids(r)[:k]} for q, r in as_dict.items()}
            ref = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(cut)
            key = "recip_rank"
        else:
            measure = names[kind] + (f".{k}" if k else "")
            ref = pytrec_eval.RelevanceEvaluator(judged, {measure}).evaluate(as_dict)
            key = measure.replace(".", "_")
        for q, values in ref.items():
            worst = max(worst, abs(values[key] - per_query[q][metric]))
    return worst


# --------------------------------------------------------------------------------------------- summary
def build_summary(
    results: Sequence[EvalResult],
    reference: int,
    metrics: Sequence[str],
    primary_metric: str,
    meta: Mapping[str, Any],
    qrels: Qrels | None = None,
    overlap: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of `metrics.json`: one entry per system with its means and paired stats vs the reference, and
    with `overlap` (`tuner.overlap.split_queries`'s result plus `source` and `training_queries`) the same per part
    (seen / unseen in training) under `training_overlap`."""
    ref = results[reference]
    qids = list(ref.per_query)
    systems = []
    for i, result in enumerate(results):
        entry: dict[str, Any] = {
            "label": result.label,
            "metrics": {m: result.metrics[m] for m in metrics},
            "seconds": round(result.seconds, 3),
            "pairs": result.pairs,
            "run_file": f"runs/{i:02d}-{slug(result.label)}.trec",
            **result.info,
        }
        if i != reference:
            entry["vs_reference"] = {
                m: paired_stats([ref.per_query[q][m] for q in qids], [result.per_query[q][m] for q in qids])
                for m in metrics
            }
        if qrels is not None:
            entry["pytrec_eval_max_abs_diff"] = crosscheck_pytrec_eval(qrels, result.run, result.per_query)
        systems.append(entry)
    summary = {
        **meta,
        "queries": len(qids),
        "metrics_order": list(metrics),
        "primary_metric": primary_metric,
        "reference": ref.label,
        "systems": systems,
    }
    if overlap is not None:
        summary["training_overlap"] = _overlap_summary(results, reference, metrics, overlap)
    return summary


def _overlap_summary(
    results: Sequence[EvalResult], reference: int, metrics: Sequence[str], overlap: Mapping[str, Any]
) -> dict[str, Any]:
    """`training_overlap` of metrics.json: each part's query count, and every system's means on it with paired
    stats against the reference on the same queries (see `tuner.overlap`)."""
    from tuner.overlap import MEANING

    ref = results[reference]
    parts: dict[str, Any] = {}
    for name, meaning in MEANING.items():
        qids = [q for q in ref.per_query if overlap["part"].get(q) == name]
        entry: dict[str, Any] = {"queries": len(qids), "meaning": meaning, "systems": []}
        for i, result in enumerate(results):
            row: dict[str, Any] = {
                "label": result.label,
                # the part's means as the whole's (tuner.metrics.mean); None for a part without queries
                "metrics": mean({q: result.per_query[q] for q in qids}, metrics) if qids else dict.fromkeys(metrics),
            }
            if i != reference:
                row["vs_reference"] = {
                    m: paired_stats([ref.per_query[q][m] for q in qids], [result.per_query[q][m] for q in qids])
                    for m in metrics
                }
            entry["systems"].append(row)
        parts[name] = entry
    counts = {k: v for k, v in overlap.items() if k != "part"}
    return {**counts, "parts": parts}


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def cutoff_note(metrics: Sequence[str], top_k: int | None, every: bool = False) -> str:
    """The note under the systems table when a metric looks deeper than the candidates reranked per query
    (`every`: each query's whole group is ranked, `tuner eval --data`)."""
    if not top_k:
        return ""
    deep = [m for m in metrics if (parse_metric(m)[1] or 0) > top_k]
    if not deep:
        return ""
    pretty = [pretty_metric(m) for m in deep]
    names = pretty[0] if len(pretty) == 1 else ", ".join(pretty[:-1]) + " and " + pretty[-1]
    verb = "count" + ("s" if len(deep) == 1 else "")
    if every:
        return f"Each query's group is ranked whole (at most {top_k} documents), so {names} {verb} those."
    text = f"Only the top {top_k} candidates are ranked, so {names} {verb} those {top_k}"
    recalls = [pretty_metric(m) for m in deep if parse_metric(m)[0] == "recall"]
    if recalls:
        # reranking permutes a fixed candidate set: recall beyond it is the first stage's, the same for every row
        text += f"; {', '.join(recalls)} is the first stage's recall at {top_k}, the same for every system"
    return text + "."


def render_markdown(summary: Mapping[str, Any]) -> str:
    """`report.md` from a summary (see `build_summary`)."""
    metrics = summary["metrics_order"]
    primary = summary["primary_metric"]
    ref = summary["reference"]
    title = f"{summary.get('dataset', 'evaluation')} / {summary.get('split', '')}".rstrip(" /")
    lines = [f"# Evaluation: {title}", ""]
    facts = [
        f"{summary['queries']} queries",
        f"candidates: each group's documents (up to {summary.get('top_k')}), first stage in a seeded random order"
        if summary.get("candidates") == RANDOM_ORDER  # `tuner eval --data`
        else f"candidates: {summary.get('candidates', '?')} top-{summary.get('top_k')}",
    ]
    if summary.get("pairs_per_model"):
        facts.append(f"{summary['pairs_per_model']:,} pairs per model")
    facts.append(f"reference: **{ref}** (deltas in parentheses are against it)")
    lines += [" · ".join(facts), ""]
    for warning in summary.get("warnings") or []:  # what the set itself gets wrong (tuner.evaluate.Evaluator.warnings)
        lines += [f"**Warning:** {_md(warning)}", ""]
    lines.append("| system | " + " | ".join(pretty_metric(m) for m in metrics) + " | time (s) |")
    lines.append("|---" * (len(metrics) + 2) + "|")
    for s in summary["systems"]:
        cells = []
        for m in metrics:
            value = f"{s['metrics'][m]:.4f}"
            if "vs_reference" in s:
                value += f" ({s['vs_reference'][m]['delta']:+.4f})"
            cells.append(value)
        label = f"**{s['label']}**" if s["label"] == ref else s["label"]
        seconds = f"{s['seconds']:.1f}" if s.get("pairs") else "-"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {seconds} |")
    note = cutoff_note(metrics, summary.get("top_k"), every=summary.get("candidates") == RANDOM_ORDER)
    if note:
        lines += ["", note]
    lines += ["", f"## Paired comparison against {ref} ({pretty_metric(primary)}, per query)", ""]
    lines.append("| system | mean delta | wins / ties / losses | p (paired t-test) | p (randomization) |")
    lines.append("|---|---|---|---|---|")
    for s in summary["systems"]:
        if "vs_reference" not in s:
            continue
        st = s["vs_reference"][primary]
        lines.append(
            f"| {s['label']} | {st['delta']:+.4f} | {st['wins']} / {st['ties']} / {st['losses']} | "
            f"{_fmt_p(st['p_ttest'])} | {_fmt_p(st['p_randomization'])} |"
        )
    lines += ["", "Wins, ties and losses count queries where the system scores above, equal to or below the "]
    lines[-1] += "reference; p-values are two-sided (randomization: 10,000 sign flips)."
    if summary.get("training_overlap"):
        lines += _overlap_markdown(summary)
    lines += ["", "## Systems", "", "| system | model | adapter | instruction | run file | trec_eval check |"]
    lines.append("|---|---|---|---|---|---|")
    for s in summary["systems"]:
        inst = s.get("instruction")
        inst = (
            "n/a" if "instruction" not in s else ("(none)" if inst == "" else ("(default)" if inst is None else inst))
        )
        check = s.get("pytrec_eval_max_abs_diff")
        check = "n/a" if check is None else f"max diff {check:.1e}"
        lines.append(
            f"| {s['label']} | {s.get('model') or '-'} | {s.get('adapter') or '-'} | {_md(inst)} | "
            f"`{s['run_file']}` | {check} |"
        )
    lines += ["", "![per-query deltas](report.png)", ""]
    return "\n".join(lines)


def _overlap_markdown(summary: Mapping[str, Any]) -> list[str]:
    """The "seen / unseen in training" section of report.md."""
    info = summary["training_overlap"]
    primary, ref = summary["primary_metric"], summary["reference"]
    name = pretty_metric(primary)
    lines = ["", f"## Seen and unseen in training ({name}, against {ref})", ""]
    lines.append(
        f"Training data: {_md(info.get('source', '?'))} ({info.get('training_queries', '?')} training queries). "
        f"{info['relevant_documents_in_training']} of the {info['relevant_documents']} relevant documents of "
        f"these queries are training positives; {info['positive_in_training']} queries have one, "
        f"{info['query_in_training']} are training queries themselves."
    )
    lines += ["", f"| part | queries | system | {name} | delta | wins / ties / losses | p (randomization) |"]
    lines.append("|---|---|---|---|---|---|---|")
    for part, entry in info["parts"].items():
        if not entry["queries"]:
            lines.append(f"| {part} | 0 | - | - | - | - | - |")
            continue
        for row in entry["systems"]:
            value = f"{row['metrics'][primary]:.4f}"
            st = (row.get("vs_reference") or {}).get(primary)
            delta = f"{st['delta']:+.4f}" if st else "(reference)"
            wtl = f"{st['wins']} / {st['ties']} / {st['losses']}" if st else "-"
            p = _fmt_p(st["p_randomization"]) if st else "-"
            lines.append(f"| {part} | {entry['queries']} | {row['label']} | {value} | {delta} | {wtl} | {p} |")
    lines += [
        "",
        f"seen: {info['parts']['seen']['meaning']} (texts compared after whitespace and case folding); unseen: the "
        "rest. A gain on seen queries alone is memory of those documents, not of the domain.",
    ]
    return lines


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def plot_deltas(summary: Mapping[str, Any], per_query: Mapping[str, Mapping[str, Mapping[str, float]]], path) -> Path:
    """`report.png`: per-query deltas of the primary metric against the reference, sorted, one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary, ref = summary["primary_metric"], summary["reference"]
    others = [s["label"] for s in summary["systems"] if s["label"] != ref]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    qids = list(per_query)
    for label in others:
        deltas = sorted(per_query[q][label][primary] - per_query[q][ref][primary] for q in qids)
        mean_delta = sum(deltas) / len(deltas) if deltas else 0.0
        ax.plot(range(1, len(deltas) + 1), deltas, drawstyle="steps-mid", label=f"{label} (mean {mean_delta:+.4f})")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("queries, sorted by delta")
    ax.set_ylabel(f"{pretty_metric(primary)} − {ref}")
    ax.set_title(f"Per-query {pretty_metric(primary)} against {ref} ({len(qids)} queries)")
    if others:
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


REPORT_FILES = ("metrics.json", "per_query.jsonl", "report.md", "report.png")  # and runs/*.trec


def check_report_targets(out_dir: str | Path, flag: str = "--out", run_files: Sequence[str] = ()) -> None:
    """Raise `ValueError` naming `flag` if a report file of `write_report` could not replace what is at its path in
    `out_dir` (a folder named like one, `runs` as a file): checked before any file is replaced, and by `tuner eval`
    before its scoring as well."""
    out = Path(out_dir)
    runs = out / "runs"
    if runs.exists() and not runs.is_dir():
        raise ValueError(f"{flag} {out}: {runs} is a file, not a folder (the report writes its run files there)")
    for name in (*REPORT_FILES, *run_files):
        target = out / name
        if target.is_dir():
            raise ValueError(f"{flag} {out}: {target} is a folder, where the report writes its {target.name}")


def write_report(
    out_dir: str | Path,
    results: Sequence[EvalResult],
    reference: int,
    metrics: Sequence[str],
    primary_metric: str,
    meta: Mapping[str, Any],
    qrels: Qrels | None = None,
    overlap: Mapping[str, Any] | None = None,
    flag: str = "--out",
) -> dict[str, Any]:
    """Write metrics.json, per_query.jsonl, runs/*.trec, report.md and report.png into `out_dir`; return the summary.

    Labels must be unique (they key `per_query.jsonl`). With `overlap` (see `build_summary`) each per-query row
    also names its part ("seen" / "unseen" in training).

    Every file is written to a temporary beside it first, and only when all are written are they renamed into
    place (metrics.json last): a failure (a full disk, a folder where a file goes) leaves the previous report
    whole, and is a `ValueError` naming `flag`, `out_dir` and the file, not the temporary.
    """
    from contextlib import ExitStack

    from tuner.retrieval import write_run

    labels = [r.label for r in results]
    if len(set(labels)) != len(labels):
        raise ValueError(f"system labels must be unique, got {labels}")
    out = Path(out_dir)
    make_output_dir(out, flag)
    summary = build_summary(results, reference, metrics, primary_metric, meta, qrels, overlap)
    check_report_targets(out, flag, [entry["run_file"] for entry in summary["systems"]])
    qids = list(results[reference].per_query)
    per_query = {q: {r.label: r.per_query[q] for r in results} for q in qids}
    parts = overlap["part"] if overlap is not None else {}
    rows = [
        json.dumps(
            {"qid": q, **({"part": parts[q]} if q in parts else {}), "metrics": per_query[q]}, ensure_ascii=False
        )
        for q in qids
    ]
    texts = {  # renamed in the reverse order: metrics.json, which says a report is there, last
        "metrics.json": json.dumps(summary, indent=2, ensure_ascii=False) + "\n",
        "per_query.jsonl": "\n".join(rows) + "\n",
        "report.md": render_markdown(summary),
    }
    target = out
    try:
        with ExitStack() as stack:
            for name, text in texts.items():
                target = out / name
                stack.enter_context(atomic_path(target)).write_bytes(text.encode("utf-8"))
            for result, entry in zip(results, summary["systems"], strict=True):
                target = out / entry["run_file"]
                tmp = stack.enter_context(atomic_path(target, ".trec"))
                write_run(result.run, tmp, tag=slug(result.label)[:40], digits=None)
            target = out / "report.png"
            plot_deltas(summary, per_query, stack.enter_context(atomic_path(target, ".png")))
            target = out  # all written: the renames follow, as the stack closes
    except OSError as err:
        reason = err.strerror or str(err)
        if target != out:
            raise ValueError(
                f"{flag} {out}: could not write {target} ({reason}); no file of the report was replaced"
            ) from err
        failed = err.filename or out  # atomic_path names the file it renames onto
        raise ValueError(f"{flag} {out}: could not replace {failed} ({reason}); the report is incomplete") from err
    # an earlier report in the same folder may have had more systems: its run files would look like this one's
    written = {out / entry["run_file"] for entry in summary["systems"]}
    for stale in {p.parent for p in written}:
        for old in stale.glob("*.trec"):
            if old not in written:
                old.unlink()
    return summary
