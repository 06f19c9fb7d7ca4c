"""Mixed precision: int8 everywhere except the layers whose quantization costs the most accuracy.

1. **Sensitivity**: for each quantizable layer (a conv, fused conv-bn-relu or linear after fusion),
   the validation accuracy of the fp32 model minus that of the model with *that layer alone*
   quantized.
2. **Selection**: start from everything int8; while its validation accuracy is more than
   ``quantize.accuracy_budget`` below the fp32 model's, keep the next most sensitive layer in fp32.

In eager mode an fp32 layer sits in an island, ``DeQuantStub -> layer -> QuantStub``, so its
neighbours stay int8 and the model still exports to TorchScript and runs in the unchanged handler.
The budget is judged on the validation split; the test split stays for the final report.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from torch import nn
from torch.ao.nn.intrinsic import _FusedModule
from torch.ao.quantization import DeQuantStub, QuantStub

from distillserve.errors import QuantizationError
from distillserve.students.distill import evaluate
from distillserve.students.quantize import (
    calibrate_and_convert,
    check_engine,
    fused_copy,
    require_quant_stub,
)
from distillserve.students.recipe import QuantizeConfig

__all__ = ["MixedPrecisionReport", "quantizable_layers", "quantize_mixed", "quantize_with_fp32"]

_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, _FusedModule)


@dataclass
class MixedPrecisionReport:
    """What mixed precision measured and chose (validation accuracies, fractions)."""

    budget: float
    fp32_accuracy: float
    all_int8_accuracy: float
    accuracy: float
    sensitivity: dict[str, float]  # layer -> accuracy drop when it alone is int8
    fp32_layers: list[str]
    int8_layers: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def quantizable_layers(fused: nn.Module) -> list[str]:
    """Names of the outermost conv/linear (or fused) modules of a fused model, in forward order."""
    names: list[str] = []
    for name, module in fused.named_modules():
        inside = any(name.startswith(f"{outer}.") for outer in names)
        if name and not inside and isinstance(module, _LAYER_TYPES):
            names.append(name)
    return names


class _Fp32Island(nn.Sequential):
    """``DeQuantStub -> layer -> QuantStub``: the layer runs in fp32 between int8 neighbours."""

    def __init__(self, layer: nn.Module) -> None:
        layer.qconfig = None  # prepare() leaves it (and everything in it) unobserved
        super().__init__(DeQuantStub(), layer, QuantStub())


def quantize_with_fp32(
    fused: nn.Module, fp32_layers: Iterable[str], batches: list, config: QuantizeConfig
) -> nn.Module:
    """A converted copy of ``fused`` with ``fp32_layers`` in fp32 islands and the rest int8."""
    model = copy.deepcopy(fused)
    for name in fp32_layers:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, _Fp32Island(getattr(parent, child)))
    return calibrate_and_convert(model, batches, config)


def quantize_mixed(
    model: nn.Module, calibration: Iterable, val_loader: Iterable, config: QuantizeConfig
) -> tuple[nn.Module, MixedPrecisionReport]:
    """int8 with the fewest fp32 layers that keeps validation accuracy within the budget."""
    check_engine(config.engine)
    require_quant_stub(model, "mixed precision")
    fused = fused_copy(model)
    layers = quantizable_layers(fused)
    if not layers:
        raise QuantizationError(f"{type(model).__name__} has no conv or linear layer to quantize")
    batches = [batch for _, batch in zip(range(config.calibration_batches), calibration)]
    validation = list(val_loader)
    fp32_accuracy = evaluate(fused, validation)

    def accuracy_with(fp32: list[str]) -> tuple[nn.Module, float]:
        quantized = quantize_with_fp32(fused, fp32, batches, config)
        return quantized, evaluate(quantized, validation)

    sensitivity = {
        layer: round(fp32_accuracy - accuracy_with([o for o in layers if o != layer])[1], 6)
        for layer in layers
    }
    ranked = sorted(layers, key=lambda layer: -sensitivity[layer])  # stable: ties keep order
    kept: list[str] = []
    quantized, accuracy = accuracy_with(kept)
    all_int8 = accuracy
    while fp32_accuracy - accuracy > config.accuracy_budget and len(kept) < len(layers) - 1:
        kept.append(ranked[len(kept)])
        quantized, accuracy = accuracy_with(kept)
    if fp32_accuracy - accuracy > config.accuracy_budget:
        raise QuantizationError(
            f"quantize.accuracy_budget {config.accuracy_budget:g} cannot be met: with only "
            f"{ranked[-1]} int8 the validation accuracy is {accuracy:.4f} against "
            f"{fp32_accuracy:.4f} in fp32; raise the budget or use quantize.mode: none"
        )
    report = MixedPrecisionReport(
        budget=config.accuracy_budget,
        fp32_accuracy=fp32_accuracy,
        all_int8_accuracy=all_int8,
        accuracy=accuracy,
        sensitivity=sensitivity,
        fp32_layers=[layer for layer in layers if layer in kept],
        int8_layers=[layer for layer in layers if layer not in kept],
    )
    return quantized, report
