"""Python stubs for TorchServe's gRPC APIs, generated with grpcio-tools from the ``.proto`` files
that ship inside TorchServe's own ``model-server.jar`` (so they always match the server).

They are generated on first use into a per-user cache keyed by the TorchServe version
(``$DISTILLSERVE_CACHE`` or ``~/.cache/distillserve``), never copied into this repository.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

from distillserve.errors import ServerError

__all__ = ["PACKAGE", "load_stubs", "stubs_dir"]

PACKAGE = "torchserve_grpc"
PROTOS = ("inference.proto", "management.proto")


def _jar() -> Path:
    import ts

    jar = Path(ts.__file__).resolve().parent / "frontend" / "model-server.jar"
    if not jar.is_file():
        raise ServerError(f"TorchServe's model-server.jar not found at {jar}")
    return jar


def stubs_dir() -> Path:
    """Where the generated package lives for the installed TorchServe version."""
    root = Path(os.environ.get("DISTILLSERVE_CACHE", Path.home() / ".cache" / "distillserve"))
    return root / f"grpc-torchserve-{metadata.version('torchserve')}"


def _generate(target: Path) -> None:
    import google.rpc
    import grpc_tools
    from grpc_tools import protoc

    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".grpc-", dir=target.parent))
    try:
        source, out = work / "src", work / "out"
        (source / PACKAGE).mkdir(parents=True)
        (out / PACKAGE).mkdir(parents=True)
        with zipfile.ZipFile(_jar()) as jar:
            for name in PROTOS:
                (source / PACKAGE / name).write_bytes(jar.read(f"proto/{name}"))
        includes = [
            source,
            Path(grpc_tools.__file__).parent / "_proto",  # google/protobuf/*.proto
            Path(next(iter(google.rpc.__path__))).parents[1],  # google/rpc/status.proto
        ]
        args = ["grpc_tools.protoc", *(f"-I{p}" for p in includes)]
        args += [f"--python_out={out}", f"--grpc_python_out={out}"]
        args += [f"{PACKAGE}/{name}" for name in PROTOS]
        if protoc.main(args) != 0:
            raise ServerError("grpc_tools.protoc failed to compile TorchServe's .proto files")
        (out / PACKAGE / "__init__.py").write_text('"""Generated from model-server.jar."""\n')
        try:
            (out).rename(target)
        except OSError:  # another process finished first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load_stubs() -> SimpleNamespace:
    """``inference_pb2``, ``inference_pb2_grpc``, ``management_pb2``, ``management_pb2_grpc``."""
    target = stubs_dir()
    if not (target / PACKAGE / "management_pb2_grpc.py").is_file():
        _generate(target)
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    modules = {
        name: importlib.import_module(f"{PACKAGE}.{name}")
        for name in ("inference_pb2", "inference_pb2_grpc", "management_pb2", "management_pb2_grpc")
    }
    return SimpleNamespace(**modules)
