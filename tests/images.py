"""Test images built in memory: every format and mode the handler must take, and hostile ones."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def format_variants(digit: np.ndarray) -> dict[str, bytes]:
    """One 8x8 uint8 digit as every still format and mode listed in the handler's contract."""
    gray = Image.fromarray(digit, mode="L").resize((32, 32), Image.NEAREST)
    rgb = gray.convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 3  # displayed rotated by 180 degrees
    rotated = rgb.rotate(180)
    sixteen = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)
    return {
        "png-gray8": save(gray, "PNG"),
        "png-gray16": save(sixteen, "PNG"),
        "png-palette": save(rgb.convert("P"), "PNG"),
        "png-rgba": save(rgb.convert("RGBA"), "PNG"),
        "png-rgb": save(rgb, "PNG"),
        "jpeg-rgb": save(rgb, "JPEG", quality=95),
        "jpeg-gray": save(gray, "JPEG", quality=95),
        "jpeg-cmyk": save(rgb.convert("CMYK"), "JPEG", quality=95),
        "jpeg-exif-rotated": save(rotated, "JPEG", quality=95, exif=exif),
        "jpeg-progressive": save(rgb, "JPEG", quality=95, progressive=True),
        "gif": save(gray, "GIF"),
        "webp": save(rgb, "WEBP", lossless=True),
        "bmp": save(rgb, "BMP"),
        "tiff": save(gray, "TIFF"),
    }


def pixel_bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid 1-bit PNG of width x height pixels (900 megapixels by default) in ~110 kB,
    written chunk by chunk so that the test never holds the pixels in memory."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )
