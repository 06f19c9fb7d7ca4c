"""The student artifact directory: the one contract between a build and the archiver.

    model.pt             the TorchScript model       } one or more, by ``export.formats``
    model.pt2            the AOTInductor package     } (``students.export_formats``); the
    model.onnx           the ONNX model              } first listed is the primary format
    index_to_name.json   {"0": "label", ...}
    handler.yaml         the handler's settings (``HandlerSettings.to_dict``)
    metrics.json         what was measured: accuracy, size, latency, parity, ...
    recipe.yaml          the resolved recipe that built it (its ``archive`` section packs it)
    tokenizer.json       a text model's tokenizer (``handler.yaml`` names it)

``write_artifact`` writes everything but the model; ``Artifact.read`` checks and reads a
directory. Nothing else writes or parses these files by hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from distillserve.errors import ArchiveError, RecipeError
from distillserve.handlers.classification import HandlerSettings
from distillserve.handlers.runtimes import MODEL_FILES
from distillserve.students.recipe import ArchiveConfig

__all__ = ["FILES", "MODEL_FILES", "Artifact", "write_artifact"]

FILES = ("index_to_name.json", "handler.yaml", "metrics.json", "recipe.yaml")


@dataclass(frozen=True)
class Artifact:
    """A student artifact directory, read and checked."""

    directory: Path
    index_to_name: dict[str, str]
    handler: HandlerSettings
    handler_dict: dict  # handler.yaml as written, for the archive's model-config.yaml
    metrics: dict
    recipe: dict
    archive: ArchiveConfig

    @property
    def extra_files(self) -> list[Path]:
        """The files the handler reads besides the model and labels (a text model's tokenizer)."""
        if self.handler.is_text:
            return [self.directory / self.handler.spec.tokenizer]
        return []

    @property
    def formats(self) -> list[str]:
        """The formats whose model file is in the directory, primary first."""
        present = [f for f in MODEL_FILES if (self.directory / MODEL_FILES[f]).is_file()]
        primary = self.metrics.get("format", "torchscript")
        return sorted(present, key=lambda f: f != primary)

    @property
    def model_path(self) -> Path:
        """The primary format's model file."""
        return self.model_file(self.formats[0])

    def model_file(self, fmt: str) -> Path:
        """The model file of ``fmt``; ``ArchiveError`` when the artifact has none."""
        if fmt not in MODEL_FILES:
            raise ArchiveError(f"format must be one of {', '.join(MODEL_FILES)}, got {fmt!r}")
        path = self.directory / MODEL_FILES[fmt]
        if not path.is_file():
            raise ArchiveError(
                f"{self.directory} has no {fmt} model ({MODEL_FILES[fmt]}); it has "
                f"{', '.join(self.formats)}: add {fmt} to the recipe's export.formats and rebuild"
            )
        return path

    @classmethod
    def read(cls, directory: str | Path) -> Artifact:
        """Read ``directory``; ``ArchiveError`` names a missing or malformed file."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ArchiveError(f"artifact directory not found: {directory}")
        missing = [name for name in FILES if not (directory / name).is_file()]
        if not any((directory / name).is_file() for name in MODEL_FILES.values()):
            missing.insert(0, " or ".join(MODEL_FILES.values()))
        if missing:
            raise ArchiveError(
                f"{directory} is not a student artifact: missing {', '.join(missing)}"
            )
        handler_dict = _yaml(directory / "handler.yaml")
        try:
            handler = HandlerSettings.from_dict(handler_dict)
        except (ValueError, TypeError, KeyError) as err:
            raise ArchiveError(f"{directory / 'handler.yaml'}: {err}") from None
        for extra in [directory / handler.spec.tokenizer] if handler.is_text else []:
            if not extra.is_file():
                raise ArchiveError(f"{directory} is a text model's artifact without {extra.name}")
        recipe = _yaml(directory / "recipe.yaml")
        try:
            archive = ArchiveConfig.parse(recipe.get("archive"))
        except RecipeError as err:
            raise ArchiveError(f"{directory / 'recipe.yaml'}: {err}") from None
        return cls(
            directory=directory,
            index_to_name=_json(directory / "index_to_name.json"),
            handler=handler,
            handler_dict=handler_dict,
            metrics=_json(directory / "metrics.json"),
            recipe=recipe,
            archive=archive,
        )


def write_artifact(
    directory: str | Path,
    *,
    classes: list[str],
    handler: HandlerSettings,
    metrics: dict,
    recipe: dict,
    files: dict[str, bytes] | None = None,
) -> Artifact:
    """Write the files beside the model files (at least one must exist), and ``files`` (name
    -> bytes, a tokenizer), and read them back."""
    directory = Path(directory)
    if not any((directory / name).is_file() for name in MODEL_FILES.values()):
        raise ArchiveError(f"a model file must be written to {directory} before the artifact")
    index_to_name = {str(i): label for i, label in enumerate(classes)}
    (directory / "index_to_name.json").write_text(json.dumps(index_to_name, indent=2) + "\n")
    (directory / "handler.yaml").write_text(yaml.safe_dump(handler.to_dict(), sort_keys=False))
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (directory / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    for name, content in (files or {}).items():
        (directory / name).write_bytes(content)
    return Artifact.read(directory)


def _yaml(path: Path) -> dict:
    try:
        value = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise ArchiveError(f"{path} is not valid YAML") from None
    if not isinstance(value, dict):
        raise ArchiveError(f"{path} must hold a mapping")
    return value


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except ValueError:
        raise ArchiveError(f"{path} is not valid JSON") from None
    if not isinstance(value, dict):
        raise ArchiveError(f"{path} must hold an object")
    return value
