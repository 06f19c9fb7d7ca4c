"""Shared fixtures: one small but real build of the digits recipe, and its archives."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import pytest

from tests.helpers import STUDENT_MARS, small_recipe_dict

# Fixtures that train the CI build: every test that uses one is slow (`make test-fast` skips it).
TRAINING_FIXTURES = {"build_result", "model_store", "extracted_student"}


def pytest_configure(config) -> None:
    """One signing key pair for the session, in the environment, so that every archive a test
    builds is signed and every server and handler it starts verifies (subprocesses inherit it).
    """
    from distillserve.archiver.signing import init_keys

    keys = Path(tempfile.mkdtemp(prefix="distillserve-test-keys-"))
    private, public = init_keys(keys)
    os.environ["DISTILLSERVE_SIGNING_KEY"] = str(private)
    os.environ["DISTILLSERVE_PUBLIC_KEY"] = str(public)
    os.environ.pop("DISTILLSERVE_ALLOW_UNSIGNED", None)


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A handler initialised in process sets torch's intra-op threads and quantized engine for
    the whole process (as it must in a worker): restore both, so no later test or session
    fixture (the CI build's training) runs with another test's settings."""
    import torch

    threads, engine = torch.get_num_threads(), torch.backends.quantized.engine
    yield
    torch.set_num_threads(threads)
    torch.backends.quantized.engine = engine


@pytest.fixture(scope="session")
def build_result(tmp_path_factory):
    from distillserve.students.pipeline import build
    from distillserve.students.recipe import Recipe

    out = tmp_path_factory.mktemp("build")
    return build(Recipe.from_dict(small_recipe_dict()), out, log=lambda _: None)


@pytest.fixture(scope="session")
def model_store(build_result, tmp_path_factory) -> Path:
    """A model store holding the int8 student in every format (``STUDENT_MARS``:
    digits-student.mar, digits-student-pt2.mar, digits-student-onnx.mar) and digits-teacher.mar
    (fp32)."""
    from distillserve.archiver import build_archive

    store = tmp_path_factory.mktemp("model_store")
    for fmt in STUDENT_MARS:
        build_archive(build_result.artifacts["student"], store, model_format=fmt)
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
    from distillserve.students.data import load_splits
    from distillserve.students.recipe import DataConfig

    return load_splits(DataConfig(), seed=0)
