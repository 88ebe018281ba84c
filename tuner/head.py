"""The yes−no head: the one piece of math that turns a prompt into a relevance logit.

`Reranker` (inference) and the trainer both call `yes_no_logits`, so training optimises exactly the score
that is served. The full-vocabulary logits are never computed: only the final-norm hidden state at the last
real token is projected on `w_yes − w_no` (two rows of lm_head, tied to the input embedding in the 4B model),
in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def unwrap_backbone(model: nn.Module) -> nn.Module:
    """The decoder stack (embeddings → layers → final norm) inside a causal-LM, seq-cls or PEFT model.

    LoRA layers live inside this module, so calling it runs the adapted model.
    """
    inner = model
    # PeftModel → LoraModel → the transformers model
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    backbone = getattr(inner, "model", None)
    if backbone is None or not hasattr(backbone, "layers"):
        raise TypeError(f"cannot find the decoder stack in {type(model).__name__} (expected `.model.layers`)")
    return backbone


def head_vector(model: nn.Module, yes_id: int, no_id: int) -> torch.Tensor:
    """`w_yes − w_no` in fp32, shape [hidden], detached; from lm_head, or from a 1-label seq-cls `score` layer."""
    return live_head_vector(model, yes_id, no_id).detach()


def head_rows(model: nn.Module, yes_id: int, no_id: int) -> torch.Tensor:
    """The live (differentiable) `[2, hidden]` rows (yes, no) of lm_head, for training with a trainable head."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    weight = inner.get_output_embeddings().weight
    # two integer indexes (views), not `weight[[yes_id, no_id]]`: a Python list index is copied to the device
    # first, and on CUDA that copy waits for every queued kernel (one sync per scoring batch)
    return torch.stack((weight[yes_id], weight[no_id]))


def collate(ids: Sequence[Sequence[int]], pad_id: int, device=None) -> dict[str, torch.Tensor]:
    """Right-pad token id lists into a batch.

    Right padding leaves every real token's computation identical to the unpadded sequence (causal attention
    never looks right, so no padding mask is even needed: see `last_hidden`), so the score at `last_index` equals
    the unpadded one. On CUDA the tensors travel through pinned memory without blocking (`to_device`).

    Returns:
        input_ids [batch, seq], attention_mask [batch, seq], last_index [batch] (position of the last real
        token of each row).
    """
    longest = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    last = torch.as_tensor([len(x) - 1 for x in ids], dtype=torch.long)
    input_ids, mask, last = to_device((input_ids, mask, last), device)
    return {"input_ids": input_ids, "attention_mask": mask, "last_index": last}


def to_device(tensors: Sequence[torch.Tensor], device=None) -> list[torch.Tensor]:
    """Host-built batch tensors on `device`; to CUDA through pinned memory with `non_blocking`.

    A plain `.to("cuda")` from pageable memory waits for every kernel already queued on the stream, so the CPU
    could not build and launch the next batch while the GPU runs this one; a pinned, non-blocking copy is queued
    behind them instead (the caching host allocator keeps the pinned buffer alive until the copy is done).
    """
    if device is None:
        return list(tensors)
    device = torch.device(device)
    if device.type != "cuda":
        return [t.to(device) for t in tensors]
    return [t.pin_memory().to(device, non_blocking=True) for t in tensors]


def last_hidden(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, last_index: torch.Tensor
) -> torch.Tensor:
    """Final-norm hidden state at each row's last real token, shape [batch, hidden], of a right-padded batch.

    The rows are right-padded (`collate`), so the padding mask is not given to the model: under causal attention
    no real token sees the pads to its right, so every real token computes what it computes unpadded (the pads'
    own outputs are never read). Without a mask transformers' SDPA path runs `is_causal` attention, which can take
    the flash kernel with native grouped-query attention; with a mask it copies K and V for every query head and
    reads a materialised [batch, 1, seq, seq] mask. `attention_mask` stays in the signature because it is part of
    every batch (`collate`); the padding is fully described by `last_index`.
    """
    backbone = unwrap_backbone(model)
    out = backbone(input_ids=input_ids, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # [batch, seq, hidden]
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last_index.to(hidden.device)]


def project(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`h @ w` in fp32, also under autocast: bf16 training runs the forward in `torch.autocast` (accelerate wraps
    the model's forward in it), which computes every matmul in bf16 whatever its inputs' dtypes, so `h.float() @ w`
    alone would round the trained logits to bf16 (steps of 0.03 at |logit| 4 to 8) while `Reranker` serves fp32 ones.
    Differentiable; `w` is the head vector [hidden] or a matrix [hidden, k]."""
    with torch.autocast(device_type=h.device.type, enabled=False):
        return h.float() @ w.float()


def yes_no_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    last_index: torch.Tensor,
    yes_id: int,
    no_id: int,
) -> torch.Tensor:
    """Relevance logits `h_last · (w_yes − w_no)` in fp32, shape [batch]. Differentiable (training uses it)."""
    h = last_hidden(model, input_ids, attention_mask, last_index)  # [batch, hidden]
    return project(h, live_head_vector(model, yes_id, no_id))


def live_head_vector(model: nn.Module, yes_id: int, no_id: int) -> torch.Tensor:
    """Differentiable fp32 `w_yes − w_no` [hidden] (lm_head rows, or a 1-label seq-cls `score` row).

    Shared by `yes_no_logits`, `head_vector` and the packed training path (`tuner.packing`), so every path
    projects on the same head and refuses the same non-contract heads.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    score = getattr(inner, "score", None)
    if score is not None:  # Qwen3ForSequenceClassification: score.weight = w_yes − w_no
        weight = score.weight
        if weight.shape[0] != 1:
            raise ValueError(
                f"sequence-classification head has {weight.shape[0]} labels; the tuner contract needs "
                "num_labels=1 with score.weight = w_yes − w_no (a 2-label [no, yes] head is not supported)"
            )
        if getattr(score, "bias", None) is not None:
            raise ValueError("sequence-classification head has a bias; the contract's head has none")
        return weight[0].float()
    if inner.get_output_embeddings() is None:
        raise TypeError(f"{type(inner).__name__} has neither an lm_head nor a score layer")
    rows = head_rows(model, yes_id, no_id).float()  # [2, hidden]
    return rows[0] - rows[1]
