"""Decoding and preprocessing shared by evaluation and the handler."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from handlers.imageprep import ImageLimits, InputError, PreprocessSpec, decode_image, preprocess

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
    from scripts.demo import encode_png
    from students.data import make_loader

    loader = make_loader(digits_splits.test, SPEC, batch_size=16)
    evaluated, _ = next(iter(loader))
    served = preprocess(
        [decode_image(encode_png(digits_splits.test[i][0]), channels=1) for i in range(16)], SPEC
    )
    assert torch.equal(evaluated, served)
