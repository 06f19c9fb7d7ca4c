"""The README's "Your own data and teacher" walkthrough, shortened, through the command line: an
ImageFolder, a torchvision ResNet-18 trained in plain PyTorch and saved as a state dict and as
TorchScript, a recipe asking for all three formats, the archives served with
``serve start --models`` on the shipped profile (free ports), predictions over REST and gRPC,
a wrong model name answered with what the server has, and an archive of another model refused
where it would have replaced the digits student."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from distillserve.archiver.kserve_common import POD_CORES
from distillserve.archiver.mar import sha256_file
from distillserve.handlers.serving_policy import usable_cores
from tests.helpers import ROOT, CliResult, run_cli, shipped_profile

pytestmark = pytest.mark.slow
WALKTHROUGH = ROOT / "docs" / "own-data"


def _build(*args: str) -> subprocess.CompletedProcess:
    """``distillserve build`` as a user runs it: its own process, stderr not a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "distillserve.scripts.cli", "build", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _cli(*args: str) -> CliResult:
    return run_cli(*args)


def _python(script: str, *args: str) -> None:
    subprocess.run(
        [sys.executable, str(WALKTHROUGH / script), *args], check=True, capture_output=True
    )


def _described_once_workers_are_up(model: str, count: int, server: list[str]) -> dict:
    """``describe`` of ``model`` once ``count`` workers are READY (serve start is ready at each
    model's first READY worker; a busy machine loads the others later), or after two minutes:
    what it shows then is judged."""
    deadline = time.monotonic() + 120
    while True:
        described = _cli("describe", model, *server)
        assert described.returncode == 0, described.stderr
        (found,) = json.loads(described.stdout)
        if [w["status"] for w in found["workers"]] == ["READY"] * count:
            return found
        if time.monotonic() > deadline:
            return found
        time.sleep(1)


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> dict[str, Path]:
    """The walkthrough's data and teacher files, and its recipe shortened for CI."""
    root = tmp_path_factory.mktemp("own")
    _python("make_shapes.py", str(root / "data"), "--per-class", "20")
    _python("train_teacher.py", str(root / "data"), str(root / "teacher"), "--epochs", "3")
    raw = yaml.safe_load((WALKTHROUGH / "shapes.yaml").read_text())
    raw["data"]["root"] = str(root / "data")
    raw["distill"]["epochs"] = 4
    # a student of 4 epochs on 70 images is not what int8 parity is judged on here
    raw["export"]["min_int8_agreement"] = 0.5
    recipes = {}
    for kind, version in (("state", "1.0"), ("torchscript", "2.0")):
        raw["teacher"]["checkpoint"] = str(root / "teacher" / f"teacher-{kind}.pt")
        raw["archive"]["version"] = version
        # the ResNet-18 teacher's .pt2 compile alone takes half a minute: the CI build's
        # trained teacher goes through every format, this one only where the kinds differ
        raw["export"]["teacher_formats"] = ["torchscript", "onnx"] if kind == "state" else None
        # the student of the TorchScript teacher is served in no test: no .pt2 compile for it
        # (two formats, so that the build still says why its teacher is TorchScript only)
        formats = ["torchscript", "pt2", "onnx"] if kind == "state" else ["torchscript", "onnx"]
        raw["export"]["formats"] = formats
        recipes[kind] = root / f"shapes-{kind}.yaml"
        recipes[kind].write_text(yaml.safe_dump(raw))
    return {"root": root, **recipes}


