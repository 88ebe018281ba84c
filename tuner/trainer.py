"""`RerankTrainer`: the thin `transformers.Trainer` subclass `tuner train` runs, and its callbacks.

Why transformers' `Trainer` and not trl: the loss is a ranking loss over groups of prompts scored by the yes−no
head, not language modelling, so none of trl's trainers (SFT, reward, DPO...) fits without overriding its core;
the plain `Trainer` gives gradient accumulation, mixed precision, LR schedules, DDP/FSDP through accelerate,
checkpoints with optimizer/scheduler/RNG state, resume and trackers, and we override only `compute_loss`,
`evaluate` (ranking metrics instead of a loss over an eval dataset) and the train sampler (seeded epochs).

The model's forward must already be the score (`tuner.score_forward.install_score_forward`).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from tuner.files import usual_modes
from tuner.losses import distill_loss, listwise_loss, pointwise_loss, sft_loss
from tuner.train_data import EpochSampler

# the run's logger (not __name__): the step lines belong to `tuner train`'s log, next to its other lines
log = logging.getLogger("tuner.train")

__all__ = ["EpochFromState", "LogLines", "MetricsWriter", "RankingWindow", "RerankTrainer", "RunClock"]

# The yes−no logits of a logging window spread less than this (std, logit units): every document gets one score.
COLLAPSED_STD = 1e-3


class RankingWindow:
    """How the training groups rank, summed on the device over one logging window (no host sync per step).

    Logged with each loss as `pos_top1` (the fraction of groups whose positives all score above every negative) and
    `pos_margin` (mean positive minus mean negative yes−no logit): a loss can fall while these stay flat (or a
    loss of 0 hide a model that says "yes" to everything), the degenerate runs users of other trainers report.
    Written here because transformers logs only the loss; the sums are kept so DDP ranks add up exactly.
    """

    def __init__(self) -> None:
        # on the device: [on_top, pos_sum, neg_sum, all_sum, all_sq, positives, negatives]
        self.sums: torch.Tensor | None = None
        self.groups = 0  # on the host (a tensor made per step would be a copy to the device)

    def add(self, logits: torch.Tensor, mask: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> None:
        """`logits` `[groups, group_size]`; `labels` > 0 at the positives (None: column 0); `mask` False at
        placeholder slots."""
        groups, size = logits.shape
        if size < 2:
            return
        x = logits.detach().double()
        if labels is None:
            pos = torch.zeros_like(x, dtype=torch.bool)
            pos[:, 0] = True
        else:
            pos = labels.to(x.device) > 0
        real = torch.ones_like(pos) if mask is None else mask.to(x.device)
        neg = real & ~pos
        lowest_pos = x.masked_fill(~pos, float("inf")).amin(dim=1)
        top_neg = x.masked_fill(~neg, float("-inf")).amax(dim=1)
        x = x * real
        step = torch.stack(
            [
                (lowest_pos > top_neg).sum().double(),
                (x * pos).sum(),
                (x * neg).sum(),
                x.sum(),
                (x * x).sum(),
                pos.sum().double(),
                neg.sum().double(),
            ]
        )
        self.sums = step if self.sums is None else self.sums + step
        self.groups += groups

    def summary(self, reduce=None) -> dict[str, float] | None:
        """`{pos_top1, pos_margin, logit_std}` of the window (after `reduce`, e.g. a sum over DDP ranks), then reset."""
        if self.sums is None:
            return None
        counts = torch.tensor([self.groups], dtype=torch.float64, device=self.sums.device)
        sums = torch.cat([self.sums, counts])
        sums = reduce(sums) if reduce is not None else sums
        on_top, pos_sum, neg_sum, all_sum, all_sq, positives, negatives, groups = sums.tolist()
        self.sums, self.groups = None, 0
        n = positives + negatives
        mean = all_sum / n
        return {
            "pos_top1": round(on_top / groups, 4),
            "pos_margin": round(pos_sum / positives - neg_sum / max(negatives, 1), 4),
            "logit_std": math.sqrt(max(all_sq / n - mean * mean, 0.0)),
        }


class RerankTrainer(Trainer):
    """A `Trainer` whose loss is a ranking loss over groups and whose evaluation reranks a dev collection.

    Args (beyond Trainer's):
        loss_kind / loss_kwargs: which `tuner.losses` function and its options.
        yes_id / no_id: the contract's token ids (for the `sft` loss).
        rank_eval: `RankEval` (or None): reranks the dev set with the live model and returns `{metric: value}`.
    """

    def __init__(
        self,
        *args,
        loss_kind: str,
        loss_kwargs: dict[str, float],
        yes_id: int,
        no_id: int,
        rank_eval=None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.loss_kind = loss_kind
        self.loss_kwargs = loss_kwargs
        self.yes_id, self.no_id = yes_id, no_id
        self.rank_eval = rank_eval
        self.eval_history: list[dict[str, Any]] = []
        # real (unpadded) prompt tokens per second of training, per device, logged with the loss
        self._window_tokens, self._window_start, self._window_paused = 0, None, 0.0
        self._ranking = RankingWindow()  # pos_top1 / pos_margin, logged with the loss (all ranks)
        self._warned_collapse = False

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        self.epoch_sampler = EpochSampler(len(dataset), self.args.seed)
        return self.epoch_sampler

    def _run_epoch(self, *args, **kwargs):
        # Resumed from the run's final checkpoint (max_steps reached mid-epoch), transformers 5.x would still take
        # one optimizer step past max_steps: its stop check only runs after a step. A finished run has nothing left
        # to train; --resume then goes on to the final evaluation and save with the checkpoint's weights.
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        # the Trainer's estimate counts `input_ids` elements (padding included, none at all for sorted chunks);
        # same 6 x non-embedding parameters x tokens convention, over the real prompt tokens
        if not hasattr(self, "_flop_params"):
            inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            self._flop_params = inner.num_parameters(exclude_embeddings=True)
        return 6 * int(inputs["num_tokens"]) * self._flop_params

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._window_start is not None:
            seconds = time.perf_counter() - self._window_start - self._window_paused
            if seconds > 0:
                logs["real_tokens_per_s"] = round(self._window_tokens / seconds, 1)
            self._window_tokens, self._window_start, self._window_paused = 0, time.perf_counter(), 0.0
        if "loss" in logs:  # every rank logs the loss together (transformers gathers it): sum the windows the same way
            ranking = self._ranking.summary(lambda t: self.accelerator.reduce(t, reduction="sum"))
            if ranking is not None:
                std = ranking.pop("logit_std")
                logs.update(ranking)
                if std < COLLAPSED_STD and not self._warned_collapse and self.is_world_process_zero():
                    self._warned_collapse = True
                    log.warning(
                        "step %d: every training document got the same score (yes−no logit std %.2g over the last "
                        "logging window): the model's scores collapsed; lower train.lr or check the labels",
                        self.state.global_step,
                        std,
                    )
        super().log(logs, start_time)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            if self._window_start is None:
                self._window_start = time.perf_counter()
            self._window_tokens += int(inputs.get("num_tokens", 0))
        labels = inputs["group_labels"]  # [groups, group_size]: each positive's grade (1 ungraded), 0 elsewhere
        binary = (labels > 0).float()  # pointwise and sft targets (a grade is a gain, not a probability)
        mask = inputs.get("group_mask")  # False at the placeholder slots of short groups (or None: none)
        groups, size = labels.shape
        keys = ("input_ids", "attention_mask", "last_index", "position_ids", "row_index", "chunks")  # any batching
        batch = {k: inputs[k] for k in keys if k in inputs}
        slots = inputs.get("slot_index")  # the slot of each encoded prompt when placeholders were left out

        def in_slots(rows: torch.Tensor) -> torch.Tensor:
            # [prompts, ...] → [groups * size, ...]; a placeholder slot gets 0, which every loss masks out
            if slots is None:
                return rows
            return rows.new_zeros(groups * size, *rows.shape[1:]).index_copy(0, slots.to(rows.device), rows)

        if self.loss_kind == "sft":
            vocab = in_slots(model(**batch, vocab=True))  # [rows, vocab]
            loss = sft_loss(vocab, binary.reshape(-1), self.yes_id, self.no_id, mask)
            logits = (vocab[:, self.yes_id] - vocab[:, self.no_id]).view(groups, size)
        else:
            logits = in_slots(model(**batch)).view(groups, size)  # yes−no logits, fp32
            kw = self.loss_kwargs
            if self.loss_kind == "pointwise":
                loss = pointwise_loss(logits, binary, pos_weight=kw["pos_weight"], mask=mask)
            elif self.loss_kind == "listwise":
                loss = listwise_loss(logits, kw["temperature"], labels, mask)
            elif self.loss_kind == "distill":
                loss = distill_loss(
                    logits,
                    inputs["teacher_scores"],
                    kw["temperature"],
                    kw["teacher_temperature"],
                    kw["hard_label_weight"],
                    labels,
                    mask,
                )
            else:
                raise ValueError(f"unknown loss {self.loss_kind!r}")
        if model.training:
            self._ranking.add(logits, mask, labels)
        return (loss, {"logits": logits}) if return_outputs else loss

    def _save_checkpoint(self, *args, **kwargs):
        # Writing a checkpoint (the 4B run's optimizer state is gigabytes) is not training throughput either: the
        # window after each save reported a lower real_tokens_per_s
        started = time.perf_counter()
        try:
            return super()._save_checkpoint(*args, **kwargs)
        finally:
            self._window_paused += time.perf_counter() - started

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Rerank the dev set with the live model; logs and returns `{eval_<metric>: value}`."""
        if self.rank_eval is None:
            return {}
        started = time.perf_counter()
        self.rank_eval.announce(f"the model at step {self.state.global_step}")
        values = self.rank_eval(self.model)
        self._window_paused += time.perf_counter() - started  # evaluation time is not training throughput
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in values.items()}
        self.log(metrics)
        self.eval_history.append({"step": self.state.global_step, **values})
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


