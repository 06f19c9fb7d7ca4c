"""Load a serialized classifier in the runtime its file format needs; call it on a batch tensor.

    model.pt     TorchScript                      torch.jit.load
    model.pt2    torch.export + AOTInductor        torch._inductor.aoti_load_package
    model.onnx   ONNX                             onnxruntime.InferenceSession (CPU)

Every runtime is called the same way: an NCHW float tensor in, a logits tensor out. Shipped
inside each .mar beside the handler (torch is the only import at module level; onnxruntime is
imported when an ONNX model is loaded, and its absence is a one-line load error).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["FORMATS", "MODEL_FILES", "Runtime", "format_of", "load_runtime"]

MODEL_FILES = {"torchscript": "model.pt", "pt2": "model.pt2", "onnx": "model.onnx"}
FORMATS = tuple(MODEL_FILES)
_SUFFIXES = {".pt": "torchscript", ".pt2": "pt2", ".onnx": "onnx"}
# KServe v2 ``platform`` names for each format (the model metadata's vocabulary).
PLATFORMS = {
    "torchscript": "pytorch_torchscript",
    "pt2": "pytorch_aoti",
    "onnx": "onnxruntime_onnx",
}


class RuntimeLoadError(RuntimeError):
    """A model file this host cannot load (unknown format, missing runtime package)."""


@dataclass
class Runtime:
    """A loaded model: ``runtime(batch) -> logits`` whatever the format."""

    format: str
    path: Path
    run: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.run(batch)

    @property
    def platform(self) -> str:
        return PLATFORMS[self.format]


def format_of(path: str | Path) -> str:
    """The format of a model file, from its suffix; ``RuntimeLoadError`` for any other."""
    suffix = Path(path).suffix
    if suffix not in _SUFFIXES:
        raise RuntimeLoadError(
            f"{Path(path).name}: unknown model format {suffix!r} "
            f"(expected one of {', '.join(_SUFFIXES)})"
        )
    return _SUFFIXES[suffix]


def load_runtime(path: str | Path, device: torch.device | None = None, threads: int = 0) -> Runtime:
    """Load ``path`` in its runtime. ``threads`` > 0 sets ONNX Runtime's intra-op threads (torch's
    own runtimes follow ``torch.set_num_threads``); ``device`` applies to TorchScript."""
    path = Path(path)
    fmt = format_of(path)
    device = device or torch.device("cpu")
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
            try:
                module = torch.jit.load(str(path), map_location=device).eval()
            except (RuntimeError, ValueError) as err:
                raise RuntimeLoadError(
                    f"{path.name}: not a TorchScript file torch {torch.__version__} can load "
                    f"({str(err).splitlines()[0] if str(err) else type(err).__name__})"
                ) from err
        return Runtime(fmt, path, module)
    if fmt == "pt2":
        return Runtime(fmt, path, _load_pt2(path))
    return Runtime(fmt, path, _load_onnx(path, threads))


def _load_pt2(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        compiled = torch._inductor.aoti_load_package(str(path))
    except Exception as err:  # a package compiled for another torch or CPU fails in many ways
        raise RuntimeLoadError(
            f"{path.name}: AOTInductor package does not load with torch {torch.__version__} "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); it must "
            "be compiled with the torch version the server runs"
        ) from err

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return compiled(batch.contiguous())

    return run


def _load_onnx(path: Path, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeLoadError(
            f"{path.name} is an ONNX model: this host needs the onnxruntime package "
            "(pip install onnxruntime) to serve it"
        ) from None
    options = onnxruntime.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # onnxruntime's own error types derive from Exception alone
        raise RuntimeLoadError(
            f"{path.name}: ONNX Runtime cannot load it ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    name = session.get_inputs()[0].name

    def run(batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().cpu().contiguous().numpy()
        return torch.from_numpy(session.run(None, {name: array})[0])

    return run
