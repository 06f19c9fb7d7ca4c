"""Load a serialized classifier in the runtime its file format needs; call it on a batch tensor.

    model.pt     TorchScript                      torch.jit.load
    model.pt2    torch.export + AOTInductor        torch._inductor.aoti_load_package
    model.onnx   ONNX                             onnxruntime.InferenceSession (CPU)

Every runtime is called the same way: a batch in (an NCHW float tensor, or token ids), a logits
tensor out. Shipped inside each .mar beside the handler; onnxruntime is imported when an ONNX
model is loaded (its absence is a one-line load error), and an ONNX model also loads on a host
without torch, where batches and logits are NumPy arrays (``arrays``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

try:
    import torch
except ImportError:  # an ONNX-only host: ONNX Runtime on NumPy arrays
    torch = None

try:  # inside this repository
    from .arrays import from_numpy, to_numpy
except ImportError:  # inside a .mar, where the helpers sit flat at the archive root
    from arrays import from_numpy, to_numpy

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
    run: Callable  # a batch -> logits (torch tensors; NumPy arrays on a host without torch)

    def __call__(self, batch):
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


def load_runtime(path: str | Path, device=None, threads: int = 0) -> Runtime:
    """Load ``path`` in its runtime. ``threads`` > 0 sets ONNX Runtime's intra-op threads (torch's
    own runtimes follow ``torch.set_num_threads``); ``device`` (a torch device, default the
    CPU) applies to TorchScript. Only an ONNX file loads on a host without torch."""
    path = Path(path)
    fmt = format_of(path)
    if fmt == "onnx":
        return Runtime(fmt, path, _load_onnx(path, threads))
    if torch is None:
        raise RuntimeLoadError(
            f"{path.name} is a {fmt} model: this host needs torch to serve it (only ONNX "
            "students serve without torch)"
        )
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
    return Runtime(fmt, path, _load_pt2(path))


def _load_pt2(path: Path) -> Callable:
    try:
        compiled = torch._inductor.aoti_load_package(str(path))
    except Exception as err:  # a package compiled for another torch or CPU fails in many ways
        raise RuntimeLoadError(
            f"{path.name}: AOTInductor package does not load with torch {torch.__version__} "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); it must "
            "be compiled with the torch version the server runs"
        ) from err

    def run(batch):
        with torch.no_grad():
            return compiled(batch.contiguous())

    return run


def _load_onnx(path: Path, threads: int) -> Callable:
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

    def run(batch):
        return from_numpy(session.run(None, {name: to_numpy(batch)})[0])

    return run
