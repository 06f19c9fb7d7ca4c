"""KServe v2 / Open Inference Protocol requests and responses for the classification handler.

A v2 request is a JSON object ``{"id", "inputs": [{"name", "shape", "datatype", "data"}]}``. The
first input is either ``BYTES`` (image files: base64 strings in JSON, the files themselves in
binary) or ``FP32`` (model input, already normalised with the model's mean/std, shaped
``[N, C, H, W]``). The binary tensor extension (tritonclient's default) is understood both ways: a
request whose ``Inference-Header-Content-Length`` header splits it into a JSON header and raw
tensor bytes, and a binary answer when the request asks for one (``binary_data_output`` or an
output's ``binary_data``). Every function here returns a value or raises ``InputError`` for that
request alone, whatever a client sends.

Ships inside every .mar next to ``imageprep``; imports nothing from TorchServe.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import torch

try:  # inside this repository
    from .classification import ranked
    from .imageprep import InputError, PreprocessSpec
    from .payloads import b64decode, body_of, parse_json
except ImportError:  # inside a .mar, where the helpers sit flat at the archive root
    from classification import ranked
    from imageprep import InputError, PreprocessSpec
    from payloads import b64decode, body_of, parse_json

__all__ = [
    "HEADER_LENGTH",
    "MAX_DIMS",
    "MAX_ELEMENTS",
    "V2Request",
    "parse_v2_inputs",
    "v2_payload",
    "v2_request_id",
    "v2_response",
]

MAX_DIMS = 8  # more dimensions than any image tensor has
MAX_ELEMENTS = 1 << 24  # 16 M values: far beyond what max_request_size lets through


HEADER_LENGTH = "inference-header-content-length"


@dataclass(frozen=True)
class V2Request:
    """A parsed v2 request: its JSON header, the binary tensor data after it, and whether the
    answer should be binary."""

    body: dict
    binary: bytes = b""

    @property
    def binary_output(self) -> bool:
        parameters = self.body.get("parameters")
        if isinstance(parameters, dict) and parameters.get("binary_data_output") is True:
            return True
        outputs = self.body.get("outputs")
        return isinstance(outputs, list) and any(
            isinstance(o, dict)
            and isinstance(o.get("parameters"), dict)
            and o["parameters"].get("binary_data") is True
            for o in outputs
        )


def _header_length(headers: dict | None) -> int | None:
    for name, value in (headers or {}).items():
        if str(name).lower() == HEADER_LENGTH and not isinstance(value, dict):
            try:
                return int(value)
            except (TypeError, ValueError):
                raise InputError(
                    "Inference-Header-Content-Length must be an integer", 400, "MalformedRequest"
                ) from None
    return None


def v2_payload(request: dict, headers: dict | None = None) -> V2Request | None:
    """The v2 request in ``request``, or ``None`` for anything else.

    With an ``Inference-Header-Content-Length`` request header the body is a JSON header of that
    many bytes followed by binary tensor data. Otherwise TorchServe has parsed the body only when
    the client said exactly ``application/json``; tritonclient sends no content type, so a raw
    body that starts like a JSON object is parsed here.
    """
    _, value = body_of(request)
    length = _header_length(headers)
    if length is not None and isinstance(value, (bytes, bytearray)):
        if not 0 < length <= len(value):
            raise InputError(
                f"Inference-Header-Content-Length is {length} for a body of {len(value)} bytes",
                400,
                "MalformedRequest",
            )
        body = parse_json(bytes(value[:length]))
        if not isinstance(body, dict) or "inputs" not in body:
            raise InputError('v2 request header needs "inputs"', 400, "MalformedRequest")
        return V2Request(body, bytes(value[length:]))
    if isinstance(value, (bytes, bytearray, str)) and value[:1] in (b"{", "{"):
        try:
            value = parse_json(value)
        except InputError:
            return None  # not JSON after all: treated (and refused) as an image body
    if isinstance(value, dict) and "inputs" in value:
        return V2Request(value)
    return None


def v2_request_id(body: dict) -> str | None:
    """The request's ``id`` (a string; a number is accepted and written as one)."""
    value = body.get("id")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise InputError('v2 "id" must be a string', 400, "MalformedRequest")


def _shape(value: Any) -> list[int]:
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= MAX_DIMS
        or not all(type(d) is int and d >= 0 for d in value)
    ):
        raise InputError(
            f'v2 input needs "shape" as a list of 1 to {MAX_DIMS} non-negative integers',
            400,
            "MalformedRequest",
        )
    return value


def _tensor_values(data: Any, shape: list[int]) -> list:
    """The row-major values of a v2 ``data`` field: a flat list of ``prod(shape)`` scalars, or
    lists nested exactly as ``shape`` says (no ragged or deeper nesting). Iterative, so no
    nesting depth can exhaust the stack."""
    if not isinstance(data, list):
        raise InputError('v2 input needs "data" as a list', 400, "MalformedRequest")
    if not any(isinstance(item, list) for item in data):
        if len(data) != math.prod(shape):
            raise InputError(f"v2 input has {len(data)} values for shape {shape}")
        return data
    values: list = []
    stack = [(data, 0)]
    while stack:
        item, level = stack.pop()
        if level == len(shape):
            if isinstance(item, list):
                raise InputError('v2 input "data" is nested deeper than its shape')
            values.append(item)
        elif not isinstance(item, list) or len(item) != shape[level]:
            raise InputError(f'v2 input "data" is not nested as its shape {shape}')
        else:
            stack.extend((child, level + 1) for child in reversed(item))
    return values


