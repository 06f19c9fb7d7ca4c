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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from distillserve.students.data import augment_affine

__all__ = ["TrainResult", "evaluate", "kd_loss", "predict", "soft_targets", "train"]


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


@dataclass
class TrainResult:
    """What training produced: the best model (by validation accuracy) and its history."""

    model: nn.Module
    best_val_accuracy: float
    best_epoch: int
    history: list[dict]
    stopped_early: bool = False


def train(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    teacher: nn.Module | Sequence[nn.Module] | None = None,
    teacher_weights: Sequence[float] | None = None,
    temperature: float | Callable[[int, int], float] = 4.0,
    alpha: float | Callable[[int, int], float] = 0.9,
    feature_kd: nn.Module | None = None,
    patience: int | None = None,
    trainable: Callable[[nn.Module, int], None] | None = None,
    label_smoothing: float = 0.0,
    augment: dict | None = None,
    seed: int = 0,
    desc: str = "train",
    on_epoch: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """SGD with Nesterov momentum and a cosine learning-rate schedule; keeps the best epoch
    (by validation accuracy).

    With a ``teacher`` (or several, with ``teacher_weights``) the loss is ``kd_loss``; without
    one it is cross-entropy. ``alpha`` and ``temperature`` may be schedules
    ``(epoch, epochs) -> value`` (``students.schedules``). ``feature_kd`` (a
    ``students.features.FeatureKD``) adds its feature loss and trains its adapters. ``patience``
    stops training when the validation loss has not improved for that many epochs.
    ``trainable(model, epoch)`` (``students.finetune``) chooses what is trained each epoch.
    ``on_epoch(epoch, epochs, val_accuracy)`` is called after each epoch; an exception it raises
    (a search pruning the run) stops training.
    """
    alpha_at = alpha if callable(alpha) else (lambda _e, _t, v=alpha: v)
    temperature_at = temperature if callable(temperature) else (lambda _e, _t, v=temperature: v)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    params = list(model.parameters())
    if feature_kd is not None:
        params += list(feature_kd.parameters())
    optimizer = torch.optim.SGD(
        params,  # frozen parameters get no gradient, so SGD leaves them alone
        lr=lr,
        momentum=0.9,
        nesterov=True,
        weight_decay=weight_decay,
    )
    steps = max(1, epochs * len(train_loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))
    )
    teachers = [] if teacher is None else [teacher] if isinstance(teacher, nn.Module) else teacher
    for t in teachers:
        t.eval()
    best_state, best_acc, best_epoch, history = None, -1.0, -1, []
    best_loss, since_best, stopped_early = math.inf, 0, False
    bar = tqdm(
        range(epochs), desc=desc, unit="epoch", leave=False, dynamic_ncols=True, disable=None
    )  # disable=None: silent when stderr is not a terminal
    for epoch in bar:
        model.train()
        if trainable is not None:
            trainable(model, epoch)
        alpha_now, temperature_now = alpha_at(epoch, epochs), temperature_at(epoch, epochs)
        total, count = 0.0, 0
        for inputs, targets in train_loader:
            inputs = augment_affine(inputs, **(augment or {}), generator=generator)
            logits = model(inputs)
            if teachers:
                with torch.no_grad():
                    teacher_logits = [t(inputs) for t in teachers]
                loss = kd_loss(
                    logits, teacher_logits, targets, temperature_now, alpha_now, teacher_weights
                )
            else:
                loss = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
            if feature_kd is not None:
                loss = loss + feature_kd()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(targets)
            count += len(targets)
        val_logits, val_labels = predict(model, val_loader)
        val_acc = (val_logits.argmax(1) == val_labels).float().mean().item()
        val_loss = F.cross_entropy(val_logits, val_labels).item()
        history.append(
            {
                "alpha": alpha_now,
                "temperature": temperature_now,
                "epoch": epoch,
                "loss": total / max(1, count),
                "val_loss": val_loss,
                "val_accuracy": val_acc,
            }
        )
        if val_acc >= best_acc:
            best_acc, best_epoch = val_acc, epoch
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(loss=f"{total / max(1, count):.4f}", val=f"{val_acc:.4f}")
        if on_epoch is not None:
            on_epoch(epoch, epochs, val_acc)
        if val_loss < best_loss - 1e-6:
            best_loss, since_best = val_loss, 0
        else:
            since_best += 1
        if patience is not None and since_best >= patience:
            stopped_early = True
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, best_acc, best_epoch, history, stopped_early)


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
