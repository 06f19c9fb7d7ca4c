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


def handler_context(model_dir: Path, batch_size: int = 4, name: str = "digits-student"):
    """TorchServe's own Context for an unpacked archive, with a mock metrics cache."""
    import json
    from unittest import mock

    from ts.context import Context

    return Context(
        name,
        str(model_dir),
        json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text()),
        batch_size,
        None,
        "0.12.0",
        metrics=mock.MagicMock(),
        model_yaml_config=yaml.safe_load((model_dir / "model-config.yaml").read_text()),
    )


def handle(handler, ctx, requests: list[dict]) -> list:
    """One batch through ``handler.handle`` with a fresh per-request status record each."""
    from ts.context import RequestProcessor

    ctx.request_processor = [RequestProcessor({}) for _ in requests]
    return handler.handle(requests, ctx)


def load_handler(archive: Path, workdir: Path, batch_size: int = 4):
    """Unpack ``archive`` as TorchServe does for a worker and initialise our handler on it."""
    from handlers.distill_classifier import DistillClassifierHandler

    with zipfile.ZipFile(archive) as mar:
        mar.extractall(workdir / "unpacked")
    ctx = handler_context(workdir / "unpacked", batch_size)
    handler = DistillClassifierHandler()
    handler.initialize(ctx)
    return handler, ctx


def register(ts, url: str, **params):
    """``POST /models`` on a running server with the management token; returns the response."""
    import requests

    params = {"url": url, "initial_workers": 1, "synchronous": "true", **params}
    return requests.post(
        f"{ts.management_url}/models", params=params, headers=ts.headers("management"), timeout=120
    )
