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

# Seconds each long file took on its worker in a `make test` (2-core AMD EPYC, 2026-12-04,
# waits for the CI build taken out), for the order the workers take the files in.
FILE_SECONDS = {
    "test_text.py": 144,
    "test_distributed_resume.py": 138,
    "test_mlops.py": 130,
    "test_own_data.py": 127,
    "test_triton.py": 115,
    "test_hostile_input.py": 105,
    "test_registry.py": 96,
    "test_security_and_load.py": 67,
    "test_archive.py": 55,
    "test_signatures.py": 55,
    "test_compare.py": 46,
    "test_tune.py": 30,
    "test_recipe_variants.py": 28,
    "test_text_training.py": 25,
    "test_torchserve.py": 23,
    "test_formats.py": 22,
    "test_compression.py": 21,
    "test_bench.py": 16,
}


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
    needs_build = set()
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
            needs_build.add(item.path.name)
    items.sort(key=_file_rank(needs_build))


def _file_rank(needs_build: set[str]) -> Callable:
    """The order the files are run in (``make test`` passes ``--no-loadscope-reorder``, so
    pytest-xdist hands its two workers the files in this order). First the longest file that
    needs the CI build, so that the build starts at once on one worker while the other runs
    the longest file that needs none; then the rest longest first, so that the last files to
    be handed out are short and both workers finish together; unlisted (short) files last, in
    collection order. xdist's own order (by number of tests) kept one worker waiting about a
    minute for the other's CI build and handed out a 2-minute file with one test last (one
    worker idle for the run's last 72 s). Three main passes back to back in one clone on a
    2-core AMD EPYC (2026-12-04): 12 min 43 s in xdist's order, 10 min 45 s in this one, 12 min
    32 s in xdist's. Stable, as every worker must collect the same order."""
    known = sorted(FILE_SECONDS, key=FILE_SECONDS.get, reverse=True)
    first = [name for name in known if name in needs_build][:1]
    order = first + [name for name in known if name not in first]
    rank = {name: i for i, name in enumerate(order)}
    return lambda item: rank.get(item.path.name, len(rank))


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
