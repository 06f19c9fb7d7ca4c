"""Data-parallel training with ``torch.distributed``, the way ``torchrun`` launches it.

Under ``torchrun --nproc_per_node N`` (or ``--nnodes M --rdzv-backend c10d`` across hosts) every
process runs the whole build. ``init_from_env`` joins the process group (gloo on the CPU, nccl
when CUDA is there); training shares out every global batch of each epoch (``epoch_batches``)
and wraps the model in ``DistributedDataParallel``, with BatchNorm over the global batch
(``students.sync_batchnorm``); only rank 0 evaluates the final models, exports and writes.
Outside torchrun everything here is a no-op and the build runs in one process.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

__all__ = [
    "all_reduce_sum",
    "average_gradients",
    "barrier",
    "epoch_batches",
    "init_from_env",
    "is_distributed",
    "is_main",
    "launch_command",
    "rank",
    "restarted",
    "shutdown",
    "world_size",
    "wrap",
]


def init_from_env() -> bool:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE`` > 1); True
    when this process is one of several."""
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    # torchrun's store outlives a restarted worker group: without a prefix per attempt, the new
    # processes can read the dead ones' addresses and fail to connect ("Connection refused")
    store, me, world = next(dist.rendezvous("env://"))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.PrefixStore(f"distillserve/attempt-{attempt}", store)
    dist.init_process_group(backend=backend, store=store, rank=me, world_size=world)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def restarted() -> bool:
    """Whether torchrun restarted this worker group after a failure (``--max-restarts``)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def all_reduce_sum(*values: float) -> list[float]:
    """The sums of ``values`` over all processes (the values themselves in one process)."""
    if not is_distributed():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def average_gradients(module: nn.Module) -> None:
    """Average ``module``'s gradients over all processes (for trainable parts outside the DDP
    model, e.g. feature-KD adapters)."""
    if not is_distributed():
        return
    for parameter in module.parameters():
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= world_size()


def wrap(model: nn.Module) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` when distributed (and it has something to
    train), else ``model`` itself. DDP syncs the parameters that require gradients when it is
    made: wrap again after changing which do."""
    if not is_distributed() or not any(p.requires_grad for p in model.parameters()):
        return model
    return nn.parallel.DistributedDataParallel(model)


def epoch_batches(
    loader: DataLoader, epoch: int, seed: int
) -> Iterator[tuple[list[int], torch.Tensor, int]]:
    """This process's share of one epoch of ``loader``: ``(dataset indices, positions in the
    global batch, global batch size)`` per step.

    The epoch's order is a ``DistributedSampler``'s seeded permutation (by ``seed`` and
    ``epoch``), the same in every process; it is cut into global batches of the loader's size,
    and process ``r`` of ``N`` takes positions ``r, r + N, ...`` of each. So every step sees the
    same images in one process as in N, the short last batch included. (A sampler that shards
    the epoch itself pads it to a multiple of N and deals different global batches: measured
    here, that drifts the weights by 2e-3 per epoch from the one-process run, against 1e-7.)
    """
    world, me = world_size(), rank()
    sampler = DistributedSampler(
        loader.dataset,
        num_replicas=1,
        rank=0,
        shuffle=isinstance(loader.sampler, RandomSampler),
        seed=seed,
    )
    sampler.set_epoch(epoch)
    order = list(sampler)
    for start in range(0, len(order), loader.batch_size):
        batch = order[start : start + loader.batch_size]
        yield batch[me::world], torch.arange(me, len(batch), world), len(batch)


def launch_command(
    nproc: int, argv: Sequence[str], module: str = "distillserve.scripts.cli"
) -> list[str]:
    """The torchrun command that runs ``python -m MODULE ARGV`` (``distillserve ARGV``) in
    ``nproc`` processes on this host, restarting the group once when a process dies (a build
    then resumes by itself)."""
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    return [
        torchrun,
        "--standalone",
        f"--nproc_per_node={nproc}",
        "--max-restarts=1",
        "-m",
        module,
        *argv,
    ]
