"""Losses on hand-computed values (no model)."""

from __future__ import annotations

import math

import pytest
import torch

from tuner.losses import distill_loss, listwise_loss, pointwise_loss, sft_loss


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_pointwise_bce_with_pos_weight():
    logits = torch.tensor([[2.0, -1.0, 0.5]])  # positive first
    w = 3.0
    expected = (-w * math.log(_sig(2.0)) - math.log(1 - _sig(-1.0)) - math.log(1 - _sig(0.5))) / 3
    assert pointwise_loss(logits, pos_weight=w).item() == pytest.approx(expected, rel=1e-6)
    # pos_weight 1 is plain BCE
    plain = (-math.log(_sig(2.0)) - math.log(1 - _sig(-1.0)) - math.log(1 - _sig(0.5))) / 3
    assert pointwise_loss(logits).item() == pytest.approx(plain, rel=1e-6)


def test_listwise_ce_with_temperature():
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    t = 0.5

    def ce(row):
        z = [x / t for x in row]
        return -(z[0] - math.log(sum(math.exp(v) for v in z)))

    expected = (ce([1.0, 0.0, -1.0]) + ce([0.0, 2.0, 0.0])) / 2
    assert listwise_loss(logits, temperature=t).item() == pytest.approx(expected, rel=1e-6)
    # a group that already ranks the positive far ahead has ~0 loss
    assert listwise_loss(torch.tensor([[50.0, 0.0, 0.0]])).item() < 1e-6


def test_listwise_multiple_positives_uniform_target():
    logits = torch.tensor([[1.0, 1.0, 0.0]])
    labels = torch.tensor([[1, 1, 0]])
    lse = math.log(2 * math.e + 1)
    expected = -(0.5 * (1 - lse) + 0.5 * (1 - lse))
    assert listwise_loss(logits, labels=labels).item() == pytest.approx(expected, rel=1e-6)


def test_distill_kl_and_hard_label_mix():
    student = torch.tensor([[1.0, 0.0]])
    teacher = torch.tensor([[2.0, 0.0]])
    p = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]
    q = [math.e / (math.e + 1), 1 / (math.e + 1)]
    kl = sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
    assert distill_loss(student, teacher).item() == pytest.approx(kl, rel=1e-5)
    # identical distributions: zero
    assert distill_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)
    # teacher temperature 2 flattens the teacher to softmax([1, 0]) == student: zero
    assert distill_loss(student, teacher, teacher_temperature=2.0).item() == pytest.approx(0.0, abs=1e-7)
    hard = -math.log(q[0])
    mixed = distill_loss(student, teacher, hard_label_weight=0.25).item()
    assert mixed == pytest.approx(0.75 * kl + 0.25 * hard, rel=1e-5)


def test_sft_ce_on_yes_no_over_full_vocab():
    vocab = torch.tensor([[0.0, 1.0, 2.0, 0.5], [3.0, 0.0, 0.0, 1.0]])  # 4-token vocabulary
    yes, no = 2, 3
    labels = torch.tensor([1, 0])
    lse0 = math.log(1 + math.e + math.e**2 + math.exp(0.5))
    lse1 = math.log(math.exp(3) + 1 + 1 + math.e)
    expected = ((lse0 - 2.0) + (lse1 - 1.0)) / 2
    assert sft_loss(vocab, labels, yes, no).item() == pytest.approx(expected, rel=1e-6)


def test_gradients_flow_and_shapes_checked():
    logits = torch.zeros(2, 4, requires_grad=True)
    listwise_loss(logits).backward()
    assert logits.grad is not None and logits.grad[:, 0].lt(0).all()  # pushes positives up
    with pytest.raises(ValueError, match="labels"):
        pointwise_loss(torch.zeros(2, 3), labels=torch.zeros(3, 2))


