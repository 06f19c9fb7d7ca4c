"""Small, honest measurements of a model: parameters, file size, batch-1 latency."""

from __future__ import annotations

import statistics
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = ["latency_ms", "threads", "weight_bytes"]


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


def weight_bytes(path: str | Path) -> int | None:
    """Bytes of stored tensors (weights, biases, quantization parameters) in a model file: what
    shrinks with the model, against the file's fixed part (graph, code, metadata). TorchScript:
    the archive's ``data/`` records; ONNX: the initializers; ``None`` for other formats."""
    path = Path(path)
    if path.suffix == ".pt":
        with zipfile.ZipFile(path) as archive:
            return sum(
                item.file_size
                for item in archive.infolist()
                if "/data/" in item.filename and not item.filename.endswith("/")
            )
    if path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return sum(tensor.ByteSize() for tensor in model.graph.initializer)
    return None
