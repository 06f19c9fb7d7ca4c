"""The container image a deployment of these archives runs, with the exact torch and torchvision
the archives were built with (``build-info.json``; a TorchScript file saved by a newer torch may
not load under an older one):

  TorchServe (``export-kserve``)       TorchServe 0.12's CPU image, which ships an older torch;
  Triton (``export-triton --deploy``)  Python 3.11 with the tritonserver nvidia-pytriton 0.7.0
                                       bundles (Triton 2.51, CPU, Python backend), set up as
                                       ``serving/triton_env.py`` sets it up on a host: NumPy 1
                                       for the backend's stub, the stub built for Python 3.11
                                       beside the backend, ``libpython3.11`` on the loader's
                                       path."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from distillserve.archiver.kserve_common import TRITON_BACKENDS
from distillserve.archiver.mar import inspect_archive
from distillserve.errors import ArchiveError

__all__ = [
    "BASE_IMAGE",
    "FORMAT_PACKAGES",
    "RUNTIME_PACKAGES",
    "default_image",
    "dockerfile",
    "runtime_versions",
    "triton_dockerfile",
]

BASE_IMAGE = "pytorch/torchserve:0.12.0-cpu"
# What the handler needs beyond the base image, pinned to the versions the archives record.
RUNTIME_PACKAGES = ("torch", "torchvision")
# What an archive of a format or a task needs beyond those (from the package index, not
# PyTorch's).
FORMAT_PACKAGES = {"onnx": ("onnxruntime",)}
TASK_PACKAGES = {"text-classification": ("tokenizers",)}
# What the Triton image adds: the server and the NumPy its Python-backend stub is built for,
# and what TorchServe's image already has (Pillow, PyYAML).
TRITON_PACKAGES = ("numpy==1.26.4", "nvidia-pytriton==0.7.0")
TRITON_BASE_IMAGE = "python:3.11-slim-bookworm"
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
        needed = FORMAT_PACKAGES.get(info.get("format", "torchscript"), ()) + TASK_PACKAGES.get(
            info.get("task", "image-classification"), ()
        )
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


def default_image(versions: dict[str, str], engine: str = "torchserve") -> str:
    """A name for the image when the user gives none (push it to your registry under yours)."""
    if engine == "triton":
        return f"distillserve-triton:2.51-torch{versions['torch']}"
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


def triton_dockerfile(versions: dict[str, str], with_torch: bool = True) -> str:
    """Python 3.11 with ``versions`` and the bundled tritonserver, its Python backend in
    ``TRITON_BACKENDS`` with the 3.11 stub (``serving.triton_env.TritonDist.backends``);
    without torch and torchvision when every archive is ONNX (``with_torch`` false)."""
    pins = " ".join(f"{name}=={versions[name]}" for name in RUNTIME_PACKAGES)
    extra = " ".join(f"{n}=={v}" for n, v in versions.items() if n not in RUNTIME_PACKAGES)
    torch_line = (
        "RUN python -m pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu"
        f" {pins}\n"
        if with_torch
        else "# ONNX archives only: no torch (the handler core runs on NumPy and ONNX Runtime)\n"
    )
    numpy, pytriton = TRITON_PACKAGES
    site = "/usr/local/lib/python3.11/site-packages"
    server = f"{site}/pytriton/tritonserver"
    backend = f"{TRITON_BACKENDS}/python"
    return (
        "# Written by distillserve export-triton --deploy: Python 3.11 with the torch the\n"
        "# archives were built with (their build-info.json; none for ONNX archives), what their\n"
        "# formats need, and the Triton server nvidia-pytriton bundles (CPU, Python backend).\n"
        "# Build and push it under the name the manifests use:\n"
        "#   docker build -t IMAGE . && docker push IMAGE\n"
        f"FROM {TRITON_BASE_IMAGE}\n"
        + torch_line
        # the stub reads tensors with NumPy 1's layout; pytriton's own pins would pull more
        + f"RUN python -m pip install --no-cache-dir {numpy} pillow pyyaml {extra}\n"
        f"RUN python -m pip install --no-cache-dir --no-deps {pytriton}\n"
        f"RUN mkdir -p {backend} && ln -s {server}/backends/python/* {backend}/ \\\n"
        f" && ln -sf {server}/python_backend_stubs/3.11/triton_python_backend_stub {backend}/ \\\n"
        f" && ln -s {server}/bin/tritonserver /usr/local/bin/tritonserver\n"
        f"ENV LD_LIBRARY_PATH=/usr/local/lib:{site}/nvidia_pytriton.libs\n"
        "USER 1000\n"
    )
