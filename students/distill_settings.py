"""One object for how a model is trained: the optimizer's schedule, what it learns from (labels,
or teachers with their weights), the KD loss's temperature and alpha (constants or schedules),
early stopping, augmentation and the teacher-output cache. ``students.training.train`` takes it;
``stages.DistilledStudent`` owns the student's, and pruning and QAT derive theirs from it with
``replace``, so no setting is re-listed by hand."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "AUGMENT",
    "TEXT_WARMUP",
    "DistillSettings",
    "Schedule",
    "for_qat",
    "of_recipe",
    "student_seed",
]

Schedule = float | Callable[[int, int], float]  # a constant, or (epoch, epochs) -> value
# The random affine augmentation of training images (``data.augment_affine``).
AUGMENT = {"degrees": 10.0, "translate": 0.1, "scale": 0.1}
# Transformers trained with AdamW need the learning rate ramped up first (post-LayerNorm BERT
# from scratch stays at chance without it).
TEXT_WARMUP = 0.1


@dataclass(frozen=True)
class DistillSettings:
    """How ``train`` trains: SGD with Nesterov momentum (or AdamW, ``optimizer``) and a cosine
    schedule over ``epochs`` at ``lr``; with ``teachers`` the KD loss at ``temperature`` and
    ``alpha`` (their soft targets weighted by ``teacher_weights``), without them cross-entropy
    (``label_smoothing``)."""

    epochs: int
    lr: float
    weight_decay: float
    teachers: tuple[nn.Module, ...] = ()
    teacher_weights: tuple[float, ...] | None = None
    temperature: Schedule = 4.0
    alpha: Schedule = 0.9
    patience: int | None = None  # epochs without a better validation loss before stopping
    label_smoothing: float = 0.0
    augment: dict | None = None  # random affine augmentation (``data.augment_affine``)
    seed: int = 0
    cache_teacher_outputs: bool = True  # a frozen teacher's outputs computed once, unaugmented
    teacher_outputs_mb: float = 256.0
    optimizer: str = "sgd"  # sgd (Nesterov momentum 0.9) | adamw
    warmup: float = 0.0  # share of the steps the learning rate ramps up over (transformers)

    def __post_init__(self) -> None:
        object.__setattr__(self, "teachers", tuple(self.teachers))
        if self.teacher_weights is not None:
            object.__setattr__(self, "teacher_weights", tuple(self.teacher_weights))

    def replace(self, **changes) -> DistillSettings:
        """These settings with ``changes`` (``teachers`` may be any sequence)."""
        return dataclasses.replace(self, **changes)

    def learning_from(
        self, teachers: Sequence[nn.Module], weights: Sequence[float] | None = None
    ) -> DistillSettings:
        """These settings, distilling from ``teachers`` (weighted by ``weights``)."""
        return self.replace(teachers=tuple(teachers), teacher_weights=weights)

    def make_optimizer(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        """``optimizer`` over ``params`` at ``lr`` and ``weight_decay`` (frozen parameters get
        no gradient, so either leaves them alone)."""
        params = list(params)
        if self.optimizer == "adamw":  # transformers: SGD barely moves them
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(
            params, lr=self.lr, momentum=0.9, nesterov=True, weight_decay=self.weight_decay
        )

    def temperature_at(self, epoch: int, epochs: int) -> float:
        t = self.temperature
        return t(epoch, epochs) if callable(t) else t

    def alpha_at(self, epoch: int, epochs: int) -> float:
        a = self.alpha
        return a(epoch, epochs) if callable(a) else a


def student_seed(recipe) -> int:
    """The seed of the students' initialisation, dropout and batch order: ``distill.seed``,
    else the recipe's (which also splits the data and trains the teacher)."""
    return recipe.distill.seed if recipe.distill.seed is not None else recipe.seed


def of_recipe(recipe) -> DistillSettings:
    """The student's distillation settings from a recipe's ``distill`` section (the teachers
    are added with ``learning_from``)."""
    kd, text = recipe.distill, getattr(recipe, "is_text", False)
    return DistillSettings(
        epochs=kd.epochs,
        lr=kd.lr,
        weight_decay=kd.weight_decay,
        temperature=kd.temperature_at,
        alpha=kd.alpha_at,
        patience=kd.patience or None,
        augment=AUGMENT if kd.augment and not text else None,  # affine: images only
        seed=student_seed(recipe),
        cache_teacher_outputs=kd.cache_teacher_outputs,
        teacher_outputs_mb=kd.teacher_outputs_mb,
        optimizer=kd.optimizer or ("adamw" if text else "sgd"),
        warmup=TEXT_WARMUP if text else 0.0,
    )


def for_qat(recipe, distilled: DistillSettings, epochs: int | None = None) -> DistillSettings:
    """Quantization-aware training's settings: the student's teachers and their weights, the
    KD loss at the recipe's base temperature and alpha, ``quantize.qat_lr`` without weight
    decay, no augmentation or early stopping, for ``epochs`` (default ``quantize.qat_epochs``)."""
    q, kd = recipe.quantize, recipe.distill
    return DistillSettings(
        epochs=epochs or q.qat_epochs,
        lr=q.qat_lr,
        weight_decay=0.0,
        teachers=distilled.teachers,
        teacher_weights=distilled.teacher_weights,
        temperature=kd.temperature,
        alpha=kd.alpha,
        seed=student_seed(recipe),
        optimizer=distilled.optimizer,
    )
