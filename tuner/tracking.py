"""Experiment tracking of a training run: the wandb run (started, resumed, a sweep trial's), tensorboard's folder,
and the run's evaluation as the trackers compare runs (`run_summary`: the wandb run summary and comparison table,
tensorboard's scalars, text and hparams), and the trained weights as a wandb model artifact.

wandb, tensorboard and yaml are imported inside the functions that use them: only a run that tracks needs them."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from tuner.config import Config, ConfigError

log = logging.getLogger("tuner.train")  # the training run's logger: these lines belong to its train.log

__all__ = [
    "WANDB_RUN_ID",
    "WANDB_RUN_PLACE",
    "log_model_artifact",
    "run_summary",
    "start_tracking",
    "summarize_to_tensorboard",
    "summarize_to_tracker",
]


WANDB_RUN_ID = "wandb-run-id"  # in <out>/logs: the wandb run a --resume continues
WANDB_RUN_PLACE = "wandb-run.json"  # in <out>/logs: the run's project, entity and group as wandb resolved them


def start_tracking(config: Config, out: Path, main: bool, resume: bool = False):
    """Start the wandb run ourselves (project, entity, name, tags, resolved config) so the Trainer's callback
    reuses it; point tensorboard at `<out>/logs/tensorboard`. Returns the wandb run or None.

    The wandb run id is kept in `<out>/logs/wandb-run-id`: `resume` continues that run (its steps after the
    checkpoint's) instead of starting a second run for the same training."""
    tr = config.tracking
    if tr.report_to == "tensorboard":
        # TensorBoardCallback reads its directory from the environment when the Trainer builds it.
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "logs" / "tensorboard")
        return None
    if tr.report_to != "wandb" or not main:
        return None
    import wandb

    (out / "logs").mkdir(parents=True, exist_ok=True)
    id_file = out / "logs" / WANDB_RUN_ID
    # a run started before wandb was its tracker (tracking.* may change on resume) has no id file: a new run
    run_id = (id_file.read_text(encoding="utf-8").strip() or None) if resume and id_file.is_file() else None
    # a sweep agent starts each trial with its run id in WANDB_RUN_ID: that run, by name (wandb reads the variable
    # only when its settings are first made, once per process)
    agent_id = None if run_id else os.environ.get("WANDB_RUN_ID") or None
    try:
        run = wandb.init(
            # an explicit tracking.project wins; else the project wandb's own variable names (as transformers'
            # callback reads it), so that WANDB_PROJECT is not silently replaced by a default the user never set
            project=tr.project or os.environ.get("WANDB_PROJECT") or "tuner",
            entity=tr.entity,
            name=tr.run_name or out.name,
            tags=tr.tags or None,
            # read here, not left to wandb, which reads its variables once per process (a second run in one process)
            group=tr.group or os.environ.get("WANDB_RUN_GROUP") or None,
            config=config.to_dict(),
            dir=str(out / "logs"),
            reinit="finish_previous",
            # "allow", not "must": a run id stored offline, never synced, is unknown to the server
            **({"id": run_id, "resume": "allow"} if run_id else {"id": agent_id} if agent_id else {}),
        )
    except wandb.errors.Error as err:  # no API key, a refused login, no server: one line, not wandb's traceback
        raise ConfigError(
            f"tracking.report_to=wandb: wandb could not start a run ({str(err).strip() or type(err).__name__}); "
            "log in (`wandb login` or WANDB_API_KEY), log offline (WANDB_MODE=offline) or set tracking.report_to=none"
        ) from err
    if run_id is None:
        id_file.write_text(run.id + "\n", encoding="utf-8")
    # where the run went, as wandb resolved it ($WANDB_PROJECT, $WANDB_ENTITY, $WANDB_RUN_GROUP are in no recipe):
    # `tuner eval --report-to wandb` logs the evaluation beside it and finds its model artifact there
    where = {key: value for key in ("project", "entity", "group") if isinstance(value := getattr(run, key, None), str)}
    (out / "logs" / WANDB_RUN_PLACE).write_text(json.dumps(where) + "\n", encoding="utf-8")
    return run


