"""Per-epoch checkpoints of every training phase, so that a build can resume where it died.

A build makes one ``Checkpointer`` for ``build/NAME/VERSION/.checkpoints/`` and hands it to each
stage; each call of ``students.training.train`` (teacher members, stages, the student, prune
rounds, QAT) is one phase, its ``Phase`` passed to ``train`` explicitly, named by its description
and how many phases of that description came before (``student-1``, ``qat-2``), so a teacher loaded
from the teacher cache on resume does not shift the names. Every phase seeds its own random number
generators, so it does not depend on the phases before it. After every epoch the phase's state
(model, optimizer, scheduler, epoch, best epoch so far, history, random number generator states) is
written to a temporary file and renamed over ``student-1.pt``, so a file is always a complete
epoch. A finished phase is marked complete with its final weights and the RNG state it left. With
``resume`` a rerun of the same recipe skips complete phases and continues the interrupted one from
its last complete epoch: one process reaches bit-identical final weights.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from distillserve.errors import RecipeError
from distillserve.students import distributed

__all__ = [
    "AFTER_TRAINING",
    "NO_CHECKPOINTS",
    "Checkpointer",
    "NoCheckpoints",
    "Phase",
    "first_difference",
    "training_settings",
]


class Phase:
    """One training phase's checkpoint file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict | None:
        """The last saved state, or ``None`` when the phase never finished an epoch."""
        if not self.path.is_file():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=False)

    def save(self, state: dict) -> None:
        """Write ``state`` atomically (rank 0 only: every rank holds the same weights)."""
        if not distributed.is_main():
            return
        partial = self.path.with_suffix(".partial")
        torch.save(state, partial)
        os.replace(partial, self.path)


# Recipe sections that only act after training (exporting, archiving) or not in a build at all
# (tuning): a resumed build may change them.
AFTER_TRAINING = ("export", "archive", "tune")


def training_settings(recipe: dict) -> dict:
    """The parts of a resolved recipe that the checkpoints depend on."""
    return {key: value for key, value in recipe.items() if key not in AFTER_TRAINING}


def first_difference(old: object, new: object, where: str = "") -> str | None:
    """The dotted key of the first value that differs between two recipe dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            found = first_difference(old.get(key), new.get(key), f"{where}.{key}".lstrip("."))
            if found is not None:
                return found
        return None
    return None if old == new else (where or "recipe")


class Checkpointer:
    """The checkpoint directory of one build. ``resume`` keeps what is there, when it was
    written by a recipe with the same training settings (``training_settings``: a change of
    the export or archive sections is fine); otherwise the directory is emptied first."""

    def __init__(self, directory: str | Path, recipe: dict, resume: bool) -> None:
        self.directory = Path(directory)
        self.resume = resume
        self._seen: dict[str, int] = {}
        settings = json.loads(json.dumps(training_settings(recipe), sort_keys=True))
        marker = self.directory / "training-recipe.json"
        if distributed.is_main():
            if not resume and self.directory.exists():
                shutil.rmtree(self.directory)
            self.directory.mkdir(parents=True, exist_ok=True)
            if resume and any(self.directory.glob("*.pt")):
                self._check_same_training(marker, settings)
            marker.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
        distributed.barrier()

    def _check_same_training(self, marker: Path, settings: dict) -> None:
        try:
            written = json.loads(marker.read_text())
        except (OSError, ValueError):
            written = None
        key = "recipe" if written is None else first_difference(written, settings)
        if key is not None:
            raise RecipeError(
                key,
                f"--resume: the checkpoints in {self.directory} were written by another "
                f"recipe, with another {key} (a change that retrains; only the "
                f"{', '.join(AFTER_TRAINING)} sections may change on resume): restore it, or "
                "build without --resume to start again",
            )

    def phase(self, description: str) -> Phase:
        """The next phase of this description."""
        name = "".join(c if c.isalnum() else "-" for c in description).strip("-")
        self._seen[name] = self._seen.get(name, 0) + 1
        return Phase(self.directory / f"{name}-{self._seen[name]}.pt")

    def completed(self) -> list[str]:
        """Names of the phases whose checkpoint exists."""
        return sorted(p.stem for p in self.directory.glob("*.pt"))

    def remove(self) -> None:
        if distributed.is_main():
            shutil.rmtree(self.directory, ignore_errors=True)


class NoCheckpoints:
    """The checkpointer of a run that keeps none (a library call, a search's trial)."""

    def phase(self, description: str) -> None:
        return None


NO_CHECKPOINTS = NoCheckpoints()
