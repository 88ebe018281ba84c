"""`tuner eval --report-to wandb|tensorboard`: an evaluation's report in the experiment tracker training logs to.

One tracker run per `tuner eval` call (wandb: `job_type="eval"`), in the project and group of the tuner run the
evaluated adapter comes from unless told otherwise: its config is the eval's settings (set, split, candidates,
sample, instructions, metrics, model and adapter, the training run and its wandb id), its summary the report's
figures as flat keys (`eval_summary`), its media the report table and `report.png`. The tracker starts before
any model loads, so a wandb that cannot start a run (no API key) fails in seconds, as training's does
(`tuner.train_setup.start_tracking`).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.tracking import WANDB_RUN_ID, WANDB_RUN_PLACE, artifact_name

__all__ = ["EvalTracker", "TrainingRun", "eval_summary", "start_eval_tracking", "tracked_eval", "training_runs"]

REPORT_TO = ("none", "wandb", "tensorboard")
TABLE_KEY = "eval/report"  # the report table (systems x metrics, per part) in wandb and tensorboard
IMAGE_KEY = "eval/per_query_deltas"  # report.png


@dataclass(frozen=True)
class TrainingRun:
    """What a tuner run folder recorded about its tracking (`config.yaml`'s `tracking`, `logs/wandb-run-id`)."""

    folder: Path
    name: str
    project: str | None = None
    entity: str | None = None
    group: str | None = None
    log_model: bool = False
    report_to: str = "none"
    wandb_id: str | None = None


def training_runs(model: str, adapter: str | None) -> list[TrainingRun]:
    """The tuner runs the evaluated adapter (or model: a run folder, RUN/adapter, a checkpoint, a merge of runs)
    comes from, with what each recorded about its tracking; [] for a model from no run (or one whose recipe cannot
    be read: tracking then falls back to the options and the environment)."""
    from tuner.config import load_config
    from tuner.loading import run_weights
    from tuner.overlap import runs_of_adapter

    try:
        folders = runs_of_adapter(adapter or run_weights(model))
    except (OSError, ValueError):
        return []
    runs = []
    for folder in folders:
        try:
            tracking = load_config(folder / "config.yaml").tracking
        except Exception:  # an older or hand-edited recipe: the run still names the training, not its tracking
            tracking = None
        id_file = folder / "logs" / WANDB_RUN_ID
        wandb_id = (id_file.read_text(encoding="utf-8").strip() or None) if id_file.is_file() else None
        place = _run_place(folder / "logs" / WANDB_RUN_PLACE)  # what a null tracking.project etc. resolved to
        runs.append(
            TrainingRun(
                folder=folder,
                name=(tracking.run_name if tracking else None) or folder.name,
                project=(tracking.project if tracking else None) or place.get("project"),
                entity=(tracking.entity if tracking else None) or place.get("entity"),
                group=(tracking.group if tracking else None) or place.get("group"),
                log_model=bool(tracking and tracking.log_model),
                report_to=tracking.report_to if tracking else "none",
                wandb_id=wandb_id,
            )
        )
    return runs


def _run_place(file: Path) -> dict[str, str]:
    """The training run's wandb project, entity and group as wandb resolved them (`tracking.start_tracking` writes
    them); {} for a run from before that record, or an unreadable one."""
    try:
        place = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in place.items() if isinstance(v, str) and v} if isinstance(place, dict) else {}


def _agreed(values: list[str | None]) -> str | None:
    """The one value the runs share (a merge of runs of two projects has none)."""
    found = {v for v in values if v}
    return found.pop() if len(found) == 1 else None


# -------------------------------------------------------------------------------------------- summary
def _role_keys(summary: Mapping[str, Any]) -> list[str]:
    """The summary key of each system of metrics.json, by its place, not its label (which names a run or a folder,
    and so differs between evals that should line up in the tracker's runs table): `first_stage`, then `base` and
    `tuned` (with an adapter) or `model`, then `compare/<label>` for each `--compare` system.
    With several instructions, each row of a system gets `-<instruction tag>`."""
    from tuner.report import slug

    systems = summary["systems"]
    n = max(1, len(summary.get("instructions") or [None]))
    adapter = len(systems) > 1 and systems[1].get("note") == "adapter disabled"
    keys = ["first_stage"]
    for i, entry in enumerate(systems[1:]):
        block = i // n
        if block == 0:
            role = "base" if adapter else "model"
        elif block == 1 and adapter:
            role = "tuned"
        else:
            role = None
        if role is None:
            keys.append(f"compare/{slug(entry['label'])}")
            continue
        tag = re.search(r" \[([^\]]*)\]$", entry["label"]) if n > 1 else None
        keys.append(f"{role}-{slug(tag.group(1))}" if tag else role)
    taken: set[str] = set()
    unique = []
    for key in keys:  # two --compare folders of one name
        out, k = key, 2
        while out in taken:
            out, k = f"{key}-{k}", k + 1
        taken.add(out)
        unique.append(out)
    return unique