def run_summary(record: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[list[Any]]]:
    """The run's evaluation as the trackers compare runs (metrics.json's record in, flat keys out):
    `first_stage/`, `base/`, `final/` and `delta/` (final − base) for the dev set, the same under `ood/` for the
    out-of-domain check and under `seen/` and `unseen/` for the dev queries the training data covers and the rest
    (with `p`, their paired test of final vs base on the primary metric), and the best checkpoint's value. Also the
    comparison table's columns and rows (set × system × metric)."""
    summary: dict[str, Any] = {}
    rows: list[list[Any]] = []
    metrics: list[str] = []
    for part, prefix in (("dev", ""), ("ood", "ood/")):
        section = record.get(part) or {}
        for stage in ("first_stage", "base", "final"):
            values = section.get(stage) or {}
            summary.update({f"{prefix}{stage}/{k}": v for k, v in values.items()})
            if values:
                metrics = metrics or list(values)
                rows.append([section.get("name", part), stage, *(values.get(m) for m in metrics)])
        base, final = section.get("base") or {}, section.get("final") or {}
        summary.update({f"{prefix}delta/{k}": final[k] - base[k] for k in final if k in base})
    dev_name = (record.get("dev") or {}).get("name", "dev")
    for name, part in (((record.get("dev") or {}).get("training_overlap") or {}).get("parts") or {}).items():
        # the dev queries the training data covers and the rest (see tuner.overlap): where the gain comes from;
        # the same stages as the whole set (a delta alone cannot be read next to the base it is measured from),
        # in the summary and as rows of the table
        for stage in ("first_stage", "base", "final"):
            values = part.get(stage) or {}
            summary.update({f"{name}/{stage}/{k}": v for k, v in values.items()})
            if values and metrics:
                rows.append([f"{dev_name} {name} ({part['queries']})", stage, *(values.get(m) for m in metrics)])
        base, final = part.get("base") or {}, part.get("final") or {}
        summary.update({f"{name}/delta/{k}": final[k] - base[k] for k in final if k in base})
        summary[f"{name}/queries"] = part["queries"]
        # the paired test of final vs base on the primary metric, as train.log prints it ("p = ...")
        if (part.get("final_vs_base") or {}).get("p_randomization") is not None:
            summary[f"{name}/p"] = part["final_vs_base"]["p_randomization"]
    best = (record.get("dev") or {}).get("best")
    if best:
        summary["best/value"], summary["best/checkpoint"] = best["value"], best["checkpoint"]
    return summary, ["set", "system", *metrics], rows


def summarize_to_tracker(tracker, record: dict[str, Any]) -> None:
    """The run's evaluation (`run_summary`) in the wandb run summary, where runs are compared, and its
    `eval/comparison` table (system × metric) for the run page."""
    import wandb

    summary, columns, rows = run_summary(record)
    tracker.summary.update(summary)
    if rows:
        tracker.log({"eval/comparison": wandb.Table(columns=columns, data=rows)})


def summarize_to_tensorboard(log_dir: Path, record: dict[str, Any], config: Config, step: int) -> None:
    """tracking.report_to=tensorboard: what the wandb run summary holds, in the run's tensorboard folder. The
    Trainer's callback writes the training and in-training dev curves only; this adds the figures runs are compared
    by (`run_summary`, as scalars at the last step), the resolved recipe as text, and the recipe's fields as
    hyperparameters with the final figures as their metrics (tensorboard's HPARAMS tab: runs side by side)."""
    import json

    import yaml
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    summary, columns, rows = run_summary(record)
    scalars = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def flat(prefix: str, value: Any, into: dict[str, Any]) -> dict[str, Any]:
        if isinstance(value, dict):
            for k, v in value.items():
                flat(f"{prefix}.{k}" if prefix else k, v, into)
        else:  # tensorboard's hparams take numbers, strings and booleans: a list or null is shown as its JSON
            into[prefix] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
        return into

    with SummaryWriter(str(log_dir)) as writer:
        recipe = yaml.safe_dump(config.to_dict(), sort_keys=False)
        writer.add_text("recipe", "    " + recipe.replace("\n", "\n    "), step)  # indented: markdown code
        if rows:  # the comparison table, as markdown
            cells = [columns, ["---"] * len(columns)]
            cells += [[f"{c:.4f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
            writer.add_text("eval/comparison", "\n".join("| " + " | ".join(r) + " |" for r in cells), step)
        for key, value in scalars.items():
            writer.add_scalar(key, value, step)
        metric_keys = {
            k: v for k, v in scalars.items() if k.startswith(("final/", "delta/", "ood/final/", "ood/delta/"))
        }
        if metric_keys:
            for item in hparams(flat("", config.to_dict(), {}), metric_keys):
                writer.file_writer.add_summary(item)


def artifact_name(run_name: str) -> str:
    """The wandb model artifact name of a run (`log_model_artifact`; `tuner eval --report-to wandb` looks it up):
    wandb takes ASCII letters and digits, '-', '_' and '.' (not `\\w`'s "é"), up to 128 of them; a name it refuses
    would fail the run after training, with its tracker left unfinished."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", run_name)[:128]


def log_model_artifact(tracker, weights: Path, metrics_file: Path, record: dict[str, Any]) -> None:
    """`tracking.log_model`: the saved adapter (or model) folder and metrics.json as a wandb artifact of type
    "model", named after the run: `wandb artifact get PROJECT/NAME:latest` gives a folder whose `adapter/` (with
    its tokenizer and tuner.json, which names the base) `Reranker.from_pretrained` and `tuner export` take as it
    is. The final dev figures are its metadata. A run name used again (a --resume) adds a version of the same
    artifact; wandb uploads no file it already holds."""
    import wandb

    metadata: dict[str, Any] = {"weights": weights.name}
    for stage in ("base", "final"):
        metadata.update({f"{stage}/{k}": v for k, v in ((record.get("dev") or {}).get(stage) or {}).items()})
    artifact = wandb.Artifact(artifact_name(tracker.name), type="model", metadata=metadata)
    # immutable: uploaded from where they are, not first copied to a staging folder (a full fine-tune of the 4B is
    # 8 GB); train finishes the wandb run right after, which waits for the upload, before anything rewrites them
    artifact.add_dir(str(weights), name=weights.name, policy="immutable")
    artifact.add_file(str(metrics_file), name=metrics_file.name)
    tracker.log_artifact(artifact)
    log.info("wandb artifact: %s (%s and %s)", artifact.name, weights.name, metrics_file.name)
