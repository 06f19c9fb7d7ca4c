"""KServe v2 / Open Inference Protocol requests and responses for the classification handler.

A v2 request is a JSON object ``{"id", "inputs": [{"name", "shape", "datatype", "data"}]}``. The
first input is either ``BYTES`` (base64-encoded image files, decoded like any other request) or
``FP32`` (model input, already normalised, shaped ``[N, C, H, W]``). Every function here returns
a value or raises ``InputError`` for that request alone, whatever JSON value a client sends.

Ships inside every .mar next to ``imageprep``; imports nothing from TorchServe.
"""

from __future__ import annotations

import math
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
    "MAX_DIMS",
    "MAX_ELEMENTS",
    "parse_v2_inputs",
    "v2_payload",
    "v2_request_id",
    "v2_response",
]

MAX_DIMS = 8  # more dimensions than any image tensor has
MAX_ELEMENTS = 1 << 24  # 16 M values: far beyond what max_request_size lets through


def v2_payload(request: dict) -> dict | None:
    """The body of a v2 request (a JSON object with ``inputs``), or ``None`` for anything else.

    TorchServe parses the body only when the client says exactly ``application/json``;
    tritonclient sends no content type, so a raw body that starts like a JSON object is parsed
    here (``InputError`` when it is not valid JSON).
    """
    _, value = body_of(request)
    if isinstance(value, (bytes, bytearray, str)) and value[:1] in (b"{", "{"):
        try:
            value = parse_json(value)
        except InputError:
            return None  # not JSON after all: treated (and refused) as an image body
    if isinstance(value, dict) and "inputs" in value:
        return value
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


def parse_v2_inputs(body: dict, spec: PreprocessSpec) -> tuple[str, list[bytes] | torch.Tensor]:
    """The first input tensor of a v2 request as ``("images", [encoded image bytes, ...])`` for
    BYTES (base64 strings) or ``("tensor", float (N, C, H, W))`` for FP32 model input."""
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs or not isinstance(inputs[0], dict):
        raise InputError('v2 request needs "inputs": [{"name", "shape", "datatype", "data"}]')
    tensor = inputs[0]
    datatype, shape = tensor.get("datatype"), _shape(tensor.get("shape"))
    expected = math.prod(shape)
    if expected > MAX_ELEMENTS:
        raise InputError(f"v2 input shape {shape} has more than {MAX_ELEMENTS} values", 413)
    if expected == 0:
        raise InputError(f"v2 input shape {shape} holds no values")
    values = _tensor_values(tensor.get("data"), shape)
    if datatype == "BYTES":
        return "images", [b64decode(value, "v2 BYTES element") for value in values]
    if datatype == "FP32":
        model_shape = [spec.channels, *spec.image_size]
        if shape[-3:] != model_shape or len(shape) not in (3, 4):
            raise InputError(
                f"v2 FP32 input must have shape [N, {', '.join(map(str, model_shape))}]"
            )
        batch = torch.tensor(_fp32(values), dtype=torch.float32)
        return "tensor", batch.reshape(-1, *model_shape)
    raise InputError("v2 input datatype must be BYTES or FP32", 400)


def v2_response(
    request_id: str,
    model_name: str,
    model_version: str,
    logits: torch.Tensor,
    mapping: dict[str, str],
    k: int,
) -> dict:
    """The v2 response for one request: top-k ``probabilities`` (FP32) and ``labels`` (BYTES)."""
    values, indices = ranked(logits, k)
    labels = [mapping.get(str(i), str(i)) for i in indices.flatten().tolist()]
    shape = [int(logits.shape[0]), int(indices.shape[1])]
    return {
        "id": request_id,
        "model_name": model_name,
        "model_version": model_version,
        "outputs": [
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": shape,
                "data": [round(v, 6) for v in values.flatten().tolist()],
            },
            {"name": "labels", "datatype": "BYTES", "shape": shape, "data": labels},
        ],
    }
