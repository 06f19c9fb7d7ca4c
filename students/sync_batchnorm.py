"""Batch normalization synchronised across processes on the CPU.

``torch.nn.SyncBatchNorm`` runs only on GPUs. Under data-parallel training each process would
otherwise normalise with the statistics of its own share of the batch (half of it with two
processes), and training would drift from the one-process run. ``synchronized(model)`` makes
every BatchNorm of ``model`` in training mode use the statistics of the whole global batch
(all-reduced sums and sums of squares, and the matching backward pass) for the duration of a
block, then gives the modules back unchanged (same class, same parameters and buffers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["synchronized"]


class _GlobalBatchNorm(torch.autograd.Function):
    """Training-mode batch norm over the union of every process's batch."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, channels] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / channels], dtype=x.dtype)
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), count])
        dist.all_reduce(stats)
        n = stats[-1]
        mean = stats[:channels] / n
        var = (stats[channels : 2 * channels] / n - mean * mean).clamp_min(0)
        invstd = torch.rsqrt(var + eps)
        xhat = (x - mean.view(shape)) * invstd.view(shape)
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.n, ctx.dims, ctx.shape = n, dims, shape
        out = xhat * weight.view(shape) + bias.view(shape)
        return out, mean, var * n / torch.clamp(n - 1, min=1)

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        xhat, invstd, weight = ctx.saved_tensors
        dims, shape, n = ctx.dims, ctx.shape, ctx.n
        grad_weight = (grad_out * xhat).sum(dims)
        grad_bias = grad_out.sum(dims)
        dxhat = grad_out * weight.view(shape)
        sums = torch.cat([dxhat.sum(dims), (dxhat * xhat).sum(dims)])
        dist.all_reduce(sums)
        channels = xhat.shape[1]
        mean_dxhat = (sums[:channels] / n).view(shape)
        mean_dxhat_xhat = (sums[channels:] / n).view(shape)
        grad_x = (dxhat - mean_dxhat - xhat * mean_dxhat_xhat) * invstd.view(shape)
        return grad_x, grad_weight, grad_bias, None


class _Synchronized(nn.modules.batchnorm._BatchNorm):
    """What a BatchNorm module becomes inside ``synchronized``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.affine and self.track_running_stats):
            return F.batch_norm(
                x,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                self.training or not self.track_running_stats,
                self.momentum or 0.0,
                self.eps,
            )
        out, mean, var = _GlobalBatchNorm.apply(x, self.weight, self.bias, self.eps)
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum
            if momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            self.running_var.mul_(1 - momentum).add_(var, alpha=momentum)
        return out


@contextlib.contextmanager
def synchronized(model: nn.Module) -> Iterator[None]:
    """Every BatchNorm1d/2d/3d of ``model`` normalises over the global batch inside the block
    (a no-op outside ``torch.distributed``)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        yield
        return
    swapped = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and type(module) in (
            nn.BatchNorm1d,
            nn.BatchNorm2d,
            nn.BatchNorm3d,
        ):
            swapped.append((module, type(module)))
            module.__class__ = type(
                f"Synchronized{type(module).__name__}", (_Synchronized, type(module)), {}
            )
    try:
        yield
    finally:
        for module, original in swapped:
            module.__class__ = original
