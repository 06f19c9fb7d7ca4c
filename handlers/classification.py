"""Framework-free pieces of the classification handler: settings, request payloads, top-k answers.

Ships inside every .mar next to ``imageprep``; imports nothing from TorchServe.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

try:  # inside this repository
    from .imageprep import ImageLimits, InputError, PreprocessSpec
except ImportError:  # inside a .mar, where the helpers sit flat at the archive root
    from imageprep import ImageLimits, InputError, PreprocessSpec

__all__ = [
    "HandlerSettings",
    "content_type_of",
    "parse_v2_inputs",
    "ranked",
    "request_bytes",
    "sha256_file",
    "thread_count",
    "topk_answers",
    "v2_payload",
    "v2_response",
    "verify_checksum",
]

_ENGINES = ("x86", "fbgemm", "qnnpack", "onednn")


@dataclass(frozen=True)
class HandlerSettings:
    """The ``handler:`` section of ``model-config.yaml`` (from handler.yaml)."""

    spec: PreprocessSpec
    topk: int = 3
    quantized: bool = False
    engine: str = "x86"
    threads: int = 0
    warmup_iterations: int = 2
    limits: ImageLimits = field(default_factory=ImageLimits)

    @classmethod
    def from_dict(cls, settings: dict) -> HandlerSettings:
        """Parse and check the settings; a ``ValueError`` names the bad key."""
        missing = [k for k in ("image_size", "channels", "mean", "std") if k not in settings]
        if missing:
            raise ValueError(f"handler settings lack {', '.join(missing)}")
        engine = str(settings.get("engine", "x86"))
        if engine not in _ENGINES:
            raise ValueError(f"handler.engine is {engine!r}; allowed: {', '.join(_ENGINES)}")
        topk = int(settings.get("topk", 3))
        if topk < 1:
            raise ValueError(f"handler.topk must be >= 1, got {topk}")
        defaults = ImageLimits()
        limits = ImageLimits(
            max_bytes=int(settings.get("max_bytes", defaults.max_bytes)),
            max_pixels=int(settings.get("max_pixels", defaults.max_pixels)),
            max_side_ratio=float(settings.get("max_side_ratio", defaults.max_side_ratio)),
        )
        return cls(
            spec=PreprocessSpec.from_dict(settings),
            topk=topk,
            quantized=bool(settings.get("quantized", False)),
            engine=engine,
            threads=int(settings.get("threads", 0)),
            warmup_iterations=int(settings.get("warmup_iterations", 2)),
            limits=limits,
        )


def thread_count(configured: int, workers: int, cores: int | None = None) -> int:
    """Intra-op threads for one worker: the configured number, or cores ÷ workers (at least 1)."""
    if configured > 0:
        return configured
    cores = cores or len(os.sched_getaffinity(0))
    return max(1, cores // max(1, workers))


def request_bytes(request: dict, content_type: str | None = None) -> bytes:
    """The image bytes of one TorchServe request.

    Accepts a raw body (``data`` or ``body``), a multipart field named ``data`` or ``file``, or a
    JSON object ``{"data": "<base64>"}`` / ``{"b64": "<base64>"}``. ``content_type`` is the
    request's header, used to tell malformed JSON (400) from a body that is not an image (415).
    """
    payload = None
    for key in ("data", "body", "file"):
        if request.get(key) is not None:
            payload = request[key]
            break
    if payload is None:
        raise InputError("request has no body: send the image bytes", 400, "EmptyInput")
    is_json = (content_type or "").split(";")[0].strip().lower() == "application/json"
    if isinstance(payload, dict):
        encoded = payload.get("data", payload.get("b64"))
        if not isinstance(encoded, str):
            raise InputError(
                'JSON body must be {"data": "<base64 image>"} or {"b64": "<base64 image>"}',
                400,
                "MalformedRequest",
            )
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InputError("JSON field is not valid base64", 400, "MalformedRequest") from None
    if is_json:
        raise InputError(
            'body is not valid JSON; send {"data": "<base64 image>"} or raw image bytes',
            400,
            "MalformedRequest",
        )
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    if isinstance(payload, (bytes, bytearray)):
        return bytes(payload)
    raise InputError(
        f"unsupported request payload ({type(payload).__name__})", 400, "MalformedRequest"
    )


def content_type_of(headers: dict | None) -> str | None:
    """The Content-Type among a request's headers, whatever their case."""
    for key, value in (headers or {}).items():
        if str(key).lower() == "content-type":
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def ranked(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` probabilities and class indices per row. A stable sort, so equal scores (common
    with int8 models, whose outputs are discrete) rank the lower class index first, exactly as
    ``argmax`` does; ``topk`` leaves the order of ties unspecified."""
    probabilities = torch.softmax(logits.float(), dim=1)
    values, indices = torch.sort(probabilities, dim=1, descending=True, stable=True)
    k = min(k, probabilities.shape[1])
    return values[:, :k], indices[:, :k]


def topk_answers(logits: torch.Tensor, mapping: dict[str, str], k: int) -> list[dict[str, float]]:
    """One ``{label: probability}`` dict per row, the ``k`` most probable labels first."""
    values, indices = ranked(logits, k)
    return [
        {mapping.get(str(i), str(i)): round(v, 6) for v, i in zip(row_v, row_i)}
        for row_v, row_i in zip(values.tolist(), indices.tolist())
    ]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(model_dir: Path, model_file: str = "model.pt") -> None:
    """Refuse a model file whose sha256 differs from the one in ``build-info.json``."""
    info_path = model_dir / "build-info.json"
    if not info_path.is_file():
        raise RuntimeError(
            f"{info_path.name} is missing from the archive: cannot verify {model_file}"
        )
    expected = json.loads(info_path.read_text())["sha256"][model_file]
    actual = sha256_file(model_dir / model_file)
    if actual != expected:
        raise RuntimeError(
            f"{model_file} does not match build-info.json (sha256 {actual} != "
            f"{expected}): the archive was altered or corrupted; rebuild it"
        )


def v2_payload(request: dict) -> dict | None:
    """The body of a KServe v2 / Open Inference Protocol request (``{"inputs": [...]}``), if any.

    TorchServe parses the body only when the client says ``application/json``; tritonclient sends
    no content type, so a raw body that is a JSON object is parsed here too.
    """
    for key in ("body", "data"):
        value = request.get(key)
        if isinstance(value, (bytes, bytearray, str)) and value[:1] in (b"{", "{"):
            try:
                value = json.loads(value)
            except ValueError:
                return None
        if isinstance(value, dict) and "inputs" in value:
            return value
    return None


def _flatten(values) -> list:
    if isinstance(values, list):
        return [item for value in values for item in _flatten(value)]
    return [values]


def parse_v2_inputs(body: dict, spec: PreprocessSpec) -> tuple[str, list[bytes] | torch.Tensor]:
    """The first input tensor of a v2 request as ``("images", [encoded image bytes, ...])`` for
    BYTES (base64 strings) or ``("tensor", float (N, C, H, W))`` for FP32 model input."""
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs or not isinstance(inputs[0], dict):
        raise InputError('v2 request needs "inputs": [{"name", "shape", "datatype", "data"}]')
    tensor = inputs[0]
    datatype, shape, data = tensor.get("datatype"), tensor.get("shape"), tensor.get("data")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InputError('v2 input needs "shape" as a list of non-negative integers')
    values = _flatten(data) if data is not None else []
    expected = 1
    for dim in shape:
        expected *= dim
    if len(values) != expected or expected == 0:
        raise InputError(f"v2 input has {len(values)} values for shape {shape}")
    if datatype == "BYTES":
        images = []
        for value in values:
            if not isinstance(value, str):
                raise InputError("v2 BYTES input must hold base64-encoded images as strings")
            try:
                images.append(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                raise InputError("v2 BYTES input is not valid base64") from None
        return "images", images
    if datatype == "FP32":
        model_shape = [spec.channels, *spec.image_size]
        if shape[-3:] != model_shape or len(shape) not in (3, 4):
            raise InputError(
                f"v2 FP32 input must have shape [N, {', '.join(map(str, model_shape))}]"
            )
        try:
            batch = torch.tensor(values, dtype=torch.float32).reshape(-1, *model_shape)
        except (TypeError, ValueError, RuntimeError):
            raise InputError("v2 FP32 input holds values that are not numbers") from None
        if not torch.isfinite(batch).all():
            raise InputError("v2 FP32 input holds NaN or infinite values")
        return "tensor", batch
    raise InputError(f"v2 input datatype {datatype!r} is not supported (BYTES or FP32)", 400)


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
