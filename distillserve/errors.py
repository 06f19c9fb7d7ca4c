"""The toolkit's one exception tree. Command-line entry points turn these into one-line errors.

DistillServeError
 ├── RecipeError        a recipe key or value is wrong (names the key and what is allowed)
 ├── DataError          a dataset path or content is unusable
 ├── QuantizationError  an engine or mode cannot quantize this model
 ├── ExportError        an export (TorchScript, .pt2, ONNX), its re-loading or parity check failed
 ├── ArchiveError       an artifact directory or archive is incomplete or inconsistent
 └── ServerError        TorchServe could not be started, stopped or reached, or refused a call
      └── ConnectionFailed   the server could not be reached, or dropped the connection
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = [
    "ArchiveError",
    "ConnectionFailed",
    "DataError",
    "DistillServeError",
    "ExportError",
    "QuantizationError",
    "RecipeError",
    "ServerError",
    "map_exceptions",
]


class DistillServeError(Exception):
    """Base of every error the toolkit raises on purpose."""


class RecipeError(DistillServeError):
    """A recipe key is unknown, missing or has an invalid value."""

    def __init__(self, key: str | None, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"recipe key '{key}': {message}" if key else f"recipe: {message}")


class DataError(DistillServeError):
    """A dataset cannot be read or does not have the expected layout."""


class QuantizationError(DistillServeError):
    """Quantization cannot run as configured."""


class ExportError(DistillServeError):
    """A model could not be exported to a format, or the re-loaded file failed its parity check
    (fp32 within ``export.atol`` of the eager model; int8 top-1 agreement)."""


class ArchiveError(DistillServeError):
    """An artifact directory or a .mar is missing files or is inconsistent."""


class ServerError(DistillServeError):
    """TorchServe failed to start or stop, or answered a request with an error: ``status`` is
    the HTTP status, ``code`` the gRPC status name, when there was one."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        self.status = status
        self.code = code
        super().__init__(message)


class ConnectionFailed(ServerError):
    """The server could not be reached, or the connection broke before an answer arrived."""


@contextlib.contextmanager
def map_exceptions(
    mapping: dict[type[Exception], type[DistillServeError]], context: str = ""
) -> Iterator[None]:
    """Translate a lower layer's exceptions into this tree at a boundary (as httpx's
    ``map_exceptions``): the first ``mapping`` entry the exception is an instance of names the
    error raised, with ``context`` before its message; the original stays as its cause."""
    try:
        yield
    except DistillServeError:
        raise
    except tuple(mapping) as err:
        for source, target in mapping.items():
            if isinstance(err, source):
                raise target(f"{context}{err}") from err
        raise
