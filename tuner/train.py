"""`tuner train RECIPE`: the training run, readable top to bottom.

    output dir → base model path → training groups → evaluators → model (+ LoRA / 4-bit)
    → Trainer → train (or resume) → final evaluation → adapter/ + tuner.json + metrics.json

The Trainer subclass (and why it is transformers' `Trainer`, not trl's) is `tuner.trainer`; the forward it trains
through, the contract's yes−no score, is `tuner.score_forward`; run setup helpers are `tuner.train_setup`, the
experiment trackers (wandb, tensorboard) `tuner.tracking`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import EarlyStoppingCallback, PrinterCallback, TrainerCallback, set_seed

from tuner.config import Config, ConfigError, atomic_write_json, has_dev_set
from tuner.files import usual_modes
from tuner.loading import checkpoint_step, complete_checkpoints, is_complete, saved_checkpoints, trainer_state
from tuner.score_forward import install_score_forward, remove_score_forward
from tuner.train_data import GroupCollator, GroupDataset
from tuner.trainer import (
    CheckpointMeta,
    EpochFromState,
    LogLines,
    MetricsWriter,
    RerankTrainer,
    RunClock,
    StopOnNonFinite,
)

log = logging.getLogger("tuner.train")

# RerankTrainer lives in tuner.trainer; it stays listed here, where it was first exported
__all__ = ["RerankTrainer", "TrainResult", "train"]

ADAPTER_DIR = "adapter"
MODEL_DIR = "model"  # full fine-tuning writes the whole model here instead of adapter/
CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
DEV_BASE_PER_QUERY = "dev-base-per-query.json"  # in <out>/logs: the base's dev figures per query
_NO_PERIODIC_SAVE = 2**31 - 1  # train.save_steps=0: a checkpoint period no run reaches (only the final save)


# ------------------------------------------------------------------------------------------------ result
class TrainResult(dict):
    """What `train` returns: `output_dir`, `adapter_dir`, `metrics` (the metrics.json content), `model` (the
    trained model object, for callers that keep working with it in the same process)."""


def train(config: Config, resume: bool = False, callbacks: list[TrainerCallback] | None = None) -> TrainResult:
    """Run a recipe end to end. Only this entry point unpacks the config.

    A run that stops on an error (or Ctrl-C) after its log was opened ends `logs/train.log` with the reason and
    the traceback; the console keeps the one-line error.

    Args:
        config: a validated recipe (`tuner.config.load_config`).
        resume: continue from the latest checkpoint in `<output>/checkpoints` (same data order and LR schedule).
        callbacks: extra `TrainerCallback`s (tests use one to interrupt a run).

    Returns:
        `TrainResult` with the output directory, the adapter (or model) directory and the metrics.
    """
    try:
        with contextlib.ExitStack() as held:  # the run directory's lock, taken by _train once the folder exists
            return _train(config, resume, callbacks, held)
    except BaseException as err:
        _log_failure(config, err)
        raise


def _check_dev_is_not_trained_on(groups: list, dev, drop: bool, main: bool) -> list:
    """Training groups without the dev set's query texts (`drop`), or all of them with a warning: a dev query that
    is also a training query (the same text in both splits, eval on the training split, a train file mined from
    the eval qrels) measures memory, not the domain. Every rank filters alike (same groups, same order)."""

    from tuner.overlap import normalize  # the comparison `tuner eval --train-data` makes too

    dev_texts = {normalize(text) for text in dev.queries.values()}
    shared, kept = [], []
    for group in groups:
        (shared if normalize(group.query) in dev_texts else kept).append(group)
    if not shared:
        return groups
    example = shared[0].query[:80]
    if drop:
        if not kept:
            raise ConfigError(
                f"every training group's query is a dev query ({dev.name}): train and evaluate on different "
                "splits (data.drop_dev_queries=false trains on them anyway)"
            )
        if main:
            log.info(
                "left out %d of %d training groups whose query is a %s query (e.g. %r; data.drop_dev_queries)",
                len(shared),
                len(groups),
                dev.name,
                example,
            )
        return kept
    if main:
        log.warning(
            "%d of %d training groups have a query of %s (e.g. %r): the dev metrics overstate what the model "
            "learned (data.drop_dev_queries=true leaves them out)",
            len(shared),
            len(groups),
            dev.name,
            example,
        )
    return groups


def _training_overlap(view, evaluator, rank_eval, prior: dict) -> dict[str, Any] | None:
    """The dev queries split by what the training data covers (`view`, see `tuner.overlap`): per part, the first
    stage's, the base's and the final model's means, and final vs base paired on the primary metric, so that a gain
    made of remembered documents shows in metrics.json and in `make demo` rather than in a later analysis.

    The final figures are the last evaluation's per-query metrics (None when this call evaluated nothing: the
    recorded split stays). A base reused from the run's metrics.json by --resume has no per-query figures: its
    recorded part means are kept, without the paired test."""
    from tuner.metrics import mean
    from tuner.overlap import MEANING, split_queries
    from tuner.report import paired_stats

    recorded = (prior.get("dev") or {}).get("training_overlap")
    final, base = rank_eval.last_per_query, rank_eval.base_per_query
    if not final:
        return recorded
    split = split_queries(evaluator.queries, evaluator.qrels, evaluator.relevant_documents, view)
    first = evaluator.first_stage_result().per_query
    primary, metrics = evaluator.primary_metric, list(evaluator.metrics)
    out: dict[str, Any] = {k: v for k, v in split.items() if k != "part"}
    out["parts"] = {}
    for name, meaning in MEANING.items():
        qids = [q for q in evaluator.qids if split["part"][q] == name]
        part: dict[str, Any] = {"queries": len(qids), "meaning": meaning}
        if qids:
            part["first_stage"] = mean({q: first[q] for q in qids}, metrics)
            part["final"] = mean({q: final[q] for q in qids}, metrics)
            if base:
                part["base"] = mean({q: base[q] for q in qids}, metrics)
                part["final_vs_base"] = paired_stats(
                    [base[q][primary] for q in qids], [final[q][primary] for q in qids]
                )
            else:
                before = ((recorded or {}).get("parts") or {}).get(name) or {}
                if before.get("base") and before.get("queries") == len(qids):
                    part["base"] = before["base"]
        out["parts"][name] = part
    return out


def _with_first_round(view, init_adapter: str, main: bool):
    """A second round's training view: its own groups and what the run(s) of its starting adapter trained on (a dev
    query seen in an earlier round is seen). Its own alone, with a warning, when the adapter comes from no tuner run
    or that run's data cannot be read."""
    from tuner.overlap import runs_view, union
    from tuner.train_setup import init_adapter_dir

    try:
        _, earlier = runs_view(init_adapter_dir(init_adapter))
        if earlier is not None:
            return union([view, earlier])
        why = "comes from no tuner run"
    except (OSError, ValueError) as err:
        why = f"has training data that cannot be read ({err})"
    if main:
        log.warning(
            "lora.init_adapter %s %s: the seen / unseen split of the dev queries counts this run's training data only",
            init_adapter,
            why,
        )
    return view


