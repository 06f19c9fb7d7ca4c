"""Training and response-based knowledge distillation.

Knowledge distillation (Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network",
2015) trains a student on the teacher's temperature-softened class probabilities as well as on the
labels:

    L = alpha * T^2 * KL( softmax(t / T) || softmax(s / T) ) + (1 - alpha) * CE(s, y)

with student logits ``s``, teacher logits ``t``, temperature ``T`` and labels ``y``. The ``T^2``
factor keeps the soft-target gradients on the same scale as the hard-label ones when ``T`` changes.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import augment_affine

__all__ = ["TrainResult", "evaluate", "kd_loss", "predict", "train"]


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``, batch mean."""
    soft_student = F.log_softmax(student_logits / temperature, dim=1)
    soft_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(soft_student, soft_teacher, reduction="batchmean", log_target=True)
    ce = F.cross_entropy(student_logits, targets)
    return alpha * temperature**2 * kl + (1.0 - alpha) * ce


@dataclass
class TrainResult:
    """What training produced: the best model (by validation accuracy) and its history."""

    model: nn.Module
    best_val_accuracy: float
    best_epoch: int
    history: list[dict]


def train(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
    label_smoothing: float = 0.0,
    augment: dict | None = None,
    seed: int = 0,
    desc: str = "train",
) -> TrainResult:
    """SGD with Nesterov momentum and a cosine learning-rate schedule; keeps the best epoch.

    With a ``teacher`` the loss is ``kd_loss``; without one it is cross-entropy.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
    )
    steps = max(1, epochs * len(train_loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))
    )
    if teacher is not None:
        teacher.eval()
    best_state, best_acc, best_epoch, history = None, -1.0, -1, []
    bar = tqdm(
        range(epochs), desc=desc, unit="epoch", leave=False, dynamic_ncols=True, disable=None
    )  # disable=None: silent when stderr is not a terminal
    for epoch in bar:
        model.train()
        total, count = 0.0, 0
        for inputs, targets in train_loader:
            inputs = augment_affine(inputs, **(augment or {}), generator=generator)
            logits = model(inputs)
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(inputs)
                loss = kd_loss(logits, teacher_logits, targets, temperature, alpha)
            else:
                loss = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(targets)
            count += len(targets)
        val_acc = evaluate(model, val_loader)
        history.append({"epoch": epoch, "loss": total / max(1, count), "val_accuracy": val_acc})
        if val_acc >= best_acc:
            best_acc, best_epoch = val_acc, epoch
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(loss=f"{total / max(1, count):.4f}", val=f"{val_acc:.4f}")
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, best_acc, best_epoch, history)


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