def _systems_figures(prefix: str, systems: list[Mapping[str, Any]], keys: list[str], primary: str) -> dict[str, Any]:
    """`<prefix><system>/<metric>` for every system; `<prefix>delta/<metric>` and `<prefix>p` for the tuned system
    against the base (the reference); `<prefix><system>/p` for every other system against the reference."""
    out: dict[str, Any] = {}
    headline = next((k for k in keys if k == "tuned" or k.startswith("tuned-")), None)  # the first instruction's
    for key, entry in zip(keys, systems, strict=True):
        out.update({f"{prefix}{key}/{m}": v for m, v in entry["metrics"].items() if v is not None})
        stats = entry.get("vs_reference")
        if not stats or key == "first_stage":
            continue
        p = (stats.get(primary) or {}).get("p_randomization")
        if key == headline:
            out.update({f"{prefix}delta/{m}": s["delta"] for m, s in stats.items()})
            if p is not None:
                out[f"{prefix}p"] = p
        elif p is not None:
            out[f"{prefix}{key}/p"] = p
    return out


def eval_summary(summary: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], list[list[Any]]]:
    """An evaluation (metrics.json's summary) as trackers compare runs: flat keys and the report table.

    Keys: `<system>/<metric>` for every system (`first_stage`, `base`, `tuned` or `model`, `compare/<label>`; see
    `_role_keys`), `delta/<metric>` (tuned − base) and `p` (their paired randomization test on the primary metric),
    `<system>/p` for the other systems against the reference, `queries`; with a training split, the same under
    `seen/` and `unseen/` with their `queries`, as training's run summary names its dev parts.

    Returns:
        (figures, the table's columns, its rows: one per part and system, with the delta and p of the primary
        metric against the reference).
    """
    metrics = list(summary["metrics_order"])
    primary = summary["primary_metric"]
    keys = _role_keys(summary)
    figures: dict[str, Any] = {"queries": summary["queries"]}
    figures.update(_systems_figures("", summary["systems"], keys, primary))
    columns = ["part", "queries", "system", *metrics, f"delta {primary}", "p"]
    rows: list[list[Any]] = []

    def add_rows(part: str, queries: int, systems: list[Mapping[str, Any]]) -> None:
        for entry in systems:
            stats = (entry.get("vs_reference") or {}).get(primary) or {}
            values = [entry["metrics"].get(m) for m in metrics]
            rows.append([part, queries, entry["label"], *values, stats.get("delta"), stats.get("p_randomization")])

    add_rows("all", summary["queries"], summary["systems"])
    for part, entry in ((summary.get("training_overlap") or {}).get("parts") or {}).items():
        figures[f"{part}/queries"] = entry["queries"]
        if entry["queries"]:
            figures.update(_systems_figures(f"{part}/", entry["systems"], keys, primary))
            add_rows(part, entry["queries"], entry["systems"])
    return figures, columns, rows


