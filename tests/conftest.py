"""Shared fixtures: one small but real build of the digits recipe, and its archives.

``make test`` runs the suite on two pytest-xdist workers (``--dist loadfile``: a file's tests, and
so its module-scoped server, stay on one worker). The session builds are made once per run, not
once per worker: the first worker to need one builds it under a file lock in the run's shared
temporary folder, and the others load it from there.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from filelock import FileLock

from tests.helpers import STUDENT_MARS, small_recipe_dict

T = TypeVar("T")

# Fixtures that train the CI build: every test that uses one is slow (`make test-fast` skips it).
TRAINING_FIXTURES = {"build_result", "model_store", "extracted_student"}

# Test files by their measured time alone, longest first (`make test` prints the slowest tests).
LONGEST_FILES = (
    "test_own_data.py",
    "test_distributed_resume.py",
    "test_mlops.py",
    "test_text.py",
    "test_triton.py",
    "test_registry.py",
    "test_recipe_variants.py",
    "test_hostile_input.py",
    "test_archive.py",
    "test_signatures.py",
    "test_security_and_load.py",
    "test_torchserve.py",
    "test_bench.py",
)


def pytest_configure(config) -> None:
    """One signing key pair for the run, in the environment, so that every archive a test
    builds is signed and every server and handler it starts verifies (subprocesses inherit it).
    xdist's workers inherit the pair from the controlling process, which configures first."""
    from distillserve.archiver.signing import init_keys

    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    keys = Path(tempfile.mkdtemp(prefix="distillserve-test-keys-"))
    private, public = init_keys(keys)
    config._distillserve_keys = keys
    os.environ["DISTILLSERVE_SIGNING_KEY"] = str(private)
    os.environ["DISTILLSERVE_PUBLIC_KEY"] = str(public)
    os.environ.pop("DISTILLSERVE_ALLOW_UNSIGNED", None)


def pytest_unconfigure(config) -> None:
    keys = getattr(config, "_distillserve_keys", None)
    if keys is not None:
        shutil.rmtree(keys, ignore_errors=True)


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    # Longest files first (longest-processing-time order). Under `make test`, pytest-xdist then
    # hands out the files by their number of tests (its default --loadscope-reorder), so this
    # order only breaks its ties and orders a one-process run. One try of this order under xdist
    # (--no-loadscope-reorder) was not faster: 12 min 52 s against 12 min 15-22 s for the main
    # pass on a 2-core AMD EPYC, a difference inside these machines' run-to-run noise.
    # Files not listed keep their order. Stable: every worker must collect the same order.
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def _once_per_run(tmp_path_factory, name: str, make: Callable[[Path], T]) -> T:
    """``make(folder)`` once for the whole run: alone, in a fresh folder; under xdist, by the
    first worker that asks, in the run's shared temporary folder, the result pickled there for
    the other workers (which wait on the lock meanwhile)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return make(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent
    made = shared / f"{name}.pickle"
    with FileLock(str(shared / f"{name}.lock")):
        if made.exists():
            return pickle.loads(made.read_bytes())
        result = make(shared / name)
        made.write_bytes(pickle.dumps(result))
        return result


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

    raw = small_recipe_dict()
    # the demo archives its teacher as TorchScript only; CI checks every role in every format
    raw["export"]["teacher_formats"] = list(STUDENT_MARS)

    def make(out: Path):
        return build(Recipe.from_dict(raw), out, log=lambda _: None)

    return _once_per_run(tmp_path_factory, "build", make)


@pytest.fixture(scope="session")
def model_store(build_result, tmp_path_factory) -> Path:
    """A model store holding the int8 student in every format (``STUDENT_MARS``:
    digits-student.mar, digits-student-pt2.mar, digits-student-onnx.mar) and digits-teacher.mar
    (fp32)."""
    from distillserve.archiver import build_archive

    def make(store: Path) -> Path:
        store.mkdir(exist_ok=True)
        for fmt in STUDENT_MARS:
            build_archive(build_result.artifacts["student"], store, model_format=fmt)
        build_archive(build_result.artifacts["teacher"], store)
        return store

    return _once_per_run(tmp_path_factory, "model_store", make)


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
