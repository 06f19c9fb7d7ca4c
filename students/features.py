"""Feature distillation: match intermediate feature maps of teacher and student.

Forward hooks capture the outputs of named submodules (``model.named_modules()`` names, e.g.
``layers.2`` or ``features.1``) during the ordinary forward passes. Where channel counts differ a
learned 1x1 convolution maps the student's features to the teacher's channels (FitNets, Romero
et al. 2015); where spatial sizes differ the student's map is resized to the teacher's (adaptive
average pooling when shrinking, bilinear interpolation when growing). The loss per pair is

    mse:    mean((A(s) - t)^2)
    cosine: mean over positions of 1 - cos(A(s), t) along channels

and the total is ``weight`` times their mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distillserve.errors import RecipeError

__all__ = ["FeatureHooks", "FeatureKD"]

LOSSES = ("mse", "cosine")


class FeatureHooks:
    """Keeps the latest output of each named submodule of ``model``."""

    def __init__(self, model: nn.Module, names: Sequence[str], role: str = "model") -> None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            known = ", ".join(n for n in modules if n)
            raise RecipeError(
                "distill.feature.pairs", f"{role} has no layer {missing[0]!r} (layers: {known})"
            )
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [modules[name].register_forward_hook(self._keeper(name)) for name in names]

    def _keeper(self, name: str):
        def keep(_module, _inputs, output) -> None:
            self.outputs[name] = output

        return keep

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class FeatureKD(nn.Module):
    """Hooks on both models, adapters per layer pair, and the weighted feature loss."""

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        pairs: Sequence[tuple[str, str]],
        example: torch.Tensor,
        loss: str = "mse",
        weight: float = 1.0,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise RecipeError(
                "distill.feature.loss", f"{loss!r} is not one of: {', '.join(LOSSES)}"
            )
        if not pairs:
            raise RecipeError("distill.feature.pairs", "needs at least one [teacher, student] pair")
        self.pairs = [(t, s) for t, s in pairs]
        self.loss_name, self.weight = loss, weight
        self.teacher_hooks = FeatureHooks(teacher, [t for t, _ in self.pairs], "teacher")
        self.student_hooks = FeatureHooks(student, [s for _, s in self.pairs], "student")
        with torch.no_grad():
            was_training = student.training
            teacher.eval(), student.eval()
            teacher(example), student(example)
            student.train(was_training)
        self.adapters = nn.ModuleList()
        for t_name, s_name in self.pairs:
            t_feat = self.teacher_hooks.outputs[t_name]
            s_feat = self.student_hooks.outputs[s_name]
            if t_feat.ndim != 4 or s_feat.ndim != 4:
                raise RecipeError(
                    "distill.feature.pairs",
                    f"{t_name} / {s_name} must output (N, C, H, W) maps, got {tuple(t_feat.shape)}"
                    f" and {tuple(s_feat.shape)}",
                )
            c_t, c_s = t_feat.shape[1], s_feat.shape[1]
            self.adapters.append(
                nn.Conv2d(c_s, c_t, 1, bias=False) if c_s != c_t else nn.Identity()
            )

    def align(
        self, index: int, student_feature: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """Student features mapped to the teacher's channels and spatial size."""
        out = self.adapters[index](student_feature)
        if tuple(out.shape[-2:]) == tuple(size):
            return out
        if out.shape[-2] >= size[0] and out.shape[-1] >= size[1]:
            return F.adaptive_avg_pool2d(out, size)
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)

    def forward(self) -> torch.Tensor:
        """The feature loss of the last teacher and student forward passes."""
        losses = []
        for index, (t_name, s_name) in enumerate(self.pairs):
            target = self.teacher_hooks.outputs[t_name].detach()
            aligned = self.align(index, self.student_hooks.outputs[s_name], target.shape[-2:])
            if self.loss_name == "mse":
                losses.append(F.mse_loss(aligned, target))
            else:
                losses.append((1 - F.cosine_similarity(aligned, target, dim=1)).mean())
        return self.weight * torch.stack(losses).mean()

    def remove(self) -> None:
        self.teacher_hooks.remove()
        self.student_hooks.remove()
