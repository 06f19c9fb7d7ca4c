"""One TorchServe request -> its image bytes, or an ``InputError`` for that request alone.

TorchServe hands the handler one dict per request: the body under ``body`` or ``data`` (a
multipart form gives one key per field), already passed through ``json.loads`` when the client
said exactly ``application/json`` (a dict, list, str, number, bool or None), decoded to ``str``
for ``text/*``, and raw ``bytes`` otherwise. Whatever a client sends, every function here returns
a value or raises ``InputError``: nothing else escapes, so one request never fails its batch.

Ships inside every .mar next to ``imageprep``; imports nothing from TorchServe.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

try:  # inside this repository
    from .imageprep import InputError
except ImportError:  # inside a .mar, where the helpers sit flat at the archive root
    from imageprep import InputError

__all__ = [
    "BODY_KEYS",
    "b64decode",
    "body_of",
    "content_type_of",
    "is_json_type",
    "parse_json",
    "request_bytes",
]

# Where TorchServe puts a request's payload: the raw body, or multipart fields named so.
BODY_KEYS = ("data", "body", "file")


def body_of(request: dict) -> tuple[str | None, Any]:
    """The first payload key present in ``request`` and its value (``(None, None)`` if none)."""
    for key in BODY_KEYS:
        if request.get(key) is not None:
            return key, request[key]
    return None, None


def content_type_of(headers: dict | None, key: str | None = None) -> str | None:
    """The content type TorchServe saw for the payload ``key`` (its per-parameter header), else the
    request's ``Content-Type`` header, whatever its case."""
    headers = headers if isinstance(headers, dict) else {}
    part = headers.get(key) if key else None
    if isinstance(part, dict) and part.get("content-type"):
        return str(part["content-type"])
    for name, value in headers.items():
        if str(name).lower() == "content-type" and not isinstance(value, dict):
            return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return None


def is_json_type(content_type: str | None) -> bool:
    """``application/json`` with or without parameters (``; charset=utf-8``)."""
    return (content_type or "").split(";")[0].strip().lower() == "application/json"


def parse_json(raw: bytes | bytearray | str) -> Any:
    """A JSON document, or ``InputError`` 400 for text that is not JSON, not UTF-8, or nested
    deeper than the parser's recursion limit."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
        raise InputError("body is not valid JSON", 400, "MalformedRequest") from None
    except RecursionError:
        raise InputError("JSON body is nested too deeply", 400, "MalformedRequest") from None


def b64decode(value: Any, what: str) -> bytes:
    """Strict base64 (``what`` names the field in the error)."""
    if not isinstance(value, str):
        raise InputError(f"{what} must be a base64 string", 400, "MalformedRequest")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):  # non-ASCII text is a ValueError
        raise InputError(f"{what} is not valid base64", 400, "MalformedRequest") from None


def request_bytes(request: dict, content_type: str | None = None) -> bytes:
    """The image bytes of one request.

    Accepts a raw body (``data`` or ``body``), a multipart field named ``data`` or ``file``, or a
    JSON object ``{"data": "<base64>"}`` / ``{"b64": "<base64>"}`` (parsed by TorchServe, or here
    when its content type carries parameters). ``content_type`` tells malformed JSON (400) from a
    body that is not an image (415, decided when the bytes are decoded).
    """
    _, payload = body_of(request)
    if payload is None:
        raise InputError("request has no body: send the image bytes", 400, "EmptyInput")
    if is_json_type(content_type) and isinstance(payload, (bytes, bytearray, str)):
        payload = parse_json(payload)  # TorchServe parses only an exact "application/json"
        if not isinstance(payload, dict):
            raise InputError(
                'JSON body must be an object {"data": "<base64 image>"}', 400, "MalformedRequest"
            )
    if isinstance(payload, dict):
        encoded = payload.get("data", payload.get("b64"))
        if not isinstance(encoded, str):
            raise InputError(
                'JSON body must be {"data": "<base64 image>"} or {"b64": "<base64 image>"}',
                400,
                "MalformedRequest",
            )
        return b64decode(encoded, "JSON field data/b64")
    if isinstance(payload, str):
        return payload.encode("utf-8", errors="surrogatepass")
    if isinstance(payload, (bytes, bytearray)):
        return bytes(payload)
    raise InputError(  # a JSON list, number or bool parsed by TorchServe
        f'JSON body must be an object {{"data": "<base64 image>"}}, not {type(payload).__name__}',
        400,
        "MalformedRequest",
    )
