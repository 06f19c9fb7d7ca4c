"""BatchNorm over the global batch: two gloo processes, each with half of a batch, compute the
outputs, running statistics and gradients one process computes on the whole batch."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from distillserve.students.sync_batchnorm import synchronized


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def _step(model: nn.Module, x: torch.Tensor, scale: float) -> dict:
    model.train()
    out = model(x)
    (out.square().mean() * scale).backward()
    return {
        "out": out.detach(),
        "grads": [p.grad.clone() for p in model.parameters()],
        "running": [model[1].running_mean.clone(), model[1].running_var.clone()],
    }


def _worker(rank: int, init: str, batch: torch.Tensor, results) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    model = _model()
    with synchronized(model):
        step = _step(model, batch[rank * 4 : (rank + 1) * 4], 1.0)
    for grad in step["grads"]:  # what DistributedDataParallel does: average over processes
        dist.all_reduce(grad)
        grad /= 2
    assert type(model[1]) is nn.BatchNorm2d  # given back unchanged
    results[rank] = step
    dist.destroy_process_group()


def test_two_processes_normalise_like_one(tmp_path):
    batch = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    whole = _step(_model(), batch, 1.0)
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(f"file://{tmp_path / 'init'}", batch, results), nprocs=2)
    halves = torch.cat([results[0]["out"], results[1]["out"]])
    assert torch.allclose(halves, whole["out"], atol=1e-5)
    for rank in (0, 1):
        for got, want in zip(results[rank]["grads"], whole["grads"]):
            assert torch.allclose(got, want, atol=1e-5), (rank, got, want)
        for got, want in zip(results[rank]["running"], whole["running"]):
            assert torch.allclose(got, want, atol=1e-6)
