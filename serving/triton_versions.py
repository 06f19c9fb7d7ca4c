"""Model versions on a running Triton engine: register, unregister, rollback and scale through
Triton's model-repository API (``TritonEngine.load`` / ``unload``; the engine runs in explicit
model-control mode).

A model's folder in the repository holds one numbered version per archive (``1``, ``2``, ...),
each the signed archive unpacked unchanged, and ``versions.json`` mapping the numbers to the
archives' own versions. Its ``config.pbtxt`` (version policy ``all``) comes from the newest
archive. Triton serves every version at ``/v2/models/M/versions/N``, and an unversioned request
by the highest: the newest version registered is the default, and a rollback retires it. Each
change is written to the repository, then loaded; Triton swaps in what changed without a gap,
and when the load fails the repository is put back as it was (what Triton had loaded stays).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from distillserve.archiver.mar import ArchiveError, inspect_archive
from distillserve.archiver.signing import Trust
from distillserve.archiver.triton import (
    model_config,
    read_versions,
    unpack_version,
    write_versions,
)
from distillserve.errors import ServerError
from distillserve.serving.triton_engine import TritonEngine

__all__ = ["TritonVersion", "number_of", "register", "rollback", "scale", "unregister", "versions"]

CONFIG = "config.pbtxt"
_INSTANCES = re.compile(r"count: (\d+)")
_SIGNATURE = re.compile(r"^(?:max_batch_size|input|output)\b.*?(?=^\w)", re.S | re.M)


@dataclass(frozen=True)
class TritonVersion:
    """One version of a model in the engine's repository, and Triton's state for it."""

    model: str
    number: int
    archive_version: str
    state: str
    default: bool


def versions(engine: TritonEngine) -> list[TritonVersion]:
    """Every version in the repository, with Triton's state (READY, UNAVAILABLE, ...); the
    default of a model is its highest READY version."""
    states = {
        (entry["name"], int(entry["version"])): entry.get("state") or "UNLOADED"
        for entry in engine.repository_index()
        if str(entry.get("version", "")).isdigit()
    }
    rows = []
    for folder in sorted(p.parent for p in engine.repository.glob(f"*/{CONFIG}")):
        numbers = read_versions(folder)
        ready = [n for n in numbers if states.get((folder.name, n)) == "READY"]
        for number, archive_version in sorted(numbers.items()):
            state = states.get((folder.name, number), "UNLOADED")
            default = bool(ready) and number == max(ready)
            rows.append(TritonVersion(folder.name, number, archive_version, state, default))
    return rows


def number_of(engine: TritonEngine, model: str, archive_version: str) -> str:
    """Triton's version number serving ``model``'s archive version ``archive_version``."""
    numbers = read_versions(_folder(engine, model))
    by_version = {v: n for n, v in numbers.items()}
    if archive_version not in by_version:
        raise ServerError(
            f"{model} has no version {archive_version} (it has: {', '.join(by_version)})"
        )
    return str(by_version[archive_version])


def register(
    engine: TritonEngine, archive: Path, trust: Trust, model_name: str | None = None
) -> TritonVersion:
    """Verify ``archive`` and serve it as the next version of its model (a new model when the
    name is new); it becomes the default. Refused: an archive version already there, or a
    signature (inputs, outputs, batch size) other than the model's."""
    info = inspect_archive(archive, trust)
    name = model_name or info["model_name"]
    fmt = info["build_info"].get("format", "unknown")
    if engine.without_torch and fmt != "onnx":
        raise ServerError(
            f"{archive} is a {fmt} model and this engine runs its models without torch (it "
            "started with ONNX models only): start it with --with-torch to serve it"
        )
    folder = engine.repository / name
    numbers = read_versions(folder)
    taken = {v: n for n, v in numbers.items()}
    if info["version"] in taken:
        raise ServerError(
            f"{name} {info['version']} is already served (Triton version "
            f"{taken[info['version']]}): unregister it first"
        )
    number = max(numbers, default=0) + 1
    with _Change(engine, folder):
        version_dir = unpack_version(archive, folder, number)
        config = model_config(version_dir, name, _instances(folder))
        if numbers and _signature(config) != _signature((folder / CONFIG).read_text()):
            raise ArchiveError(
                f"{archive} does not fit model {name}: its inputs, outputs or batch size differ "
                "from the versions served (register it under another --model-name)"
            )
        (folder / CONFIG).write_text(config)
        write_versions(folder, {**numbers, number: info["version"]})
        engine.load(name)
    return TritonVersion(name, number, info["version"], "READY", True)


