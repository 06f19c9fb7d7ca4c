"""Training and response-based knowledge distillation.

Knowledge distillation (Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network",
2015) trains a student on the teacher's temperature-softened class probabilities as well as on the
labels:

    L = alpha * T^2 * KL( softmax(t / T) || softmax(s / T) ) + (1 - alpha) * CE(s, y)

with student logits ``s``, teacher logits ``t``, temperature ``T`` and labels ``y``. The ``T^2``
factor keeps the soft-target gradients on the same scale as the hard-label ones when ``T`` changes.
The loop that trains with it: ``students.training``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["evaluate", "kd_loss", "predict", "soft_targets"]


def soft_targets(
    teacher_logits: torch.Tensor | Sequence[torch.Tensor],
    temperature: float,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Temperature-softened teacher probabilities; several teachers give their weighted mean
    ``sum_i w_i * softmax(t_i / T)`` with the weights normalised to sum to 1."""
    logits = [teacher_logits] if isinstance(teacher_logits, torch.Tensor) else list(teacher_logits)
    weights = list(weights) if weights is not None else [1.0] * len(logits)
    if len(weights) != len(logits) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"need one non-negative weight per teacher, got {weights}")
    total = sum(weights)
    return sum((w / total) * F.softmax(t / temperature, dim=1) for w, t in zip(weights, logits))


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | Sequence[torch.Tensor],
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
    teacher_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """``alpha * T^2 * KL(p_t || softmax(s/T)) + (1 - alpha) * CE(s, y)``, batch mean, where
    ``p_t = softmax(t/T)`` (or the weighted mean of several teachers' ``softmax(t_i/T)``)."""
    target = soft_targets(teacher_logits, temperature, teacher_weights)
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    kl = F.kl_div(log_student, target, reduction="batchmean")
    ce = F.cross_entropy(student_logits, targets)
    return alpha * temperature**2 * kl + (1.0 - alpha) * ce


@torch.inference_mode()
def predict(
    model: nn.Module | torch.jit.ScriptModule, loader: Iterable
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels over a loader, in order, in eval mode."""
    if isinstance(model, nn.Module):
        model.eval()
    logits, labels = [], []
    for inputs, targets in loader:
        logits.append(model(inputs))
        labels.append(targets)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module | torch.jit.ScriptModule, loader: Iterable) -> float:
    """Top-1 accuracy over a loader."""
    logits, labels = predict(model, loader)
    return (logits.argmax(1) == labels).float().mean().item()
