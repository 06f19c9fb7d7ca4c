"""The KD loss against a computation by hand."""

import math

import pytest
import torch

from distillserve.students.distill import kd_loss


def _softmax(xs):
    exps = [math.exp(x) for x in xs]
    return [e / sum(exps) for e in exps]


def _by_hand(student, teacher, target, temperature, alpha):
    p_t = _softmax([t / temperature for t in teacher])
    p_s = _softmax([s / temperature for s in student])
    kl = sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    ce = -math.log(_softmax(student)[target])
    return alpha * temperature**2 * kl + (1 - alpha) * ce


@pytest.mark.parametrize(("temperature", "alpha"), [(1.0, 0.5), (4.0, 0.9), (2.0, 0.0), (3.0, 1.0)])
def test_kd_loss_matches_hand_computation(temperature, alpha):
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher = [[0.5, 3.0, -1.0], [1.0, 0.0, 2.0]]
    targets = [1, 2]
    expected = sum(
        _by_hand(s, t, y, temperature, alpha) for s, t, y in zip(student, teacher, targets)
    ) / len(targets)
    got = kd_loss(
        torch.tensor(student), torch.tensor(teacher), torch.tensor(targets), temperature, alpha
    )
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_is_zero_kl_when_student_equals_teacher():
    logits = torch.tensor([[2.0, -1.0, 0.3]])
    only_kl = kd_loss(logits, logits, torch.tensor([0]), temperature=4.0, alpha=1.0)
    assert only_kl.item() == pytest.approx(0.0, abs=1e-5)  # float32 round-off times T^2


def test_kd_loss_gradient_flows_to_student_only():
    student = torch.tensor([[1.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 1.0]], requires_grad=True)
    kd_loss(student, teacher, torch.tensor([0]), 2.0, 0.5).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    # the teacher is a fixed target: its logits receive a gradient only through the KL term's
    # target, which callers compute under no_grad; here it flows, so check the student moved
    assert torch.isfinite(student.grad).all()


def test_multi_teacher_soft_targets_are_the_weighted_mean():
    from distillserve.students.distill import soft_targets

    a = torch.tensor([[2.0, 0.0, -1.0]])
    b = torch.tensor([[-1.0, 1.0, 3.0]])
    mixed = soft_targets([a, b], temperature=2.0, weights=[3.0, 1.0])
    expected = 0.75 * torch.softmax(a / 2, 1) + 0.25 * torch.softmax(b / 2, 1)
    assert torch.allclose(mixed, expected)
    assert torch.allclose(mixed.sum(1), torch.ones(1))
    # one teacher with weights is the plain KD loss
    s, y = torch.tensor([[0.5, 0.1, 0.2]]), torch.tensor([2])
    assert kd_loss(s, [a], y, 2.0, 0.7, [5.0]).item() == pytest.approx(
        kd_loss(s, a, y, 2.0, 0.7).item()
    )
    with pytest.raises(ValueError, match="weight per teacher"):
        soft_targets([a, b], 2.0, [1.0])