class EpochFromState(TrainerCallback):
    """Set the sampler's epoch from the trainer state at each epoch start (robust to dataloader wrappers)."""

    def __init__(self, trainer: RerankTrainer) -> None:
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        sampler = getattr(self.trainer, "epoch_sampler", None)
        if sampler is not None:
            # state.epoch is the float progress; at an epoch start (fresh or resumed) its floor is the epoch
            sampler.set_epoch(int(state.epoch + 1e-9) if state.epoch else 0)


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite: every later step would train a broken adapter."""


class StopOnNonFinite(TrainerCallback):
    """Stop the run at the first logged non-finite loss or gradient norm, naming the step and the values.

    transformers would carry on (its `logging_nan_inf_filter` even logs a NaN step's loss as the finite steps'
    mean) and save an adapter of NaNs that export's parity gate or calibrate fail on much later, with no cause.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        bad = {k: v for k, v in (logs or {}).items() if k in ("loss", "grad_norm") and not _finite(v)}
        if bad:
            values = ", ".join(f"{k}={v}" for k, v in bad.items())
            raise TrainingDiverged(
                f"step {state.global_step}: {values}; training diverged (lower train.lr, keep "
                "train.max_grad_norm > 0, or use bf16/fp32 over fp16); nothing after this step was saved"
            )


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True  # not a number: not ours to judge


