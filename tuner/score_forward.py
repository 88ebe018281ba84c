"""The training forward: `model(...)` returns the contract's yes−no logits for whatever batch the collator built.

`tuner train` installs it on the model before building the Trainer; `scripts/bench_train.py` installs it to time
the exact forward a run executes. It reads the three batch layouts of `tuner.train_data.GroupCollator`
(sorted chunks, packed rows, padded rows); the scores are the same each way.
"""

from __future__ import annotations

from typing import Any

import torch

from tuner.head import last_hidden

__all__ = ["install_score_forward", "remove_score_forward"]


def install_score_forward(model, yes_id: int, no_id: int) -> None:
    """Make `model(...)` return the contract's yes−no logits (or last-position vocab logits for `sft`).

    The Trainer wraps the model in DDP/FSDP, and DDP only synchronises gradients of a forward that goes through
    the wrapper, so the score must be the model's forward. The instance attribute shadows the class's forward
    for this object only (saving, loading and PEFT's adapter handling are untouched); `remove_score_forward`
    restores it.
    """
    from tuner.head import live_head_vector, project
    from tuner.packing import chunked_last_hidden, packed_last_hidden

    def forward(
        input_ids=None,
        last_index=None,
        attention_mask=None,
        position_ids=None,
        row_index=None,
        chunks=None,
        vocab: bool = False,
        **_: Any,
    ) -> torch.Tensor:
        # the last real token's final-norm hidden state [rows, hidden], by the collator's batching
        if chunks is not None:  # train.batching=sorted
            h = chunked_last_hidden(model, chunks)
        elif row_index is not None:  # train.batching=packed
            h = packed_last_hidden(model, input_ids, position_ids, row_index, last_index)
        else:  # train.batching=padded
            h = last_hidden(model, input_ids, attention_mask, last_index)
        if not vocab:  # the contract's score: h · (w_yes − w_no), what tuner.head.yes_no_logits computes
            return project(h, live_head_vector(model, yes_id, no_id))  # [rows] fp32, under autocast too
        # sft: full-vocabulary logits at the last real position only: [rows, hidden] @ [hidden, vocab], returned in
        # fp32 for the cross-entropy. Under bf16 autocast the product is computed in the embedding's dtype, as
        # autocast would, without first making an fp32 copy of it (1.55 GB per forward for the 4B's 151669 x 2560);
        # without autocast (train.precision=fp32) in fp32, whatever the base's dtype
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        weight = inner.get_output_embeddings().weight
        low_precision = torch.is_autocast_enabled(h.device.type)
        with torch.autocast(device_type=h.device.type, enabled=False):
            if low_precision:
                return (h.to(weight.dtype) @ weight.T).float()
            return h.float() @ weight.float().T

    model.forward = forward


def remove_score_forward(model) -> None:
    """Undo `install_score_forward`."""
    model.__dict__.pop("forward", None)
