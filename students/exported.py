"""Model files the build (and the tools after it) load back through the handler's runtimes, with
the handler's errors translated at this boundary: a file the handler cannot load is an
``ExportError`` naming it (``distillserve.errors.map_exceptions``), never a traceback."""

from __future__ import annotations

from pathlib import Path

from distillserve.errors import ExportError, map_exceptions
from distillserve.handlers.runtimes import Runtime, load_runtime

__all__ = ["HANDLER_ERRORS", "load_exported"]

# What the handler's helpers raise (RuntimeLoadError is a RuntimeError; a bad setting a
# ValueError), and what they become on the build's side.
HANDLER_ERRORS = {RuntimeError: ExportError, ValueError: ExportError, OSError: ExportError}


def load_exported(path: str | Path, threads: int = 0) -> Runtime:
    """``handlers.runtimes.load_runtime`` on the CPU, its failures an ``ExportError``."""
    with map_exceptions(HANDLER_ERRORS, f"{Path(path).name}: "):
        return load_runtime(path, threads=threads)
