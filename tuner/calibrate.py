"""Score calibration: Platt scaling of the yes−no logit, with ECE, log loss and a reliability diagram.

The reranker's probability is sigmoid(logit). Platt scaling fits sigmoid(a·logit + b) to labeled dev pairs by
maximum likelihood on the raw logits (not on probabilities), with Platt's targets (N+ + 1)/(N+ + 2) for a positive
and 1/(N- + 2) for a negative in place of 1 and 0: on pairs the logits separate perfectly (easy dev negatives) the
plain maximum-likelihood slope has no finite optimum, and the optimizer would stop at an arbitrary 0/1 step
reported as perfectly calibrated (scikit-learn's sigmoid calibration uses the same targets). tuner stores it as
`{"temperature": 1/a, "bias": b}` and `Reranker` applies sigmoid(logit / temperature + bias). With a > 0 the map
is increasing, so the ranking never changes; `normalize=False` still returns the raw logit.

Expected calibration error (ECE) uses 15 equal-width bins of the predicted probability on [0, 1] (the last bin
includes 1.0): ECE = Σ_bins (n_bin / n) · |mean predicted − fraction positive|.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuner.contract import DEFAULT_INSTRUCTION
from tuner.files import atomic_path, save_figure

if TYPE_CHECKING:
    from tuner.eval_run import ModelOptions

__all__ = [
    "ECE_BINS",
    "MIN_PAIRS_PER_LABEL",
    "DegenerateFitError",
    "apply_calibration",
    "calibration_metrics",
    "expected_calibration_error",
    "fit_platt",
    "fit_warnings",
    "is_degenerate",
    "labeled_pairs",
    "log_loss",
    "plot_reliability",
    "reliability_bins",
    "run_calibrate",
    "separation_p_value",
]

ECE_BINS = 15
MIN_SLOPE = 1e-4  # a (= 1/temperature) is kept positive so that calibration cannot reverse the ranking
MIN_PAIRS_PER_LABEL = 20  # below this many positives or negatives the report warns that the fit is rough
CV_FOLDS = 5
SEPARATION_ALPHA = 0.05  # a fit whose separation test has p >= this is degenerate (see `separation_p_value`)


# ---------------------------------------------------------------------------------------------- pure math
def apply_calibration(logits: Sequence[float] | np.ndarray, temperature: float = 1.0, bias: float = 0.0) -> np.ndarray:
    """Calibrated probabilities sigmoid(logit / temperature + bias) (float64)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature) + float(bias)
    return _sigmoid(z)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(z)


