"""Build a ``.mar`` from a student artifact directory (``students.artifact`` owns its layout).

The archive carries one model file (``model.pt``, ``model.pt2`` or ``model.onnx``: the artifact's
primary format, or ``format``), the handler module and its helper modules (so an inference host
needs only torchserve and torch, plus onnxruntime for ONNX), ``index_to_name.json``, a
``model-config.yaml`` (batching, workers, timeout, and the ``handler:`` settings) and
``build-info.json`` (the format, the model file's sha256, versions, metrics, recipe).
torch-model-archiver does the packing; every build stages in its own temporary directory and the
finished file is moved into the model store atomically.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

import yaml

from distillserve.archiver.identity import ArchiveIdentity, label_tuple, refuse_to_overwrite
from distillserve.archiver.labels import archive_labels
from distillserve.archiver.model_probe import probe
from distillserve.archiver.registry import Registry
from distillserve.archiver.serving_measure import resolve as resolve_serving
from distillserve.archiver.signing import Trust, sign_mar, signing_key, verify_mar
from distillserve.errors import ArchiveError, RecipeError
from distillserve.handlers.classification import checked_labels, sha256_file, sha256_stream
from distillserve.handlers.serving_policy import PolicyError, ServingChoice, check_batch_size
from distillserve.students.artifact import Artifact
from distillserve.students.recipe import ArchiveConfig

__all__ = [
    "HANDLER_FILES",
    "ArchiveResult",
    "archive_file_name",
    "archiver_tempdir",
    "build_archive",
    "handler_files",
    "inspect_archive",
    "package_versions",
    "sha256_file",
]

# The handler and its helpers, shipped flat at the root of every .mar (from the installed
# package): the task's handler module and adapter, then the core every task shares.
HANDLER_PACKAGE = "distillserve.handlers"
HANDLER_MODULE = "distill_classifier.py"
TEXT_HANDLER_MODULE = "distill_text_classifier.py"
CORE_FILES = (
    "core_handler.py",
    "served_model.py",
    "triton_model.py",
    "core.py",
    "arrays.py",
    "classification.py",
    "integrity.py",
    "imageprep.py",
    "textprep.py",
    "kserve_v2.py",
    "payloads.py",
    "runtimes.py",
    "serving_policy.py",
)
TASK_FILES = {
    "image-classification": (HANDLER_MODULE, "image_task.py"),
    "text-classification": (TEXT_HANDLER_MODULE, "text_task.py"),
}
HANDLER_FILES = (*TASK_FILES["image-classification"], *CORE_FILES)  # an image archive's


def handler_files(text: bool) -> tuple[str, ...]:
    """The handler module (first) and every helper an archive of that task ships."""
    return (*TASK_FILES["text-classification" if text else "image-classification"], *CORE_FILES)


# torch-model-archiver stages files in tempfile.gettempdir()/<model name>: point that at a
# private directory per build, one build at a time within this process.
_TEMPDIR_LOCK = threading.Lock()


@dataclass
class ArchiveResult:
    """The archive written and what went into it."""

    path: Path
    model_name: str
    version: str
    model_config: dict
    build_info: dict


@contextmanager
def archiver_tempdir(directory: Path) -> Iterator[None]:
    """Make torch-model-archiver stage its files in ``directory`` (one build at a time)."""
    with _TEMPDIR_LOCK:
        previous, tempfile.tempdir = tempfile.tempdir, str(directory)
        try:
            yield
        finally:
            tempfile.tempdir = previous


def package_versions(
    names: tuple[str, ...] = (
        "torch",
        "torchvision",
        "distillserve",
        "torchserve",
        "torch-model-archiver",
        "onnxruntime",
    ),
) -> dict[str, str]:
    """Installed versions of ``names`` ("unknown" for one not installed)."""
    out = {}
    for dist in names:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def _archive_config(artifact: Artifact, model_name: str | None, version: str | None):
    """The artifact's ``archive`` section, with the name and version given on the command line."""
    if not (model_name or version):
        return artifact.archive
    try:
        return ArchiveConfig.parse(
            {
                **artifact.archive.to_dict(),
                "model_name": model_name or artifact.archive.model_name,
                "version": version or artifact.archive.version,
            }
        )
    except RecipeError as err:
        raise ArchiveError(str(err)) from None


def _metrics_of(metrics: dict, model_format: str) -> dict:
    """The artifact's metrics with the archived format's own measurements at the top level."""
    own = metrics.get("formats", {}).get(model_format)
    if own is None:
        return metrics
    keep = ("size_bytes", "latency_ms_batch1", "test_accuracy", "val_accuracy", "parity")
    return {**metrics, **{key: own[key] for key in keep if key in own}, "format": model_format}