def _evals_in(checkpoint: Path) -> list[dict[str, Any]]:
    """The dev evaluations a checkpoint's run made up to its step, as `RerankTrainer.eval_history` entries
    (`{"step", metric: value}`), read from its trainer_state.json log (where `evaluate` logged `eval_<metric>`)."""
    history = []
    for entry in trainer_state(checkpoint).get("log_history") or []:
        values = {k[5:]: v for k, v in entry.items() if k.startswith("eval_")}
        if values and "step" in entry:
            history.append({"step": entry["step"], **values})
    return history


def _saved_callback(checkpoint: Path, callback: type) -> dict[str, Any]:
    """A stateful callback's saved state at a checkpoint (`{"args", "attributes"}` under trainer_state.json's
    `stateful_callbacks`), {} for a checkpoint saved without it. Each is read by hand rather than through
    transformers' restore_callback_states_from_checkpoint, which would rebuild every stateful callback from its
    saved state alone (RunClock's totals need the arguments it is made with)."""
    saved = (trainer_state(checkpoint).get("stateful_callbacks") or {}).get(callback.__name__)
    return saved if isinstance(saved, dict) else {}


def _clock_in(checkpoint: Path) -> dict[str, float]:
    """The run's time up to a checkpoint (`RunClock` totals), {} for a checkpoint saved without them."""
    totals = (_saved_callback(checkpoint, RunClock).get("attributes") or {}).get("totals")
    return totals if isinstance(totals, dict) and {"seconds", "train_runtime"} <= totals.keys() else {}


def _patience_in(checkpoint: Path) -> tuple[int | None, int]:
    """EarlyStoppingCallback's patience and count of evaluations without improvement at a checkpoint ((None, 0)
    without one)."""
    saved = _saved_callback(checkpoint, EarlyStoppingCallback)
    patience = (saved.get("args") or {}).get("early_stopping_patience")
    counter = (saved.get("attributes") or {}).get("early_stopping_patience_counter")
    return (patience if isinstance(patience, int) else None), (counter if isinstance(counter, int) else 0)


def _patience_ran_out(checkpoint: Path) -> bool:
    patience, counter = _patience_in(checkpoint)
    return patience is not None and counter >= patience


def _call_loss(figures: dict[str, Any], resumed_at: int, global_step: int) -> float:
    """A resumed call's mean loss per step it trained, from transformers' `train_loss`: before 5.19 that was the
    call's summed loss divided by the run's global step (every step, also those before the checkpoint), since 5.19
    by the steps this call trained."""
    import transformers
    from packaging.version import Version

    loss = figures.get("train_loss", 0.0)
    trained = global_step - resumed_at
    if Version(transformers.__version__).release < (5, 19) and trained > 0:
        return loss * global_step / trained
    return loss


def _whole_run_loss(log_history: list[dict], resumed_at: int, call_loss: float, global_step: int) -> float | None:
    """The mean training loss per step over the whole run, from a resumed call's own mean (`call_loss`, over steps
    resumed_at+1..global_step) and the losses logged up to the checkpoint (each the mean of its logging window).
    None when those windows do not reach the checkpoint's step: the steps after the last log before the save
    were never logged, and their loss is not in the checkpoint."""
    total, last = 0.0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry and last < entry["step"] <= resumed_at:
            total += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    if last != resumed_at or global_step <= 0:
        return None
    return (total + call_loss * (global_step - resumed_at)) / global_step


def _eval_inputs(config: Config) -> dict[str, Any]:
    """What a base evaluation's numbers depend on besides the evaluation data: the whole model section, the eval
    section, the instruction, the seed (which samples eval queries) and the precision; as JSON would store it."""
    d = config.to_dict()
    d["eval"].pop("base_cache_dir")  # where base figures are kept, not what they are
    inputs = {
        "model": d["model"],
        "eval": d["eval"],
        "instruction": config.data.instruction,
        "seed": config.train.seed,
        "precision": config.train.precision,
    }
    return json.loads(json.dumps(inputs, default=str))


