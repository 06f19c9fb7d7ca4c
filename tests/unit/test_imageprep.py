"""Decoding and preprocessing shared by evaluation and the handler."""

import io

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from distillserve.handlers.imageprep import (
    ImageLimits,
    InputError,
    PreprocessSpec,
    decode_image,
    preprocess,
)
from distillserve.handlers.payloads import request_bytes

SPEC = PreprocessSpec(image_size=(8, 8), channels=1, mean=(0.5,), std=(0.5,))


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture
def gray():
    return Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, mode="L")


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "GIF", "WEBP"])
def test_lossless_formats_decode_to_the_same_pixels(gray, fmt):
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    decoded = decode_image(_encode(gray, fmt, **kwargs), channels=1)
    assert decoded.dtype == torch.uint8 and decoded.shape == (1, 8, 8)
    assert torch.equal(decoded[0], torch.from_numpy(np.asarray(gray)))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "CMYK", "I;16"])
def test_every_mode_becomes_the_model_channels(mode):
    rgb = Image.fromarray(np.full((6, 10, 3), 200, dtype=np.uint8), mode="RGB")
    if mode == "I;16":
        image = Image.fromarray(np.full((6, 10), 200 * 256, dtype=np.uint16))
        fmt = "PNG"
    else:
        image = rgb.convert(mode)
        fmt = "JPEG" if mode == "CMYK" else "PNG"
    for channels in (1, 3):
        decoded = decode_image(_encode(image, fmt), channels=channels)
        assert decoded.shape == (channels, 6, 10)
        assert abs(int(decoded.float().mean()) - 200) <= 3


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (20, 10), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    decoded = decode_image(_encode(image, "JPEG", exif=exif), channels=3)
    assert decoded.shape == (3, 20, 10)


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"", 400),
        (b"\x00\x01random bytes that are no image", 415),
        (b"<html><body>hello</body></html>", 415),
    ],
)
def test_bad_input_is_an_input_error_with_status(payload, status):
    with pytest.raises(InputError) as caught:
        decode_image(payload, channels=1)
    assert caught.value.status == status
    body = caught.value.to_body()
    assert body["code"] == status and body["message"]


def test_truncated_jpeg_is_400(gray):
    data = _encode(gray.convert("RGB").resize((64, 64)), "JPEG")
    with pytest.raises(InputError) as caught:
        decode_image(data[: len(data) // 2], channels=1)
    assert caught.value.status == 400


def test_pixel_limit_refuses_before_decoding():
    huge = _encode(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(InputError) as caught:
        decode_image(huge, channels=1, limits=ImageLimits(max_pixels=1_000_000))
    assert caught.value.status == 413


def test_preprocess_resizes_normalises_and_is_batch_independent(gray):
    image = torch.from_numpy(np.asarray(gray)).unsqueeze(0)
    big = torch.full((1, 32, 16), 255, dtype=torch.uint8)
    batch = preprocess([image, big], SPEC)
    assert batch.shape == (2, 1, 8, 8) and batch.dtype == torch.float32
    assert torch.allclose(batch[0], (image.float() / 255 - 0.5) / 0.5)
    assert torch.allclose(batch[1], torch.ones(1, 8, 8))
    assert torch.equal(preprocess([big], SPEC)[0], batch[1])


def test_training_loader_and_handler_path_give_the_same_tensor(digits_splits):
    """One preprocessing definition: the evaluation loader and decode(PNG)+preprocess agree."""
    from distillserve.students.data import encode_png, make_loader

    loader = make_loader(digits_splits.test, SPEC, batch_size=16)
    evaluated, _ = next(iter(loader))
    served = preprocess(
        [decode_image(encode_png(digits_splits.test[i][0]), channels=1) for i in range(16)], SPEC
    )
    assert torch.equal(evaluated, served)


# Property-based: whatever the bytes, decoding either gives a uint8 image or raises InputError.
_SEEDS = {
    fmt: _encode(Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)), fmt)
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
}


def _decodes_or_input_error(data: bytes, channels: int) -> None:
    try:
        image = decode_image(data, channels=channels)
    except InputError as err:
        assert 400 <= err.status < 500 and str(err)
        return
    assert image.dtype == torch.uint8 and image.shape[0] == channels and image.ndim == 3


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048), st.sampled_from([1, 3]))
def test_arbitrary_bytes_never_raise_anything_else(data, channels):
    _decodes_or_input_error(data, channels)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(_SEEDS)),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=12),
    st.integers(0, 10_000),
)
def test_corrupted_images_never_raise_anything_else(fmt, flips, cut):
    data = bytearray(_SEEDS[fmt])
    for position, value in flips:
        data[position % len(data)] = value
    _decodes_or_input_error(bytes(data[: max(1, len(data) - cut % len(data))]), 1)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=64),
        st.text(max_size=64),
        st.dictionaries(st.sampled_from(["data", "b64", "x"]), st.text(max_size=32), max_size=2),
        st.integers(),
        st.lists(st.integers(), max_size=3),
    ),
    st.sampled_from([None, "application/json", "application/octet-stream", "text/plain"]),
)
def test_request_payloads_never_raise_anything_else(payload, content_type):
    try:
        data = request_bytes({"body": payload}, content_type)
    except InputError as err:
        assert err.status == 400
        return
    _decodes_or_input_error(data, 1)


def test_large_jpegs_decode_at_reduced_scale_for_the_target_size():
    from distillserve.bench.models import photo_jpegs

    photo = photo_jpegs(1, (640, 480))[0]
    spec = PreprocessSpec((224, 224), 3, (0.5,) * 3, (0.5,) * 3)
    full, scaled = decode_image(photo, 3), decode_image(photo, 3, target_size=(224, 224))
    assert tuple(full.shape) == (3, 480, 640) and tuple(scaled.shape) == (3, 240, 320)
    difference = (preprocess([full], spec) - preprocess([scaled], spec)).abs()
    assert difference.mean() < 0.02  # the same picture, within JPEG's own rounding
    small = _encode(Image.new("RGB", (300, 300), (10, 200, 30)), "JPEG")  # < 2x the target
    assert decode_image(small, 3, target_size=(224, 224)).shape[-2:] == (300, 300)
    png = _encode(Image.new("RGB", (640, 480)), "PNG")  # only JPEG has DCT scaling
    assert decode_image(png, 3, target_size=(224, 224)).shape[-2:] == (480, 640)
