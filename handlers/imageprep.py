"""Image bytes -> model input, in two framework-free steps shared by training, evaluation, serving.

``decode_image`` turns one request's bytes into a ``uint8`` tensor shaped ``(C, H, W)`` with the
model's channel count; ``preprocess`` turns a list of such tensors into one normalised ``float32``
batch ``(N, C, H, W)``. ``students`` evaluates with exactly these functions, so an image scored in
process and the same image sent to TorchServe as a lossless file give the same tensor.

This module ships inside every .mar: it may import only the standard library, NumPy, Pillow and,
where they are installed, torch and torchvision. Without torch (an ONNX student on a host with
onnxruntime, Pillow and NumPy alone) images are NumPy arrays and resized by Pillow's bilinear
filter, which the antialiased torchvision resize reproduces to within one grey level (measured
on photos and random images); an image already at the model's size is not resized at all.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:
    import torch
    from torchvision.transforms.v2 import functional as F
except ImportError:  # an ONNX-only host: NumPy arrays and Pillow's resize
    torch = F = None

__all__ = [
    "ImageLimits",
    "InputError",
    "PreprocessSpec",
    "decode_image",
    "preprocess",
]

_MODES = {1: "L", 3: "RGB"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}


class InputError(ValueError):
    """One request's input is not a usable image; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400, kind: str = "InvalidInput") -> None:
        self.status = status
        self.kind = kind
        super().__init__(message)

    def to_body(self) -> dict:
        """The JSON body sent back for this request alone: ``code``, ``type`` and ``message``,
        and the same message as ``error``, the field KServe v2 clients (tritonclient) read."""
        return {"code": self.status, "type": self.kind, "message": str(self), "error": str(self)}


@dataclass(frozen=True)
class ImageLimits:
    """Limits checked before an image is decoded, so a decompression bomb never is.

    The defaults sit well below Pillow's own bomb threshold (~89 megapixels); TorchServe's
    ``max_request_size`` in config.properties is set to admit ``max_bytes`` sent as base64 JSON.
    """

    max_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 25_000_000
    max_side_ratio: float = 20.0


@dataclass(frozen=True)
class PreprocessSpec:
    """How raw pixels become the model's input: size, channels, and per-channel mean/std."""

    image_size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.channels not in _MODES:
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"mean and std need {self.channels} value(s) each, got {self.mean} and {self.std}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be > 0, got {self.std}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be [height, width] >= 1, got {self.image_size}")

    @classmethod
    def from_dict(cls, settings: dict) -> PreprocessSpec:
        """Build from the ``handler:`` settings (lists from YAML become tuples)."""
        size = settings["image_size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        return cls(
            image_size=(int(size[0]), int(size[1])),
            channels=int(settings["channels"]),
            mean=tuple(float(m) for m in settings["mean"]),
            std=tuple(float(s) for s in settings["std"]),
        )

    def to_dict(self) -> dict:
        return {
            "image_size": list(self.image_size),
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def decode_image(
    data: bytes,
    channels: int,
    limits: ImageLimits = ImageLimits(),
    target_size: tuple[int, int] | None = None,
):
    """Decode one still image in any Pillow format to ``uint8`` ``(channels, H, W)``.

    With ``target_size`` (the model's ``(height, width)``) a JPEG at least twice as large on both
    sides is decoded at a reduced scale (libjpeg's DCT scaling: 1/2, 1/4 or 1/8) that keeps both
    sides at or above the target's longest side, which cuts decode time by 2-4x on photos before
    the antialiased resize. Training (``students.data``) and serving decode the same way.

    EXIF orientation is applied, animated images give their first frame, 16-bit images are scaled
    to 8 bits, and every mode is converted to grayscale (``channels=1``) or RGB (``channels=3``).
    Raises ``InputError`` (and nothing else) for input that is empty, too large or not an image.
    """
    if not data:
        raise InputError("empty request body: send the image bytes", 400, "EmptyInput")
    if len(data) > limits.max_bytes:
        raise InputError(
            f"image is {len(data)} bytes; the limit is {limits.max_bytes}", 413, "TooLarge"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. corrupt EXIF/TIFF tags: noise
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_size(image.size, limits)
            if target_size is not None and image.format == "JPEG":
                side = max(target_size)  # square: EXIF may still rotate the image by 90 degrees
                image.draft(_MODES[channels], (side, side))
            image.seek(0)
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # no copy when there is nothing to do
            image = _to_mode(image, _MODES[channels])
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(
            "body is not an image in a format Pillow can read", 415, "NotAnImage"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InputError(f"image has too many pixels: {err}", 413, "TooLarge") from None
    except Exception as err:  # Pillow raises many types for corrupt data (OSError, SyntaxError...)
        raise InputError(f"image could not be decoded: {err}", 400, "UndecodableImage") from None
    pixels = np.array(image, dtype=np.uint8)  # a writable copy: torch may share its memory
    pixels = np.ascontiguousarray(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))
    return pixels if torch is None else torch.from_numpy(pixels)


def preprocess(images: Sequence, spec: PreprocessSpec):
    """Resize each ``uint8`` image to ``spec.image_size``, stack, scale to [0, 1] and normalise.

    Each image is resized on its own (antialiased bilinear), so the result for an image never
    depends on the other images in the batch.
    """
    if torch is None:
        return _preprocess_numpy(images, spec)
    if not images:
        return torch.empty((0, spec.channels, *spec.image_size))
    size = list(spec.image_size)
    resized = [
        img if tuple(img.shape[-2:]) == spec.image_size else F.resize(img, size, antialias=True)
        for img in images
    ]
    batch = torch.stack(resized).float().div_(255.0)
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return batch.sub_(mean).div_(std)


def _preprocess_numpy(images: Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """``preprocess`` without torch: Pillow's bilinear resize (antialiased when reducing)."""
    if not images:
        return np.empty((0, spec.channels, *spec.image_size), dtype=np.float32)
    height, width = spec.image_size
    resized = []
    for img in images:
        if tuple(img.shape[-2:]) != spec.image_size:
            picture = Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0))
            array = np.asarray(picture.resize((width, height), Image.BILINEAR))
            img = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        resized.append(img)
    batch = np.stack(resized).astype(np.float32)  # in place from here, as the torch path
    batch /= np.float32(255.0)
    batch -= np.asarray(spec.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    batch /= np.asarray(spec.std, dtype=np.float32).reshape(1, -1, 1, 1)
    return batch


def _check_size(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise InputError(f"image has no pixels ({width}x{height})", 400, "UndecodableImage")
    if width * height > limits.max_pixels:
        raise InputError(
            f"image is {width}x{height} = {width * height} pixels; "
            f"the limit is {limits.max_pixels}",
            413,
            "TooLarge",
        )
    if max(width, height) / min(width, height) > limits.max_side_ratio:
        raise InputError(
            f"image is {width}x{height}; the longest side may be at most "
            f"{limits.max_side_ratio:g} times the shortest",
            413,
            "TooLarge",
        )


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        pixels = np.asarray(image, dtype=np.uint16) >> 8
        image = Image.fromarray(pixels.astype(np.uint8), mode="L")
    elif image.mode in ("I", "F"):
        pixels = np.clip(np.asarray(image, dtype=np.float64), 0, 255)
        image = Image.fromarray(pixels.astype(np.uint8), mode="L")
    return image if image.mode == mode else image.convert(mode)
