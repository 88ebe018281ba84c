"""`tuner eval`, `tuner instruct`, `tuner calibrate`: score a model on labeled data and report on it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tuner.cli.common import UserError, add_scoring_path_args, positive_int, scoring_path_kwargs
from tuner.files import removed_if_failed


# -------------------------------------------------------------------------------------------- shared
def _add_model_args(p) -> None:
    p.add_argument("--model", required=True, help="model directory or hub id (base, merged, seq-cls or adapter dir)")
    p.add_argument("--adapter", help="PEFT adapter directory on top of --model")
    _add_runtime_args(p)


def _add_runtime_args(p) -> None:
    """Prompt budget, batch budget, device, dtype and fast paths: every verb here loads a `Reranker` with them."""
    p.add_argument(
        "--max-length", type=positive_int, help="prompt token budget (default: the export's tuner.json, else 8192)"
    )
    p.add_argument(
        "--batch-tokens", type=positive_int, help="padded tokens per forward pass (default: 8192 CPU, 32768 GPU)"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", help="bfloat16, float16, float32, auto (checkpoint's); default bf16 on GPU, fp32 on CPU")
    add_scoring_path_args(p)


def _model_options(args) -> dict[str, Any]:
    """The model options of eval, instruct and calibrate, as the keyword arguments of their `run_*` functions."""
    from tuner.eval_run import ModelOptions

    options = ModelOptions(args.device, args.dtype, args.max_length, args.batch_tokens, **scoring_path_kwargs(args))
    return {"adapter": args.adapter, "options": options}


def _rerank_options(args) -> dict[str, Any]:
    """eval's and instruct's shared options (source, query sample, model), checked, as `run_*` kwargs."""
    return {
        "split": args.split,
        **_source_options(args),
        "max_queries": args.max_queries,
        "seed": args.seed,
        "metrics": _metrics(args),
        **_model_options(args),
        "cache_dir": args.cache_dir or None,
        "show_progress": False if args.no_progress else None,
    }


def _add_source_args(p, top_k: int) -> None:
    """Where eval's and instruct's queries and candidates come from: a BEIR split, or a labeled file's groups."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--beir", help="BEIR folder (corpus.jsonl[.gz], queries.jsonl, qrels/SPLIT.tsv)")
    source.add_argument(
        "--data",
        help="a labeled file in a training format (grouped rows or pairs, JSONL/CSV/TSV, e.g. `tuner data split`'s "
        "dev part): each group's documents are reranked; the first stage row is their seeded random order",
    )
    p.add_argument("--split", default="test", help="qrels split (default test); with --data, a folder's <split> file")
    p.add_argument("--candidates", help="'bm25' (default) or a first-stage TREC run file (--beir only)")
    p.add_argument("--top-k", type=positive_int, help=f"candidates reranked per query (default {top_k}; --beir only)")
    p.set_defaults(default_top_k=top_k)