def duration(seconds: float) -> str:
    """`45s`, `3m05s`, `2h07m`: how long, for a log line."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class LogLines(TrainerCallback):
    """Trainer logs (loss, LR, grad norm, eval metrics) as one line each, to stdout and train.log. A training line
    ends with the progress: steps done of all, and the training time left at the mean time of this call's steps
    (optimizer steps only: evaluations and saves between them, and fetching the next batch, are not counted; tqdm's
    bar, which would say it, is off for one readable line per logging step in files and CI)."""

    def __init__(self) -> None:
        self._began: float | None = None
        self._step_seconds = 0.0  # time inside this call's optimizer steps (forward, backward, update)
        self._steps = 0

    def on_step_begin(self, args, state, control, **kwargs):
        self._began = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._began is not None:
            self._step_seconds += time.perf_counter() - self._began
            self._steps += 1
            self._began = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            items = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items())
            if "loss" in logs and state.max_steps > 0 and self._steps:
                left = (state.max_steps - state.global_step) * self._step_seconds / self._steps
                items += f" | {state.global_step}/{state.max_steps} steps, ~{duration(left)} of training left"
            log.info("step %d: %s", state.global_step, items)


class CheckpointMeta(TrainerCallback):
    """Write the run's `tuner.json` into every checkpoint as it is saved, so that a checkpoint exported, scored or
    evaluated on its own keeps the run's base, instruction and max_length (not the contract's 8192 default)."""

    def __init__(self, write) -> None:
        self.write = write  # write(folder): tuner.json into that folder

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            self.write(folder)
            usual_modes(folder)  # the adapter's safetensors file is written 0600


class MetricsWriter(TrainerCallback):
    """Rewrite metrics.json (atomically) after every evaluation and at the end."""

    def __init__(self, write) -> None:
        self.write = write

    def on_evaluate(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write()


class RunClock(TrainerCallback, ExportableState):
    """How long the run has taken up to each checkpoint, saved in its trainer_state.json (transformers stores an
    `ExportableState` callback's `state()` under `stateful_callbacks`): a resumed run adds its own time to the
    checkpoint's and reports the whole run's, not its last call's. The figures are `seconds` (wall time since each
    call started) and `train_runtime` (time inside `Trainer.train`), up to the save.

    Args:
        started: `time.time()` when this call started.
        before: the totals of the checkpoint this call resumes from (`{}` for a new run).
    """

    def __init__(self, started: float | None = None, before: dict[str, float] | None = None) -> None:
        self.started = time.time() if started is None else started
        self.before = dict(before or {})
        self.train_started: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_started = time.time()

    def totals(self) -> dict[str, float]:
        now = time.time()
        return {
            "seconds": self.before.get("seconds", 0.0) + now - self.started,
            "train_runtime": self.before.get("train_runtime", 0.0) + now - (self.train_started or now),
        }

    def state(self) -> dict[str, Any]:
        # attributes only: the restored object (transformers' restore_callback_states_from_checkpoint, off here)
        # would be built with no arguments
        return {"args": {}, "attributes": {"totals": self.totals()}}
