"""Training losses: pure functions of scores (and labels or teacher scores), unit-tested without a model.

Shapes: `logits` is `[groups, group_size]` with the positive at column 0 of each group (the collator's
layout), unless a `labels` tensor of the same shape says otherwise. All math is done in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "distill_loss", "listwise_loss", "pointwise_loss", "sft_loss"]


def _labels_like(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    if labels is not None:
        if labels.shape != logits.shape:
            raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}")
        return labels.float()
    out = torch.zeros_like(logits, dtype=torch.float32)
    out[..., 0] = 1.0
    return out


def pointwise_loss(logits: torch.Tensor, labels: torch.Tensor | None = None, pos_weight: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy on the yes−no logit of every document, mean over documents.

    `pos_weight` multiplies the positive term (use ~group_size − 1 to balance 1 positive against its
    negatives): `−[w·y·log σ(x) + (1−y)·log(1−σ(x))]`.
    """
    x = logits.float()
    y = _labels_like(x, labels)
    weight = torch.tensor(pos_weight, dtype=torch.float32, device=x.device)
    return F.binary_cross_entropy_with_logits(x, y, pos_weight=weight)


def listwise_loss(logits: torch.Tensor, temperature: float = 1.0, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax cross-entropy over each group (InfoNCE with the group's negatives), mean over groups.

    With several positives in `labels`, the target is the uniform distribution over them.
    """
    x = logits.float() / temperature
    y = _labels_like(x, labels)
    target = y / y.sum(-1, keepdim=True).clamp_min(1e-12)
    return -(target * F.log_softmax(x, dim=-1)).sum(-1).mean()


def distill_loss(
    logits: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    hard_label_weight: float = 0.0,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(teacher ‖ student) between the two group softmaxes, optionally mixed with the listwise hard-label loss.

    `(1 − w)·KL(softmax(t/τ_t) ‖ softmax(s/τ)) + w·listwise(s)` averaged over groups, w = `hard_label_weight`.
    """
    s = logits.float() / temperature
    p_teacher = F.softmax(teacher.float() / teacher_temperature, dim=-1)
    kl = (p_teacher * (torch.log(p_teacher.clamp_min(1e-12)) - F.log_softmax(s, dim=-1))).sum(-1).mean()
    if hard_label_weight <= 0:
        return kl
    return (1 - hard_label_weight) * kl + hard_label_weight * listwise_loss(logits, temperature, labels)


def sft_loss(vocab_logits: torch.Tensor, labels: torch.Tensor, yes_id: int, no_id: int) -> torch.Tensor:
    """Next-token cross-entropy over the full vocabulary at the last position (Qwen3 Embedding report).

    Args:
        vocab_logits: `[rows, vocab]` lm_head logits at each prompt's last position only.
        labels: `[rows]` 1 for relevant (target token "yes"), 0 for not ("no").
    """
    target = torch.where(labels.reshape(-1) > 0.5, yes_id, no_id).to(vocab_logits.device)
    return F.cross_entropy(vocab_logits.float(), target)


LOSSES = ("pointwise", "listwise", "distill", "sft")