def test_own_teacher_both_kinds_all_formats_served_with_models(own, model_store, tmp_path):
    out = own["root"] / "build"
    for kind, version in (("state", "1.0"), ("torchscript", "2.0")):
        built = _build(str(own[kind]), "--out", str(out))
        assert built.returncode == 0, built.stderr[-3000:]
        assert "[train] student: epoch 4/4" in built.stderr  # a line per epoch off a terminal
        teacher = out / "shapes" / version / "teacher"
        files = sorted(p.name for p in teacher.glob("model.*"))
        assert files == (["model.onnx", "model.pt"] if kind == "state" else ["model.pt"])
    assert "the teacher as torchscript only" in built.stderr  # the TorchScript teacher's build

    mine = tmp_path / "mine"
    for fmt in ("torchscript", "pt2", "onnx"):
        archived = _cli("archive", str(out / "shapes" / "1.0"), "--format", fmt,
                        "--model-store", str(mine))  # fmt: skip
        assert archived.returncode == 0, archived.stderr
    ts = shipped_profile("config.properties", mine, tmp_path / "serve")
    # the workers' unix sockets live under the run directory: a short path, whatever the
    # temporary folder of this run (xdist's are longer)
    run_dir = tempfile.mkdtemp(prefix="ds-own-")
    config = str(ts.config_file)
    server = ["--config", config, "--run-dir", run_dir]
    try:
        started = _cli("serve", "start", "--models", str(mine), *server)
        assert started.returncode == 0, started.stderr[-3000:]
        assert "serving shapes-student-onnx.mar, shapes-student-pt2.mar, shapes-student.mar" in (
            started.stdout
        )
        # the recipe's auto workers: the archive names none, and serve start gives it one per
        # core of this (the serving) host, each serving
        with zipfile.ZipFile(mine / "shapes-student-onnx.mar") as mar:
            model_config = yaml.safe_load(mar.read("model-config.yaml"))
            serving = json.loads(mar.read("build-info.json"))["serving"]
        assert "minWorkers" not in model_config and "maxWorkers" not in model_config
        assert serving["per_core"] and serving["min_workers"] == usable_cores()  # the build's
        cores = usable_cores()
        model = _described_once_workers_are_up("shapes-student-onnx", cores, server)
        assert model["minWorkers"] == model["maxWorkers"] == cores
        assert [w["status"] for w in model["workers"]] == ["READY"] * cores
        image = next((own["root"] / "data" / "test" / "ring").glob("*.png"))
        for model in ("shapes-student", "shapes-student-pt2", "shapes-student-onnx"):
            for route in ([], ["--grpc"]):
                answer = _cli("predict", model, str(image), *route, *server)
                assert answer.returncode == 0, answer.stderr
                result = json.loads(answer.stdout.splitlines()[0])
                assert result["status"] == 200 and set(result["result"]) <= {
                    "circle", "cross", "ring", "square", "triangle"
                }  # fmt: skip
        for route in ([], ["--grpc"]):
            wrong = _cli("predict", "shapes-studnet", str(image), *route, *server)
            assert wrong.returncode == 2
            (line,) = wrong.stderr.strip().splitlines()
            assert "no model 'shapes-studnet': it has shapes-student (1.0*);" in line
        wrong = _cli("predict", "shapes-student", str(image), "--version", "3.0", "--grpc", *server)
        assert wrong.returncode == 2 and "version '3.0'" in wrong.stderr
    finally:
        _cli("serve", "stop", "--run-dir", run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)

    # A Triton repository takes auto workers as one instance per core of the host that serves
    # it: this one, the one --cores names, or the pods' CPU limit for --deploy.
    onnx = str(mine / "shapes-student-onnx.mar")
    deploy = ["--deploy", str(tmp_path / "deploy")]
    for idx, (extra, count) in enumerate((([], cores), (["--cores", "5"], 5), (deploy, POD_CORES))):
        repo = tmp_path / f"triton-{idx}"
        written = _cli("export-triton", onnx, "--out", str(repo), *extra)
        assert written.returncode == 0, written.stderr
        plural = "s" if count != 1 else ""
        assert f"{count} instance{plural}, one per core of the serving host" in written.stdout
        config = (repo / "shapes-student-onnx" / "config.pbtxt").read_text()
        assert f"count: {count} " in config

    # The data-loss case: the user's model archived under the digits student's name and version
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy2(model_store / "digits-student.mar", store / "digits-student.mar")
    index = _cli("archive", str(out / "shapes" / "1.0"), "--model-name", "digits-student",
                 "--model-store", str(store))  # fmt: skip
    assert index.returncode == 2
    (line,) = index.stderr.strip().splitlines()
    assert "holds digits-student 1.0 (recipe 'digits', 10 labels" in line
    assert "another recipe, labels, model sha256" in line and "--force" in line
    assert sha256_file(store / "digits-student.mar") == sha256_file(
        model_store / "digits-student.mar"
    )
    assert not (store / "index.json").exists()  # nothing recorded either
