"""Small, honest measurements of a model: parameters, file size, batch-1 latency."""

from __future__ import annotations

import statistics
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = ["latency_ms", "log_int8_speedup", "threads", "weight_bytes"]


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


def log_int8_speedup(metrics: dict[str, dict], log: Callable[[str], None], final: Path) -> None:
    """The int8 files' latency against the fp32 student's, per format (a compiled package that
    silently fell back to fp32 kernels shows here as ~1x), and which file to ship where int8
    is the slower one: on a tiny model a fixed per-call cost outweighs the int8 kernels."""
    if "student-fp32" not in metrics or not metrics["student"]["quantized"]:
        return
    name = metrics["student-fp32"]["model_name"]
    for fmt, record in metrics["student"]["formats"].items():
        fp32 = metrics["student-fp32"]["formats"][fmt]
        ratios = {
            batch: fp32[f"latency_ms_batch{batch}"] / max(record[f"latency_ms_batch{batch}"], 1e-9)
            for batch in (1, 8)
        }
        record["int8_speedup"] = {f"batch{b}": round(r, 3) for b, r in ratios.items()}
        log(
            f"export: {fmt} int8 {record['latency_ms_batch8']:.3f} ms at batch 8 against fp32 "
            f"{fp32['latency_ms_batch8']:.3f} ms ({ratios[8]:.2f}x; batch 1: {ratios[1]:.2f}x)"
        )
        if min(ratios.values()) < 1.0:
            log(
                f"export: NOTE: the {fmt} int8 file is slower than fp32 here "
                f"({min(ratios.values()):.2f}x): on a model this small a fixed cost per call "
                "(quantizing the input, dequantizing the output) outweighs the int8 kernels; "
                f"where speed matters more than {record['size_bytes']:,} against "
                f"{fp32['size_bytes']:,} bytes, ship {name} in that format "
                f"(distillserve archive {final / 'student-fp32'} --format {fmt})"
            )
