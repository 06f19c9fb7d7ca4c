"""What an archive holds, whatever its file is called, and the rule that keeps ``archive`` from
replacing a released archive of another model (``--force`` overrides it)."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from distillserve.errors import ArchiveError

__all__ = ["ArchiveIdentity", "label_tuple", "refuse_to_overwrite"]


@dataclass(frozen=True)
class ArchiveIdentity:
    """What an archive holds, whatever its file is called: the served name and version, the
    recipe that built the model, its labels and the model file's sha256."""

    model_name: str
    version: str
    recipe: str | None
    labels: tuple[str, ...]
    model_sha256: str | None

    @classmethod
    def of_archive(cls, path: Path) -> ArchiveIdentity | None:
        """The identity of the ``.mar`` at ``path``; ``None`` when it is not a readable one."""
        try:
            with zipfile.ZipFile(path) as mar:
                model = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]
                names = set(mar.namelist())
                info = json.loads(mar.read("build-info.json")) if "build-info.json" in names else {}
                labels = (
                    json.loads(mar.read("index_to_name.json"))
                    if "index_to_name.json" in names
                    else {}
                )
            serialized = model.get("serializedFile", "")
            return cls(
                str(model["modelName"]),
                str(model["modelVersion"]),
                (info.get("recipe") or {}).get("name"),
                label_tuple(labels),
                (info.get("sha256") or {}).get(serialized),
            )
        except (OSError, zipfile.BadZipFile, KeyError, ValueError, TypeError, AttributeError):
            return None

    def describe(self) -> str:
        labels = ", ".join(self.labels[:4]) + (", ..." if len(self.labels) > 4 else "")
        sha = (self.model_sha256 or "unknown")[:12]
        return (
            f"{self.model_name} {self.version} (recipe {self.recipe!r}, {len(self.labels)} "
            f"labels: {labels}; model sha256 {sha})"
        )


def label_tuple(index_to_name: dict) -> tuple[str, ...]:
    """The labels in class order."""
    return tuple(str(index_to_name[k]) for k in sorted(index_to_name, key=lambda k: int(k)))


def refuse_to_overwrite(target: Path, new: ArchiveIdentity, replace_rebuild: bool) -> None:
    """An archive at ``target`` that holds another model is a released version: keep it.

    Only an archive of the same model (name, version, recipe, labels and model sha256) is
    replaced: re-archiving it with other serving settings. With ``replace_rebuild`` a rebuild of
    the same recipe (same name, version, recipe and labels, new weights) is replaced too.
    """
    held = ArchiveIdentity.of_archive(target)
    if held == new:
        return
    if (
        replace_rebuild
        and held is not None
        and held == replace(new, model_sha256=held.model_sha256)
    ):
        return
    if held is None:
        what = "a file that is not a readable .mar"
    else:
        what = held.describe()
        differs = [
            name
            for name, a, b in (
                ("name", held.model_name, new.model_name),
                ("version", held.version, new.version),
                ("recipe", held.recipe, new.recipe),
                ("labels", held.labels, new.labels),
                ("model sha256", held.model_sha256, new.model_sha256),
            )
            if a != b
        ]
        what += f"; another {', '.join(differs)}"
    raise ArchiveError(
        f"{target} holds {what}; archiving {new.describe()} there would replace it: pass "
        f"--model-name or --file-name {new.model_name}-{new.version}.mar to keep both, or "
        "--force to replace it"
    )