def log_loss(logits: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Mean binary cross-entropy of sigmoid(logits) against 0/1 labels, computed on logits (no log(0))."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    # −[y log σ(z) + (1−y) log(1−σ(z))] = log(1 + e^z) − y·z
    return float(np.mean(np.logaddexp(0.0, z) - y * z)) if z.size else 0.0


def reliability_bins(probs, labels, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per equal-width bin on [0, 1]: `lo`, `hi`, `count`, `mean_prob`, `frac_pos` (None-free; empty bins kept)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)  # p == 1.0 falls in the last bin
    out = []
    for b in range(bins):
        mask = idx == b
        n = int(mask.sum())
        out.append(
            {
                "lo": b / bins,
                "hi": (b + 1) / bins,
                "count": n,
                "mean_prob": float(p[mask].mean()) if n else 0.0,
                "frac_pos": float(y[mask].mean()) if n else 0.0,
            }
        )
    return out


def expected_calibration_error(probs, labels, bins: int = ECE_BINS) -> float:
    """ECE with `bins` equal-width bins: Σ (n_bin / n) · |mean predicted − fraction positive|."""
    n = len(probs)
    if n == 0:
        return 0.0
    return float(
        sum(b["count"] / n * abs(b["mean_prob"] - b["frac_pos"]) for b in reliability_bins(probs, labels, bins))
    )


def calibration_metrics(logits, labels, temperature: float = 1.0, bias: float = 0.0) -> dict[str, float]:
    """ECE (15 bins), log loss and Brier score of sigmoid(logit / temperature + bias)."""
    z = np.asarray(logits, dtype=np.float64) / temperature + bias
    p = _sigmoid(z)
    y = np.asarray(labels, dtype=np.float64)
    return {
        "ece": expected_calibration_error(p, y),
        "log_loss": log_loss(z, y),
        "brier": float(np.mean((p - y) ** 2)) if y.size else 0.0,
    }


def fit_platt(logits, labels, smooth: bool = True) -> tuple[float, float]:
    """Platt scaling on raw logits: (temperature, bias) with p = sigmoid(logit / T + bias).

    Minimizes the mean cross-entropy of sigmoid(a·logit + b) against Platt's targets ((N+ + 1)/(N+ + 2) for a
    positive, 1/(N- + 2) for a negative: a finite fit when the logits separate the labels) over (a, b) with
    L-BFGS-B and the analytic gradient, a >= `MIN_SLOPE` (a non-positive slope would reverse or erase the
    ranking); returns T = 1/a. `smooth=False`: targets 1 and 0, the plain maximum-likelihood fit (what the
    separation test measures the logits' information by).

    Raises:
        ValueError: fewer than one positive and one negative label.
    """
    from scipy.optimize import minimize

    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"logits and labels must be 1-D and of equal length, got {x.shape} and {y.shape}")
    if not (y == 1).any() or not (y == 0).any():
        raise ValueError("calibration needs at least one positive and one negative pair")
    positives, negatives = float((y == 1).sum()), float((y == 0).sum())
    target = np.where(y == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2)) if smooth else y
    # Standardize x so that the optimizer sees a well-scaled problem; map back at the end.
    mu, sd = float(x.mean()), float(x.std()) or 1.0
    xs = (x - mu) / sd

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = theta[0] * xs + theta[1]
        r = _sigmoid(z) - target  # d loss / d z, per example
        return float(np.mean(np.logaddexp(0.0, z) - target * z)), np.array([np.mean(r * xs), np.mean(r)])

    res = minimize(
        loss_grad,
        np.array([1.0, 0.0]),
        jac=True,
        method="L-BFGS-B",
        bounds=[(MIN_SLOPE * sd, None), (None, None)],
        options={"maxiter": 500, "gtol": 1e-10, "ftol": 1e-14},
    )
    a_s, b_s = (float(v) for v in res.x)
    a = a_s / sd
    b = b_s - a * mu
    return 1.0 / a, b


