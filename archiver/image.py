"""The container image a deployment of these archives runs: TorchServe 0.12's CPU image with
the exact torch and torchvision the archives were built with (``build-info.json``), since the
image ships an older torch and a TorchScript file saved by a newer torch may not load there."""

from __future__ import annotations

from pathlib import Path

from distillserve.archiver.mar import inspect_archive
from distillserve.errors import ArchiveError

__all__ = ["BASE_IMAGE", "RUNTIME_PACKAGES", "default_image", "dockerfile", "runtime_versions"]

BASE_IMAGE = "pytorch/torchserve:0.12.0-cpu"
# What the handler needs beyond the base image, pinned to the versions the archives record.
RUNTIME_PACKAGES = ("torch", "torchvision")


def runtime_versions(mars: list[Path]) -> dict[str, str]:
    """The versions of ``RUNTIME_PACKAGES`` every archive was built with; ``ArchiveError`` when
    they differ between archives (one image serves them all) or one does not say."""
    found: dict[str, set[str]] = {name: set() for name in RUNTIME_PACKAGES}
    for mar in mars:
        versions = inspect_archive(mar)["build_info"].get("versions", {})
        for name in RUNTIME_PACKAGES:
            found[name].add(str(versions.get(name, "unknown")).split("+")[0])
    for name, values in found.items():
        if "unknown" in values:
            raise ArchiveError(f"an archive does not record its {name} version: rebuild it")
        if len(values) > 1:
            raise ArchiveError(
                f"the archives were built with different {name} versions "
                f"({', '.join(sorted(values))}): one image cannot serve them all"
            )
    return {name: values.pop() for name, values in found.items()}


def default_image(versions: dict[str, str]) -> str:
    """A name for the image when the user gives none (push it to your registry under yours)."""
    return f"distillserve-torchserve:0.12.0-torch{versions['torch']}"


def dockerfile(versions: dict[str, str]) -> str:
    pins = " ".join(f"{name}=={version}" for name, version in versions.items())
    return (
        "# Written by distillserve export-kserve: TorchServe 0.12's CPU image with the torch the\n"
        "# archives were built with (their build-info.json). Build and push it under the name\n"
        "# the manifests use:  docker build -t IMAGE . && docker push IMAGE\n"
        f"FROM {BASE_IMAGE}\n"
        "USER root\n"
        "RUN python -m pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu"
        f" {pins}\n"
        "USER model-server\n"
    )
