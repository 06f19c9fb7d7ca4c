"""``distillserve cpp-check``: run a student from LibTorch C++ and compare it with Python.

Builds ``cpp/`` (one small program, ``distill_check``) with CMake against the installed torch
wheel's own libtorch (cached in ``build/cpp/``), writes the artifact's test split as a tensor file
the program reads, runs the TorchScript ``model.pt`` and the AOTInductor ``model.pt2`` through it,
and checks that the C++ accuracy and every top-1 label equal Python's for the same file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import torch

from distillserve.errors import ArchiveError
from distillserve.handlers.runtimes import MODEL_FILES
from distillserve.students.artifact import Artifact
from distillserve.students.exported import load_exported

__all__ = ["CPP_FORMATS", "CPP_SOURCE", "build_program", "cpp_check", "missing_toolchain"]

CPP_SOURCE = Path(__file__).resolve().parents[1] / "cpp"
CPP_FORMATS = ("torchscript", "pt2")  # what LibTorch runs; ONNX is ONNX Runtime's
BATCH = 64  # the program's batch; Python runs the same batches


def missing_toolchain() -> str | None:
    """Why the C++ program cannot be built here (no CMake or C++ compiler), or ``None``."""
    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    return f"no {' and no '.join(missing)} on PATH" if missing else None


def build_program(build_dir: str | Path = "build/cpp") -> Path:
    """Configure (once) and build ``cpp/`` into ``build_dir``; the program's path."""
    reason = missing_toolchain()
    if reason:
        raise ArchiveError(f"cannot build the C++ program: {reason}")
    if not (CPP_SOURCE / "CMakeLists.txt").is_file():
        raise ArchiveError(f"the C++ sources are not at {CPP_SOURCE} (a source checkout has them)")
    build_dir = Path(build_dir).resolve()
    torch_root = Path(torch.__file__).parent
    if not (build_dir / "CMakeCache.txt").is_file():
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        _run(
            [
                "cmake",
                "-S",
                str(CPP_SOURCE),
                "-B",
                str(build_dir),
                *generator,
                "-DCMAKE_BUILD_TYPE=Release",
                f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                f"-DTORCH_ROOT={torch_root}",
            ]
        )
    _run(["cmake", "--build", str(build_dir), "--parallel", str(os.cpu_count() or 1)])
    return build_dir / "distill_check"


def _run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise ArchiveError(f"{' '.join(command[:2])} failed: " + " | ".join(tail))
    return done.stdout


def write_split(artifact: Artifact, path: Path) -> torch.Tensor:
    """The artifact recipe's test split, preprocessed as the handler does, saved as
    ``(images, labels)`` for the program; returns the images."""
    from distillserve.students.recipe import Recipe
    from distillserve.students.stages import load_data

    data = load_data(Recipe.from_dict(artifact.recipe), lambda _message: None)
    images = torch.cat([inputs for inputs, _ in data.test])
    labels = torch.cat([targets for _, targets in data.test])
    torch.save((images, labels), path)
    return images, labels


def _python(model_path: Path, images: torch.Tensor) -> list[int]:
    """Python's top-1 labels for the same file, batches and threads."""
    model = load_exported(model_path, threads=1)
    with torch.inference_mode():
        return [
            int(label)
            for start in range(0, len(images), BATCH)
            for label in model(images[start : start + BATCH]).argmax(1)
        ]


def cpp_check(artifact_dir: str | Path, build_dir: str | Path = "build/cpp") -> dict:
    """C++ against Python for each LibTorch format the artifact has: accuracy, labels, latency.
    ``same`` is True only when every format's C++ labels equal Python's."""
    artifact = Artifact.read(artifact_dir)
    formats = [f for f in CPP_FORMATS if f in artifact.formats]
    if not formats:
        raise ArchiveError(f"{artifact_dir} has neither model.pt nor model.pt2 for LibTorch")
    program = build_program(build_dir)
    split = Path(build_dir).resolve() / "test-split.pt"
    images, labels = write_split(artifact, split)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = {}
        for fmt in formats:
            model_path = artifact.directory / MODEL_FILES[fmt]
            out = _run([str(program), str(model_path), str(split), "1", artifact.handler.engine])
            cpp = json.loads(out.strip().splitlines()[-1])
            python = _python(model_path, images)
            python_accuracy = sum(p == int(y) for p, y in zip(python, labels)) / len(labels)
            results[fmt] = {
                "cpp_accuracy": cpp["accuracy"],
                "python_accuracy": python_accuracy,
                "same_labels": sum(a == b for a, b in zip(cpp["predictions"], python)),
                "samples": len(python),
                "cpp_latency_ms_batch1": cpp["latency_ms_batch1"],
                "cpp_latency_ms_batch8": cpp["latency_ms_batch8"],
            }
    finally:
        torch.set_num_threads(previous)
    same = all(r["same_labels"] == r["samples"] for r in results.values())
    return {"artifact": str(artifact.directory), "program": str(program), "same": same, **results}
