"""How text becomes a text classifier's input, for training and serving alike.

``TextSpec`` is the contract between a build and its handler (the ``handler:`` settings of a
text archive): the tokenizer file, the longest sequence the model takes (special tokens
included), what happens past it (``truncate`` and say so, or ``refuse``), and the largest
request body read at all. ``load_tokenizer`` opens the ``tokenizers`` file (no ``transformers``,
no Hub) with truncation at ``max_length`` and padding to the longest sequence of each call;
``encode_batch`` tokenizes a whole batch in that one call; ``text_of`` turns one request's body
into its text or an ``InputError`` for that request alone.

The model takes token ids alone: its attention mask is ``ids != pad_id`` (padding never occurs
inside a text), so one integer tensor ``(batch, length)`` is the input of every format.

Ships inside every .mar; imports flat there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # inside this repository
    from .arrays import as_int64
    from .imageprep import InputError
    from .payloads import body_of, is_json_type, parse_json
except ImportError:  # inside a .mar, where the helpers sit flat at the archive root
    from arrays import as_int64
    from imageprep import InputError
    from payloads import body_of, is_json_type, parse_json

__all__ = [
    "TASK",
    "TOO_LONG",
    "TextSpec",
    "configure",
    "encode_batch",
    "load_tokenizer",
    "text_of",
]

TASK = "text-classification"
TOO_LONG = ("truncate", "refuse")
TEXT_KEYS = ("text", "data")  # a JSON request's field holding the text


@dataclass(frozen=True)
class TextSpec:
    """A text model's input contract (see the module docstring)."""

    max_length: int = 128
    too_long: str = "truncate"  # truncate (and answer "truncated": true) | refuse (413)
    max_bytes: int = 65536  # a body over this is refused (413) before it is decoded
    pad_id: int = 0
    tokenizer: str = "tokenizer.json"
    lowercase: bool = True  # what the tokenizer's normaliser does (recorded, not applied here)

    def __post_init__(self) -> None:
        if self.max_length < 3:
            raise ValueError(f"max_length must be >= 3, got {self.max_length}")
        if self.too_long not in TOO_LONG:
            raise ValueError(f"too_long must be one of {', '.join(TOO_LONG)}, got {self.too_long}")
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {self.max_bytes}")

    @classmethod
    def from_dict(cls, settings: dict) -> TextSpec:
        """Build from the ``handler:`` settings."""
        defaults = cls()
        return cls(
            max_length=int(settings.get("max_length", defaults.max_length)),
            too_long=str(settings.get("too_long", defaults.too_long)),
            max_bytes=int(settings.get("max_bytes", defaults.max_bytes)),
            pad_id=int(settings.get("pad_id", defaults.pad_id)),
            tokenizer=str(settings.get("tokenizer", defaults.tokenizer)),
            lowercase=bool(settings.get("lowercase", defaults.lowercase)),
        )

    def to_dict(self) -> dict:
        return {
            "task": TASK,
            "max_length": self.max_length,
            "too_long": self.too_long,
            "max_bytes": self.max_bytes,
            "pad_id": self.pad_id,
            "tokenizer": self.tokenizer,
            "lowercase": self.lowercase,
        }


def load_tokenizer(path: str | Path, spec: TextSpec):
    """The ``tokenizers`` file at ``path``, configured by ``configure``."""
    from tokenizers import Tokenizer

    return configure(Tokenizer.from_file(str(path)), spec)


def configure(tokenizer, spec: TextSpec):
    """``tokenizer`` truncating at ``spec.max_length`` and padding each call's texts to the
    longest of them with ``spec.pad_id`` (as the handler and the build both use it)."""
    tokenizer.enable_truncation(max_length=spec.max_length)
    pad_token = tokenizer.id_to_token(spec.pad_id) or "[PAD]"
    tokenizer.enable_padding(pad_id=spec.pad_id, pad_token=pad_token)
    return tokenizer


def encode_batch(tokenizer, texts: Sequence[str]) -> tuple[Any, list[bool]]:
    """Token ids ``(len(texts), longest)`` (int64; a torch tensor where torch is installed)
    from one call of the fast tokenizer, and whether each text was truncated."""
    encodings = tokenizer.encode_batch(list(texts))
    ids = as_int64([e.ids for e in encodings])
    return ids, [bool(e.overflowing) for e in encodings]


def too_long(tokenizer, text: str) -> bool:
    """Whether ``text`` is longer than the tokenizer's truncation length."""
    return bool(tokenizer.encode(text).overflowing)


def check_text(text: str, spec: TextSpec) -> str:
    """``text`` when it is a usable request; ``InputError`` otherwise."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates, from JSON "\\ud800"
        raise InputError("text is not valid Unicode (lone surrogate)", 400, "InvalidText") from None
    if size > spec.max_bytes:
        raise InputError(
            f"text is {size} bytes, over this model's limit of {spec.max_bytes}", 413, "TooLarge"
        )
    if not text.strip():
        raise InputError("text is empty or whitespace only", 400, "EmptyInput")
    return text


def _check_size(raw: bytes, spec: TextSpec) -> None:
    """A body over ``max_bytes`` is refused (413) before it is decoded or parsed."""
    if len(raw) > spec.max_bytes:
        raise InputError(
            f"body is {len(raw)} bytes, over this model's limit of {spec.max_bytes}",
            413,
            "TooLarge",
        )


def utf8_text(raw: bytes, spec: TextSpec) -> str:
    """Raw bytes as text: refused over ``max_bytes`` before decoding, and when not UTF-8."""
    _check_size(raw, spec)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("text is not valid UTF-8", 400, "InvalidText") from None


def text_of(request: dict, content_type: str | None, spec: TextSpec) -> str:
    """One request's text: a raw UTF-8 body, or JSON ``{"text": ...}`` / ``{"data": ...}``
    (parsed by TorchServe for exactly ``application/json``, here when the type has parameters; a
    string TorchServe hands over is the text); ``InputError`` for that request alone."""
    _, payload = body_of(request)
    if payload is None:
        raise InputError("request has no body: send the text", 400, "EmptyInput")
    if isinstance(payload, (bytes, bytearray)):
        if is_json_type(content_type):
            _check_size(bytes(payload), spec)
            payload = parse_json(bytes(payload))
        else:
            payload = utf8_text(bytes(payload), spec)
    return check_text(_json_text(payload), spec)


def _json_text(payload: Any) -> str:
    """The text of a decoded body: a string, or an object's ``text``/``data`` string."""
    if isinstance(payload, str):
        return payload
    if isinstance(payload, dict):
        for key in TEXT_KEYS:
            if key in payload:
                value = payload[key]
                if isinstance(value, str):
                    return value
                raise InputError(
                    f'JSON field "{key}" must be a string, not {type(value).__name__}',
                    400,
                    "MalformedRequest",
                )
    shape = type(payload).__name__ if not isinstance(payload, dict) else "an object without it"
    raise InputError(
        f'JSON body must be {{"text": "..."}} or {{"data": "..."}}, not {shape}',
        400,
        "MalformedRequest",
    )
