"""The student artifact directory: the one contract between a build and the archiver.

    model.pt             the TorchScript model (written by ``students.export``)
    index_to_name.json   {"0": "label", ...}
    handler.yaml         the handler's settings (``HandlerSettings.to_dict``)
    metrics.json         what was measured: accuracy, size, latency, parity, ...
    recipe.yaml          the resolved recipe that built it (its ``archive`` section packs it)

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
from distillserve.students.recipe import ArchiveConfig

__all__ = ["FILES", "MODEL_FILE", "Artifact", "write_artifact"]

MODEL_FILE = "model.pt"
FILES = (MODEL_FILE, "index_to_name.json", "handler.yaml", "metrics.json", "recipe.yaml")


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
    def model_path(self) -> Path:
        return self.directory / MODEL_FILE

    @classmethod
    def read(cls, directory: str | Path) -> Artifact:
        """Read ``directory``; ``ArchiveError`` names a missing or malformed file."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ArchiveError(f"artifact directory not found: {directory}")
        missing = [name for name in FILES if not (directory / name).is_file()]
        if missing:
            raise ArchiveError(
                f"{directory} is not a student artifact: missing {', '.join(missing)}"
            )
        handler_dict = _yaml(directory / "handler.yaml")
        try:
            handler = HandlerSettings.from_dict(handler_dict)
        except (ValueError, TypeError, KeyError) as err:
            raise ArchiveError(f"{directory / 'handler.yaml'}: {err}") from None
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
) -> Artifact:
    """Write the files beside ``directory/model.pt`` (which must exist) and read them back."""
    directory = Path(directory)
    if not (directory / MODEL_FILE).is_file():
        raise ArchiveError(f"{directory / MODEL_FILE} must be written before the artifact")
    index_to_name = {str(i): label for i, label in enumerate(classes)}
    (directory / "index_to_name.json").write_text(json.dumps(index_to_name, indent=2) + "\n")
    (directory / "handler.yaml").write_text(yaml.safe_dump(handler.to_dict(), sort_keys=False))
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (directory / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
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
