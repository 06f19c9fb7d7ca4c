"""TinyBERT's intermediate-layer distillation (Jiao et al. 2020) for text students.

Over a layer mapping of ``[teacher layer, student layer]`` pairs (layer 0 is the embeddings'
output; by default student layer ``j`` learns from teacher layer ``j * T / S``, the uniform
mapping), two losses on real tokens only (padding masked out):

    hidden     MSE(W h_s, h_t): the student's hidden states through a learned projection ``W``
               when the widths differ (identity otherwise)
    attention  MSE(a_s, a_t): the attention probabilities, head by head, or each model's maps
               averaged over its heads when the head counts differ

weighted by ``distill.hidden_weight`` and ``distill.attention_weight`` and added to the logit KD
loss. It is called as the training loop's ``feature_kd`` (``students.training.train``): after
both models' forward passes, with no arguments; the two ``TextClassifier`` keep their states.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from distillserve.errors import RecipeError
from distillserve.students.text_models import TextClassifier

__all__ = ["TransformerKD", "uniform_layer_map"]


def uniform_layer_map(teacher_layers: int, student_layers: int) -> list[tuple[int, int]]:
    """``(teacher, student)`` hidden-state indices: the embeddings, then each student layer."""
    return [(0, 0)] + [
        (j * teacher_layers // student_layers, j) for j in range(1, student_layers + 1)
    ]


class TransformerKD(nn.Module):
    """The weighted hidden-state and attention losses of the last forward passes."""

    teacher_hooks = None  # the teacher-output cache keeps logits only: the teacher runs each step

    def __init__(
        self,
        teacher: TextClassifier,
        student: TextClassifier,
        layer_map: Sequence[Sequence[int]] | None,
        hidden_weight: float,
        attention_weight: float,
    ) -> None:
        super().__init__()
        t_sizes, s_sizes = teacher.sizes, student.sizes
        pairs = [tuple(p) for p in layer_map] if layer_map else None
        pairs = pairs or uniform_layer_map(t_sizes["layers"], s_sizes["layers"])
        for t, s in pairs:
            if t > t_sizes["layers"] or s > s_sizes["layers"]:
                raise RecipeError(
                    "distill.layer_map",
                    f"[{t}, {s}] is past the teacher's {t_sizes['layers']} or the student's "
                    f"{s_sizes['layers']} layers (0 = embeddings)",
                )
        self.pairs = pairs
        self.hidden_weight, self.attention_weight = hidden_weight, attention_weight
        t_width, s_width = t_sizes["hidden"], s_sizes["hidden"]
        self.project = (
            nn.Linear(s_width, t_width, bias=False) if t_width != s_width else nn.Identity()
        )
        self.teacher, self.student = [teacher], [student]  # not submodules: not trained here
        teacher.keep_states = student.keep_states = True

    def forward(self) -> torch.Tensor:
        """The loss of the last teacher and student passes (both on the same batch)."""
        t_hidden, t_attention, mask = self.teacher[0].states
        s_hidden, s_attention, _ = self.student[0].states
        tokens = mask.unsqueeze(-1).float()  # (N, L, 1)
        count = tokens.sum().clamp(min=1.0)
        pair_mask = (mask.unsqueeze(1) * mask.unsqueeze(2)).float()  # (N, L, L)
        loss = torch.zeros((), device=mask.device)
        for t, s in self.pairs:
            if self.hidden_weight:
                diff = (self.project(s_hidden[s]) - t_hidden[t].detach()) ** 2
                loss = loss + self.hidden_weight * (diff * tokens).sum() / (count * diff.shape[-1])
            if self.attention_weight and t > 0 and s > 0:
                a_t, a_s = t_attention[t - 1].detach(), s_attention[s - 1]  # (N, heads, L, L)
                if a_t.shape[1] != a_s.shape[1]:
                    a_t, a_s = a_t.mean(1, keepdim=True), a_s.mean(1, keepdim=True)
                diff = (a_s - a_t) ** 2 * pair_mask.unsqueeze(1)
                cells = pair_mask.sum().clamp(min=1.0) * a_s.shape[1]
                loss = loss + self.attention_weight * diff.sum() / cells
        return loss / len(self.pairs)

    def remove(self) -> None:
        """Stop keeping states (the models export without them)."""
        for model in (*self.teacher, *self.student):
            model.keep_states = False
            model.states = None
