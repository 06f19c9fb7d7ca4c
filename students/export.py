"""TorchScript export with parity checks.

``export_torchscript`` traces (or scripts) a model, saves it, loads the saved file back and checks
it against the eager model: fp32 outputs must agree within ``atol``; an int8 model's top-1
predictions must agree with the fp32 reference on at least ``min_agreement`` of the inputs.

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

from .errors import ExportError

__all__ = ["ParityReport", "export_torchscript", "load_torchscript", "top1_agreement"]


@dataclass
class ParityReport:
    """How closely the saved TorchScript file matches its reference."""

    max_abs_diff: float
    top1_agreement: float
    samples: int


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """Load a saved TorchScript model on the CPU in eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
        model = torch.jit.load(str(path), map_location="cpu")
    return model.eval()


@torch.inference_mode()
def top1_agreement(model_a, model_b, batches: Iterable) -> tuple[float, float, int]:
    """Share of inputs with the same top-1 class, max |logit difference|, and the sample count."""
    same, total, max_diff = 0, 0, 0.0
    for inputs, _ in batches:
        a, b = model_a(inputs), model_b(inputs)
        same += (a.argmax(1) == b.argmax(1)).sum().item()
        total += len(inputs)
        max_diff = max(max_diff, (a - b).abs().max().item())
    return same / max(1, total), max_diff, total


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
    int8 model came from) its top-1 agreement with the reference must also be at least
    ``min_agreement``. Raises ``ExportError`` when a check fails; the file is removed.
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
    agreement, max_diff, samples = top1_agreement(loaded, model, check_batches)
    if max_diff > atol:
        path.unlink(missing_ok=True)
        raise ExportError(
            f"saved TorchScript differs from the model it was made from by {max_diff:.3g} "
            f"> export.atol {atol:g}"
        )
    if reference is not None:
        agreement, _, samples = top1_agreement(loaded, reference, check_batches)
        if agreement < min_agreement:
            path.unlink(missing_ok=True)
            raise ExportError(
                f"int8 top-1 agreement with the fp32 model is {agreement:.4f} < "
                f"export.min_int8_agreement {min_agreement} on {samples} samples"
            )
    return ParityReport(max_diff, agreement, samples)
