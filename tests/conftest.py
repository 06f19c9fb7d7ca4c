"""Shared fixtures: one small but real build of the digits recipe, and its archives."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import yaml

from scripts.inprocess import handle, handler_context, load_handler  # noqa: F401

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


def shipped_profile(name: str, model_store: Path, run_dir: Path, keep_models: bool = False):
    """A shipped config profile as it is, but on free loopback ports with the test's model
    store (and, unless ``keep_models``, no models loaded at start)."""
    from scripts.server import TorchServe, free_port, read_properties, write_properties

    props = read_properties(ROOT / name)
    for key in ("inference", "management", "metrics"):
        props[f"{key}_address"] = f"http://127.0.0.1:{free_port()}"
    props["grpc_inference_port"] = str(free_port())
    props["grpc_management_port"] = str(free_port())
    props["model_store"] = str(model_store)
    if "metrics_config" in props:
        props["metrics_config"] = str(ROOT / props["metrics_config"])
    if not keep_models:
        props.pop("load_models", None)
        props.pop("models", None)
    run_dir.mkdir(parents=True, exist_ok=True)
    return TorchServe(write_properties(props, run_dir / name), run_dir / "serve", model_store)


def register(ts, url: str, **params):
    """``POST /models`` on a running server with the management token; returns the response."""
    import requests

    params = {"url": url, "initial_workers": 1, "synchronous": "true", **params}
    return requests.post(
        f"{ts.management_url}/models", params=params, headers=ts.headers("management"), timeout=120
    )
