"""Post-training int8 quantization with ``torch.ao.quantization`` (eager mode).

- ``static``: fuse conv-bn-relu, attach a qconfig for the engine (per-channel weights by default),
  calibrate observers on N batches, convert. Needs a model with ``QuantStub``/``DeQuantStub``
  and, ideally, a ``fuse_model()`` method (the zoo's students and torchvision's quantizable models).
- ``static`` on a model without a ``QuantStub`` (a transformer): ``quantize_linears_static``
  wraps every ``nn.Linear`` between its own quantize/dequantize, calibrates each input's scale
  and converts; the other layers (embeddings, layer norms, attention) stay fp32.
- ``dynamic``: int8 weights for ``nn.Linear`` with activations quantized on the fly; for
  Linear-only models (MLPs, classifier heads). Each call's activation scale is computed over the
  whole input tensor, so in a served batch one request's answer depends on its neighbours
  (measured on the text student: logits moved by up to 0.05 between alone and in a batch);
  static scales do not.

torch 2.14 warns that eager-mode quantization is deprecated (torchao / ``torch.export`` based PT2E
quantization is its successor); those warnings are silenced here, where they would drown users.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from distillserve.errors import QuantizationError
from distillserve.students.checkpoints import NO_CHECKPOINTS, Checkpointer, NoCheckpoints
from distillserve.students.distill_settings import DistillSettings
from distillserve.students.recipe import QuantizeConfig

__all__ = [
    "calibrate_and_convert",
    "check_engine",
    "fused_copy",
    "is_quantized",
    "quantize",
    "quantize_dynamic",
    "quantize_linears_static",
    "quantize_qat",
    "quantize_static",
    "require_quant_stub",
]


def check_engine(engine: str) -> None:
    """Make ``engine`` the active quantized engine, or fail naming the supported ones."""
    supported = torch.backends.quantized.supported_engines
    if engine not in supported:
        raise QuantizationError(
            f"quantize.engine {engine!r} is not supported by this torch build "
            f"(supported: {', '.join(e for e in supported if e != 'none')})"
        )
    torch.backends.quantized.engine = engine


def _qconfig(engine: str, per_channel: bool) -> torch.ao.quantization.QConfig:
    from torch.ao.quantization import (
        HistogramObserver,
        MinMaxObserver,
        PerChannelMinMaxObserver,
        QConfig,
    )

    # x86/fbgemm kernels can overflow with full-range activations on CPUs without VNNI.
    reduce_range = engine in ("x86", "fbgemm")
    activation = HistogramObserver.with_args(reduce_range=reduce_range)
    if per_channel:
        weight = PerChannelMinMaxObserver.with_args(
            dtype=torch.qint8, qscheme=torch.per_channel_symmetric
        )
    else:
        weight = MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    return QConfig(activation=activation, weight=weight)


def require_quant_stub(model: nn.Module, what: str = "static quantization") -> None:
    """Refuse a model that has no ``QuantStub``: eager-mode int8 needs one at its input."""
    if not any(isinstance(m, torch.ao.quantization.QuantStub) for m in model.modules()):
        raise QuantizationError(
            f"{type(model).__name__} has no QuantStub: {what} needs a "
            "quantization-ready model (e.g. tiny_cnn, resnet18, mobilenet_v3_large); "
            "use quantize.mode: dynamic for Linear-only models"
        )


def fused_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy, conv-bn-relu fused by the model's ``fuse_model()`` when it has one."""
    model = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        if hasattr(model, "fuse_model"):
            try:
                model.fuse_model(is_qat=False)
            except TypeError:
                model.fuse_model()
    return model