def _from_main_rank(read):
    """`read()` on rank 0, its result on every rank (no process group: just `read()`)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return read()
    box = [read() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _recorded_base(prior: dict, part: str, inputs: dict, name: str, first_stage: dict) -> dict | None:
    """The base metrics an earlier call of this run recorded in metrics.json for `part` ("dev" or "ood"), when
    they were measured on the same inputs (`_eval_inputs`), the same set and the same candidates and qrels (the
    first-stage metrics computed now equal the recorded ones); else None (measure again)."""
    section = prior.get(part) or {}
    if prior.get("eval_inputs") != inputs or section.get("name") != name or section.get("first_stage") != first_stage:
        return None
    return section.get("base") or None


def _log_failure(config: Config, err: BaseException) -> None:
    """Write why the run stopped into this run's `train.log` only: the console already gets the error once."""
    from tuner.train_setup import output_dir_for

    out = output_dir_for(config, create=False)
    log_file = os.path.abspath(out / "logs" / "train.log")  # as logging.FileHandler records it (no symlinks resolved)
    files = [
        h
        for h in logging.getLogger("tuner").handlers
        if getattr(h, "_tuner_run", False) and getattr(h, "baseFilename", None) == log_file
    ]
    if not files:  # stopped before the log was opened (a config or --resume error): no file to tell
        return
    message = "run interrupted" if isinstance(err, KeyboardInterrupt) else f"run failed: {type(err).__name__}: {err}"
    complete = complete_checkpoints(out / CHECKPOINTS_DIR)
    if complete:
        message += f"\nlast checkpoint: {complete[-1]} (`tuner train ... --resume` continues)"
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, (), (type(err), err, err.__traceback__))
    for handler in files:
        handler.handle(record)
        handler.flush()


def _resume_point(ckpt_dir: Path, metrics_file: Path, notes: list[tuple[int, str]]) -> tuple[Path, dict]:
    """--resume: the checkpoint to continue from (the newest complete one; the incomplete ones after it noted in
    `notes`) and the run's metrics.json so far ({} when unreadable)."""
    saved = saved_checkpoints(ckpt_dir)
    # a save that was cut off (the process died while writing) leaves a folder without a whole trainer_state.json,
    # which transformers would pick as the latest and refuse: continue from the newest complete one instead
    complete = [p for p in saved if is_complete(p)]
    if not complete:
        names = ", ".join(p.name for p in saved) or "none"
        raise ConfigError(
            f"--resume: no complete checkpoint in {ckpt_dir} ({names}: no whole trainer_state.json, an interrupted "
            "save); train again with output.overwrite=true"
        )
    latest = complete[-1]
    for broken in saved[saved.index(latest) + 1 :]:
        notes.append(
            (
                logging.WARNING,
                f"--resume: {broken} is incomplete (no whole trainer_state.json, an interrupted save); skipped",
            )
        )
    try:
        prior = json.loads(metrics_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        prior = {}
    prior = prior if isinstance(prior, dict) else {}
    return latest, prior


def _cpu_fallbacks(config: Config, notes: list[tuple[int, str]]) -> str:
    """train.precision as this machine runs it (fp32 without CUDA); a note in `notes` for each setting a CPU does
    not run as given (logged once logging is set up, into logs/train.log too)."""
    precision = config.train.precision
    if not torch.cuda.is_available():
        if precision != "fp32":
            notes.append(
                (logging.WARNING, f"train.precision={precision} without CUDA: no mixed precision on CPU (as fp32)")
            )
            precision = "fp32"
        if config.lora.enabled and not config.model.load_in_4bit and config.model.dtype != "float32":
            # (full fine-tuning loads fp32, see below) a LoRA base keeps its dtype whatever the precision: bf16 on a
            # CPU took 3x the time of fp32 on a tiny recipe (2 cores)
            notes.append(
                (
                    logging.WARNING,
                    f"model.dtype={config.model.dtype} without CUDA: the frozen base computes in {config.model.dtype} "
                    "on CPU, which most CPUs run several times slower than float32 (model.dtype=float32)",
                )
            )
    return precision


def _training_arguments(config: Config, out: Path, precision: str, max_steps: int):
    """transformers' `TrainingArguments` of a run into `out`."""
    from transformers import TrainingArguments

    t = config.train
    ckpt_dir = out / CHECKPOINTS_DIR
    eval_steps = config.eval.steps if (has_dev_set(config) and config.eval.steps > 0) else 0
    return TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=t.batch_groups,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup,
        num_train_epochs=t.epochs,
        max_steps=max_steps,
        max_grad_norm=t.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        optim=t.optim,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        # "steps" always: under it transformers also saves at the last step, so save_steps=0 (a period no run
        # reaches) leaves exactly that checkpoint, the one --resume and the best-checkpoint record need
        save_strategy="steps",
        save_steps=t.save_steps if t.save_steps > 0 else _NO_PERIODIC_SAVE,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps or None,
        metric_for_best_model=config.eval.metrics[0] if eval_steps else None,
        # train.load_best / early_stopping_patience (validated: evaluations and a checkpoint at each): transformers
        # keeps the best checkpoint through save_total_limit and loads it when training ends
        load_best_model_at_end=t.load_best or t.early_stopping_patience is not None,
        greater_is_better=True,
        report_to=[] if config.tracking.report_to == "none" else [config.tracking.report_to],
        run_name=config.tracking.run_name or out.name,
        remove_unused_columns=False,  # our batches are prompt tensors the Trainer must not filter
        dataloader_num_workers=t.dataloader_workers,
        ddp_backend=t.ddp_backend,
        ddp_find_unused_parameters=False,
        logging_nan_inf_filter=False,  # a NaN loss is logged as NaN, for StopOnNonFinite (not as the window's mean)
        disable_tqdm=True,  # one log line per logging step instead of a bar (readable in files and CI)
        use_cpu=not torch.cuda.is_available(),
        save_only_model=False,  # optimizer + scheduler + RNG state are what make --resume exact
    )