def unregister(engine: TritonEngine, model: str, archive_version: str) -> TritonVersion:
    """Stop serving one version of ``model`` and remove it from the repository (the whole
    model when it was the last one)."""
    folder = _folder(engine, model)
    numbers = read_versions(folder)
    number = int(number_of(engine, model, archive_version))
    left = {n: v for n, v in numbers.items() if n != number}
    if not left:
        engine.unload(model)
        shutil.rmtree(folder)
    else:
        with _Change(engine, folder):
            shutil.rmtree(folder / str(number))
            newest = folder / str(max(left))
            (folder / CONFIG).write_text(model_config(newest, model, _instances(folder)))
            write_versions(folder, left)
            engine.load(model)
    return TritonVersion(model, number, archive_version, "UNLOADED", False)


def rollback(engine: TritonEngine, model: str) -> tuple[str, str]:
    """Retire the newest version of ``model`` so that the one before it is the default again;
    ``(retired, restored)`` archive versions."""
    numbers = read_versions(_folder(engine, model))
    if len(numbers) < 2:
        raise ServerError(f"{model} has one version: nothing to roll back to")
    newest, before = sorted(numbers)[-1], sorted(numbers)[-2]
    unregister(engine, model, numbers[newest])
    return numbers[newest], numbers[before]


def scale(engine: TritonEngine, model: str, instances: int) -> None:
    """Serve every version of ``model`` with ``instances`` model instances (processes)."""
    if instances < 1:
        raise ServerError(f"scale {model}: at least 1 instance, not {instances}")
    folder = _folder(engine, model)
    with _Change(engine, folder):
        config = (folder / CONFIG).read_text()
        (folder / CONFIG).write_text(_INSTANCES.sub(f"count: {instances}", config, count=1))
        engine.load(model)


def _folder(engine: TritonEngine, model: str) -> Path:
    folder = engine.repository / model
    if not (folder / CONFIG).is_file():
        known = ", ".join(sorted(p.parent.name for p in engine.repository.glob(f"*/{CONFIG}")))
        raise ServerError(f"the Triton engine has no model {model!r} (it has: {known or 'none'})")
    return folder


def _instances(folder: Path) -> int | None:
    """The model's instance count as served now (a ``scale`` outlives a new version)."""
    try:
        found = _INSTANCES.search((folder / CONFIG).read_text())
    except OSError:
        return None
    return int(found.group(1)) if found else None


def _signature(config: str) -> list[str]:
    """What every version of a model shares: batch size, inputs and outputs."""
    return _SIGNATURE.findall(config + "\nend")


class _Change:
    """A change to one model's folder: on failure the folder is put back as it was (Triton
    keeps what it had loaded when a load fails), so repository and server agree."""

    def __init__(self, engine: TritonEngine, folder: Path) -> None:
        self.folder = folder
        self.backup = engine.run_dir / f".backup-{folder.name}"

    def __enter__(self) -> _Change:
        shutil.rmtree(self.backup, ignore_errors=True)
        if self.folder.exists():
            shutil.copytree(self.folder, self.backup, symlinks=True)
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            if self.backup.exists():
                shutil.copytree(self.backup, self.folder, symlinks=True)
        shutil.rmtree(self.backup, ignore_errors=True)