def _add_sample_args(p, verb: str) -> None:
    """eval's and instruct's query sample, drawn as training draws its dev queries (`Evaluator.from_beir` /
    `from_groups` with `train.seed`): the same N and seed give the same queries."""
    p.add_argument(
        "--max-queries",
        type=positive_int,
        help=f"{verb} a reproducible sample of this many queries, drawn with --seed; training draws a recipe's "
        "eval.max_queries=N with train.seed, so --max-queries N --seed <train.seed> draws the same queries",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the query sample (default 0; training's dev sample uses train.seed, 42 unless the recipe "
        "sets another)",
    )


def _add_metrics_arg(p, primary_use: str) -> None:
    """eval's and instruct's metrics: the names a recipe's `eval.metrics` takes, checked the same way."""
    from tuner.metrics import DEFAULT_METRICS

    p.add_argument(
        "--metrics",
        nargs="+",
        metavar="METRIC",
        help="metrics reported, named as a recipe's eval.metrics (ndcg@k, mrr@k, map@k, recall@k, p@k), so a "
        f"training run's dev figures can be reproduced; the first is primary ({primary_use}). Default: "
        f"{' '.join(DEFAULT_METRICS)}",
    )


def _metrics(args) -> list[str] | None:
    """--metrics checked as `eval.metrics` is (`tuner.metrics.check_metrics`); None: the evaluator's default."""
    if args.metrics is None:
        return None
    from tuner.metrics import check_metrics

    try:
        return check_metrics(args.metrics)
    except ValueError as err:
        raise UserError(f"--metrics: {err}") from None


def _source_options(args) -> dict[str, Any]:
    """The checked source options as `run_*` kwargs (with --data, --candidates and --top-k do not apply)."""
    if args.data is not None:
        given = [flag for flag, value in (("--candidates", args.candidates), ("--top-k", args.top_k)) if value]
        if given:
            raise UserError(f"{' and '.join(given)}: for --beir; with --data the candidates are each group's documents")
        from tuner.data.groups import resolve_path

        resolve_path(args.data, args.split)  # a missing or mistyped file fails here, before an output folder is made
    candidates = args.candidates or "bm25"
    if candidates.lower() != "bm25" and not Path(candidates).is_file():
        raise UserError(f"--candidates {candidates!r}: neither 'bm25' nor an existing run file")
    return {"data": args.data, "candidates": candidates, "top_k": args.top_k or args.default_top_k}


def _out_name(args) -> str:
    """The default output folder's name: `<dataset>-<split>`, or the labeled file's stem."""
    if args.data is None:
        return f"{Path(args.beir).name}-{args.split}"
    data = Path(args.data)
    return f"{data.name}-{args.split}" if data.is_dir() else data.name.split(".")[0]


def _check_apply(args) -> None:
    """A wrong --apply fails before the scoring, not after it (and not after the report was written)."""
    if args.apply:
        from tuner.instruct import apply_targets

        try:
            apply_targets(args.apply)
        except FileNotFoundError as err:
            raise UserError(f"--apply {err}") from None


def _print_report_head(out: Path) -> None:
    """The summary part of `report.md` (the systems table and the paired comparison)."""
    print((out / "report.md").read_text(encoding="utf-8").split("\n## Systems")[0].rstrip())


# ---------------------------------------------------------------------------------------------- eval
def add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="rerank first-stage candidates on a BEIR split (or a labeled file's groups); report first stage, base "
        "and tuned side by side",
        description="Writes metrics.json, per_query.jsonl, runs/*.trec, report.md and report.png into --out.",
    )
    p.add_argument("--model", required=True, help="model directory or hub id (base, merged, seq-cls or adapter dir)")
    p.add_argument(
        "--adapter",
        help="PEFT adapter directory on --model: reports base (adapter disabled) and tuned (the row named by its run, "
        "as --compare names runs, when the adapter, or --model, is a tuner run's)",
    )
    _add_source_args(p, top_k=100)
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--instruction",
        help="task instruction for every pair, the --data rows that carry their own included (default: a --data "
        "row's own, else the model's)",
    )
    group.add_argument(
        "--instructions",
        nargs="+",
        metavar="SPEC",
        help="compare instructions: 'default', 'none' or a text, e.g. --instructions default none 'Find ...'",
    )
    p.add_argument("--compare", nargs="+", default=[], metavar="MODEL_OR_ADAPTER", help="more systems to score")
    p.add_argument(
        "--train-data",
        metavar="SOURCE",
        help="also report every system on the queries the training data covers (the query, or a relevant document "
        "as a positive) and on the rest: a training file or folder, a BEIR folder (--train-split qrels) or a tuner "
        "run folder. Default: the run the evaluated adapter or model comes from (RUN/adapter, RUN/model, a "
        "checkpoint, or the runs of a tuner merge's sources); 'none' to skip",
    )
    p.add_argument("--train-split", help="file stem of a --train-data folder, or its BEIR qrels split (default train)")
    p.add_argument("--out", help="output folder (default runs/eval/<dataset>-<split>)")
    _add_sample_args(p, "evaluate")
    _add_metrics_arg(p, "the paired tests and report.png compare systems by it")
    _add_runtime_args(p)
    p.add_argument("--cache-dir", default="runs/cache", help="BM25 index cache (default runs/cache; '' to disable)")
    p.add_argument(
        "--base-cache",
        metavar="DIR",
        help="keep the base's evaluation (--model with --adapter disabled) in DIR and read it back when a later eval "
        "has the same base, set, options and instruction: evaluating run after run of one base scores the base once "
        "(an adapter given alone as --model counts as the base it names)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    # the experiment tracker, as training's tracking.report_to (tuner/eval_tracking.py)
    p.add_argument(
        "--report-to",
        choices=["none", "wandb", "tensorboard"],
        default="none",
        help="also log the evaluation to an experiment tracker (default none). wandb: one run of job_type 'eval' "
        "(config: these options; summary: <system>/<metric> for first_stage, base, tuned (or model) and "
        "compare/<label>, delta/<metric> and p of tuned vs base, the same under seen/ and unseen/; the report table "
        "and report.png), files in OUT/wandb (WANDB_MODE=offline works), linked to the training run's model "
        "artifact when it uploaded one; tensorboard: the same figures as scalars and the table as text",
    )
    p.add_argument(
        "--project", help="wandb project (default: the adapter's tuner run's, else $WANDB_PROJECT, else tuner)"
    )
    p.add_argument("--run-name", help="wandb run name (default: '<training run or model> on <out folder name>')")
    p.add_argument("--group", help="wandb run group (default: the adapter's tuner run's, else $WANDB_RUN_GROUP)")
    p.add_argument(
        "--tensorboard-dir",
        metavar="DIR",
        help="tensorboard's folder (default OUT/tensorboard, whose events an eval into OUT again replaces)",
    )
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    from tuner.eval_run import parse_instruction, run_eval
    from tuner.eval_tracking import tracked_eval

    options = _rerank_options(args)
    # None → the model's default instruction; "" → no instruction
    instructions = [parse_instruction(s) for s in args.instructions] if args.instructions else [args.instruction]
    out = Path(args.out or Path("runs") / "eval" / _out_name(args))
    replaced = (out / "metrics.json").exists()
    train_data = _train_data(args)
    tracking = _tracking(args, out)
    # a bad --data row or --candidates file leaves no empty --out folder behind; the tracker (--report-to) starts
    # before any model loads (a wandb that cannot start a run fails in seconds), and a failed eval closes it as such
    with removed_if_failed(out), tracked_eval(tracking) as tracker:
        run_eval(
            args.model,
            args.beir,
            out,
            instructions=instructions,
            compare=args.compare,
            train_data=train_data,
            train_split=args.train_split,
            base_cache_dir=args.base_cache or None,
            **options,
        )
    _print_report_head(out)
    print(
        f"\nwrote {out}/metrics.json, per_query.jsonl, runs/, report.md, report.png"
        + (" (replaced the previous report)" if replaced else "")
    )
    if tracker is not None:
        print(f"logged to {tracker.report(out)}")
    return 0


def _tracking(args, out: Path) -> dict[str, Any] | None:
    """`start_eval_tracking`'s arguments for --report-to (None: none), checked before anything is scored: the
    eval's settings as the run's config, and the tuner runs the evaluated adapter comes from."""
    from tuner import __version__
    from tuner.eval_run import system_label
    from tuner.eval_tracking import training_runs

    given = [f for f in ("project", "run_name", "group", "tensorboard_dir") if getattr(args, f) is not None]
    wrong = [f for f in given if (f == "tensorboard_dir") != (args.report_to == "tensorboard")]
    if args.report_to == "none" or wrong:
        if wrong or given:
            flag = "--" + (wrong or given)[0].replace("_", "-")
            need = "tensorboard" if flag == "--tensorboard-dir" else "wandb"
            raise UserError(f"{flag}: for --report-to {need} (got --report-to {args.report_to})")
        return None
    runs = training_runs(args.model, args.adapter)
    who = runs[0].name if len(runs) == 1 else system_label(args.adapter or args.model)
    config = {
        "command": "tuner eval",
        "tuner_version": __version__,
        "model": args.model,
        "adapter": args.adapter,
        "compare": list(args.compare),
        "dataset": Path(args.beir or args.data).name,
        "beir": args.beir,
        "data": args.data,
        "split": args.split,
        "candidates": None if args.data else (args.candidates or "bm25"),
        "top_k": None if args.data else (args.top_k or args.default_top_k),
        "max_queries": args.max_queries,
        "seed": args.seed,
        "instructions": args.instructions or [args.instruction],
        "metrics": getattr(args, "metrics", None),
        "train_data": args.train_data,
        "train_runs": [str(r.folder) for r in runs],
        "train_wandb_ids": [r.wandb_id for r in runs],
        "base_cache": args.base_cache,
        "max_length": args.max_length,
        "device": args.device,
        "dtype": args.dtype,
        "out": str(out),
    }
    if len(runs) == 1:  # the common case, as plain fields to filter the runs table by
        config.update(train_run=str(runs[0].folder), train_wandb_id=runs[0].wandb_id)
    return {
        "report_to": args.report_to,
        "out": out,
        "config": config,
        "runs": runs,
        "name": args.run_name or f"{who} on {out.name}",
        "project": args.project,
        "group": args.group,
        "tensorboard_dir": args.tensorboard_dir,
    }


def _train_data(args):
    """eval's training data (a `tuner.overlap.TrainingView`, or None: no split): --train-data as given ('none': no
    split), else the run the evaluated adapter comes from (RUN/adapter, a checkpoint of it, or the runs of a
    `tuner merge`'s sources), when that can be read (else a warning, and no split)."""
    from tuner.loading import _looks_local, run_weights
    from tuner.overlap import runs_view, training_view

    if args.train_data is not None:
        if args.train_data.strip().lower() == "none":
            if args.train_split:
                raise UserError("--train-split: there is no training data to split (--train-data none)")
            return None
        try:  # read here, so that a wrong source fails before an output folder or a model is touched
            return training_view(args.train_data, args.train_split)
        except (OSError, ValueError) as err:
            raise UserError(f"--train-data {err}") from None
    if args.train_split:
        raise UserError("--train-split: for --train-data (a folder of training files or a BEIR folder)")
    model = run_weights(args.model)  # a run folder stands for its adapter/ (or model/)
    adapter = args.adapter or (model if (Path(model) / "adapter_config.json").is_file() else None)
    try:
        runs, view = runs_view(adapter or model)  # a fully fine-tuned RUN/model too
        if view is None:
            # a base model on its own has no training data to split by; an adapter path that does not exist, or is
            # no adapter folder (a run folder given for its adapter/), gets its one error when it loads, not first a
            # note that it is not from a tuner run
            local = adapter is not None and _looks_local(adapter)
            missing = local and not (Path(adapter).expanduser() / "adapter_config.json").is_file()
            if adapter is not None and not missing:
                print(
                    f"tuner eval: no seen/unseen split: {adapter} is not from a tuner run (--train-data names its data)"
                )
            return None
    except (OSError, ValueError) as err:
        print(f"tuner eval: warning: no seen/unseen split: {err}", file=sys.stderr)
        return None
    names = ", ".join(str(r) for r in runs)
    print(f"tuner eval: splitting the queries by the training data of run {names} (--train-data none: no split)")
    return view


# ------------------------------------------------------------------------------------------ instruct
def add_instruct(sub) -> None:
    p = sub.add_parser(
        "instruct",
        help="search task instructions on a BEIR split (or a labeled file); write the winner to tuner.json",
        description="Scores the default instruction, no instruction and each line of --instructions on the same "
        "first-stage candidates; writes report.md, metrics.json, per_query.jsonl, runs/, report.png and "
        "tuner.json (the winner as 'instruction') into --out.",
    )
    _add_model_args(p)
    _add_source_args(p, top_k=50)
    p.add_argument("--instructions", help="text file with one candidate instruction per line ('#' comments)")
    _add_sample_args(p, "search on")
    _add_metrics_arg(p, "the winner is the instruction best on it")
    p.add_argument("--out", help="output folder (default runs/instruct/<dataset>-<split>)")
    p.add_argument(
        "--apply",
        metavar="DIR",
        help="also write the winner into the tuner.json of DIR (an adapter or model folder, a training run: its "
        "adapter/, or an export: each format), if it is significantly better (paired "
        "randomization test, as report.md judges it) than the instruction DIR uses now (else exit 2; the report is "
        "still written)",
    )
    p.add_argument("--force", action="store_true", help="--apply a winner that is not significantly better too")
    p.add_argument("--cache-dir", default="runs/cache", help="BM25 index cache (default runs/cache; '' to disable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_instruct)


def _run_instruct(args) -> int:
    from tuner.instruct import read_instructions, run_instruct

    options = _rerank_options(args)
    _check_apply(args)
    custom = read_instructions(args.instructions) if args.instructions else []
    out = Path(args.out or Path("runs") / "instruct" / _out_name(args))
    with removed_if_failed(out):
        summary = run_instruct(
            args.model, args.beir, out, instructions=custom, apply=args.apply, force=args.force, **options
        )
    _print_report_head(out)
    info = summary["instruction_search"]
    print(f"\nwinner: {info['winner_label']} ({info['winner']!r}) in {info['seconds']:.1f} s; wrote {out}/tuner.json")
    for path in info["applied_to"] or []:
        print(f"applied to {path}")
    if info.get("apply_skipped"):
        print(f"not applied: {info['apply_skipped']}")
    for warning in info.get("warnings") or []:
        print(f"tuner instruct: warning: {warning}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------- calibrate
def add_calibrate(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit temperature and bias (Platt scaling) on labeled dev pairs; report ECE and log loss",
        description="Writes calibration.json, report.md and reliability.png into --out.",
    )
    _add_model_args(p)
    p.add_argument(
        "--data",
        required=True,
        help="labeled pairs or grouped JSONL (pos → 1, neg → 0); every pair counts, a query's with no positive too",
    )
    p.add_argument("--split", help="file stem when --data is a folder (default train)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--apply",
        metavar="DIR",
        help="store {temperature, bias} in the tuner.json of DIR (an adapter or model folder, a training run: its "
        "adapter/, or an export: each format)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="--apply even a degenerate fit (temperature at its bound: nearly the same probability for every pair)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the cross-validation folds (default 0)")
    p.set_defaults(func=_run_calibrate)


def _run_calibrate(args) -> int:
    from tuner.calibrate import run_calibrate

    _check_apply(args)
    with removed_if_failed(args.out):
        summary = run_calibrate(
            args.model,
            args.data,
            args.out,
            split=args.split,
            apply=args.apply,
            seed=args.seed,
            force=args.force,
            **_model_options(args),
        )
    print((Path(args.out) / "report.md").read_text(encoding="utf-8").split("\n![")[0].rstrip())
    for warning in summary.get("warnings") or []:
        print(f"tuner calibrate: warning: {warning}", file=sys.stderr)
    print(f"\nwrote {args.out}/calibration.json, report.md, reliability.png in {summary['seconds']:.1f} s")
    for path in summary["applied_to"] or []:
        print(f"applied to {path}")
    return 0