def calibrate_and_convert(fused: nn.Module, batches: Iterable, config: QuantizeConfig) -> nn.Module:
    """Attach the engine's qconfig, observe ``config.calibration_batches`` batches and convert, in
    place. A submodule whose ``qconfig`` is already set to ``None`` stays fp32."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        fused.qconfig = _qconfig(config.engine, config.per_channel)
        torch.ao.quantization.prepare(fused, inplace=True)
        _calibrate(fused, batches, config.calibration_batches)
        torch.ao.quantization.convert(fused, inplace=True)
    return fused


def quantize_static(model: nn.Module, calibration: Iterable, config: QuantizeConfig) -> nn.Module:
    """Fuse, calibrate on ``config.calibration_batches`` batches and convert to int8 (a copy)."""
    check_engine(config.engine)
    require_quant_stub(model)
    return calibrate_and_convert(fused_copy(model), calibration, config)


def quantize_linears_static(
    model: nn.Module, calibration: Iterable, config: QuantizeConfig
) -> nn.Module:
    """Static int8 for every ``nn.Linear`` of a model without a ``QuantStub`` (a copy): each sits
    between its own quantize and dequantize, with the input scale calibrated on
    ``config.calibration_batches`` batches; everything else stays fp32. Scales fixed at build
    time make each row's answer independent of the rows batched with it."""
    from torch.ao.quantization import QuantWrapper

    check_engine(config.engine)
    copied = copy.deepcopy(model).eval()
    linears = [
        (parent, name, child)
        for parent in copied.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    if not linears:
        raise QuantizationError("static quantization found no nn.Linear layer to quantize")
    qconfig = _qconfig(config.engine, config.per_channel)
    for parent, name, child in linears:
        wrapped = QuantWrapper(child)
        wrapped.qconfig = qconfig
        setattr(parent, name, wrapped)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        torch.ao.quantization.prepare(copied, inplace=True)
        _calibrate(copied, calibration, config.calibration_batches)
        torch.ao.quantization.convert(copied, inplace=True)
    return copied


def _calibrate(prepared: nn.Module, batches: Iterable, count: int) -> None:
    """Run ``count`` batches through a model whose observers are attached."""
    with torch.inference_mode():
        for batch_index, (inputs, _) in enumerate(batches):
            if batch_index >= count:
                break
            prepared(inputs)


def quantize_dynamic(model: nn.Module, config: QuantizeConfig) -> nn.Module:
    """int8 weights for every ``nn.Linear`` (a copy); other layers stay fp32."""
    check_engine(config.engine)
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise QuantizationError("dynamic quantization found no nn.Linear layer to quantize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8
        )


def quantize_qat(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    config: QuantizeConfig,
    settings: DistillSettings,
    *,
    checkpointer: Checkpointer | NoCheckpoints = NO_CHECKPOINTS,
    return_reference: bool = False,
) -> nn.Module | tuple[nn.Module, nn.Module]:
    """Quantization-aware training with the distillation loss, then conversion to int8 (a copy).

    ``settings`` (``distill_settings.for_qat``: the student's teachers and their weights, the KD
    loss, the QAT learning rate and epochs) is how it trains. With ``return_reference`` also
    returns the fake-quantized fp32 model the int8 one was converted from: the right reference
    for its parity check (QAT changes the weights, so the pre-QAT student is not).

    Fuses conv-bn-relu for QAT, inserts fake-quantization with the engine's QAT qconfig
    (per-channel weights), fine-tunes with ``kd_loss`` against the teachers (cross-entropy
    without any), freezes BatchNorm statistics and observers for the last epoch (when
    ``settings.epochs`` > 1), and converts. Needs a quantization-ready model, like static PTQ.
    """
    from distillserve.students.training import train

    check_engine(config.engine)
    require_quant_stub(model, "QAT")
    model = copy.deepcopy(model)
    epochs = settings.epochs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        model.train()
        if hasattr(model, "fuse_model"):
            try:
                model.fuse_model(is_qat=True)
            except TypeError:
                _fuse_for_qat(model)
        model.qconfig = torch.ao.quantization.get_default_qat_qconfig(config.engine)
        torch.ao.quantization.prepare_qat(model, inplace=True)
        first = settings.replace(epochs=max(1, epochs - 1))
        train(
            model, train_loader, val_loader, first, desc="qat", checkpoint=checkpointer.phase("qat")
        )
        if epochs > 1:  # a last epoch with observers and BatchNorm statistics frozen
            model.apply(torch.ao.quantization.disable_observer)
            model.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)
            last = settings.replace(epochs=1, lr=settings.lr / 10, seed=settings.seed + 1)
            train(
                model,
                train_loader,
                val_loader,
                last,
                desc="qat",
                checkpoint=checkpointer.phase("qat"),
            )
        model.eval()
        reference = copy.deepcopy(model) if return_reference else None
        torch.ao.quantization.convert(model, inplace=True)
    return (model, reference) if return_reference else model


def _fuse_for_qat(model: nn.Module) -> None:
    """``fuse_model`` without an ``is_qat`` switch (the zoo's TinyCNN): QAT-fuse its blocks."""
    from torch.ao.quantization import fuse_modules_qat

    for block in getattr(model, "features", []):
        fuse_modules_qat(block, ["0", "1", "2"], inplace=True)


def quantize(model: nn.Module, calibration: Iterable, config: QuantizeConfig) -> nn.Module | None:
    """Post-training quantization by ``config.mode``; ``none`` returns ``None``."""
    if config.mode == "static":
        return quantize_static(model, calibration, config)
    if config.mode == "dynamic":
        return quantize_dynamic(model, config)
    if config.mode == "qat":
        raise QuantizationError("quantize.mode qat trains: call quantize_qat, not quantize")
    if config.mode == "mixed":
        raise QuantizationError("quantize.mode mixed evaluates: call quantize_mixed, not quantize")
    return None


def is_quantized(model: nn.Module | torch.jit.ScriptModule) -> bool:
    """Whether a model runs quantized kernels (eager modules or a TorchScript graph)."""
    if isinstance(model, torch.jit.ScriptModule):
        return "quantized::" in str(model.inlined_graph)
    return any(
        type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized"))
        for m in model.modules()
    )