def _cross_validated(logits: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> dict[str, float] | None:
    """Out-of-fold calibrated metrics: each fold is scored with (T, b) fitted on the other folds."""
    n = logits.size
    if n < 2 * folds:
        return None
    order = np.random.default_rng(seed).permutation(n)
    probs = np.empty(n)
    z = np.empty(n)
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        if not (labels[train] == 1).any() or not (labels[train] == 0).any():
            return None
        t, b = fit_platt(logits[train], labels[train])
        z[test] = logits[test] / t + b
        probs[test] = _sigmoid(z[test])
    return {
        "ece": expected_calibration_error(probs, labels),
        "log_loss": log_loss(z, labels),
        "brier": float(np.mean((probs - labels) ** 2)),
        "folds": folds,
    }


class DegenerateFitError(ValueError):
    """`--apply` refused: the fit gives nearly the same probability to every pair (the report was written)."""


def separation_p_value(logits, labels, temperature: float, bias: float) -> float:
    """p-value of the likelihood-ratio test of the fit against one constant probability (the positive rate).

    Large when the calibrated logits explain the labels no better than the base rate does: then every calibrated
    probability sits near that rate, whatever the slope (a fit can stay under the temperature bound and still be
    this flat). The statistic 2·n·(log loss of the rate − log loss of the fit) is chi-squared with one degree of
    freedom (the slope) under "the logits carry nothing"; scipy gives its tail.
    """
    from scipy.stats import chi2

    y = np.asarray(labels, dtype=np.float64)
    rate = float(y.mean())
    if y.size == 0 or rate in (0.0, 1.0):
        return 1.0
    constant = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    fitted = log_loss(np.asarray(logits, dtype=np.float64) / temperature + bias, y)
    return float(chi2.sf(max(0.0, 2 * y.size * (constant - fitted)), 1))


def _at_bound(temperature: float) -> bool:
    """Whether the slope (1/temperature) stopped at its lower bound `MIN_SLOPE`."""
    return temperature >= 0.999 / MIN_SLOPE


def is_degenerate(temperature: float, p_value: float = 0.0) -> bool:
    """Whether the fit says nothing: the slope stopped at its bound, or (`p_value` from `separation_p_value`) the
    logits do not separate the labels better than a constant at the `SEPARATION_ALPHA` level."""
    return _at_bound(temperature) or p_value >= SEPARATION_ALPHA


def _degenerate_reason(temperature: float, p_value: float) -> str:
    if _at_bound(temperature):
        return f"the temperature reached its bound ({1 / MIN_SLOPE:g})"
    return (
        f"the logits separate the labels no better than a constant probability (likelihood-ratio test p = "
        f"{p_value:.3g} >= {SEPARATION_ALPHA:g})"
    )


# ------------------------------------------------------------------------------------------------- data
def labeled_pairs(groups) -> list[tuple[str, Any, str | None, int]]:
    """(query, document, instruction, label) from `Group`s: positives → 1, negatives → 0."""
    out = []
    for g in groups:
        out += [(g.query, d, g.instruction, 1) for d in g.pos]
        out += [(g.query, d, g.instruction, 0) for d in g.neg]
    return out


# --------------------------------------------------------------------------------------------- reporting
def plot_reliability(before: list[dict], after: list[dict], path: str | Path, title: str = "") -> Path:
    """Reliability diagram (fraction positive against mean predicted, per bin) before/after, with bin counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6, 7), dpi=120, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="perfect calibration")
    width = 1.0 / len(before)
    centers = [(b["lo"] + b["hi"]) / 2 for b in before]
    for bins, name, marker in ((before, "before (sigmoid of the logit)", "o"), (after, "after (Platt)", "s")):
        xs = [b["mean_prob"] for b in bins if b["count"]]
        ys = [b["frac_pos"] for b in bins if b["count"]]
        ax.plot(xs, ys, marker=marker, label=name)
    ax.set_ylabel("fraction of positive pairs")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title or f"Reliability diagram ({len(before)} equal-width bins)")
    ax.legend(loc="upper left", fontsize=8)
    hist.bar(centers, [b["count"] for b in before], width=width * 0.45, align="edge", label="before")
    hist.bar(
        [c - width * 0.45 for c in centers],
        [b["count"] for b in after],
        width=width * 0.45,
        align="edge",
        label="after",
    )
    hist.set_xlabel("predicted probability")
    hist.set_ylabel("pairs")
    hist.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def fit_warnings(
    positives: int, negatives: int, temperature: float, p_value: float = 0.0, separated: bool = False
) -> list[str]:
    """What makes a Platt fit untrustworthy: too few pairs of a label, a degenerate fit (`is_degenerate`), or
    pairs so easy that every positive scores above every negative (`separated`)."""
    out = []
    fewest = min(positives, negatives)
    if fewest < MIN_PAIRS_PER_LABEL:
        label = "positive" if positives <= negatives else "negative"
        out.append(
            f"only {fewest} {label} pair{'s' if fewest != 1 else ''}: the fit is rough; use at least "
            f"{MIN_PAIRS_PER_LABEL} of each label (a few hundred is better)"
        )
    if is_degenerate(temperature, p_value):
        out.append(
            f"{_degenerate_reason(temperature, p_value)}: on these pairs the logits do not separate the labels, so "
            "the calibrated probability is nearly the same for every pair"
        )
    elif separated:
        top, bottom = (positives + 1) / (positives + 2), 1 / (negatives + 2)
        out.append(
            "every positive pair scores above every negative one: these pairs are easy for the model, so the fit "
            f"says how sure it may be on easy pairs (its probabilities tend to {top:.3f} and {bottom:.3f}, Platt's "
            "targets for these counts), not on the close calls of a real ranking; calibrate on harder pairs "
            "(mined negatives: tuner mine)"
        )
    return out


def _render(summary: dict[str, Any]) -> str:
    b, a, cv = summary["before"], summary["after"], summary.get("after_cross_validated")
    lines = [
        f"# Calibration: {summary['data']}",
        "",
        f"{summary['pairs']} labeled pairs ({summary['positives']} positive, {summary['negatives']} negative) · "
        f"model `{summary['model']}`" + (f" + adapter `{summary['adapter']}`" if summary.get("adapter") else ""),
        "",
        f"Platt scaling on the raw yes−no logit: p = sigmoid(logit / T + b) with **T = {summary['temperature']:.4f}**, "
        f"**b = {summary['bias']:+.4f}** (ranking unchanged).",
        "",
        f"Fitted with the default instruction {json.dumps(summary['calibration']['instruction'], ensure_ascii=False)} "
        f"and a {summary['calibration']['max_length']}-token budget (a pair's own instruction, if any, wins).",
        "",
        *[f"> **Warning:** {w}\n" for w in summary.get("warnings") or []],
        *([f"> **Not applied:** {summary['apply_refused']}\n"] if summary.get("apply_refused") else []),
        "| | ECE (15 equal-width bins) | log loss | Brier |",
        "|---|---|---|---|",
        f"| before: sigmoid(logit) | {b['ece']:.4f} | {b['log_loss']:.4f} | {b['brier']:.4f} |",
        f"| after (fitted on these pairs) | {a['ece']:.4f} | {a['log_loss']:.4f} | {a['brier']:.4f} |",
    ]
    if cv:
        lines.append(
            f"| after, {cv['folds']}-fold cross-validated | {cv['ece']:.4f} | {cv['log_loss']:.4f} | "
            f"{cv['brier']:.4f} |"
        )
    lines += [
        "",
        "The in-sample row is optimistic (fitted and measured on the same pairs); the cross-validated row scores "
        "each fold with T and b fitted on the others.",
        "",
        "![reliability diagram](reliability.png)",
        "",
    ]
    return "\n".join(lines)


def run_calibrate(
    model: str,
    data: str | Path,
    out_dir: str | Path,
    adapter: str | None = None,
    split: str | None = None,
    apply: str | Path | None = None,
    options: ModelOptions | None = None,
    seed: int = 0,
    force: bool = False,
) -> dict[str, Any]:
    """Score labeled dev pairs, fit Platt scaling, write `calibration.json`, `report.md`, `reliability.png`.

    Args:
        model: model directory or hub id (or an adapter directory).
        data: grouped or labeled-pairs file (see `tuner.data.load_groups`); every labeled pair counts, those of
            a query with only negatives (or only positives) included.
        out_dir: report folder.
        adapter: PEFT adapter on `model`.
        split: folder file stem / hub split for `data`.
        apply: adapter or export directory whose `tuner.json` gets `calibration = {"temperature", "bias",
            "instruction", "max_length"}` (the default instruction and the token budget the pairs were scored with).
        seed: fold assignment of the cross-validated estimate.
        force: apply a degenerate fit too (see `is_degenerate`), which is refused otherwise.
        options: how the model loads (device, dtype, budgets, fast paths; see `tuner.eval_run.ModelOptions`).

    Returns:
        The content of `calibration.json`.

    Raises:
        DegenerateFitError: `apply` was given, the fit is degenerate and `force` is not set; nothing was applied,
            and the report was written to `out_dir` all the same.
    """
    from tuner.data import load_groups
    from tuner.eval_run import load_reranker
    from tuner.instruct import apply_meta, trained_on_note
    from tuner.report import prepare_out_dir

    prepare_out_dir(out_dir)
    start = time.perf_counter()
    # Every labeled pair, a query's with no positive included: its negatives carry the base rate of "nothing
    # relevant" (leaving them out, as training must, dropped 46% of one dev file's pairs and biased the fit upward).
    pairs = labeled_pairs(load_groups(data, split, require_positive=False))
    positives = sum(p[3] for p in pairs)
    if not positives or positives == len(pairs):  # checked before the scoring, which is the long part
        raise ValueError(
            f"{data}: {positives} positive and {len(pairs) - positives} negative pairs; calibration needs both"
        )
    labels = np.array([p[3] for p in pairs], dtype=np.float64)
    trained = trained_on_note(model, adapter, (p[0] for p in pairs), str(data), "fit on held-out dev pairs")
    reranker = load_reranker(model, adapter, options)
    score_start = time.perf_counter()
    logits = np.array(reranker.score_pairs([p[:3] for p in pairs], normalize=False), dtype=np.float64)
    score_seconds = time.perf_counter() - score_start
    temperature, bias = fit_platt(logits, labels)
    before_probs = _sigmoid(logits)
    after_probs = apply_calibration(logits, temperature, bias)
    summary: dict[str, Any] = {
        "temperature": temperature,
        "bias": bias,
        "formula": "p = sigmoid(logit / temperature + bias)",
        "model": model,
        "adapter": adapter,
        "data": str(data),
        "pairs": int(labels.size),
        "positives": int(labels.sum()),
        "negatives": int(labels.size - labels.sum()),
        "binning": f"{ECE_BINS} equal-width bins of the predicted probability on [0, 1]",
        "before": calibration_metrics(logits, labels),
        "after": calibration_metrics(logits, labels, temperature, bias),
        "after_cross_validated": _cross_validated(logits, labels, CV_FOLDS, seed),
        "logit_stats": {
            "mean_pos": float(logits[labels == 1].mean()),
            "mean_neg": float(logits[labels == 0].mean()),
            "min": float(logits.min()),
            "max": float(logits.max()),
        },
        "reliability_before": reliability_bins(before_probs, labels),
        "reliability_after": reliability_bins(after_probs, labels),
        "scoring_seconds": round(score_seconds, 3),
        "seconds": None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "applied_to": None,
    }
    # What the fit holds for: `tuner instruct --apply` removes a calibration fitted with another instruction.
    # (A pair's own instruction, from the data, still overrides the default for that pair.)
    summary["calibration"] = {
        "temperature": temperature,
        "bias": bias,
        "instruction": DEFAULT_INSTRUCTION if reranker.instruction is None else reranker.instruction,
        "max_length": reranker.max_length,
    }
    if not (math.isfinite(temperature) and math.isfinite(bias)):
        raise ValueError(f"calibration fit diverged (temperature {temperature}, bias {bias})")
    # whether the logits carry information about the labels: measured on the plain maximum-likelihood fit (Platt's
    # targets would count a perfect separation of a few pairs as a weak one)
    p_value = separation_p_value(logits, labels, *fit_platt(logits, labels, smooth=False))
    summary["separation_p_value"] = p_value
    separated = float(logits[labels == 1].min()) > float(logits[labels == 0].max())
    summary["warnings"] = fit_warnings(summary["positives"], summary["negatives"], temperature, p_value, separated)
    if trained:
        summary["warnings"].append(trained)
    summary["apply_refused"] = None
    if apply is not None and is_degenerate(temperature, p_value) and not force:
        # Served scores would all be ~the same probability (e.g. 0.25 ± 2e-7): thresholds on them mean nothing.
        summary["apply_refused"] = (
            f"the fit is degenerate ({_degenerate_reason(temperature, p_value)}; calibrated probabilities range "
            f"only from {after_probs.min():.6g} to {after_probs.max():.6g}), so --apply {apply} was refused and "
            "its tuner.json left unchanged; pass --force to apply it anyway"
        )
    out = Path(out_dir)
    # The plot is drawn (to a temporary) before the fit is applied, and the report's files are renamed into place
    # together at the end: a plot that cannot be written (a full disk, a folder in its way) leaves tuner.json as it
    # was, not a fit applied with no report.
    with ExitStack() as stack:
        png = stack.enter_context(atomic_path(out / "reliability.png", ".png"))
        plot_reliability(summary["reliability_before"], summary["reliability_after"], png)
        json_file = stack.enter_context(atomic_path(out / "calibration.json"))
        report = stack.enter_context(atomic_path(out / "report.md"))
        if apply is not None and summary["apply_refused"] is None:
            calibration = {"calibration": summary["calibration"]}
            written = apply_meta(apply, calibration, on_warning=summary["warnings"].append)
            summary["applied_to"] = [str(p) for p in written]
        summary["seconds"] = round(time.perf_counter() - start, 3)
        json_file.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        report.write_text(_render(summary), encoding="utf-8")
    if summary["apply_refused"]:
        raise DegenerateFitError(f"calibration not applied: {summary['apply_refused']} (report in {out})")
    return summary
