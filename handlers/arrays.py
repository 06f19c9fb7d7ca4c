"""The arrays the handler core computes with: torch tensors where torch is installed, NumPy
arrays where it is not, so that an ONNX student serves on a host with onnxruntime, Pillow and
NumPy alone (a Triton host, for one). With torch present nothing changes: every function
below is the torch call the handler always made.

Ships inside every .mar; imports flat there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np

try:
    import torch
except ImportError:  # an ONNX-only host
    torch = None

__all__ = [
    "HAVE_TORCH",
    "as_int64",
    "bools",
    "empty",
    "from_numpy",
    "inference",
    "ranked",
    "stack",
    "to_device",
    "to_numpy",
    "torch",
    "zeros",
]

HAVE_TORCH = torch is not None


def stack(rows: Sequence):
    """Rows of one shape as one batch."""
    return torch.stack(list(rows)) if HAVE_TORCH else np.stack(list(rows))


def empty(shape: tuple[int, ...], integer: bool = False):
    """An empty float32 (or int64) batch of ``shape``."""
    if HAVE_TORCH:
        return torch.empty(shape, dtype=torch.long if integer else torch.float32)
    return np.empty(shape, dtype=np.int64 if integer else np.float32)


def zeros(shape: tuple[int, ...], integer: bool = False):
    """A float32 (or int64) batch of zeros: a warm-up input."""
    if HAVE_TORCH:
        return torch.zeros(shape, dtype=torch.long if integer else torch.float32)
    return np.zeros(shape, dtype=np.int64 if integer else np.float32)


def as_int64(rows: Sequence[Sequence[int]]):
    """Token ids, one row per text (rows of one length)."""
    if HAVE_TORCH:
        return torch.tensor(rows, dtype=torch.long)
    return np.asarray(rows, dtype=np.int64)


def bools(values: Sequence[bool]):
    """One flag per row."""
    if HAVE_TORCH:
        return torch.tensor(list(values), dtype=torch.bool)
    return np.asarray(list(values), dtype=np.bool_)


def from_numpy(array: np.ndarray):
    """A NumPy array as the batch type, sharing its memory where it can."""
    return torch.from_numpy(array) if HAVE_TORCH else array


def to_device(batch, device):
    """``batch`` on ``device`` (a torch device; ``None`` or a NumPy batch: as it is)."""
    if device is None or isinstance(batch, np.ndarray):
        return batch
    return batch.to(device)


def to_numpy(batch) -> np.ndarray:
    """A batch (tensor or array) as a contiguous NumPy array on the CPU."""
    if isinstance(batch, np.ndarray):
        return np.ascontiguousarray(batch)
    return batch.detach().cpu().contiguous().numpy()


def inference():
    """The context a forward pass runs in: ``torch.inference_mode`` (no autograd records)."""
    return torch.inference_mode() if HAVE_TORCH else contextlib.nullcontext()


def ranked(logits, k: int):
    """Top-``k`` probabilities and class indices per row, as NumPy-convertible batches. A
    stable sort, so equal scores (common with int8 models, whose outputs are discrete) rank
    the lower class index first, exactly as ``argmax`` does."""
    if not isinstance(logits, np.ndarray) and HAVE_TORCH:
        probabilities = torch.softmax(logits.float(), dim=1)
        values, indices = torch.sort(probabilities, dim=1, descending=True, stable=True)
    else:
        scores = np.asarray(logits, dtype=np.float32)
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        indices = np.argsort(-probabilities, axis=1, kind="stable")
        values = np.take_along_axis(probabilities, indices, axis=1)
    k = min(k, probabilities.shape[1])
    return values[:, :k], indices[:, :k]
