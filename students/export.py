"""TorchScript export with parity checks.

``export_torchscript`` traces (or scripts) a model, saves it, loads the saved file back and checks
it against the eager model: fp32 outputs must agree within ``atol``; an int8 model's top-1
predictions must agree with the fp32 reference on at least ``min_agreement`` of the inputs whose
reference top-1 is not within int8 rounding of the runner-up (those are reported, not judged: which
way such a near-tie falls depends on the CPU's int8 kernels).

torch 2.14 deprecates TorchScript in favour of ``torch.export``; TorchServe 0.12 serves TorchScript
natively, so it stays the default format, and the deprecation warnings are silenced where users
would see them. ``students.export_pt2`` (torch.export + AOTInductor) is the forward path and
``students.export_onnx`` the portable one; ``check_parity`` judges every format alike.
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
    "check_parity",
    "compare_top1",
    "export_torchscript",
    "load_torchscript",
    "logit_step",
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
    step = output_step(model, example) if reference is not None and is_quantized(model) else 0.0
    return check_parity(
        load_torchscript(path),
        path,
        eager=model,
        reference=reference,
        batches=check_batches,
        atol=atol,
        min_agreement=min_agreement,
        tie_margin=2.5 * step,
    )


def logit_step(reference, batches: Iterable) -> float:
    """The step of an 8-bit grid over the reference's logit range: the output resolution of an
    int8 model whose output scale is not known (a PT2E or ONNX Runtime graph)."""
    with torch.inference_mode():
        logits = torch.cat([reference(inputs) for inputs, _ in batches])
    return float(logits.max() - logits.min()) / 255.0


def check_parity(
    loaded,
    path: Path,
    *,
    eager=None,
    reference=None,
    batches: Iterable,
    atol: float,
    min_agreement: float,
    tie_margin: float = 0.0,
) -> ParityReport:
    """Check a re-loaded model file; remove it and raise ``ExportError`` when a check fails.

    Against ``eager`` (the model the file was made from) every logit must agree within ``atol``;
    against ``reference`` (the fp32 model an int8 file was quantized from) top-1 must agree on at
    least ``min_agreement`` of the inputs whose reference top-1 leads by more than ``tie_margin``.
    """
    report = None
    if eager is not None:
        report = compare_top1(loaded, eager, batches)
        if report.max_abs_diff > atol:
            path.unlink(missing_ok=True)
            raise ExportError(
                f"saved {path.name} differs from the model it was made from by "
                f"{report.max_abs_diff:.3g} > export.atol {atol:g}: try export.method script "
                "(TorchScript), or a larger export.atol if that difference is acceptable"
            )
    if reference is None:
        return report
    fidelity = report
    report = compare_top1(loaded, reference, batches, tie_margin=tie_margin)
    if fidelity is not None:
        report.max_abs_diff = fidelity.max_abs_diff
    if report.decisive_agreement < min_agreement:
        path.unlink(missing_ok=True)
        raise ExportError(
            f"{path.name}: int8 top-1 agreement with the fp32 model is "
            f"{report.decisive_agreement:.4f} < export.min_int8_agreement {min_agreement} on the "
            f"{report.decisive_samples} of {report.samples} samples whose top-1 lead exceeds int8 "
            f"resolution ({report.tie_margin:.3g}); on all samples {report.top1_agreement:.4f}. "
            "Try: quantize.mode qat (int8-aware training with the KD loss), more "
            "quantize.calibration_batches (static), another format in export.formats, or a lower "
            "export.min_int8_agreement if that agreement is acceptable"
        )
    return report
