"""Signed ``.mar`` archives -> a Triton model repository (``distillserve export-triton``).

Each archive is verified (signature, checksum, labels, batch size: ``inspect_archive`` under the
caller's trust) and unpacked, unchanged, as version ``1`` of a Triton model named like the
archive's model (``versions.json`` beside it maps Triton's numbered versions to the archives'
own; ``serving.triton_versions`` adds and retires versions on a running engine); its
``config.pbtxt`` runs the archive's own handler core in Triton's Python
backend (``handlers/triton_model.py``, named by ``default_model_filename``, so that nothing is
added to the signed files and the handler verifies them again when Triton loads it):

  max_batch_size, dynamic_batching   the archive's ``batchSize`` and ``maxBatchDelay``
                                     (preferred size: the batch size);
  instance_group                     ``maxWorkers`` CPU instances (each its own process, with
                                     the archive's threads); for workers the build chose
                                     ``auto`` (one per core), one per core of the host that
                                     serves: this host's usable cores, or ``cores`` (a pod's
                                     CPU limit for ``export-triton --deploy``);
  version_policy                     all: every version of the folder is served, an
                                     unversioned request by the highest (the newest);
  input / output                     the task adapter's v2 tensors (``describe``): ``images``
                                     (encoded image files) or ``input`` (normalised FP32) for an
                                     image model, ``text`` for a text model; ``probabilities``
                                     and ``labels`` (and ``truncated`` for text).

The bundled server (nvidia-pytriton's) has the Python backend only; the ONNX Runtime backend
is not there to split decoding from the model, so one Python-backend model serves each archive.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from distillserve.archiver.mar import ArchiveError, inspect_archive
from distillserve.archiver.signing import Trust
from distillserve.handlers.serving_policy import workers_of

__all__ = [
    "TRITON_ENTRY",
    "VERSIONS_FILE",
    "TritonModel",
    "export_triton",
    "instance_count",
    "instances_served",
    "model_config",
    "model_formats",
    "needs_torch",
    "read_versions",
    "unpack_version",
    "write_versions",
]

TRITON_ENTRY = "triton_model.py"
VERSIONS_FILE = "versions.json"  # {Triton's version number: the archive's version}
# v2 datatypes -> Triton's config datatypes
_TYPES = {"FP32": "TYPE_FP32", "BYTES": "TYPE_STRING", "BOOL": "TYPE_BOOL"}


@dataclass(frozen=True)
class TritonModel:
    """One model of the repository: its name, the archive's version and where it lives."""

    name: str
    archive_version: str
    path: Path


def export_triton(
    archives: list[Path], out: Path, trust: Trust, *, force: bool = False, cores: int | None = None
) -> list[TritonModel]:
    """Write a Triton model repository for ``archives`` under ``out``; every archive is
    verified first and nothing is written unless all of them pass (``ArchiveError``).
    ``cores``: the serving host's, for archives whose workers are one per core (default: this
    host's usable cores)."""
    infos = [(Path(a), inspect_archive(a, trust)) for a in archives]
    names = [info["model_name"] for _, info in infos]
    if len(set(names)) != len(names):
        raise ArchiveError(f"two archives of one model name in {', '.join(map(str, archives))}")
    if out.exists() and any(out.iterdir()) and not force:
        raise ArchiveError(f"{out} is not empty: choose a new folder or pass --force")
    models = []
    for archive, info in infos:
        folder = out / info["model_name"]
        if folder.exists():
            shutil.rmtree(folder)
        version_dir = unpack_version(archive, folder, 1)
        config = model_config(version_dir, info["model_name"], cores=cores)
        (folder / "config.pbtxt").write_text(config)
        write_versions(folder, {1: info["version"]})
        models.append(TritonModel(info["model_name"], info["version"], folder))
    return models


def unpack_version(archive: Path, folder: Path, number: int) -> Path:
    """The archive unpacked, unchanged, as version ``number`` of the model in ``folder``."""
    version_dir = folder / str(number)
    version_dir.mkdir(parents=True)
    with zipfile.ZipFile(archive) as mar:
        mar.extractall(version_dir)
    return version_dir


def read_versions(folder: Path) -> dict[int, str]:
    """Triton's version numbers of the model in ``folder`` and the archive version of each
    (from ``versions.json``; for a repository written without one, from each numbered
    folder's MANIFEST.json)."""
    try:
        saved = json.loads((folder / VERSIONS_FILE).read_text())
    except (OSError, ValueError):
        saved = {}
        for manifest in folder.glob("[0-9]*/MAR-INF/MANIFEST.json"):
            number = manifest.parent.parent.name
            if number.isdigit():
                model = json.loads(manifest.read_text()).get("model", {})
                saved[number] = str(model.get("modelVersion", number))
    return {int(number): str(version) for number, version in saved.items()}