def _load_model(config: Config, base_path: str, device):
    """The model a run trains: the base (full fine-tuning in fp32; 4-bit for QLoRA) with its LoRA adapter (seeded
    first, since LoRA's A matrices draw from the global RNG), checked against the base's positions."""
    from tuner.contract import past_positions
    from tuner.modeling import attach_lora, compile_layers, load_base, trainable_summary

    t = config.train
    set_seed(t.seed)
    m = config.model
    dtype = m.dtype
    if not config.lora.enabled and dtype != "float32":
        # Full fine-tuning updates the base weights themselves: AdamW moves each by ~lr per step, which rounds away
        # in bf16 (3 steps at lr 1e-5 changed 19% of the decoder weights in bf16, 71% in fp32). The weights stay
        # fp32 (the optimizer's master copy) and train.precision's autocast keeps the matmuls in bf16, as in
        # transformers' own mixed precision; LoRA trains fp32 adapter weights, so its base can stay in bf16.
        log.warning(
            "lora.enabled=false: the base is loaded in float32, not model.dtype=%s (bf16 weights would lose most "
            "updates); the step still computes in train.precision=%s",
            dtype,
            t.precision,
        )
        dtype = "float32"
    model = load_base(
        base_path,
        dtype=dtype,
        attn_implementation=m.attn_implementation,
        load_in_4bit=m.load_in_4bit,
        quant_type=m.bnb_4bit_quant_type,
        double_quant=m.bnb_4bit_use_double_quant,
        compute_dtype=m.bnb_4bit_compute_dtype,
        gradient_checkpointing=m.gradient_checkpointing,
        checkpoint_ratio=m.checkpoint_ratio,
        liger_kernel=m.liger_kernel,
        device=device,
    )
    too_long = past_positions(m.max_length, model.config)
    if too_long:  # before any step: prompts past the model's positions would train on positions it never had
        raise ConfigError(f"model.{too_long}")
    if config.lora.enabled and config.lora.init_adapter is not None:
        model = _start_from(model, config.lora, base_path)
    elif config.lora.enabled:
        lc = config.lora
        try:
            model = attach_lora(model, lc.r, lc.alpha, lc.dropout, lc.target_modules, lc.use_rslora, lc.use_dora)
        except ValueError as err:  # peft: "Target modules {...} not found in the base model"
            if "arget module" not in str(err):
                raise
            raise ConfigError(f"lora.target_modules: {err}") from None
    log.info("%s", trainable_summary(model))
    if t.compile:  # after LoRA, so that the adapters are traced into the compiled layers
        log.info("torch.compile: %d decoder layers (compiled on first use)", compile_layers(model))
    if t.batching == "packed" and m.attn_implementation != "flex_attention":
        log.warning(
            "train.batching=packed with model.attn_implementation=%s: the attention between the prompts of a row "
            "is computed and masked out (same scores, quadratic extra work); flex_attention skips it, or use "
            "train.batching=sorted",
            m.attn_implementation,
        )
    return model


def _start_from(model, lora, base_path: str):
    """The base with `lora.init_adapter`'s weights, trainable: a second round of training that goes on from them
    (what the adapter's config says is trained; a lora.* setting of the recipe that differs is warned about)."""
    from tuner.loading import load_adapter
    from tuner.train_setup import init_adapter_dir

    folder = init_adapter_dir(lora.init_adapter)
    try:  # an adapter of another base, or one whose config does not describe its weights: one line naming it
        model = load_adapter(model, folder, base_path, trainable=True)
    except ValueError as err:
        raise ConfigError(f"lora.init_adapter: {err}") from None
    used = model.peft_config["default"]
    settings = (
        ("r", lora.r, used.r),
        ("alpha", lora.alpha, used.lora_alpha),
        ("dropout", lora.dropout, used.lora_dropout),
        ("use_rslora", lora.use_rslora, used.use_rslora),
        ("use_dora", lora.use_dora, bool(used.use_dora)),
    )
    log.info("lora.init_adapter: training on from %s (r=%d, alpha=%g)", folder, used.r, used.lora_alpha)
    differs = [f"lora.{key}={mine} (the adapter has {theirs})" for key, mine, theirs in settings if mine != theirs]
    if isinstance(lora.target_modules, list) and isinstance(used.target_modules, (set, list, tuple)):
        # peft keeps the full module names it adapted ('model.layers.0.self_attn.q_proj'): compared by their last part
        theirs = sorted({name.rsplit(".", 1)[-1] for name in used.target_modules})
        if sorted(set(lora.target_modules)) != theirs:  # ('all-linear' in the recipe: whatever the adapter has)
            differs.append(f"lora.target_modules={lora.target_modules} (the adapter has {theirs})")
    if differs:
        log.warning("lora.init_adapter: the adapter's own settings are trained, not %s", ", ".join(differs))
    return model


