"""The teacher stage of either task: ``teacher.members`` models trained (or reused from the
teacher cache) by one ``DistillSettings``, and how the student learns from them: one model, their
ensemble, or each member's weighted soft targets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from distillserve.students import teacher_cache
from distillserve.students.checkpoints import Checkpointer, NoCheckpoints
from distillserve.students.distill_settings import DistillSettings
from distillserve.students.recipe import Recipe
from distillserve.students.training import train
from distillserve.students.zoo import Ensemble

if TYPE_CHECKING:
    from distillserve.students.stages import DataStage

__all__ = ["TeacherStage", "teacher_stage", "train_members"]

Log = Callable[[str], None]


@dataclass
class TeacherStage:
    """The teacher, and what the student learns from: one (ensemble) teacher, or several with
    weighted soft targets."""

    teacher: nn.Module
    members: list[nn.Module]
    kd_teachers: list[nn.Module]
    kd_weights: list[float] | None


def train_members(
    recipe: Recipe,
    log: Log,
    cache: Path | None,
    checkpointer: Checkpointer | NoCheckpoints,
    new_member: Callable[[], nn.Module],
    what: str,
    settings: DistillSettings,
    data: DataStage,
) -> list:
    """Train ``teacher.members`` models (``new_member()``, described as ``what``) by
    ``settings``, each seeded apart, or reuse them from ``cache`` (either task)."""
    count = recipe.teacher.members
    if cache is not None:
        fresh = [new_member() for _ in range(count)]
        entry = teacher_cache.load_members(cache, recipe, fresh)
        if entry is not None:
            log(f"teacher: reused {count} trained {what} from {entry}")
            return fresh
    members = []
    for index in range(count):
        seed = recipe.seed + index
        log(f"teacher: training {what} {index + 1}/{count} for {settings.epochs} epochs")
        torch.manual_seed(seed)
        member = new_member()
        desc = f"teacher {index + 1}/{count}"
        train(
            member,
            data.train,
            data.val,
            settings.replace(seed=seed),
            desc=desc,
            checkpoint=checkpointer.phase(desc),
        )
        members.append(member.eval())
    if cache is not None:
        teacher_cache.save_members(cache, recipe, members)
    return members


def teacher_stage(recipe: Recipe, members: list[nn.Module], log: Log) -> TeacherStage:
    """The teacher the student learns from: one model, the members' ensemble, or (``combine:
    soft_targets``) each member's weighted soft targets."""
    teacher = (members[0] if len(members) == 1 else Ensemble(members)).eval()
    if recipe.teacher.combine == "soft_targets" and len(members) > 1:
        log(f"teacher: multi-teacher KD over {len(members)} members' soft targets")
        return TeacherStage(teacher, members, members, recipe.teacher.weights)
    return TeacherStage(teacher, members, [teacher], None)
