"""Training losses: pure functions of scores (and labels or teacher scores), unit-tested without a model.

Shapes: `logits` is `[groups, group_size]` with the positive at column 0 of each group, unless a `labels` tensor
of the same shape says otherwise (the collator's: each positive's grade, 1 when ungraded, 0 for a negative). An
optional boolean `mask` of that shape marks the real documents: a group with fewer negatives than its slots is
filled with placeholder slots (one tensor per batch), which count in no loss. All math is done in fp32.
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


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    return (values * mask).sum() / mask.sum().clamp_min(1)


def _masked_log_softmax(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """log_softmax over the real documents of each group; 0 (not −inf) at placeholders, so that a 0 weight there
    gives 0 and not NaN."""
    if mask is None:
        return F.log_softmax(x, dim=-1)
    return F.log_softmax(x.masked_fill(~mask, float("-inf")), dim=-1).masked_fill(~mask, 0.0)


def pointwise_loss(
    logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    pos_weight: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary cross-entropy on the yes−no logit of every document, mean over (real) documents.

    `pos_weight` multiplies the positive term (use ~(group_size − k)/k to balance k positives per group against
    their negatives; group_size − 1 for one): `−[w·y·log σ(x) + (1−y)·log(1−σ(x))]`.
    """
    x = logits.float()
    y = _labels_like(x, labels)
    weight = torch.tensor(pos_weight, dtype=torch.float32, device=x.device)
    return _masked_mean(F.binary_cross_entropy_with_logits(x, y, pos_weight=weight, reduction="none"), mask)


def listwise_loss(
    logits: torch.Tensor,
    temperature: float = 1.0,
    labels: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax cross-entropy over each group (InfoNCE with the group's negatives), mean over groups.

    With several positives in `labels`, the target distribution is proportional to their labels: uniform over
    equal ones, and with grades as labels (ListNet's graded target) a grade-3 document gets 3 times the mass of a
    grade-1 one, the gains nDCG gives them.
    """
    x = logits.float() / temperature
    y = _labels_like(x, labels)
    if mask is not None:
        y = y * mask
    target = y / y.sum(-1, keepdim=True).clamp_min(1e-12)
    return -(target * _masked_log_softmax(x, mask)).sum(-1).mean()


def distill_loss(
    logits: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    hard_label_weight: float = 0.0,
    labels: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(teacher ‖ student) between the two group softmaxes, optionally mixed with the listwise hard-label loss.

    `(1 − w)·KL(softmax(t/τ_t) ‖ softmax(s/τ)) + w·listwise(s)` averaged over groups, w = `hard_label_weight`.
    """
    s = logits.float() / temperature
    t = teacher.float() / teacher_temperature
    # no teacher mass on a placeholder
    p_teacher = F.softmax(t if mask is None else t.masked_fill(~mask, float("-inf")), dim=-1)
    log_student = _masked_log_softmax(s, mask)
    kl = (p_teacher * (torch.log(p_teacher.clamp_min(1e-12)) - log_student)).sum(-1).mean()
    if hard_label_weight <= 0:
        return kl
    return (1 - hard_label_weight) * kl + hard_label_weight * listwise_loss(logits, temperature, labels, mask)


def sft_loss(
    vocab_logits: torch.Tensor, labels: torch.Tensor, yes_id: int, no_id: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Next-token cross-entropy over the full vocabulary at the last position (Qwen3 Embedding report).

    Args:
        vocab_logits: `[rows, vocab]` lm_head logits at each prompt's last position only.
        labels: `[rows]` 1 for relevant (target token "yes"), 0 for not ("no").
        mask: `[rows]` (or any shape of `rows` elements) True for real documents.
    """
    target = torch.where(labels.reshape(-1) > 0.5, yes_id, no_id).to(vocab_logits.device)
    rows = F.cross_entropy(vocab_logits.float(), target, reduction="none")
    return _masked_mean(rows, None if mask is None else mask.reshape(-1))


LOSSES = ("pointwise", "listwise", "distill", "sft")