def archive_file_name(model_name: str, version: str, recipe_version: str) -> str:
    """``NAME.mar`` for the version the recipe builds, ``NAME-VERSION.mar`` for any other, so
    that archiving another version never lands on the file the serving profile loads."""
    return f"{model_name}.mar" if version == recipe_version else f"{model_name}-{version}.mar"


def build_archive(
    artifact_dir: str | Path,
    model_store: str | Path = "model_store",
    *,
    model_name: str | None = None,
    version: str | None = None,
    file_name: str | None = None,
    force: bool = False,
    model_format: str | None = None,
    replace_rebuild: bool = False,
    signing_key_path: str | Path | None = None,
    unsigned: bool = False,
) -> ArchiveResult:
    """Archive ``artifact_dir`` into ``model_store/<file_name>`` (default ``NAME.mar`` for the
    recipe's version, ``NAME-VERSION.mar`` for another).

    ``model_format`` picks the model file (torchscript, pt2, onnx; default the artifact's primary
    format). ``model_name`` and ``version`` default to the artifact recipe's ``archive`` section;
    another format than the primary one is named ``NAME-FORMAT`` by default, so that each
    runtime's archive is its own model. An existing archive that holds another model (another
    name, version, recipe, labels or model sha256) is never replaced unless ``force``;
    ``replace_rebuild`` also replaces a rebuild of the same recipe (``make demo`` run again).

    The finished archive is signed (``archiver.signing``) with ``signing_key_path`` or the
    default key; no key is an error unless ``unsigned``.
    """
    private_key = None if unsigned else signing_key(signing_key_path)
    if private_key is None and not unsigned:
        raise ArchiveError(
            "no signing key: make one with `distillserve keys init` (keys/archive-signing.pem), "
            "pass --signing-key or set DISTILLSERVE_SIGNING_KEY; --unsigned builds an archive "
            "that servers refuse unless they allow unsigned ones"
        )
    artifact = Artifact.read(artifact_dir)
    model_format = model_format or artifact.formats[0]
    model_path = artifact.model_file(model_format)
    if model_name is None and model_format != artifact.formats[0]:
        model_name = f"{artifact.archive.model_name}-{model_format}"
    config = _archive_config(artifact, model_name, version)
    store = Path(model_store)
    name = file_name or archive_file_name(
        config.model_name, config.version, artifact.archive.version
    )
    target = store / name
    if target.exists() and not force:  # refused before the model is loaded and timed
        identity = ArchiveIdentity(
            config.model_name,
            config.version,
            artifact.recipe.get("name"),
            label_tuple(artifact.index_to_name),
            sha256_file(model_path),
        )
        refuse_to_overwrite(target, identity, replace_rebuild)
    probed = probe(model_path, artifact.handler, config.batch_size if config.is_auto else None)
    labels = archive_labels(artifact.index_to_name, probed.outputs, model_path)
    choice = resolve_serving(config, probed.measured)
    model_config, build_info = _describe(artifact, config, model_path, model_format, choice)
    store.mkdir(parents=True, exist_ok=True)
    _pack(artifact, config, model_path, model_config, build_info, labels, target, private_key)
    Registry(store).record_archive(
        config.model_name, config.version, target.name, build_info, sha256_file(target)
    )
    return ArchiveResult(target, config.model_name, config.version, model_config, build_info)


def _describe(
    artifact: Artifact,
    config: ArchiveConfig,
    model_path: Path,
    model_format: str,
    choice: ServingChoice | None,
) -> tuple[dict, dict]:
    """``model-config.yaml`` (batching, workers, the handler's settings; ``auto`` resolved by
    ``choice``, from the model measured) and ``build-info.json`` of the archive. Workers chosen
    one per core are left out of model-config.yaml: the serving host counts its own cores
    (TorchServe's ``default_workers_per_model``, which ``serve start`` sets to them)."""
    handler_settings = dict(artifact.handler_dict)
    if choice is not None:
        handler_settings["threads"] = choice.threads
    workers = {
        "minWorkers": choice.min_workers if choice else config.min_workers,
        "maxWorkers": choice.max_workers if choice else config.max_workers,
    }
    model_config = {
        **({} if choice is not None and choice.per_core else workers),
        "batchSize": config.batch_size,
        "maxBatchDelay": config.max_batch_delay,
        "responseTimeout": config.response_timeout,
        "handler": handler_settings,
    }
    build_info = {
        "model_name": config.model_name,
        "version": config.version,
        "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "format": model_format,
        "task": "text-classification" if artifact.handler.is_text else "image-classification",
        "sha256": {
            model_path.name: sha256_file(model_path),
            **{extra.name: sha256_file(extra) for extra in artifact.extra_files},
        },
        "versions": package_versions(),
        "metrics": _metrics_of(artifact.metrics, model_format),
        "recipe": artifact.recipe,
    }
    if choice is not None:
        build_info["serving"] = choice.record()
    return model_config, build_info


