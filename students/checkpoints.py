"""Per-epoch checkpoints of every training phase, so that a build can resume where it died.

A build makes one ``Checkpointer`` for ``build/NAME/VERSION/.checkpoints/`` and activates it;
each call of ``students.distill.train`` (teacher members, stages, the student, prune rounds,
QAT) is one phase, named by its description and how many phases of that description came
before (``student-1``, ``qat-2``), so a teacher loaded from the teacher cache on resume does not
shift the names. Every phase seeds its own random number generators, so it does not depend on
the phases before it. After every epoch the
phase's state (model, optimizer, scheduler, epoch, best epoch so far, history, random number
generator states) is written to a temporary file and renamed over ``03-student.pt``, so a file is
always a complete epoch. A finished phase is marked complete with its final weights and the RNG
state it left. With ``resume`` a rerun of the same recipe skips complete phases and continues the
interrupted one from its last complete epoch: one process reaches bit-identical final weights.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from distillserve.errors import RecipeError
from distillserve.students import distributed

__all__ = ["Checkpointer", "Phase", "active", "phase"]

_CURRENT: contextvars.ContextVar[Checkpointer | None] = contextvars.ContextVar(
    "distillserve_checkpointer", default=None
)


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


class Checkpointer:
    """The checkpoint directory of one build. ``resume`` keeps what is there (it must come from
    the same recipe); otherwise it is emptied first."""

    def __init__(self, directory: str | Path, recipe: dict, resume: bool) -> None:
        self.directory = Path(directory)
        self.resume = resume
        self._seen: dict[str, int] = {}
        digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
        marker = self.directory / "recipe.sha256"
        if distributed.is_main():
            if not resume and self.directory.exists():
                shutil.rmtree(self.directory)
            self.directory.mkdir(parents=True, exist_ok=True)
            if resume and marker.is_file() and marker.read_text().strip() != digest:
                raise RecipeError(
                    None,
                    f"--resume: the checkpoints in {self.directory} were written by another "
                    "recipe; build without --resume to start again",
                )
            marker.write_text(digest + "\n")
        distributed.barrier()

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


@contextlib.contextmanager
def active(checkpointer: Checkpointer | None) -> Iterator[None]:
    """Make ``checkpointer`` the one ``phase()`` hands phases from, for the block."""
    token = _CURRENT.set(checkpointer)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def phase(description: str) -> Phase | None:
    """The next phase of the active checkpointer, or ``None`` when none is active."""
    checkpointer = _CURRENT.get()
    return None if checkpointer is None else checkpointer.phase(description)
