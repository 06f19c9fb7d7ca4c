"""Small, honest measurements of a model: parameters, file size, batch-1 latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["latency_ms", "threads"]


@contextmanager
def threads(count: int) -> Iterator[None]:
    """Run a block with ``count`` intra-op threads, restoring the previous setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, count))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.inference_mode()
def latency_ms(model, example: torch.Tensor, warmup: int = 10, repeats: int = 100) -> float:
    """Median wall time of one forward pass on ``example``, in milliseconds, after warm-up."""
    for _ in range(warmup):
        model(example)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(example)
        samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples)
