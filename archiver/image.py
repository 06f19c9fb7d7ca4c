"""The container image a deployment of these archives runs: TorchServe 0.12's CPU image with
the exact torch and torchvision the archives were built with (``build-info.json``), since the
image ships an older torch and a TorchScript file saved by a newer torch may not load there."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from distillserve.archiver.mar import inspect_archive
from distillserve.errors import ArchiveError

__all__ = [
    "BASE_IMAGE",
    "FORMAT_PACKAGES",
    "RUNTIME_PACKAGES",
    "default_image",
    "dockerfile",
    "runtime_versions",
]

BASE_IMAGE = "pytorch/torchserve:0.12.0-cpu"
# What the handler needs beyond the base image, pinned to the versions the archives record.
RUNTIME_PACKAGES = ("torch", "torchvision")
# What an archive of a format needs beyond those (from the package index, not PyTorch's).
FORMAT_PACKAGES = {"onnx": ("onnxruntime",)}
# What the handler verifies archive signatures with (this host's versions).
SIGNING_PACKAGES = ("model-signing", "pyopenssl")


def _installed(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def runtime_versions(mars: list[Path]) -> dict[str, str]:
    """The versions of ``RUNTIME_PACKAGES`` every archive was built with, and of the packages
    their formats need (``FORMAT_PACKAGES``; this host's version for an archive that does not
    record it); ``ArchiveError`` when they differ between archives (one image serves them all)
    or one does not record its torch."""
    found: dict[str, set[str]] = {name: set() for name in RUNTIME_PACKAGES}
    for mar in mars:
        info = inspect_archive(mar)["build_info"]
        versions = info.get("versions", {})
        needed = FORMAT_PACKAGES.get(info.get("format", "torchscript"), ())
        for name in (*RUNTIME_PACKAGES, *needed):
            recorded = versions.get(name) or (_installed(name) if name in needed else "unknown")
            found.setdefault(name, set()).add(str(recorded).split("+")[0])
    for name, values in found.items():
        if "unknown" in values:
            raise ArchiveError(f"an archive does not record its {name} version: rebuild it")
        if len(values) > 1:
            raise ArchiveError(
                f"the archives were built with different {name} versions "
                f"({', '.join(sorted(values))}): one image cannot serve them all"
            )
    pins = {name: values.pop() for name, values in found.items()}
    return {**pins, **{name: _installed(name) for name in SIGNING_PACKAGES}}


def default_image(versions: dict[str, str]) -> str:
    """A name for the image when the user gives none (push it to your registry under yours)."""
    return f"distillserve-torchserve:0.12.0-torch{versions['torch']}"


def dockerfile(versions: dict[str, str]) -> str:
    """TorchServe's CPU image with ``versions`` installed: torch from PyTorch's CPU index, the
    format packages (onnxruntime for ONNX archives) from the package index."""
    pins = " ".join(f"{name}=={versions[name]}" for name in RUNTIME_PACKAGES)
    extra = " ".join(f"{n}=={v}" for n, v in versions.items() if n not in RUNTIME_PACKAGES)
    return (
        "# Written by distillserve export-kserve: TorchServe 0.12's CPU image with the torch the\n"
        "# archives were built with (their build-info.json) and what their formats need. Build\n"
        "# and push it under the name the manifests use:  docker build -t IMAGE . && docker push\n"
        f"FROM {BASE_IMAGE}\n"
        "USER root\n"
        "RUN python -m pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu"
        f" {pins}\n"
        + (f"RUN python -m pip install --no-cache-dir {extra}\n" if extra else "")
        + "USER model-server\n"
    )
