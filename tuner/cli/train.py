"""`tuner train` and `tuner config`: run a recipe, list its fields."""

from __future__ import annotations

import sys


# ------------------------------------------------------------------------------------------- train, config
def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a reranker from a recipe (LoRA / QLoRA / full), evaluating as it goes")
    p.add_argument("recipe", help="recipe YAML (see recipes/); `tuner config` lists every field")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="override recipe fields")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of the run directory")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from tuner.config import load_config

    config = load_config(args.recipe, args.overrides)  # before torch is imported: a bad recipe fails in a second
    from tuner.train import train
    from tuner.trainer import TrainingDiverged

    try:
        result = train(config, resume=args.resume)
    except TrainingDiverged as err:  # not a bug to report: one line (train.log has the step lines before it)
        print(f"tuner train: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        from tuner.loading import complete_checkpoints
        from tuner.train import CHECKPOINTS_DIR
        from tuner.train_setup import output_dir_for

        out = output_dir_for(config, create=False)
        complete = complete_checkpoints(out / CHECKPOINTS_DIR)
        if complete:
            print(f"\nrun stopped: `tuner train ... --resume` continues from {complete[-1]}", file=sys.stderr)
        else:
            print(
                f"\nrun stopped before its first checkpoint was saved: nothing to resume; train again "
                f"({out / 'logs' / 'train.log'} has the log)",
                file=sys.stderr,
            )
        raise
    for key, label in (("dev", "dev"), ("ood", "out of domain")):  # base → final, as the log has them
        section = result["metrics"].get(key) or {}
        final, base = section.get("final") or {}, section.get("base") or {}
        if final:
            parts = [f"{k}={v:.4f}" + (f" (base {base[k]:.4f})" if k in base else "") for k, v in final.items()]
            print(f"{label} " + " ".join(parts))
    print(f"adapter: {result['adapter_dir']}\nrun directory: {result['output_dir']}")
    return 0


def add_config(sub) -> None:
    p = sub.add_parser("config", help="list every recipe field with its type, value (default or recipe) and doc")
    p.add_argument("--recipe", help="show this recipe's resolved values instead of the defaults")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="overrides applied before listing (the recipe may also come first, as in `tuner train RECIPE ...`)",
    )
    p.set_defaults(func=_run_config)


def _run_config(args) -> int:
    from tuner.config import describe_fields, load_config

    recipe, overrides = args.recipe, list(args.overrides)
    if recipe is None and overrides and "=" not in overrides[0]:  # `tuner config RECIPE [overrides]`, as train
        recipe = overrides.pop(0)
    rows = describe_fields(load_config(recipe, overrides))
    width = max(len(r[0]) for r in rows)
    for key, tp, value, doc in rows:
        print(f"{key:<{width}}  {value:<18} {doc}  [{tp}]")
    return 0
