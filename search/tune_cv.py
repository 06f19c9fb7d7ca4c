"""Cross-validated accuracy of a student recipe: the check ``distillserve tune`` runs on its
finalists before it chooses one.

A small validation split cannot rank students that differ by an image or two (digits: 180
images, one image is 0.56 points), and choosing the cheapest of many students that pass it picks
the luckiest draw. So the finalists are checked on every training image instead: the training
split is cut into ``k`` stratified folds; for each, the student is distilled (pruned, quantized:
the recipe's whole student pipeline) on the other ``k - 1`` folds, from the same teacher, with
the recipe's validation split for its epoch choice as in a real build, and its int8 model is
scored on the held-out fold. Every training image is scored once, by a student that never saw
it. The teacher is the build's own (trained on all training images): it has seen the held-out
folds, the student has not; what the student learns of them comes only through the teacher's
outputs on the other images.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from distillserve.students.data import Splits
from distillserve.students.distill import predict
from distillserve.students.recipe import Recipe
from distillserve.students.stages import (
    data_stage,
    distill_student,
    load_data,
    make_teacher,
    prune_student,
    quantize_student,
)

__all__ = ["cross_validated_accuracy"]


def _silent(_message: str) -> None:
    """The stages' log, unused here."""


def _fold_indices(labels: torch.Tensor, folds: int, seed: int) -> list[tuple]:
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [
        (torch.as_tensor(keep), torch.as_tensor(held))
        for keep, held in splitter.split(labels.numpy().reshape(-1, 1), labels.numpy())
    ]


def cross_validated_accuracy(
    recipe: Recipe,
    folds: int = 5,
    teacher_cache_dir: str | Path | None = None,
    log: Callable[[str], None] = _silent,
    floor: float | None = None,
) -> dict:
    """Accuracy of ``recipe``'s final student over ``folds`` held-out folds of the training split:
    ``{"accuracy", "correct", "images", "folds", "fold_accuracies", "complete", "floor",
    "seconds"}``. With ``floor``, the folds stop as soon as the student has made more errors
    than an accuracy of ``floor`` over the whole split allows (``complete`` false): it can no
    longer reach it, and the answer is the same as after every fold."""
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    started = time.perf_counter()
    data = load_data(recipe, _silent)
    cache = Path(teacher_cache_dir) if teacher_cache_dir is not None else None
    teacher = make_teacher(recipe, data, _silent, cache)
    train = data.splits.train
    allowed = len(train) if floor is None else int(len(train) * (1.0 - floor) + 1e-9)
    correct, images, per_fold = 0, 0, []
    for index, (keep, held) in enumerate(_fold_indices(train.labels, folds, recipe.seed)):
        if images - correct > allowed:
            log(f"{recipe.name}: {images - correct} errors, more than the {allowed} allowed: stop")
            break
        held_out = train.subset(held)
        splits = Splits(train.subset(keep), data.splits.val, held_out, data.splits.classes)
        stage = data_stage(recipe, splits, _silent)
        torch.manual_seed(recipe.seed)
        distilled = distill_student(recipe, stage, teacher, _silent)
        student = prune_student(recipe, distilled, stage, _silent)
        quantized = quantize_student(recipe, student, stage, distilled, _silent)
        model = quantized.int8 if quantized.int8 is not None else quantized.reference
        logits, labels = predict(model, stage.test)
        hits = int((logits.argmax(1) == labels).sum())
        correct, images = correct + hits, images + len(labels)
        per_fold.append(round(hits / len(labels), 4))
        log(f"{recipe.name}: fold {index + 1}/{folds}: {hits}/{len(labels)}")
    return {
        "accuracy": correct / images,
        "correct": correct,
        "images": images,
        "folds": folds,
        "fold_accuracies": per_fold,
        "complete": len(per_fold) == folds,
        "floor": floor,
        "seconds": round(time.perf_counter() - started, 1),
    }
