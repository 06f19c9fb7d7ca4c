"""The handler's NumPy paths (a host without torch, ``handlers.arrays``) against its torch
paths on the same inputs: decoding, preprocessing, v2 FP32 input, ranking, text ids. Torch is
made absent by patching the modules' ``torch`` (the Triton tests run a real torch-free
process)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from distillserve.handlers import arrays, imageprep, kserve_v2
from distillserve.handlers.imageprep import PreprocessSpec


@pytest.fixture
def no_torch(monkeypatch):
    monkeypatch.setattr(arrays, "HAVE_TORCH", False)
    monkeypatch.setattr(arrays, "torch", None)
    monkeypatch.setattr(imageprep, "torch", None)
    monkeypatch.setattr(imageprep, "F", None)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _both(function, monkeypatch):
    """``function()`` with torch, then without it (as NumPy)."""
    with_torch = function()
    with monkeypatch.context() as patch:
        patch.setattr(arrays, "HAVE_TORCH", False)
        patch.setattr(arrays, "torch", None)
        patch.setattr(imageprep, "torch", None)
        patch.setattr(imageprep, "F", None)
        without = function()
    return with_torch, without


@pytest.mark.parametrize(
    ("shape", "size", "channels"),
    [((8, 8), (8, 8), 1), ((37, 53, 3), (24, 24), 3), ((300, 200, 3), (224, 224), 3)],
)
def test_decode_and_preprocess_match_torch(monkeypatch, shape, size, channels):
    """The same input tensor when no resize is needed; within one grey level's worth of the
    normalised value when Pillow resizes instead of torchvision."""
    rng = np.random.default_rng(0)
    data = _png(rng.integers(0, 256, shape, dtype=np.uint8))
    spec = PreprocessSpec(size, channels, (0.5,) * channels, (0.25,) * channels)

    def run():
        return imageprep.preprocess([imageprep.decode_image(data, channels)], spec)

    with_torch, without = _both(run, monkeypatch)
    assert isinstance(with_torch, torch.Tensor) and isinstance(without, np.ndarray)
    assert without.dtype == np.float32 and without.shape == tuple(with_torch.shape)
    difference = np.abs(without - with_torch.numpy())
    if shape[:2] == size:
        assert difference.max() == 0
    else:
        assert difference.max() <= 1 / 255 / 0.25 + 1e-6


def test_v2_fp32_input_and_ranking_match_torch(monkeypatch):
    values = [0.5, -1.25, 3.0, 3.0, 0.0, 2.5]
    body = {"inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP32", "data": values}]}
    request = kserve_v2.V2Request(json.loads(json.dumps(body)))

    def run():
        logits = kserve_v2.first_input(request).values
        probabilities, indices = arrays.ranked(logits, 2)
        return logits, np.asarray(probabilities), np.asarray(indices)

    (t_logits, t_p, t_i), (n_logits, n_p, n_i) = _both(run, monkeypatch)
    assert isinstance(t_logits, torch.Tensor) and isinstance(n_logits, np.ndarray)
    assert np.array_equal(t_logits.numpy(), n_logits)
    assert np.array_equal(t_i, n_i) and n_i.tolist() == [[2, 0], [0, 2]]  # tie: lower index
    assert np.allclose(t_p, n_p, atol=1e-7)


def test_batches_and_warm_up_inputs_without_torch(no_torch):
    assert arrays.stack([np.zeros((1, 2, 2), np.float32)] * 3).shape == (3, 1, 2, 2)
    assert arrays.empty((0, 2), integer=True).dtype == np.int64
    assert arrays.zeros((4, 1, 8, 8)).dtype == np.float32
    assert arrays.as_int64([[1, 2], [3, 0]]).dtype == np.int64
    assert arrays.bools([True, False]).tolist() == [True, False]
    assert isinstance(arrays.to_device(np.ones(2), "cuda:0"), np.ndarray)  # stays on the CPU
    with arrays.inference():
        pass


def test_a_torch_model_file_refuses_to_load_without_torch(monkeypatch, tmp_path):
    """On a host without torch only an ONNX file loads; the others say why in one line."""
    from distillserve.handlers import runtimes

    monkeypatch.setattr(runtimes, "torch", None)
    for name in ("model.pt", "model.pt2"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(runtimes.RuntimeLoadError, match="this host needs torch to serve it"):
            runtimes.load_runtime(tmp_path / name)
