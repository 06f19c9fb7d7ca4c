"""The "runtimes" section of ``make bench``: one model in every export format, side by side.

For the digits int8 student (its build writes all three formats) and ResNet-18 fp32 and int8 at
224x224 (random weights): each format's model ceiling at batch 1 and 8 with every core as threads,
its served throughput through TorchServe under the same load, its export/compile time and its
file size.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from distillserve.archiver import build_archive
from distillserve.bench.models import VISION_MODELS, model_ceiling
from distillserve.bench.served import archive_serving, register_timed, served_point, unregister
from distillserve.handlers.runtimes import MODEL_FILES
from distillserve.students.artifact import Artifact
from distillserve.students.zoo import build_model

__all__ = ["add_vision_formats", "digits_export_seconds", "measure_runtimes", "runtimes_markdown"]

Log = Callable[[str], None]


def add_vision_formats(name: str, directory: Path) -> dict[str, float]:
    """Write ``model.pt2`` and ``model.onnx`` beside a ``bench.models.vision_artifact``'s
    ``model.pt``, from the same random weights (int8: PT2E and ONNX Runtime static quantization
    calibrated like the TorchScript file); seconds each format took (TorchScript's from the
    artifact's metrics)."""
    from distillserve.students.export_onnx import export_onnx, quantize_onnx
    from distillserve.students.export_pt2 import compile_package, quantize_pt2e

    arch, int8 = VISION_MODELS[name]
    torch.manual_seed(0)  # vision_artifact's weights
    model = build_model(arch, 1000, 3).eval()
    example = torch.rand(1, 3, 224, 224)
    generator = torch.Generator().manual_seed(0)
    calibration = [(torch.randn(4, 3, 224, 224, generator=generator), None) for _ in range(2)]
    metrics = json.loads((directory / "metrics.json").read_text())
    seconds = {"torchscript": metrics.get("export_seconds")}
    started = time.perf_counter()
    graph = quantize_pt2e(model, example, calibration)[0] if int8 else model
    compile_package(graph, example, directory / MODEL_FILES["pt2"])
    seconds["pt2"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    if int8:
        fp32 = directory / "fp32.onnx"
        export_onnx(model, example, fp32)
        quantize_onnx(fp32, directory / MODEL_FILES["onnx"], calibration, "static")
        fp32.unlink()
    else:
        export_onnx(model, example, directory / MODEL_FILES["onnx"])
    seconds["onnx"] = round(time.perf_counter() - started, 1)
    return seconds


def measure_runtimes(
    ts,
    store: Path,
    entries: dict[str, tuple[Path, Sequence[int], Sequence[bytes], dict[str, float]]],
    *,
    cores: int,
    concurrency: int,
    seconds: float,
    log: Log,
) -> list[dict]:
    """One row per (model, format): ceilings at batch 1 and 8, served req/s at ``concurrency``
    (batch 8 / 10 ms, the workers and threads the archive's ``auto`` chose), export seconds and
    file size. ``entries`` maps a label to (artifact directory, input shape, request payloads,
    export seconds by format)."""
    rows = []
    for label, (directory, shape, payloads, export_seconds) in entries.items():
        artifact = Artifact.read(directory)
        for fmt in artifact.formats:
            path = artifact.model_file(fmt)
            ceiling = model_ceiling(path, shape, (1, 8), cores, artifact.handler.engine)
            name = f"rt-{label}-{fmt}"
            mar = build_archive(directory, store, model_name=name, model_format=fmt, force=True)
            register_timed(ts, mar.path, name, payloads[0], 8, 10)
            point = served_point(ts, name, payloads, concurrency, seconds)
            unregister(ts, name)
            rows.append(
                {
                    "model": label,
                    "format": fmt,
                    "model_ms_batch1": ceiling["1"]["ms_per_batch"],
                    "model_ms_batch8": ceiling["8"]["ms_per_batch"],
                    "served_rps": point["throughput_rps"],
                    "serving": archive_serving(mar.path),
                    "served_p50_ms": point["p50_ms"],
                    "errors": point["errors"],
                    "concurrency": concurrency,
                    "export_seconds": export_seconds.get(fmt),
                    "file_bytes": path.stat().st_size,
                }
            )
            log(
                f"runtimes {label} {fmt}: {ceiling['1']['ms_per_batch']} / "
                f"{ceiling['8']['ms_per_batch']} ms at batch 1 / 8, {point['throughput_rps']} rps"
            )
    return rows


def digits_export_seconds(artifact: Path) -> dict[str, float]:
    """The build's own export seconds per format (metrics.json)."""
    metrics = json.loads((artifact / "metrics.json").read_text())
    return {fmt: r.get("export_seconds") for fmt, r in metrics.get("formats", {}).items()}


def runtimes_markdown(rows: list[dict]) -> list[str]:
    """The README table of the runtimes section."""
    if not rows:
        return []
    concurrency = rows[0]["concurrency"]
    lines = [
        "",
        "**Runtimes** (one model in each export format; model ms in process with every core as "
        f"threads; served at batch 8 / 10 ms, concurrency {concurrency}, with the workers × "
        "threads the archive's `auto` chose; export = trace, torch.export + AOTInductor compile, "
        "or ONNX export, with int8 quantization):",
        "",
        "| model | format | model ms b1 | model ms b8 | served req/s | workers × threads | "
        "export s | file KB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        export = "–" if r["export_seconds"] is None else f"{r['export_seconds']:.1f}"
        lines.append(
            f"| {r['model']} | {r['format']} | {r['model_ms_batch1']:.3f} | "
            f"{r['model_ms_batch8']:.3f} | {r['served_rps']:,.0f} | {_serving(r)} | {export} | "
            f"{r['file_bytes'] / 1024:,.0f} |"
        )
    return lines


def _serving(row: dict) -> str:
    serving = row.get("serving")
    return f"{serving['workers']} × {serving['threads'] or 'cores'}" if serving else "–"
