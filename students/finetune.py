"""Fine-tuning modes: which parts of a (pre-trained) student train in each epoch.

    full             everything, every epoch
    frozen_backbone  only the head (``fc`` / ``classifier`` / ``head``); BatchNorm statistics of
                     the frozen part stay fixed
    layerwise        the head first, then one more block from the top every ``unfreeze_every``
                     epochs (gradual unfreezing, Howard and Ruder 2018)

Blocks are the model's top-level children, with ``Sequential`` children split into their items.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from distillserve.errors import RecipeError

__all__ = ["FINETUNE_MODES", "blocks_from_top", "make_trainable"]

FINETUNE_MODES = ("full", "frozen_backbone", "layerwise")
HEAD_NAMES = ("fc", "classifier", "head")


def blocks_from_top(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Parameter-holding blocks, output side first."""
    blocks = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential) and len(child) > 1:
            blocks += [(f"{name}.{i}", item) for i, item in enumerate(child)]
        else:
            blocks.append((name, child))
    return [(n, b) for n, b in reversed(blocks) if any(True for _ in b.parameters())]


def _set(model: nn.Module, trainable_names: set[str]) -> None:
    for name, block in blocks_from_top(model):
        on = name in trainable_names
        for parameter in block.parameters():
            parameter.requires_grad_(on)
        if not on:
            for module in block.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()


def make_trainable(mode: str, unfreeze_every: int = 2) -> Callable[[nn.Module, int], None] | None:
    """The per-epoch callback for ``students.training.train`` (``None`` for ``full``)."""
    if mode not in FINETUNE_MODES:
        raise RecipeError(
            "distill.finetune", f"{mode!r} is not one of: {', '.join(FINETUNE_MODES)}"
        )
    if mode == "full":
        return None

    def head_only(model: nn.Module, epoch: int) -> None:
        blocks = blocks_from_top(model)
        heads = [n for n, _ in blocks if n.split(".")[0] in HEAD_NAMES] or [blocks[0][0]]
        _set(model, set(heads))

    def gradual(model: nn.Module, epoch: int) -> None:
        blocks = blocks_from_top(model)
        count = 1 + epoch // max(1, unfreeze_every)
        _set(model, {n for n, _ in blocks[:count]})

    return head_only if mode == "frozen_backbone" else gradual
