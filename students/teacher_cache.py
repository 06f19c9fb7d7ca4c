"""A cache of trained teachers, so recipes that differ only in the student train the teacher once.

An entry is keyed by everything that decides the trained weights: the recipe's seed, ``data`` and
``teacher`` sections, the torch and toolkit versions, and the source of the modules that load the
data and train (a code change retrains). Entries are state dicts, read with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from distillserve import __version__
from distillserve.students.recipe import Recipe

__all__ = ["cache_key", "load_members", "save_members"]

_SOURCES = (
    "data.py",
    "distill.py",
    "zoo.py",
    "schedules.py",
    "stages.py",
    "teachers.py",
    "text_data.py",
    "text_models.py",
    "text_stages.py",
)


def cache_key(recipe: Recipe) -> str:
    """A hex digest of everything that decides the trained teacher."""
    here = Path(__file__).resolve().parent
    prep = here.parent / "handlers" / "imageprep.py"
    sources = [here / name for name in _SOURCES] + ([prep] if prep.is_file() else [])
    digest = hashlib.sha256()
    settings = {
        "seed": recipe.seed,
        "data": recipe.data.to_dict(),
        "teacher": {  # how members combine matters to the student, not to their training
            k: v for k, v in recipe.teacher.to_dict().items() if k not in ("combine", "weights")
        },
        "torch": torch.__version__,
        "toolkit": __version__,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for source in sources:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:20]


def _entry(cache_dir: Path, recipe: Recipe) -> Path:
    return cache_dir / f"teacher-{recipe.name}-{cache_key(recipe)}.pt"


def load_members(cache_dir: Path, recipe: Recipe, members: list[nn.Module]) -> Path | None:
    """Fill ``members`` (freshly built, untrained) from the cache; the entry's path, or None."""
    matches = sorted(cache_dir.glob(f"teacher-*-{cache_key(recipe)}.pt"))
    if not matches:
        return None
    states = torch.load(matches[0], map_location="cpu", weights_only=True)
    if len(states) != len(members):
        return None
    for member, state in zip(members, states):
        member.load_state_dict(state)
        member.eval()
    return matches[0]


def save_members(cache_dir: Path, recipe: Recipe, members: list[nn.Module]) -> Path:
    """Write the trained members' state dicts atomically; returns the entry's path."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = _entry(cache_dir, recipe)
    handle, staging = tempfile.mkstemp(prefix="partial-", suffix=".pt", dir=cache_dir)
    os.close(handle)
    try:
        torch.save([member.state_dict() for member in members], staging)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.remove(staging)
    return path
