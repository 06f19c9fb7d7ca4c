"""torch.export + AOTInductor: a ``.pt2`` package with a dynamic batch dimension (and, for a text
model's token ids, a dynamic sequence length up to ``max_length``), fp32 or int8.

int8 is PT2E quantization through torchao's ``X86InductorQuantizer`` (torch 2.14 no longer ships
``torch.ao.quantization.quantize_pt2e``): export the fp32 model, prepare, calibrate (or train with
the KD loss for QAT, ``prepare_qat_pt2e``), convert, export again, and compile. Inductor's
``freezing`` and ``torch.no_grad()`` at compile time are what make it lower the quantized pattern
to int8 kernels; without them the package silently runs fp32 GEMMs (pytorch/ao#4566).
"""

from __future__ import annotations

import copy
import re
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from distillserve.errors import ExportError
from distillserve.students.prune import conv_like

__all__ = [
    "MAX_BATCH",
    "compile_package",
    "export_program",
    "int8_kernel_calls",
    "quantize_pt2e",
    "reused_modules",
    "single_channel_convs",
    "with_three_channel_stems",
]

MAX_BATCH = 4096  # the dynamic batch dimension's upper bound


def dynamic_axes(max_length: int | None = None) -> dict[int, torch.export.Dim]:
    """The input's dynamic axes: the batch, and with ``max_length`` (token ids) the sequence."""
    axes = {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}
    if max_length is not None:
        axes[1] = torch.export.Dim("sequence", min=2, max=max_length)
    return axes