def _pack(
    artifact: Artifact,
    config: ArchiveConfig,
    model_path: Path,
    model_config: dict,
    build_info: dict,
    labels: dict[str, str],
    target: Path,
    private_key: Path | None,
) -> None:
    """torch-model-archiver packs the files in a private staging directory beside ``target``;
    the finished archive is signed with ``private_key`` (unless None) and moved over
    ``target`` atomically."""
    from model_archiver.model_archiver import ModelArchiver
    from model_archiver.model_archiver_config import ModelArchiverConfig

    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        files = staging / "files"
        files.mkdir()
        handlers = resources.files(HANDLER_PACKAGE)
        shipped = handler_files(artifact.handler.is_text)
        for name in shipped:
            (files / name).write_bytes(handlers.joinpath(name).read_bytes())
        (files / "index_to_name.json").write_text(json.dumps(labels, indent=2))
        (files / "build-info.json").write_text(json.dumps(build_info, indent=2) + "\n")
        (files / "model-config.yaml").write_text(yaml.safe_dump(model_config, sort_keys=False))
        for extra_file in artifact.extra_files:
            (files / extra_file.name).write_bytes(extra_file.read_bytes())
        out = staging / "out"
        out.mkdir()
        module = shipped[0]
        extra = (
            *shipped[1:],
            "index_to_name.json",
            "build-info.json",
            *(extra_file.name for extra_file in artifact.extra_files),
        )
        archiver_config = ModelArchiverConfig(
            model_name=config.model_name,
            handler=str(files / module),
            version=config.version,
            serialized_file=str(model_path),
            extra_files=",".join(str(files / name) for name in extra),
            export_path=str(out),
            config_file=str(files / "model-config.yaml"),
            force=True,
        )
        with archiver_tempdir(staging):
            ModelArchiver.generate_model_archive(archiver_config)
        packed = out / f"{config.model_name}.mar"
        if private_key is not None:
            sign_mar(packed, private_key)
        packed.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def inspect_archive(path: str | Path, trust: Trust | None = None) -> dict:
    """Name, version and build-info of a .mar whose model file matches its recorded sha256,
    and, given ``trust`` (the gates before a server: register, serve start, export-kserve,
    verify), whose every file matches its signature.

    Raises ``ArchiveError`` for a missing, unreadable, altered or (under ``trust``) unsigned
    archive.
    """
    path = Path(path)
    if not path.is_file():
        raise ArchiveError(f"archive not found: {path}")
    if trust is not None:
        try:
            verify_mar(path, trust)
        except zipfile.BadZipFile as err:
            raise ArchiveError(f"{path} is not a distillserve archive: {err}") from None
    try:
        with zipfile.ZipFile(path) as mar:
            manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
            info = json.loads(mar.read("build-info.json"))
            serialized = manifest["model"].get("serializedFile", "model.pt")
            with mar.open(serialized) as fh:
                actual = sha256_stream(fh)
            labels = json.loads(mar.read("index_to_name.json"))
            model_config = yaml.safe_load(mar.read("model-config.yaml")) or {}
    except (zipfile.BadZipFile, KeyError, ValueError, yaml.YAMLError) as err:
        raise ArchiveError(f"{path} is not a distillserve archive: {err}") from None
    try:
        checked_labels(labels)
        batch_size = model_config.get("batchSize", 1)
        check_batch_size(batch_size, "model-config.yaml batchSize")
    except PolicyError as err:
        raise ArchiveError(f"{path}: {err.key}: {batch_size!r} {err}") from None
    except ValueError as err:
        raise ArchiveError(f"{path}: {err}") from None
    expected = info.get("sha256", {}).get(serialized)
    if actual != expected:
        raise ArchiveError(
            f"{path}: {serialized} does not match build-info.json (sha256 {actual} "
            f"!= {expected}); the archive was altered or corrupted"
        )
    return {
        "model_name": manifest["model"]["modelName"],
        "version": manifest["model"]["modelVersion"],
        "build_info": info,
    }
