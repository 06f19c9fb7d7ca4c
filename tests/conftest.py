"""Shared fixtures: one small but real build of the digits recipe, and its archives."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DIGITS_RECIPE = ROOT / "recipes" / "digits.yaml"


def small_recipe_dict() -> dict:
    """The digits recipe shortened for CI: one teacher, few epochs, same everything else."""
    raw = yaml.safe_load(DIGITS_RECIPE.read_text())
    raw["teacher"].update(members=1, epochs=8, kwargs={"widths": [16, 32, 64], "blocks": 1})
    raw["distill"]["epochs"] = 20
    return raw


@pytest.fixture(scope="session")
def build_result(tmp_path_factory):
    from students.pipeline import build
    from students.recipe import Recipe

    out = tmp_path_factory.mktemp("build")
    return build(Recipe.from_dict(small_recipe_dict()), out, log=lambda _: None)


@pytest.fixture(scope="session")
def model_store(build_result, tmp_path_factory) -> Path:
    """A model store holding digits-student.mar (int8) and digits-teacher.mar (fp32)."""
    from archiver import build_archive

    store = tmp_path_factory.mktemp("model_store")
    build_archive(build_result.artifacts["student"], store)
    build_archive(build_result.artifacts["teacher"], store)
    return store


@pytest.fixture
def extracted_student(model_store, tmp_path) -> Path:
    """digits-student.mar unpacked as TorchServe unpacks it for a worker."""
    with zipfile.ZipFile(model_store / "digits-student.mar") as mar:
        mar.extractall(tmp_path / "digits-student")
    return tmp_path / "digits-student"


@pytest.fixture(scope="session")
def digits_splits():
    from students.data import load_splits
    from students.recipe import DataConfig

    return load_splits(DataConfig(), seed=0)
