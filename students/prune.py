"""Pruning: unstructured L1 (zeros, for sparsity-aware runtimes) and structured channel pruning
that really removes channels, so parameters, file size and latency drop.

Structured pruning works on conv-bn-relu chains such as ``TinyCNN``: a model with ``features``
(a ``Sequential`` of ``Sequential(Conv2d, BatchNorm2d, ReLU)`` blocks) followed by global pooling
and a ``Linear`` ``fc``. Each block keeps the ``1 - amount`` share of its output channels ranked by
``|gamma|`` of its BatchNorm (Liu et al. 2017, "Network Slimming") or by the L1 norm of its conv
filters (Li et al. 2017); the next conv's input channels and ``fc``'s input features follow.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from distillserve.errors import RecipeError

__all__ = [
    "CRITERIA",
    "channel_prune",
    "channel_widths",
    "conv_like",
    "l1_unstructured",
    "make_permanent",
    "sparsity",
]

CRITERIA = ("bn_gamma", "l1")


def conv_like(conv: nn.Conv2d, in_channels: int, out_channels: int) -> nn.Conv2d:
    """A fresh ``Conv2d`` with ``conv``'s geometry (kernel, stride, padding, dilation, bias,
    padding mode) and other channel counts; its weights are the caller's to set."""
    return nn.Conv2d(
        in_channels,
        out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )


def _blocks(model: nn.Module) -> list[nn.Sequential]:
    features = getattr(model, "features", None)
    fc = getattr(model, "fc", None)
    blocks = list(features) if isinstance(features, nn.Sequential) else []
    ok = (
        blocks
        and isinstance(fc, nn.Linear)
        and all(
            isinstance(b, nn.Sequential)
            and len(b) >= 2
            and isinstance(b[0], nn.Conv2d)
            and isinstance(b[1], nn.BatchNorm2d)
            and b[0].groups == 1
            for b in blocks
        )
    )
    if not ok:
        raise RecipeError(
            "prune.method",
            f"channel pruning needs conv-bn-relu blocks in `features` and a Linear `fc` "
            f"(like tiny_cnn); {type(model).__name__} has another structure",
        )
    return blocks


def _scores(block: nn.Sequential, criterion: str) -> torch.Tensor:
    if criterion == "bn_gamma":
        return block[1].weight.detach().abs()
    return block[0].weight.detach().abs().sum(dim=(1, 2, 3))


def channel_widths(model: nn.Module) -> list[int]:
    """Output channels of each prunable block."""
    return [block[0].out_channels for block in _blocks(model)]


def channel_prune(
    model: nn.Module,
    amount: float,
    criterion: str = "bn_gamma",
    widths: list[int] | None = None,
) -> nn.Module:
    """A copy of ``model`` with ``amount`` of each block's channels removed (at least one kept),
    or with exactly ``widths[i]`` channels kept in block ``i`` when ``widths`` is given."""
    if not 0.0 <= amount < 1.0:
        raise RecipeError("prune.amount", f"must be in [0, 1), got {amount}")
    if criterion not in CRITERIA:
        raise RecipeError("prune.criterion", f"{criterion!r} is not one of: {', '.join(CRITERIA)}")
    model = copy.deepcopy(model)
    blocks = _blocks(model)
    if widths is not None and (
        len(widths) != len(blocks)
        or any(not 1 <= w <= b[0].out_channels for w, b in zip(widths, blocks))
    ):
        raise ValueError(f"widths {widths} do not fit blocks of {channel_widths(model)} channels")
    keep_in = torch.arange(blocks[0][0].in_channels)
    for index, block in enumerate(blocks):
        conv, bn = block[0], block[1]
        n_keep = widths[index] if widths else max(1, math.ceil(conv.out_channels * (1.0 - amount)))
        keep = _scores(block, criterion).topk(n_keep).indices.sort().values
        new_conv = conv_like(conv, len(keep_in), n_keep)
        new_conv.weight.data = conv.weight.data[keep][:, keep_in].clone()
        if conv.bias is not None:
            new_conv.bias.data = conv.bias.data[keep].clone()
        new_bn = nn.BatchNorm2d(n_keep, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        for name in ("weight", "bias", "running_mean", "running_var"):
            source = getattr(bn, name)
            if source is not None:
                getattr(new_bn, name).data = source.data[keep].clone()
        new_bn.num_batches_tracked = bn.num_batches_tracked.clone()
        block[0], block[1] = new_conv, new_bn
        keep_in = keep
    fc = model.fc
    new_fc = nn.Linear(len(keep_in), fc.out_features, bias=fc.bias is not None)
    new_fc.weight.data = fc.weight.data[:, keep_in].clone()
    if fc.bias is not None:
        new_fc.bias.data = fc.bias.data.clone()
    model.fc = new_fc
    return model


def l1_unstructured(
    model: nn.Module, amount: float, global_: bool = True, permanent: bool = True
) -> nn.Module:
    """A copy with the ``amount`` smallest-magnitude conv/linear weights set to zero, globally or
    per layer, made permanent with ``prune.remove`` (with ``permanent=False`` the masks stay, so
    fine-tuning keeps the zeros; call ``make_permanent`` after). Dense storage keeps the file
    size: this pays off only on sparsity-aware kernels; ``channel_prune`` shrinks the model."""
    if not 0.0 <= amount < 1.0:
        raise RecipeError("prune.amount", f"must be in [0, 1), got {amount}")
    model = copy.deepcopy(model)
    targets = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    make_permanent(model)  # fold masks of an earlier round before pruning again
    if global_:
        torch_prune.global_unstructured(
            targets, pruning_method=torch_prune.L1Unstructured, amount=amount
        )
    else:
        for module, name in targets:
            torch_prune.l1_unstructured(module, name, amount=amount)
    return make_permanent(model) if permanent else model


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold any pruning masks into the weights (``prune.remove``), in place."""
    for module in model.modules():
        if torch_prune.is_pruned(module) and hasattr(module, "weight_orig"):
            torch_prune.remove(module, "weight")
    return model


def sparsity(model: nn.Module) -> float:
    """Share of zero weights over conv and linear layers."""
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zeros = sum((w == 0).sum().item() for w in weights)
    return zeros / max(1, sum(w.numel() for w in weights))