# -------------------------------------------------------------------------------------------- trackers
@dataclass
class EvalTracker:
    """A started tracker of one `tuner eval` call: `report` at the end, or `fail`; both close it."""

    report_to: str
    run: Any = None  # the wandb run
    log_dir: Path | None = None  # tensorboard's folder
    config: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)  # training runs' model artifacts to use (lineage)
    replace: bool = False  # tensorboard: log_dir is the eval's own (OUT/tensorboard), replaced as its report is

    def report(self, out: Path, summary: Mapping[str, Any] | None = None) -> str:
        """Log the evaluation (`eval_summary` of `summary`, else of `out/metrics.json`; the table; report.png) and
        close the run; returns where it went."""
        if summary is None:
            summary = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        figures, columns, rows = eval_summary(summary)
        settings = {
            "metrics": list(summary["metrics_order"]),
            "primary_metric": summary["primary_metric"],
            "queries": summary["queries"],
            "pairs_per_model": summary.get("pairs_per_model"),
        }
        if self.report_to == "tensorboard":
            return self._to_tensorboard(figures, columns, rows, {**self.config, **settings})
        import wandb

        run = self.run
        run.config.update(settings, allow_val_change=True)
        run.summary.update(figures)
        media: dict[str, Any] = {TABLE_KEY: wandb.Table(columns=columns, data=rows)}
        if (out / "report.png").is_file():
            media[IMAGE_KEY] = wandb.Image(str(out / "report.png"))
        run.log(media)
        if not getattr(run, "offline", False):  # offline there is no server to look an artifact up on
            for name in self.artifacts:
                try:
                    run.use_artifact(name)
                except Exception as err:  # lineage is a bonus: a deleted artifact must not fail a finished eval
                    print(f"tuner eval: warning: --report-to wandb: not linked to {name}: {err}", file=sys.stderr)
        where = f"wandb run {run.name} ({run.id})" + (" offline" if getattr(run, "offline", False) else "")
        run.finish()
        return where

    def fail(self) -> None:
        """The eval failed: a wandb run is closed as failed (tensorboard has nothing written yet)."""
        if self.run is not None:
            self.run.finish(exit_code=1)

    def _to_tensorboard(self, figures, columns, rows, config: Mapping[str, Any]) -> str:
        from torch.utils.tensorboard import SummaryWriter

        assert self.log_dir is not None
        if self.replace and self.log_dir.is_dir():  # an earlier eval into OUT: its figures are no longer the report's
            for stale in self.log_dir.glob("events.out.tfevents.*"):
                stale.unlink()
        cells = [columns, ["---"] * len(columns)]
        cells += [["" if c is None else f"{c:.4f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
        with SummaryWriter(str(self.log_dir)) as writer:
            writer.add_text("eval/config", "    " + json.dumps(config, indent=2).replace("\n", "\n    "), 0)
            writer.add_text(TABLE_KEY, "\n".join("| " + " | ".join(r) + " |" for r in cells), 0)
            for key, value in figures.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.add_scalar(key, value, 0)
        return f"tensorboard {self.log_dir}"


def start_eval_tracking(
    report_to: str,
    out: Path,
    config: dict[str, Any],
    runs: list[TrainingRun],
    name: str,
    project: str | None = None,
    group: str | None = None,
    tensorboard_dir: str | Path | None = None,
) -> EvalTracker | None:
    """Start the tracker of one `tuner eval` call (None for "none"), before any model loads.

    wandb: a run of `job_type="eval"` in `project` (else the training run's `tracking.project`, else
    $WANDB_PROJECT, else "tuner"), `group` (else the training run's `tracking.group`, else $WANDB_RUN_GROUP), the
    training run's entity, named `name`, its files in `out/wandb`. tensorboard: `tensorboard_dir` (else
    `out/tensorboard`), written when the report is.

    Raises:
        ValueError: one line naming `--report-to`: the tracker is not installed, or wandb cannot start a run.
    """
    if report_to == "none":
        return None
    if report_to == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (needs the tensorboard package)
        except ImportError as err:
            raise ValueError(f"--report-to tensorboard: {err} (pip install tensorboard)") from None
        log_dir = Path(tensorboard_dir or out / "tensorboard")
        return EvalTracker("tensorboard", log_dir=log_dir, config=config, replace=tensorboard_dir is None)
    try:
        import wandb
    except ImportError:
        raise ValueError("--report-to wandb: wandb is not installed (pip install wandb)") from None
    project = project or _agreed([r.project for r in runs]) or os.environ.get("WANDB_PROJECT") or "tuner"
    group = group or _agreed([r.group for r in runs]) or os.environ.get("WANDB_RUN_GROUP") or None
    out.mkdir(parents=True, exist_ok=True)
    try:
        run = wandb.init(
            project=project,
            entity=_agreed([r.entity for r in runs]),
            name=name,
            group=group,
            job_type="eval",
            config=config,
            dir=str(out),
            reinit="finish_previous",
        )
    except wandb.errors.Error as err:  # no API key, a refused login, no server: one line, not wandb's traceback
        raise ValueError(
            f"--report-to wandb: wandb could not start a run ({str(err).strip() or type(err).__name__}); log in "
            "(`wandb login` or WANDB_API_KEY), log offline (WANDB_MODE=offline) or leave --report-to out"
        ) from err
    # the model artifact each training run uploaded (tracking.log_model), named as log_model_artifact names it
    artifacts = []
    for r in runs:
        if r.log_model and r.report_to == "wandb":
            owner = "/".join(x for x in (r.entity, r.project or project) if x)
            artifacts.append(f"{owner}/{artifact_name(r.name)}:latest")
    return EvalTracker("wandb", run=run, config=config, artifacts=artifacts)


@contextmanager
def tracked_eval(tracking: Mapping[str, Any] | None) -> Iterator[EvalTracker | None]:
    """`start_eval_tracking(**tracking)` around an eval (None: no tracker): a failure in it closes the wandb run as
    failed, and goes on."""
    tracker = start_eval_tracking(**tracking) if tracking else None
    try:
        yield tracker
    except BaseException:
        if tracker is not None:
            tracker.fail()
        raise
