"""TorchScript export with parity checks.

``export_torchscript`` traces (or scripts) a model, saves it, loads the saved file back and checks
it against the eager model: fp32 outputs must agree within ``atol``; an int8 model's top-1
predictions must agree with the fp32 reference on at least ``min_agreement`` of the inputs whose
reference top-1 is not within int8 rounding of the runner-up (those are reported, not judged: which
way such a near-tie falls depends on the CPU's int8 kernels).

torch 2.14 deprecates TorchScript in favour of ``torch.export``; TorchServe 0.12 serves TorchScript
natively, so it stays the format here, and the deprecation warnings are silenced where users
would see them. ``torch.export`` + AOTInductor is the planned next path.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from distillserve.errors import ExportError
from distillserve.students.quantize import is_quantized

__all__ = [
    "ParityReport",
    "compare_top1",
    "export_torchscript",
    "load_torchscript",
    "output_step",
    "top1_agreement",
]


@dataclass
class ParityReport:
    """How closely the saved TorchScript file matches its reference.

    ``top1_agreement`` counts every input; ``decisive_agreement`` only those whose reference
    top-1 lead over the runner-up is wider than ``tie_margin`` (2.5 steps of the int8 model's
    output quantization, 0 for fp32): closer than that, int8 rounding alone may order the two
    classes either way, whichever CPU kernels run, so such inputs are reported, not judged.
    """

    max_abs_diff: float
    top1_agreement: float
    samples: int
    decisive_agreement: float = 1.0
    decisive_samples: int = 0
    tie_margin: float = 0.0

    def to_dict(self) -> dict:
        return {
            "max_abs_diff": self.max_abs_diff,
            "top1_agreement": self.top1_agreement,
            "decisive_agreement": self.decisive_agreement,
            "decisive_samples": self.decisive_samples,
            "samples": self.samples,
            "tie_margin": self.tie_margin,
        }


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """Load a saved TorchScript model on the CPU in eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
        model = torch.jit.load(str(path), map_location="cpu")
    return model.eval()


@torch.inference_mode()
def output_step(model: nn.Module, example: torch.Tensor) -> float:
    """The quantization step of an eager int8 model's logits: the scale of the int8 tensor that
    its last ``DeQuantize`` turns into the output; 0.0 when the output is not dequantized int8."""
    from torch.ao.nn.quantized import DeQuantize

    seen: dict = {}

    def record(_module, inputs, output) -> None:
        tensor = inputs[0]
        if tensor.is_quantized and tensor.qscheme() == torch.per_tensor_affine:
            seen.update(scale=float(tensor.q_scale()), output=output)

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, DeQuantize)]
    try:
        result = model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return seen["scale"] if "output" in seen and seen["output"] is result else 0.0


@torch.inference_mode()
def compare_top1(model, reference, batches: Iterable, tie_margin: float = 0.0) -> ParityReport:
    """Top-1 agreement of ``model`` with ``reference`` over all inputs and over the decisive
    ones (reference lead over its runner-up >= ``tie_margin``), and the max |logit difference|."""
    same = decisive = decisive_same = total = 0
    max_diff = 0.0
    for inputs, _ in batches:
        a, b = model(inputs), reference(inputs)
        agree = a.argmax(1) == b.argmax(1)
        top2 = b.topk(2, dim=1).values if b.shape[1] > 1 else b.new_full((len(b), 2), 0.0)
        clear = (top2[:, 0] - top2[:, 1]) >= tie_margin
        same += int(agree.sum())
        decisive += int(clear.sum())
        decisive_same += int((agree & clear).sum())
        total += len(inputs)
        max_diff = max(max_diff, (a - b).abs().max().item())
    return ParityReport(
        max_abs_diff=max_diff,
        top1_agreement=same / max(1, total),
        samples=total,
        decisive_agreement=decisive_same / decisive if decisive else 1.0,
        decisive_samples=decisive,
        tie_margin=tie_margin,
    )


def top1_agreement(model_a, model_b, batches: Iterable) -> tuple[float, float, int]:
    """Share of inputs with the same top-1 class, max |logit difference|, and the sample count."""
    report = compare_top1(model_a, model_b, batches)
    return report.top1_agreement, report.max_abs_diff, report.samples


def export_torchscript(
    model: nn.Module,
    path: str | Path,
    example: torch.Tensor,
    check_batches: Iterable,
    *,
    method: str = "trace",
    reference: nn.Module | None = None,
    atol: float = 1e-4,
    min_agreement: float = 0.99,
) -> ParityReport:
    """Save ``model`` as TorchScript at ``path`` and check the re-loaded file.

    The re-loaded file must match ``model`` within ``atol``. With ``reference`` (the fp32 model an
    int8 model came from, or the fake-quantized model QAT converted) its top-1 agreement with the
    reference must also be at least ``min_agreement`` on the decisive inputs: those whose
    reference top-1 leads by more than 2.5 int8 output steps (see ``ParityReport``). Raises
    ``ExportError`` when a check fails; the file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with warnings.catch_warnings(), torch.inference_mode():
        for category in (DeprecationWarning, FutureWarning, UserWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        if method == "trace":
            scripted = torch.jit.trace(model, example, check_trace=False)
        elif method == "script":
            scripted = torch.jit.script(model)
        else:
            raise ExportError(f"export method must be trace or script, got {method!r}")
        scripted = torch.jit.freeze(scripted) if method == "script" else scripted
        torch.jit.save(scripted, str(path))
    loaded = load_torchscript(path)
    fidelity = compare_top1(loaded, model, check_batches)
    if fidelity.max_abs_diff > atol:
        path.unlink(missing_ok=True)
        raise ExportError(
            f"saved TorchScript differs from the model it was made from by "
            f"{fidelity.max_abs_diff:.3g} > export.atol {atol:g}"
        )
    if reference is None:
        return fidelity
    step = output_step(model, example) if is_quantized(model) else 0.0
    report = compare_top1(loaded, reference, check_batches, tie_margin=2.5 * step)
    report.max_abs_diff = fidelity.max_abs_diff
    if report.decisive_agreement < min_agreement:
        path.unlink(missing_ok=True)
        raise ExportError(
            f"int8 top-1 agreement with the fp32 model is {report.decisive_agreement:.4f} < "
            f"export.min_int8_agreement {min_agreement} on the {report.decisive_samples} of "
            f"{report.samples} samples whose top-1 lead exceeds int8 resolution "
            f"({report.tie_margin:.3g}); on all samples {report.top1_agreement:.4f}"
        )
    return report