def _whole_run_figures(figures: dict[str, Any], state, resumed_at: int, prior_clock: dict, args) -> None:
    """A resumed call's training figures (`figures`, transformers' for this call's steps) made the whole run's, in
    place, from the trainer's `state` and the checkpoint's clock (`prior_clock`, {} when it has none)."""
    # transformers' figures cover this call's steps only: the loss and runtime below are the whole run's, or
    # say from which step they count when the checkpoint does not carry the earlier part
    whole = _whole_run_loss(
        state.log_history,
        resumed_at,
        _call_loss(figures, resumed_at, state.global_step),
        state.global_step,
    )
    if whole is None:
        figures["train_loss_from_step"] = resumed_at + 1
    else:
        figures["train_loss"] = whole
    if prior_clock:
        figures["train_runtime"] = round(prior_clock["train_runtime"] + figures.get("train_runtime", 0.0), 4)
    else:  # train_runtime and seconds both
        figures["runtime_from_step"] = resumed_at + 1
    # transformers divides every planned step's samples by this call's runtime: rates of the steps timed instead
    runtime, steps = figures.get("train_runtime", 0.0), state.global_step
    steps -= 0 if prior_clock else resumed_at
    if runtime > 0:
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        figures["train_steps_per_second"] = round(steps / runtime, 3)
        figures["train_samples_per_second"] = round(steps * batch / runtime, 3)
    # transformers' closing log line above counts this call's steps only: say the run's, as metrics.json has them
    loss_from = figures.get("train_loss_from_step", 1)
    log.info(
        "--resume: the run's figures (metrics.json): train_loss=%.4g over steps %d-%d, train_runtime=%.4g s%s; "
        "the line above counts steps %d-%d only",
        figures.get("train_loss", float("nan")),
        loss_from,
        state.global_step,
        figures.get("train_runtime", 0.0),
        f" from step {resumed_at + 1}" if "runtime_from_step" in figures else "",
        resumed_at + 1,
        state.global_step,
    )


def _save_weights(trainer, tokenizer, target: Path, main: bool, write_meta) -> None:
    """The trained adapter (or full model), its tokenizer and its tuner.json (`write_meta(folder)`) into `target`,
    whole or not at all."""
    # written whole into a staging folder, then renamed: a run cut off while saving has no adapter/ that later
    # commands would take for a finished run (--resume saves it again). A fixed name, not tuner.files.atomic_dir's
    # random one made on the main process: every rank calls save_model (FSDP and DeepSpeed gather or write there)
    # and must be given the same folder
    staging = target.parent / f".{target.name}.partial"
    if main and staging.exists():
        shutil.rmtree(staging)
    trainer.save_model(str(staging))  # every rank calls it (FSDP gathers); the main process writes, PEFT format
    if main:
        tokenizer.save_pretrained(staging)
        write_meta(staging)
        usual_modes(staging)  # the weights are written 0600 by safetensors
        if target.exists():  # --resume of a finished run: the same weights, saved again
            shutil.rmtree(target)
        staging.rename(target)


def _final_dev(dev: dict[str, Any], trainer, rank_eval, model, best: str | None, view, evaluator, prior: dict) -> None:
    """The trained model's dev figures into `dev` (metrics.json's): the last evaluation's (one more when training
    did not end on one), or the best checkpoint's measured again; and the split by what training covered."""
    last = trainer.eval_history[-1]["step"] if trainer.eval_history else None
    if best is not None and checkpoint_step(Path(best)) != last:
        # transformers loaded the best checkpoint: its figures (and per-query ones, for the seen / unseen split)
        # are measured again on the weights saved below, not copied from the history. Not through
        # trainer.evaluate: that would log a second evaluation at this step, as if training had reached it
        log.info("the run's adapter is its best checkpoint, %s (train.load_best)", Path(best).name)
        rank_eval.announce(f"its best checkpoint, {Path(best).name}")
        dev["final"] = rank_eval(model)
    else:
        if last != trainer.state.global_step:
            trainer.evaluate()
        dev["final"] = {k: v for k, v in trainer.eval_history[-1].items() if k != "step"}
    if best is not None:
        dev["final_checkpoint"] = Path(best).name
    log.info("dev final %s", _fmt(dev["final"]))
    overlap = _training_overlap(view, evaluator, rank_eval, prior)
    if overlap:
        dev["training_overlap"] = overlap
        primary = evaluator.primary_metric
        for name, part in overlap["parts"].items():
            if part.get("final_vs_base"):
                st = part["final_vs_base"]
                log.info(
                    "dev %s queries (%d: %s): %s %+.4f vs base (p = %.4g)",
                    name,
                    part["queries"],
                    part["meaning"],
                    primary,
                    st["delta"],
                    st["p_randomization"],
                )