@pytest.mark.parametrize("kind", ["pointwise", "listwise", "distill"])
def test_placeholder_slots_of_a_short_group_count_in_no_loss(kind):
    """A group with 1 negative in a group_size of 4 is filled with 2 placeholder slots (mask False): the loss is
    the one of its real documents (repeating the negative instead weighed it 3 times), and no gradient reaches
    the placeholders, whatever their logits."""
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.3], [1.0, 1.5, 9.0, -9.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    teacher = torch.tensor([[3.0, 0.0, -1.0, 1.0], [2.0, 1.0, 5.0, 5.0]])

    def loss(x, t, m=None):
        if kind == "pointwise":
            return pointwise_loss(x, pos_weight=2.0, mask=m)
        if kind == "listwise":
            return listwise_loss(x, temperature=0.5, mask=m)
        return distill_loss(x, t, temperature=0.5, teacher_temperature=2.0, hard_label_weight=0.3, mask=m)

    got = loss(logits, teacher, mask)
    full, short = loss(logits[:1], teacher[:1]), loss(logits[1:, :2], teacher[1:, :2])
    want = (4 * full + 2 * short) / 6 if kind == "pointwise" else (full + short) / 2  # mean over documents / groups
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    got.backward()
    assert torch.all(logits.grad[1, 2:] == 0) and torch.all(logits.grad[1, :2] != 0)
    assert loss(logits, teacher, torch.ones_like(mask)).item() == loss(logits, teacher).item()  # all real: as before


def test_sft_placeholder_rows_count_in_no_loss():
    vocab = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    labels, mask = torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([True, True, False, False])
    got = sft_loss(vocab, labels, yes_id=3, no_id=7, mask=mask)
    assert got.item() == pytest.approx(sft_loss(vocab[:2], labels[:2], yes_id=3, no_id=7).item(), rel=1e-6)


def test_distill_student_temperature_scales_the_student_and_its_hard_label_part():
    """`temperature` divides the student's logits in the KL and in the hard-label listwise term alike."""
    student, teacher = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    # student / 2 == teacher: no KL left
    assert distill_loss(student, teacher, temperature=2.0).item() == pytest.approx(0.0, abs=1e-7)
    assert distill_loss(student, teacher).item() > 0.01
    hard = listwise_loss(student, temperature=2.0).item()
    assert hard == pytest.approx(-math.log(math.e / (math.e + 1)), rel=1e-6)
    mixed = distill_loss(student, teacher, temperature=2.0, hard_label_weight=0.4).item()
    assert mixed == pytest.approx(0.4 * hard, rel=1e-5)


def test_distill_hard_label_part_follows_the_labels():
    """With `labels`, the hard-label part is the listwise loss on those labels (graded), not on column 0."""
    student, teacher = torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[1.0, 0.0, 2.0]])  # KL 0
    labels = torch.tensor([[1, 0, 3]])
    want = listwise_loss(student, labels=labels).item()
    assert want != pytest.approx(listwise_loss(student).item())
    got = distill_loss(student, teacher, hard_label_weight=0.5, labels=labels).item()
    assert got == pytest.approx(0.5 * want, rel=1e-6)


def test_listwise_label_on_a_placeholder_slot_gets_no_target_mass():
    """A placeholder (mask False) counts in no loss even if its label slot is not 0."""
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.3]])
    mask = torch.tensor([[True, True, False, False]])
    labels = torch.tensor([[1, 0, 1, 2]])
    want = listwise_loss(logits[:, :2], labels=labels[:, :2]).item()
    assert listwise_loss(logits, labels=labels, mask=mask).item() == pytest.approx(want, rel=1e-6)


def test_all_placeholder_mask_gives_zero_not_nan():
    mask = torch.zeros(1, 3, dtype=torch.bool)
    assert pointwise_loss(torch.tensor([[1.0, -1.0, 0.5]]), mask=mask).item() == 0.0
    assert sft_loss(torch.zeros(2, 4), torch.tensor([1, 0]), 2, 3, mask=torch.zeros(2, dtype=torch.bool)).item() == 0.0
