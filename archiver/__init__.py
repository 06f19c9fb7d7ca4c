"""Package: a student artifact -> a TorchServe ``.mar`` (through torch-model-archiver's API),
``.mar`` files -> a KServe / Kubernetes layout, ``config.properties``, and the model store's
index.

The names below are imported on first use (PEP 562), so that the light modules of this package
(``properties``, ``signing``) do not pull torch into every command that reads a config."""

from __future__ import annotations

import importlib

__all__ = ["ArchiveResult", "Registry", "build_archive", "inspect_archive"]

_HOME = {
    "ArchiveResult": "mar",
    "build_archive": "mar",
    "inspect_archive": "mar",
    "Registry": "registry",
}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