def export_program(
    model: nn.Module, example: torch.Tensor, max_length: int | None = None
) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` in eval mode with a dynamic batch dimension (and sequence
    length, with ``max_length``)."""
    if len(example) < 2:  # batch 1 would specialise
        example = example.expand(2, *example.shape[1:]).contiguous()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (UserWarning, FutureWarning, DeprecationWarning))
            model.eval()  # not chained: an exported graph's eval() returns None
            return torch.export.export(
                model, (example,), dynamic_shapes=(dynamic_axes(max_length),)
            )
    except Exception as err:
        raise ExportError(
            f"torch.export cannot export {type(model).__name__}: {_first_line(err)}"
        ) from None


def reused_modules(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Modules called more than once in one forward pass, with their call counts (one module
    per call site is what PT2E quantizers need)."""
    calls: dict[str, int] = {}
    hooks = [
        module.register_forward_hook(lambda *_a, n=name: calls.__setitem__(n, calls.get(n, 0) + 1))
        for name, module in model.named_modules()
        if name and not list(module.children())
    ]
    try:
        with torch.no_grad():
            model.eval()
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: count for name, count in calls.items() if count > 1}


def single_channel_convs(model: nn.Module) -> list[str]:
    """Convolutions with one input channel (a grayscale model's stem). Inductor (torch 2.14)
    compiles such an int8 convolution wrongly when the batch dimension is dynamic: its output
    then matches neither the int8 graph nor the fp32 model; with a static batch, or with three
    input channels, it is right. ``with_three_channel_stems`` rewrites them."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d) and module.in_channels == 1
    ]


class _ThreeChannels(nn.Module):
    """A one-input-channel convolution as a three-channel one on the input repeated three times,
    each channel's weights a third of the original: the same function in fp32, and in int8 the
    same quantized weights (per output channel, the scale shrinks by the same third)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv_like(conv, 3, conv.out_channels)
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight.repeat(1, 3, 1, 1) / 3)
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.expand(-1, 3, -1, -1))


def with_three_channel_stems(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``single_channel_convs`` convolution rewritten as
    ``_ThreeChannels`` (the model itself when it has none)."""
    names = single_channel_convs(model)
    if not names:
        return model
    model = copy.deepcopy(model)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _ThreeChannels(getattr(parent, child)))
    return model


def _quantizer(qat: bool, dynamic: bool):
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86

    quantizer = x86.X86InductorQuantizer()
    # 7-bit activations: CPUs without VNNI multiply u8 by s8 in pairs that saturate at 16 bits
    # (measured under AVX2 kernels: 1 % of top-1 labels flipped with full 8-bit activations)
    quantizer.set_global(
        x86.get_default_x86_inductor_quantization_config(
            is_qat=qat, is_dynamic=dynamic, reduce_range=True
        )
    )
    return quantizer


def quantize_pt2e(
    model: nn.Module,
    example: torch.Tensor,
    calibration: Iterable,
    *,
    mode: str = "static",
    train: Callable[[nn.Module], None] | None = None,
    max_length: int | None = None,
) -> tuple[nn.Module, nn.Module]:
    """The PT2E int8 graph of fp32 ``model`` (a copy) and the reference its parity is judged
    against (``model``; for QAT the fake-quantized graph it was converted from).

    ``static`` calibrates on ``calibration``, ``dynamic`` quantizes weights and computes
    activation scales per call, ``qat`` runs ``train(prepared)`` on the fake-quantized graph (the
    KD loop) before converting.

    A model that calls one module at several sites is refused in one line naming the module.
    Convolutions with one input channel are rewritten first (``with_three_channel_stems``).
    """
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import (
        convert_pt2e,
        prepare_pt2e,
        prepare_qat_pt2e,
    )

    reused = reused_modules(model, example)
    if reused:
        name, count = next(iter(reused.items()))
        raise ExportError(
            f"PT2E int8 needs one module per call site: {type(model).__name__}.{name} is "
            f"called {count} times in one forward pass (torchvision's BasicBlock reuses its "
            "ReLU); give each call its own module, or use a quantizable variant"
        )
    graph = export_program(
        with_three_channel_stems(copy.deepcopy(model)), example, max_length
    ).module()
    quantizer = _quantizer(qat=mode == "qat", dynamic=mode == "dynamic")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (UserWarning, FutureWarning, DeprecationWarning))
            if mode == "qat":
                prepared = prepare_qat_pt2e(graph, quantizer)
                allow_exported_model_train_eval(prepared)
                if train is not None:
                    train(prepared)
                prepared.eval()
                reference = copy.deepcopy(prepared)
                allow_exported_model_train_eval(reference)
            else:
                reference = model
                prepared = prepare_pt2e(graph, quantizer)
                with torch.no_grad():
                    for inputs, _ in calibration:
                        prepared(inputs)
            converted = convert_pt2e(prepared)
    except Exception as err:
        raise ExportError(
            f"X86InductorQuantizer cannot quantize {type(model).__name__}: {_first_line(err)}"
        ) from None
    allow_exported_model_train_eval(converted)
    converted.eval()  # the exported-model eval() returns None
    return converted, reference


def compile_package(
    model: nn.Module, example: torch.Tensor, path: str | Path, max_length: int | None = None
) -> float:
    """Export ``model`` (eager or a PT2E graph) and compile it with AOTInductor into ``path``;
    returns the compile seconds. Freezing and no_grad, so int8 graphs get int8 kernels."""
    import torch._inductor.config as inductor_config

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    program = export_program(model, example, max_length)
    try:
        with (
            warnings.catch_warnings(),
            torch.no_grad(),
            inductor_config.patch(freezing=True),
        ):
            warnings.simplefilter("ignore", (UserWarning, FutureWarning, DeprecationWarning))
            torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    except Exception as err:
        path.unlink(missing_ok=True)
        raise ExportError(f"AOTInductor cannot compile {path.name}: {_first_line(err)}") from None
    return time.perf_counter() - started


_INT8_CALL = re.compile(rb"aoti_torch_cpu__q(?:conv|linear)\w*\(")


def int8_kernel_calls(path: str | Path) -> int:
    """How many int8 oneDNN convolution/linear calls the compiled package's generated wrapper
    makes: 0 for an fp32 package, and for an int8 graph that fell back to fp32 GEMMs."""
    with zipfile.ZipFile(path) as package:
        return sum(
            len(_INT8_CALL.findall(package.read(name)))
            for name in package.namelist()
            if name.endswith(".wrapper.cpp")
        )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