def _train(
    config: Config, resume: bool, callbacks: list[TrainerCallback] | None, held: contextlib.ExitStack
) -> TrainResult:
    from tuner import __version__
    from tuner.contract import PromptEncoder
    from tuner.modeling import require_liger
    from tuner.tracking import log_model_artifact, start_tracking, summarize_to_tensorboard, summarize_to_tracker
    from tuner.train_setup import (
        DATA_RECORD,
        RankEval,
        build_evaluators,
        check_before_work,
        check_resume_config,
        check_resume_data,
        load_training_groups,
        output_dir_for,
        prepare_base,
        read_tokenizer,
        run_lock,
        setup_logging,
        write_data_record,
        write_meta,
    )

    started = time.time()
    if config.model.liger_kernel:  # before any data work: this machine may not be able to run it at all
        require_liger()
    check_before_work(config)
    out = output_dir_for(config, create=False)
    if resume and not out.is_dir():  # a mistyped output.dir: said as such, and not made (empty) on the way
        raise ConfigError(f"--resume: no run directory {out} (output.dir) to resume from")
    out = output_dir_for(config)
    # before anything in it is read or written: another `tuner train` into this folder stops here
    held.enter_context(run_lock(out, main=int(os.environ.get("RANK", "0")) == 0))
    ckpt_dir = out / CHECKPOINTS_DIR
    has_ckpt = ckpt_dir.is_dir() and any(p.name.startswith("checkpoint-") for p in ckpt_dir.iterdir())
    finished = [p for p in (out / ADAPTER_DIR, out / MODEL_DIR, out / METRICS_FILE) if p.exists()]
    if resume and not has_ckpt:
        raise ConfigError(f"--resume: no checkpoint in {ckpt_dir} to resume from")
    if not resume and not config.output.overwrite:
        # a finished run first: it has checkpoints too, but --resume is not what its owner is after
        if (out / ADAPTER_DIR).exists() or (out / MODEL_DIR).exists():
            names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in finished)
            raise ConfigError(
                f"{out} already holds a finished run ({names}); train into a new output.dir, delete {out}, "
                "or pass output.overwrite=true to replace it"
            )
        if has_ckpt:
            raise ConfigError(
                f"{ckpt_dir} already has checkpoints; pass --resume to continue, train into a new output.dir, "
                "or pass output.overwrite=true to start over"
            )
    prior: dict = {}  # with --resume: the run's metrics.json so far
    prior_train: dict = {}  # a finished run's training figures, kept when --resume finds nothing left to train
    latest = None  # with --resume: the checkpoint it continues from
    resume_notes: list[tuple[int, str]] = []  # what --resume found and CPU fallbacks, logged once logging is set up
    if resume:  # before config.yaml is rewritten: it is the only record of what the checkpoints were trained with
        check_resume_config(out / CONFIG_FILE, config)
        check_resume_data(out / DATA_RECORD, config)
        latest, prior = _resume_point(ckpt_dir, out / METRICS_FILE, resume_notes)
        prior_train = prior.get("train") or {}
        done = prior_train.get("global_step")
        target = out / (ADAPTER_DIR if config.lora.enabled else MODEL_DIR)
        if done is not None and (target / "tuner.json").is_file():
            # the run ended and saved (its adapter and its training figures are written only then): training again
            # would re-run every evaluation and rewrite the adapter (losing what `tuner instruct/calibrate --apply`
            # added to its tuner.json), and from whichever checkpoint is left (save_total_limit may keep only the
            # best one; early stopping need not stop on a save) it would even train again
            # logging is not set up yet (it is per process, from TrainingArguments): the launcher's RANK says which
            # process reports, on the console only (a finished run's folder, its train.log too, is left as it was)
            setup_logging(None, int(os.environ.get("RANK", "0")) == 0)
            for level, message in resume_notes:
                log.log(level, message)
            log.info("--resume: %s finished at step %d and saved %s; nothing left to do", out, done, target)
            return TrainResult(output_dir=out, adapter_dir=target, metrics=prior, model=None)
        resume_notes.append((logging.INFO, f"--resume: continuing from {latest}"))

    t = config.train
    precision = _cpu_fallbacks(config, resume_notes)
    pick_best = t.load_best or t.early_stopping_patience is not None
    ended_at_checkpoint = resume and _patience_ran_out(latest)
    # a run resumed from the checkpoint where early stopping ran out of patience (cut off before its adapter was
    # saved) ended there: it trains no further step (EarlyStoppingCallback would only stop it at the next evaluation)
    args = _training_arguments(config, out, precision, checkpoint_step(latest) if ended_at_checkpoint else t.max_steps)
    main = args.process_index == 0
    setup_logging(out / "logs" / "train.log", main)
    for level, message in resume_notes:
        log.log(level, message)
    if main:
        if not resume:  # output.overwrite: stale checkpoints would confuse a later --resume, a stale adapter a reader
            if has_ckpt:
                shutil.rmtree(ckpt_dir)
            for path in finished:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        config.save(out / CONFIG_FILE)
        if not resume:  # the record --resume compares the data with (a resume keeps the first one)
            write_data_record(out, config)
        log.info("run directory: %s", out)

    # 1. base model (a tiny random one written into the run directory when model.tiny)
    with args.main_process_first(desc="base model"):
        base_path = prepare_base(config.model, out)
    tokenizer = read_tokenizer(base_path)
    try:
        encoder = PromptEncoder(tokenizer, max_length=config.model.max_length)
    except ValueError as err:  # "max_length 20 leaves no room for the prompt body": the recipe key, as below
        raise ConfigError(f"model.{err}") from None

    # 2. training groups (mined with BM25 once, cached in the run directory)
    with args.main_process_first(desc="training data"):
        groups = load_training_groups(
            config.data, config.loss.kind, config.train.seed, out, config.loss.hard_label_weight
        )
    log.info("%d training groups of %d documents", len(groups), config.data.group_size)

    # 3. evaluators (dev set + optional out-of-domain): read before the model loads, so that a malformed dev file
    # fails in seconds; the first stage and the base are measured once the model is there
    with args.main_process_first(desc="evaluation data"):
        evaluators = build_evaluators(config.eval, config.train.seed, out / "cache")
    loaded = len(groups)
    if "dev" in evaluators:
        groups = _check_dev_is_not_trained_on(groups, evaluators["dev"], config.data.drop_dev_queries, main)
    dropped = loaded - len(groups)
    # what the dev queries and `tuner eval` on this run's adapter are split by (seen / unseen in training)
    from tuner.overlap import TRAINING_VIEW, groups_view, write_view

    d = config.data
    name = " + ".join(d.train_files) or f"{d.beir} ({d.split} qrels, BM25 negatives)"
    name += f", {loaded} groups"
    if dropped:
        name += f" less {dropped} of queries the run evaluated on (its dev set)"
    view = groups_view(groups, name)
    if config.lora.init_adapter is not None:
        view = _with_first_round(view, config.lora.init_adapter, main)
    if main:
        write_view(view, out / TRAINING_VIEW)

    # the tracker starts before the model loads and the base is measured (minutes on a 4B base): a wandb that cannot
    # start a run (no API key) fails in seconds; and before the Trainer, which reads tensorboard's directory
    tracker = start_tracking(config, out, main, resume)

    # 4. model: base (+ 4-bit) (+ LoRA); seeded first, since LoRA's A matrices draw from the global RNG
    m = config.model
    model = _load_model(config, base_path, args.device)

    # 5. the first stage and the base, measured once
    rank_eval = None
    if evaluators:
        rank_eval = RankEval(
            evaluators["dev"],
            tokenizer,
            max_length=m.max_length,
            batch_tokens=config.eval.batch_tokens,
            instruction=config.data.instruction,
        )
    # with --resume the base was measured by the interrupted call (tens of thousands of pairs for a real dev set):
    # reused when it was measured on the same inputs, measured again otherwise
    inputs = _eval_inputs(config)
    record: dict[str, Any] = {
        "recipe": config.name,
        "output_dir": str(out),
        "eval_inputs": inputs,
        "dev": {},
        "ood": {},
    }

    base_cache = None
    if config.eval.base_cache_dir and evaluators and config.eval.before:
        from tuner.base_cache import BaseCache

        base_cache = BaseCache(config.eval.base_cache_dir, base_path, inputs)

    new_bases: list[str] = []  # parts whose base metrics are not in metrics.json yet: written before training

    def base_of(part: str, what: str, ranker: RankEval) -> dict:
        """record[part]'s base metrics: as metrics.json recorded them for the same inputs, else as an earlier run
        measured them on the same base and set (eval.base_cache_dir), else measured now."""
        recorded = _recorded_base(prior, part, inputs, record[part]["name"], record[part]["first_stage"])
        if recorded is not None:
            log.info("--resume: %s base metrics as recorded in %s", what, out / METRICS_FILE)
            return recorded
        new_bases.append(part)
        # under DDP every rank must take the same way (measuring is collective): rank 0 reads, the others follow
        cached = _from_main_rank(lambda: base_cache.get(ranker.evaluator)) if base_cache is not None else None
        if cached is not None:
            log.info("%s base metrics as %s measured them (eval.base_cache_dir)", what, cached.get("written_by"))
            ranker.base_per_query = cached.get("per_query") or {}
            return cached["metrics"]
        values = ranker.base(model)
        if base_cache is not None and main:
            base_cache.put(ranker.evaluator, values, ranker.base_per_query, written_by=str(out))
        return values

    if rank_eval is not None:
        record["dev"]["name"] = evaluators["dev"].name
        record["dev"]["first_stage"] = evaluators["dev"].first_stage_metrics()
        if config.eval.before:
            record["dev"]["base"] = base_of("dev", "dev", rank_eval)
            # the base's per-query figures, for the seen / unseen paired tests at the end: kept in the run folder,
            # so that a --resume that reuses the recorded base still has them
            base_file = out / "logs" / DEV_BASE_PER_QUERY
            if rank_eval.base_per_query:
                if main:
                    atomic_write_json(base_file, rank_eval.base_per_query)
            elif base_file.is_file():
                rank_eval.base_per_query = json.loads(base_file.read_text(encoding="utf-8"))
            log.info(
                "dev %s: %s %s | base %s",
                record["dev"]["name"],
                evaluators["dev"].first_stage_name,
                _fmt(record["dev"]["first_stage"]),
                _fmt(record["dev"]["base"]),
            )
            at_ceiling = _at_ceiling(record["dev"]["name"], evaluators["dev"].primary_metric, record["dev"]["base"])
            if at_ceiling:
                log.warning("%s", at_ceiling)
    if "ood" in evaluators and config.eval.before:
        ood = RankEval(evaluators["ood"], tokenizer, m.max_length, config.eval.batch_tokens, config.data.instruction)
        record["ood"] = {"name": evaluators["ood"].name, "first_stage": evaluators["ood"].first_stage_metrics()}
        record["ood"]["base"] = base_of("ood", "out-of-domain", ood)
        log.info(
            "out of domain %s: first stage %s | base %s",
            record["ood"]["name"],
            _fmt(record["ood"]["first_stage"]),
            _fmt(record["ood"]["base"]),
        )

    if new_bases and main:
        # metrics.json is otherwise written at each evaluation during training and at the end: a run that evaluates
        # only before and after (eval.steps=0) and is stopped before its end would measure the base again on --resume
        atomic_write_json(out / METRICS_FILE, record)

    # 6. trainer
    yes_id, no_id = encoder.yes_id, encoder.no_id
    install_score_forward(model, yes_id, no_id)
    trainer = RerankTrainer(
        model=model,
        args=args,
        train_dataset=GroupDataset(groups, config.data.group_size, config.train.seed, config.data.positives_per_group),
        eval_dataset=list(evaluators["dev"].qids) if rank_eval is not None else None,
        data_collator=GroupCollator(
            encoder, tokenizer.pad_token_id, config.data.instruction, t.batching, t.batch_tokens
        ),
        loss_kind=config.loss.kind,
        loss_kwargs={
            "pos_weight": config.loss.pos_weight,
            "temperature": config.loss.temperature,
            "teacher_temperature": config.loss.teacher_temperature,
            "hard_label_weight": config.loss.hard_label_weight,
        },
        yes_id=yes_id,
        no_id=no_id,
        rank_eval=rank_eval,
    )
    trainer.add_callback(EpochFromState(trainer))
    if t.early_stopping_patience is not None:
        stopper = EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience)
        if resume:  # evaluations without improvement before the checkpoint count: it stops where it would have
            stopper.early_stopping_patience_counter = _patience_in(latest)[1]
        trainer.add_callback(stopper)

    def write_metrics() -> None:
        # one writer: every rank reaches the final call with its own train_runtime, and the last to rename won
        if not trainer.is_world_process_zero():
            return
        record["dev"]["history"] = trainer.eval_history
        if trainer.state.best_metric is not None:
            record["dev"]["best"] = {
                "value": trainer.state.best_metric,
                "checkpoint": trainer.state.best_model_checkpoint,
            }
        atomic_write_json(out / METRICS_FILE, record)

    trainer.add_callback(MetricsWriter(write_metrics))
    trainer.remove_callback(PrinterCallback)  # replaced by LogLines: the same dicts, also into train.log
    trainer.add_callback(LogLines())
    trainer.add_callback(StopOnNonFinite())  # after LogLines: the bad step's line is in train.log

    def write_run_meta(folder: Path, eval_summary: dict[str, Any] | None = None) -> None:
        write_meta(
            folder,
            base_model=str(base_path),
            instruction=config.data.instruction,
            max_length=m.max_length,
            encoder=encoder,
            version=__version__,
            recipe=config.name,
            eval=eval_summary or {},
            init_adapter=config.lora.init_adapter,
        )

    trainer.add_callback(CheckpointMeta(write_run_meta))
    # the time up to the checkpoint, for the whole run's figures (a checkpoint saved before RunClock has none)
    prior_clock = _clock_in(latest) if resume else {}
    trainer.add_callback(RunClock(started, prior_clock))
    for callback in callbacks or []:
        trainer.add_callback(callback)
    if tracker is not None and record["dev"].get("base"):
        tracker.log({f"base/{k}": v for k, v in record["dev"]["base"].items()}, commit=False)
        tracker.log({f"first_stage/{k}": v for k, v in record["dev"]["first_stage"].items()}, commit=False)

    # 7. train
    if resume:
        # the evaluations before the checkpoint belong to this run's history too (the trainer starts with none);
        # those the interrupted call made after it are left out: this call makes them again, from the same state
        trainer.eval_history = _evals_in(latest)
    result = trainer.train(resume_from_checkpoint=str(latest) if resume else None)
    record["train"] = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    record["train"]["global_step"] = trainer.state.global_step
    nothing_left = resume and prior_train.get("global_step") == trainer.state.global_step
    resumed_at = checkpoint_step(latest) if resume else 0
    if resume and not nothing_left:
        _whole_run_figures(record["train"], trainer.state, resumed_at, prior_clock, args)
    if nothing_left:
        # the checkpoint was the run's last step: this call trained nothing, and its zero loss and runtime would
        # overwrite the figures of the steps that did run
        log.info("--resume: the run had already finished at step %d; nothing left to train", trainer.state.global_step)
        record["train"] = prior_train
    best = trainer.state.best_model_checkpoint if pick_best else None
    planned = int(trainer_state(latest).get("max_steps") or 0) if ended_at_checkpoint else trainer.state.max_steps
    if t.early_stopping_patience is not None and trainer.state.global_step < planned:
        record["train"]["stopped_early"] = {"step": trainer.state.global_step, "of": planned}
        log.info(
            "stopped early at step %d of %d: dev %s did not improve for %d evaluations",
            trainer.state.global_step,
            planned,
            config.eval.metrics[0],
            t.early_stopping_patience,
        )
    if rank_eval is not None:
        _final_dev(record["dev"], trainer, rank_eval, model, best, view, evaluators["dev"], prior)
    # every rank leaves a note (multi-process runs: each rank trained the same number of steps, scored its share
    # of the evaluation pairs and got the same metrics)
    atomic_write_json(
        out / "logs" / f"rank{args.process_index}.json",
        {
            "rank": args.process_index,
            "world_size": args.world_size,
            "global_step": trainer.state.global_step,
            "eval_pairs_scored": rank_eval.pairs_scored if rank_eval is not None else 0,
            "dev_final": record["dev"].get("final"),
        },
    )
    if "ood" in evaluators and record["ood"]:
        ood_eval = RankEval(
            evaluators["ood"], tokenizer, m.max_length, config.eval.batch_tokens, config.data.instruction
        )
        ood_eval.announce("the trained model")
        record["ood"]["final"] = ood_eval(model)
        log.info("out of domain final %s", _fmt(record["ood"]["final"]))

    # 8. save: adapter (or full model) + tokenizer + tuner.json; metrics.json
    remove_score_forward(model)
    target = out / (ADAPTER_DIR if config.lora.enabled else MODEL_DIR)
    eval_summary = {k: record["dev"].get(k) for k in ("first_stage", "base", "final", "best") if record["dev"].get(k)}
    _save_weights(trainer, tokenizer, target, main, lambda folder: write_run_meta(folder, eval_summary))
    if not nothing_left:  # all the calls' wall time when the checkpoint carries the earlier calls' (see above)
        record["train"]["seconds"] = round(prior_clock.get("seconds", 0.0) + time.time() - started, 1)
    write_metrics()
    if main:
        if tracker is not None:
            summarize_to_tracker(tracker, record)
            if config.tracking.log_model:
                log_model_artifact(tracker, target, out / METRICS_FILE, record)
        elif config.tracking.report_to == "tensorboard":
            summarize_to_tensorboard(out / "logs" / "tensorboard", record, config, trainer.state.global_step)
        log.info("adapter: %s", target)
        log.info("metrics: %s", out / METRICS_FILE)
    if tracker is not None:
        tracker.finish()
    args.distributed_state.wait_for_everyone()
    return TrainResult(output_dir=out, adapter_dir=target, metrics=record, model=model)


def _at_ceiling(name: str, primary: str, base: dict[str, float] | None) -> str | None:
    """The warning for a dev set the base already ranks perfectly (its primary metric at 1): no gain can show on it,
    and a run picked or stopped by it is picked at random (easy random negatives, a dev split of such pairs)."""
    value = (base or {}).get(primary)
    if value is None or value < 1.0 - 1e-9:
        return None
    return (
        f"dev {name}: the base already scores {primary}={value:.4f}, the most there is, so no gain can show on it and "
        "the best checkpoint and early stopping pick among equals; evaluate on harder candidates (BM25's, or "
        "negatives from tuner mine)"
    )


def _fmt(metrics: dict[str, float] | None) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in (metrics or {}).items()) or "-"
