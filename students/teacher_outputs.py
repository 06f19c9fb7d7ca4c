"""The teacher's outputs on the training images, computed once and reused every epoch.

During distillation the teacher is frozen; when the training images reach the models unchanged
(no random augmentation), its logits on an image are the same every epoch, and so are the feature
maps feature KD compares. ``TeacherOutputs.compute`` runs the teacher(s) over the training set
once, in order, and keeps the logits (and the hooked feature maps, while everything fits in the
recipe's memory budget); training then looks them up by image index instead of running the
teacher. With random augmentation every step sees new images, and the teacher runs every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

__all__ = ["TeacherOutputs", "cache_decision"]

BATCH = 256


def cache_decision(enabled: bool, augmented: bool, has_teacher: bool) -> str | None:
    """Why the teacher runs every step (``None`` when its outputs can be cached)."""
    if not has_teacher:
        return "no teacher"
    if not enabled:
        return "recomputed every step (distill.cache_teacher_outputs: false)"
    if augmented:
        return "recomputed every step: random augmentation makes every step's images new"
    return None


@dataclass
class TeacherOutputs:
    """Per-image teacher logits (one tensor per teacher) and feature maps (by layer name)."""

    logits: list[torch.Tensor]
    features: dict[str, torch.Tensor]

    @classmethod
    @torch.no_grad()
    def compute(
        cls,
        teachers: Sequence[nn.Module],
        loader: DataLoader,
        feature_hooks=None,
        budget_mb: float = 256.0,
    ) -> tuple[TeacherOutputs | None, str]:
        """Run ``teachers`` over ``loader``'s dataset in order, keeping their logits (and the
        maps of ``feature_hooks``, a ``FeatureHooks`` on the teacher, when feature KD needs
        them); ``(None, why)`` when they would exceed ``budget_mb``."""
        dataset, collate = loader.dataset, loader.collate_fn
        total = len(dataset)
        logits: list[list[torch.Tensor]] = [[] for _ in teachers]
        features: dict[str, list[torch.Tensor]] = {}
        for start in range(0, total, BATCH):
            inputs, _ = collate([dataset[i] for i in range(start, min(total, start + BATCH))])
            for index, teacher in enumerate(teachers):
                logits[index].append(teacher.eval()(inputs))
            if feature_hooks is not None:
                for name, output in feature_hooks.outputs.items():
                    features.setdefault(name, []).append(output.detach().clone())
            if start == 0:
                first = [parts[0] for parts in logits] + [parts[0] for parts in features.values()]
                need = sum(x.element_size() * x[0].numel() for x in first) * total / 2**20
                if need > budget_mb:
                    return None, (
                        f"recomputed every step: the teacher's outputs need {need:.0f} MB > "
                        f"distill.teacher_outputs_mb {budget_mb:g}"
                    )
        cached = [torch.cat(parts) for parts in logits]
        kept = {name: torch.cat(parts) for name, parts in features.items()}
        size = sum(x.numel() * x.element_size() for x in [*cached, *kept.values()]) / 2**20
        what = "logits and feature maps" if kept else "logits"
        why = f"cached: the teacher's {what} of {total} training examples ({size:.1f} MB)"
        return cls(cached, kept), why

    def logits_for(self, indices: torch.Tensor) -> list[torch.Tensor]:
        return [x[indices] for x in self.logits]

    def set_features(self, feature_hooks, indices: torch.Tensor) -> None:
        """Put the cached maps of ``indices`` where feature KD reads the teacher's."""
        for name, maps in self.features.items():
            feature_hooks.outputs[name] = maps[indices]
