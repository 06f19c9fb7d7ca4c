"""Distillation beyond one process: a build killed mid-training resumes to bit-identical weights,
two torchrun processes reach the accuracy of one, and a frozen teacher's outputs are computed
once when the images are not augmented."""

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from distillserve.errors import RecipeError
from distillserve.students.checkpoints import Checkpointer
from distillserve.students.data import make_loader, preprocess_spec
from distillserve.students.distill import evaluate
from distillserve.students.distill_settings import DistillSettings
from distillserve.students.recipe import DataConfig
from distillserve.students.training import train
from distillserve.students.zoo import build_model
from tests.helpers import ROOT, small_recipe_dict


def _recipe(tmp_path: Path, teacher_epochs: int = 3, distill_epochs: int = 10) -> Path:
    """A quick digits recipe: a small teacher, fp32 student, TorchScript only."""
    raw = small_recipe_dict()
    raw["teacher"].update(epochs=teacher_epochs)
    raw["distill"].update(epochs=distill_epochs)
    raw["quantize"]["mode"] = "none"
    raw["export"]["formats"] = ["torchscript"]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "distillserve.scripts.cli", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _weights(artifact: Path) -> dict[str, torch.Tensor]:
    return torch.jit.load(str(artifact / "model.pt")).state_dict()


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> tuple[Path, Path]:
    """The quick recipe and its build in one process, uninterrupted: (recipe, artifact)."""
    tmp = tmp_path_factory.mktemp("one-process")
    recipe = _recipe(tmp)
    run = _cli("build", str(recipe), "--out", str(tmp / "out"), "--no-teacher-cache")
    assert run.wait(timeout=600) == 0, run.stderr.read()
    return recipe, tmp / "out" / "digits" / "1.0"


@pytest.mark.slow  # trains
def test_a_killed_build_resumes_to_the_same_weights(tmp_path, one_process):
    recipe, whole = one_process

    out = tmp_path / "killed"
    checkpoint = out / "digits" / "1.0" / ".checkpoints" / "student-1.pt"
    killed = _cli("build", str(recipe), "--out", str(out), "--no-teacher-cache")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and killed.poll() is None:
        if checkpoint.is_file() and torch.load(checkpoint, weights_only=False).get("epoch", 0) >= 2:
            killed.send_signal(signal.SIGKILL)  # mid-distillation, as a lost machine would
            break
        time.sleep(0.05)
    assert killed.wait(timeout=60) == -signal.SIGKILL, "the build ended before it was killed"
    assert not (out / "digits" / "1.0" / "model.pt").exists()

    resumed = _cli("build", str(recipe), "--out", str(out), "--no-teacher-cache", "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    log = resumed.stderr.read()
    assert "resuming from" in log and "teacher-1-1-1" in log and "student-1" in log, log
    assert "teacher: training" in log  # the teacher phase is restored from its checkpoint...
    assert not (out / "digits" / "1.0" / ".checkpoints").exists()  # ...and cleaned up after

    expected, got = (
        _weights(whole),
        _weights(out / "digits" / "1.0"),
    )
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected), "weights differ after resume"


@pytest.mark.slow  # trains
def test_torchrun_restarts_a_killed_process_and_two_reach_the_accuracy_of_one(
    tmp_path, one_process
):
    """Two torchrun processes, one killed mid-distillation: torchrun restarts both, the build
    resumes from its checkpoint, and the student's accuracy is that of the one-process build."""
    import psutil

    recipe, one = one_process
    out = tmp_path / "elastic"
    checkpoint = out / "digits" / "1.0" / ".checkpoints" / "student-1.pt"
    run = _cli("build", str(recipe), "--out", str(out), "--no-teacher-cache", "--nproc", "2")
    deadline = time.monotonic() + 600
    while not checkpoint.is_file() and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)
    workers = [
        p
        for p in psutil.Process(run.pid).children(recursive=True)
        if "torchrun" not in p.cmdline()[1]
    ]
    assert len(workers) == 2, workers
    workers[-1].kill()  # one rank dies mid-distillation
    assert run.wait(timeout=600) == 0, run.stderr.read()
    log = run.stderr.read()
    assert "resuming from" in log and "student-1" in log, log
    assert "trained in 2 processes" in log
    metrics = [
        json.loads((artifact / "metrics.json").read_text())
        for artifact in (one, out / "digits" / "1.0")
    ]
    samples = metrics[0]["test_samples"]
    assert abs(metrics[0]["test_accuracy"] - metrics[1]["test_accuracy"]) * samples <= 1 + 1e-6


def test_resume_refuses_checkpoints_of_another_recipe(tmp_path):
    Checkpointer(tmp_path / "ckpt", {"name": "a"}, resume=False)
    (tmp_path / "ckpt" / "student-1.pt").write_bytes(b"an epoch")
    with pytest.raises(RecipeError, match="written by another recipe, with another name"):
        Checkpointer(tmp_path / "ckpt", {"name": "b"}, resume=True)


@pytest.mark.slow  # trains
def test_two_processes_train_the_weights_of_one(tmp_path):
    """The global batches, their augmentation and BatchNorm statistics are those of one process:
    the weights agree to float rounding (a padded, differently dealt epoch drifts 2e-3)."""
    from distillserve.students.distributed import launch_command

    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    for command in (
        [sys.executable, "-m", "tests.ddp_worker", str(one)],
        launch_command(2, [str(two)], "tests.ddp_worker"),
    ):
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    a, b = torch.load(one), torch.load(two)
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-5


class _Counted(torch.nn.Module):
    """A frozen teacher that counts its forward passes."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x)


@pytest.mark.slow  # trains
def test_teacher_outputs_are_computed_once_without_augmentation(digits_splits):
    spec = preprocess_spec(DataConfig())
    loaders = {
        name: make_loader(getattr(digits_splits, name), spec, 64, shuffle=name == "train")
        for name in ("train", "val", "test")
    }
    torch.manual_seed(0)
    teacher = build_model("tiny_cnn", 10, 1, {"widths": [16, 32, 32]})
    train(teacher, loaders["train"], loaders["val"], DistillSettings(3, lr=0.05, weight_decay=0.0))
    results = {}
    for cache in (True, False):
        counted = _Counted(teacher.eval())
        torch.manual_seed(1)
        student = build_model("tiny_cnn", 10, 1, {"widths": [8, 16, 16]})
        settings = DistillSettings(
            epochs=4, lr=0.05, weight_decay=0.0, teachers=[counted], cache_teacher_outputs=cache
        )
        result = train(student, loaders["train"], loaders["val"], settings)
        results[cache] = (result, counted.calls, evaluate(student, loaders["test"]))
    cached, calls, accuracy = results[True]
    assert cached.teacher_outputs.startswith(
        "cached: the teacher's logits of 1167 training examples"
    )
    assert calls == math.ceil(1167 / 256)  # once per image, never during the epochs
    uncached, uncached_calls, uncached_accuracy = results[False]
    assert uncached_calls == 4 * math.ceil(1167 / 64) and uncached.teacher_outputs.startswith(
        "recomputed every step"
    )
    assert abs(accuracy - uncached_accuracy) * 450 <= 1 + 1e-6
    augmented = train(
        build_model("tiny_cnn", 10, 1, {"widths": [8, 16, 16]}),
        loaders["train"],
        loaders["val"],
        DistillSettings(1, 0.05, 0.0, teachers=[teacher], augment={"degrees": 10.0}),
    )
    assert "random augmentation" in augmented.teacher_outputs