def _fp32(values: list) -> list[float]:
    numbers = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError("v2 FP32 input holds values that are not numbers")
        try:
            number = float(value)
        except OverflowError:
            raise InputError("v2 FP32 input holds a number too large for FP32") from None
        if not math.isfinite(number) or abs(number) > 3.4e38:
            raise InputError("v2 FP32 input holds NaN, infinite or out-of-range values")
        numbers.append(number)
    return numbers


def _binary_size(tensor: dict) -> int | None:
    parameters = tensor.get("parameters")
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None and (type(size) is not int or size < 0):
        raise InputError("binary_data_size must be a non-negative integer")
    return size


def _bytes_elements(raw: bytes, count: int) -> list[bytes]:
    """BYTES in binary form: each element a 4-byte little-endian length and that many bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InputError("v2 binary BYTES data ends inside an element's length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise InputError("v2 binary BYTES element runs past the end of the data")
        elements.append(raw[offset : offset + size])
        offset += size
    if len(elements) != count:
        raise InputError(f"v2 binary BYTES input has {len(elements)} elements for {count}")
    return elements


def _image_bytes(element: bytes) -> bytes:
    """A binary BYTES element: the image file itself, or (accepted too) its base64 text."""
    try:
        return base64.b64decode(element, validate=True) if element else element
    except (binascii.Error, ValueError):
        return element


def parse_v2_inputs(
    request: V2Request | dict, spec: PreprocessSpec
) -> tuple[str, list[bytes] | torch.Tensor]:
    """The first input tensor of a v2 request as ``("images", [encoded image bytes, ...])`` for
    BYTES or ``("tensor", float (N, C, H, W))`` for FP32 model input, from JSON data or from the
    binary data after the request's JSON header."""
    if isinstance(request, dict):
        request = V2Request(request)
    inputs = request.body.get("inputs")
    if not isinstance(inputs, list) or not inputs or not isinstance(inputs[0], dict):
        raise InputError('v2 request needs "inputs": [{"name", "shape", "datatype", "data"}]')
    tensor = inputs[0]
    datatype, shape = tensor.get("datatype"), _shape(tensor.get("shape"))
    expected = math.prod(shape)
    if expected > MAX_ELEMENTS:
        raise InputError(f"v2 input shape {shape} has more than {MAX_ELEMENTS} values", 413)
    if expected == 0:
        raise InputError(f"v2 input shape {shape} holds no values")
    if datatype not in ("BYTES", "FP32"):
        raise InputError("v2 input datatype must be BYTES or FP32", 400)
    size = _binary_size(tensor)
    if size is not None and len(request.binary) < size:
        raise InputError(f"binary_data_size is {size} but {len(request.binary)} bytes follow")
    if datatype == "BYTES":
        if size is not None:
            raw = _bytes_elements(request.binary[:size], expected)
            return "images", [_image_bytes(element) for element in raw]
        values = _tensor_values(tensor.get("data"), shape)
        return "images", [b64decode(value, "v2 BYTES element") for value in values]
    model_shape = [spec.channels, *spec.image_size]
    if shape[-3:] != model_shape or len(shape) not in (3, 4):
        raise InputError(f"v2 FP32 input must have shape [N, {', '.join(map(str, model_shape))}]")
    if size is not None:
        if size != expected * 4:
            raise InputError(f"v2 FP32 binary data is {size} bytes for {expected} values")
        batch = torch.frombuffer(bytearray(request.binary[:size]), dtype=torch.float32)
        if not torch.isfinite(batch).all():
            raise InputError("v2 FP32 input holds NaN or infinite values")
    else:
        batch = torch.tensor(_fp32(_tensor_values(tensor.get("data"), shape)))
    return "tensor", batch.reshape(-1, *model_shape)


def v2_response(
    request_id: str,
    model_name: str,
    model_version: str,
    logits: torch.Tensor,
    mapping: dict[str, str],
    k: int,
    binary: bool = False,
) -> dict | tuple[bytes, int]:
    """The v2 response for one request: top-k ``probabilities`` (FP32) and ``labels`` (BYTES);
    with ``binary`` the JSON header and the raw outputs after it, and the header's length."""
    values, indices = ranked(logits, k)
    labels = [mapping.get(str(i), str(i)) for i in indices.flatten().tolist()]
    shape = [int(logits.shape[0]), int(indices.shape[1])]
    probabilities = [round(v, 6) for v in values.flatten().tolist()]
    outputs = [
        {"name": "probabilities", "datatype": "FP32", "shape": shape},
        {"name": "labels", "datatype": "BYTES", "shape": shape},
    ]
    answer = {
        "id": request_id,
        "model_name": model_name,
        "model_version": model_version,
        "outputs": outputs,
    }
    if not binary:
        outputs[0]["data"], outputs[1]["data"] = probabilities, labels
        return answer
    raw = [
        struct.pack(f"<{len(probabilities)}f", *probabilities),
        b"".join(struct.pack("<I", len(b)) + b for b in (label.encode() for label in labels)),
    ]
    for output, data in zip(outputs, raw):
        output["parameters"] = {"binary_data_size": len(data)}
    header = json.dumps(answer).encode()
    return header + b"".join(raw), len(header)
