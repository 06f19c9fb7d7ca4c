"""Export one model of a build to every format the recipe lists, each with its parity check.

    torchscript  model.pt    the eager model traced/scripted (eager-mode int8 when quantized)
    pt2          model.pt2   torch.export + AOTInductor; int8 by PT2E (torchao) from the fp32 model
    onnx         model.onnx  the dynamo ONNX exporter; int8 by ONNX Runtime quantization of it

fp32 files must match the eager model within ``export.atol``; int8 files must agree on top-1
with their fp32 reference on at least ``export.min_int8_agreement`` of the decisive inputs.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from distillserve.errors import ExportError
from distillserve.handlers.runtimes import MODEL_FILES
from distillserve.students.export import check_parity, export_torchscript, logit_step
from distillserve.students.exported import load_exported
from distillserve.students.recipe import Recipe

__all__ = ["FormatSource", "export_formats"]

Log = Callable[[str], None]


@dataclass
class FormatSource:
    """What one model's files are made from."""

    model: nn.Module  # what TorchScript saves: the eager int8 model when quantized
    fp32: nn.Module  # the fp32 model the other formats quantize themselves
    reference: nn.Module | None  # what the eager int8 model's parity is judged against
    quantized: bool
    against: str  # the reference in words, for the parity record
    qat_train: Callable[[nn.Module], None] | None = None  # the KD loop, for PT2E QAT


def export_formats(
    recipe: Recipe,
    source: FormatSource,
    directory: Path,
    data,
    log: Log,
    label: str = "",
    formats: list[str] | None = None,
) -> dict[str, dict]:
    """Write one model's file in each of ``formats`` (default ``export.formats``) into
    ``directory``; each format's parity record (with ``export_seconds``), by format."""
    example = data.input_example(2)
    records = {}
    for fmt in formats or recipe.export.formats:
        path = directory / MODEL_FILES[fmt]
        started = time.perf_counter()
        if fmt == "torchscript":
            report = export_torchscript(
                source.model,
                path,
                example,
                data.test,
                method=recipe.export.method,
                reference=source.reference if source.quantized else None,
                atol=recipe.export.atol,
                min_agreement=recipe.export.min_int8_agreement,
            ).to_dict()
            against = source.against
        elif fmt == "pt2":
            report, against = _pt2(recipe, source, path, example, data)
        else:
            report, against = _onnx(recipe, source, path, example, data)
        records[fmt] = {
            **report,
            "against": against,
            "export_seconds": round(time.perf_counter() - started, 2),
        }
        if fmt != "torchscript":
            seconds = records[fmt]["export_seconds"]
            log(f"export: {label} {path.name} in {seconds:.1f} s".replace("  ", " "))
    return records


def _pt2(recipe: Recipe, source: FormatSource, path: Path, example, data) -> tuple[dict, str]:
    from distillserve.students.export_pt2 import (
        compile_package,
        int8_kernel_calls,
        quantize_pt2e,
    )

    q, longest = recipe.quantize, data.max_length
    if not source.quantized:
        compile_package(source.fp32, example, path, longest)
        return _check(recipe, path, data, eager=source.fp32), "eager model"
    int8, reference = quantize_pt2e(
        source.fp32,
        example,
        data.calibration,
        mode=q.mode,
        train=source.qat_train,
        max_length=longest,
    )
    compile_package(int8, example, path, longest)
    kernels = int8_kernel_calls(path)
    if kernels == 0:
        path.unlink()
        raise ExportError(
            f"{path.name}: AOTInductor compiled the PT2E int8 graph without one int8 kernel "
            "(a silent fp32 fallback); the package was not written"
        )
    against = "fake-quantized PT2E QAT graph" if q.mode == "qat" else "fp32 model"
    return {**_check(recipe, path, data, reference=reference), "int8_kernels": kernels}, against


def _onnx(recipe: Recipe, source: FormatSource, path: Path, example, data) -> tuple[dict, str]:
    from distillserve.students.export_onnx import export_onnx, quantize_onnx

    if not source.quantized:
        export_onnx(source.fp32, example, path, data.max_length)
        return _check(recipe, path, data, eager=source.fp32), "eager model"
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = Path(tmp) / "fp32.onnx"
        export_onnx(source.fp32, example, fp32_path, data.max_length)
        tokens = data.max_length is not None
        quantize_onnx(
            fp32_path,
            path,
            data.calibration,
            recipe.quantize.mode,
            tokens=tokens,
        )
    return _check(recipe, path, data, reference=source.fp32), "fp32 model (ONNX Runtime PTQ)"


def _check(recipe: Recipe, path: Path, data, *, eager=None, reference=None) -> dict:
    """The re-loaded file's parity (``ExportError`` and the file removed when it fails)."""
    loaded = load_exported(path, threads=torch.get_num_threads())
    margin = 2.5 * logit_step(reference, data.test) if reference is not None else 0.0
    return check_parity(
        loaded,
        path,
        eager=eager,
        reference=reference,
        batches=data.test,
        atol=recipe.export.atol,
        min_agreement=recipe.export.min_int8_agreement,
        tie_margin=margin,
    ).to_dict()
