"""ONNX: ``torch.onnx.export`` (the dynamo exporter) with a dynamic batch axis, checked with
``onnx.checker``; int8 through ONNX Runtime's static quantization (QDQ, per-channel int8
weights in 7 bits so that CPUs without VNNI compute the same as those with it, activations
calibrated on the recipe's data) or its dynamic quantization."""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from distillserve.errors import ExportError

__all__ = ["INPUT_NAME", "export_onnx", "quantize_onnx"]

INPUT_NAME = "input"
OPSET = 18


def export_onnx(
    model: nn.Module, example: torch.Tensor, path: str | Path, max_length: int | None = None
) -> float:
    """Export fp32 ``model`` to ``path`` (batch axis dynamic, and with ``max_length`` the
    sequence axis of token ids) and check the file; seconds taken."""
    import onnx

    from distillserve.students.export_pt2 import dynamic_axes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if len(example) < 2:
        example = example.expand(2, *example.shape[1:]).contiguous()
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),  # the exporter prints its progress
        ):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model.eval(),
                (example,),
                dynamo=True,
                dynamic_shapes=(dynamic_axes(max_length),),
                input_names=[INPUT_NAME],
                output_names=["logits"],
                opset_version=OPSET,
                verbose=False,
            )
            program.save(str(path))
        exported = onnx.load(str(path))
        _strip_debug_metadata(exported)
        onnx.save(exported, str(path))
        onnx.checker.check_model(exported, full_check=True)
    except Exception as err:
        path.unlink(missing_ok=True)
        raise ExportError(
            f"ONNX export of {type(model).__name__} failed: {type(err).__name__}: "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        ) from None
    return time.perf_counter() - started


def _strip_debug_metadata(model) -> None:
    """Drop what the exporter records for debugging on every node and value (the exporting
    process's stack traces and file paths, FX node text, module scopes): ONNX Runtime reads none
    of it, and it was a fifth of the digits student's file."""
    graph = model.graph
    for items in (graph.node, graph.initializer, graph.input, graph.output, graph.value_info):
        for item in items:
            del item.metadata_props[:]
            item.doc_string = ""


class _Calibration:
    """ONNX Runtime's ``CalibrationDataReader`` over (inputs, labels) batches."""

    def __init__(self, batches: Iterable) -> None:
        self._batches = iter([{INPUT_NAME: inputs.numpy()} for inputs, _ in batches])

    def get_next(self) -> dict | None:
        return next(self._batches, None)


def quantize_onnx(
    fp32_path: str | Path,
    path: str | Path,
    calibration: Iterable,
    mode: str,
    tokens: bool = False,
) -> float:
    """int8 ``path`` from the fp32 ONNX file: ``dynamic`` (int8 weights, activation scales per
    call) or static QDQ calibrated on ``calibration`` (every other int8 mode); seconds taken.
    With ``tokens`` (a transformer on token ids) only the matrix products are quantized, as the
    eager and PT2E paths do, and shapes are not inferred (symbolic shape inference cannot follow
    a dynamic sequence axis)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    path = Path(path)
    started = time.perf_counter()
    reader = type("Calibration", (_Calibration, CalibrationDataReader), {})(calibration)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = Path(tmp) / "prepared.onnx"
        # dynamic quantization needs no inferred shapes
        skip_shapes = tokens or mode == "dynamic"
        # symbolic shape inference saves a model it could not finish into the working
        # directory (sym_shape_infer_temp.onnx + a .data file): keep that in tmp
        with contextlib.chdir(tmp):
            source = str(Path(fp32_path).resolve())
            quant_pre_process(source, str(prepared), skip_symbolic_shape=skip_shapes)
        if mode == "dynamic":
            quantize_dynamic(str(prepared), str(path), weight_type=QuantType.QInt8)
        else:
            quantize_static(
                str(prepared),
                str(path),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=True,  # 7-bit weights: no u8*s8 saturation on CPUs without VNNI
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm"] if tokens else None,
            )
    if not path.is_file():
        raise ExportError(f"ONNX Runtime quantization wrote no {path.name}")
    return time.perf_counter() - started