def model_formats(repository: Path) -> dict[str, set[str]]:
    """The formats (``onnx``, ``torchscript``, ``pt2``) each model of ``repository`` serves,
    over all its versions (each version's build-info.json)."""
    formats: dict[str, set[str]] = {}
    for info in repository.glob("*/[0-9]*/build-info.json"):
        model = info.parent.parent.name
        fmt = json.loads(info.read_text()).get("format") or "unknown"
        formats.setdefault(model, set()).add(fmt)
    return formats


def needs_torch(repository: Path) -> bool:
    """Whether a model of ``repository`` needs torch: every format but ONNX does (an ONNX
    student runs on ONNX Runtime and NumPy alone)."""
    return any(f != {"onnx"} for f in model_formats(repository).values())


def write_versions(folder: Path, versions: dict[int, str]) -> None:
    (folder / VERSIONS_FILE).write_text(json.dumps(dict(sorted(versions.items())), indent=2))


def model_config(
    version_dir: Path, name: str, instances: int | None = None, cores: int | None = None
) -> str:
    """``config.pbtxt`` of model ``name`` from the archive unpacked in ``version_dir`` (its
    batch settings and signature); ``instances`` overrides the archive's worker count, which
    for workers chosen one per core is ``cores`` (default: this host's usable cores)."""
    settings = yaml.safe_load((version_dir / "model-config.yaml").read_text()) or {}
    manifest = json.loads((version_dir / "MAR-INF" / "MANIFEST.json").read_text())
    signature = _signature(version_dir, settings, manifest)
    batch = int(settings.get("batchSize", 1))
    delay_us = int(float(settings.get("maxBatchDelay", 0)) * 1000)
    if instances is None:
        instances = instance_count(version_dir, settings, cores)
    optional = len(signature["inputs"]) > 1  # a request sends one of the model's inputs
    inputs = [_tensor(t, optional=optional) for t in signature["inputs"]]
    # outputs of any length per row: top-k is at most the number of labels
    outputs = [_tensor({**t, "shape": [-1] * len(t["shape"])}) for t in signature["outputs"]]
    return "\n".join(
        [
            f'name: "{name}"',
            'backend: "python"',
            f'default_model_filename: "{TRITON_ENTRY}"',
            "version_policy: { all { } }",
            f"max_batch_size: {batch}",
            "input [\n" + ",\n".join(inputs) + "\n]",
            "output [\n" + ",\n".join(outputs) + "\n]",
            "dynamic_batching {",
            f"  preferred_batch_size: [ {batch} ]",
            f"  max_queue_delay_microseconds: {delay_us}",
            "}",
            f"instance_group [ {{ kind: KIND_CPU count: {instances} }} ]",
            "",
        ]
    )


def instance_count(version_dir: Path, settings: dict, cores: int | None = None) -> int:
    """Model instances for the archive in ``version_dir`` (``serving_policy.workers_of``: one
    per core of ``cores``, else of this host, for workers the build chose that way)."""
    return workers_of(settings, _serving(version_dir), cores)


def instances_served(folder: Path) -> tuple[int, bool]:
    """``(instance count, whether it is one per core)`` of the model in ``folder``, as its
    ``config.pbtxt`` and newest version's build-info say."""
    found = re.search(r"count:\s*(\d+)", (folder / "config.pbtxt").read_text())
    per_core = bool(_serving(folder / str(max(read_versions(folder), default=1))).get("per_core"))
    return (int(found.group(1)) if found else 1), per_core


def _serving(version_dir: Path) -> dict:
    """What the archive's build chose for serving (build-info's ``serving``; {} without)."""
    try:
        return json.loads((version_dir / "build-info.json").read_text()).get("serving") or {}
    except (OSError, ValueError):
        return {}


def _signature(version_dir: Path, settings: dict, manifest: dict) -> dict:
    """The task adapter's v2 inputs and outputs (``describe``), from the archive's own files."""
    from distillserve.handlers import classification, served_model

    handler = classification.HandlerSettings.from_dict(settings.get("handler", {}))
    mapping = json.loads((version_dir / "index_to_name.json").read_text())
    adapter = served_model.make_adapter(
        served_model.task_of(manifest), handler, mapping, version_dir, None
    )
    return adapter.describe()


def _tensor(tensor: dict, *, optional: bool = False) -> str:
    """One input or output of ``config.pbtxt``: the v2 shape without its batch dimension (a
    request's items are rows of the batch: one encoded image or text per row, ``[1]``)."""
    dims = list(tensor["shape"][1:]) or [1]
    body = [
        f'name: "{tensor["name"]}"',
        f"data_type: {_TYPES[tensor['datatype']]}",
        f"dims: [ {', '.join(map(str, dims))} ]",
    ]
    if optional:
        body.append("optional: true")
    return "  { " + " ".join(body) + " }"
