"""KServe v2 / Open Inference Protocol requests and responses, for any task (``core``).

A v2 request is a JSON object ``{"id", "inputs": [{"name", "shape", "datatype", "data"}]}``. Its
first input is read as ``BYTES`` (elements: base64 strings in JSON, raw bytes in binary) or
``FP32`` (a float tensor); what the elements mean is the task adapter's to say (image files,
normalised model input, ...). The binary tensor extension (tritonclient's default) is
understood both ways: a request whose ``Inference-Header-Content-Length`` header splits it into
a JSON header and raw tensor bytes, and a binary answer when the request asks for one
(``binary_data_output`` or an output's ``binary_data``). Every function here returns a value or
raises ``InputError`` for that request alone, whatever a client sends.

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

import numpy as np

try:  # inside this repository
    from .arrays import from_numpy
    from .imageprep import InputError
    from .payloads import b64decode, body_of, parse_json
except ImportError:  # inside a .mar, where the helpers sit flat at the archive root
    from arrays import from_numpy
    from imageprep import InputError
    from payloads import b64decode, body_of, parse_json

__all__ = [
    "HEADER_LENGTH",
    "MAX_DIMS",
    "MAX_ELEMENTS",
    "V2Request",
    "V2Tensor",
    "bytes_element",
    "first_input",
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


@dataclass(frozen=True)
class V2Tensor:
    """A v2 request's first input, checked against the protocol but not against any model:
    ``values`` is a list of BYTES elements (``str`` from JSON, ``bytes`` from binary data) or a
    float32 tensor of ``shape`` (FP32)."""

    name: str
    datatype: str  # BYTES | FP32
    shape: list[int]
    values: Any  # list, or a float32 batch (torch.Tensor; np.ndarray on a host without torch)
    binary: bool = False  # BYTES elements came as binary data (raw bytes, not JSON strings)


def first_input(request: V2Request | dict) -> V2Tensor:
    """The first input tensor of a v2 request, from JSON data or from the binary data after the
    request's JSON header (``InputError`` for anything the protocol does not allow)."""
    if isinstance(request, dict):
        request = V2Request(request)
    inputs = request.body.get("inputs")
    if not isinstance(inputs, list) or not inputs or not isinstance(inputs[0], dict):
        raise InputError('v2 request needs "inputs": [{"name", "shape", "datatype", "data"}]')
    tensor = inputs[0]
    datatype, shape = tensor.get("datatype"), _shape(tensor.get("shape"))
    name = tensor.get("name") if isinstance(tensor.get("name"), str) else ""
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
            elements = _bytes_elements(request.binary[:size], expected)
            return V2Tensor(name, datatype, shape, elements, binary=True)
        return V2Tensor(name, datatype, shape, _tensor_values(tensor.get("data"), shape))
    if size is not None:
        if size != expected * 4:
            raise InputError(f"v2 FP32 binary data is {size} bytes for {expected} values")
        array = np.frombuffer(bytearray(request.binary[:size]), dtype="<f4")
        if not np.isfinite(array).all():
            raise InputError("v2 FP32 input holds NaN or infinite values")
    else:
        array = np.asarray(_fp32(_tensor_values(tensor.get("data"), shape)), dtype=np.float32)
    return V2Tensor(name, datatype, shape, from_numpy(array.reshape(shape)))


def bytes_element(element: Any, binary: bool) -> bytes:
    """One BYTES element as the bytes it carries: a JSON element is base64 text; a binary one
    is the bytes themselves (or, accepted too, their base64 text)."""
    if not binary:
        return b64decode(element, "v2 BYTES element")
    try:
        return base64.b64decode(element, validate=True) if element else element
    except (binascii.Error, ValueError):
        return element


def v2_response(
    request_id: str,
    model_name: str,
    model_version: str,
    outputs: list,
    binary: bool = False,
) -> dict | tuple[bytes, int]:
    """The v2 response for one request from its outputs (``core.V2Output``: name, datatype,
    shape, flat values); with ``binary`` the JSON header and the raw outputs after it, and the
    header's length."""
    tensors = [{"name": o.name, "datatype": o.datatype, "shape": list(o.shape)} for o in outputs]
    answer = {
        "id": request_id,
        "model_name": model_name,
        "model_version": model_version,
        "outputs": tensors,
    }
    if not binary:
        for tensor, output in zip(tensors, outputs):
            tensor["data"] = list(output.values)
        return answer
    raw = [_raw(output.datatype, output.values) for output in outputs]
    for tensor, data in zip(tensors, raw):
        tensor["parameters"] = {"binary_data_size": len(data)}
    header = json.dumps(answer).encode()
    return header + b"".join(raw), len(header)


def _raw(datatype: str, values: list) -> bytes:
    """Values in the binary tensor extension's layout: FP32 little-endian, BOOL one byte each,
    BYTES each as a 4-byte length and its UTF-8 bytes."""
    if datatype == "FP32":
        return struct.pack(f"<{len(values)}f", *values)
    if datatype == "BOOL":
        return bytes(1 if v else 0 for v in values)
    encoded = (v if isinstance(v, bytes) else str(v).encode() for v in values)
    return b"".join(struct.pack("<I", len(b)) + b for b in encoded)
