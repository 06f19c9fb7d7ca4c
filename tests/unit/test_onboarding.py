"""A user's own teacher, checked before any training: kinds of teacher file x export formats,
checkpoint errors that give the cause and the fix, cheap recovery (resume after an export
change, the parity hint, Ctrl-C), progress lines, and start-up errors with their cause. Each from
the user's side where it can be: the command's exit code and its one line on stderr."""

from __future__ import annotations

import argparse
import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from torch import nn

from distillserve.errors import ExportError, RecipeError
from distillserve.scripts.cli import main
from distillserve.students.checkpoints import Checkpointer, first_difference
from distillserve.students.distill_settings import DistillSettings
from distillserve.students.recipe import Recipe
from distillserve.students.training import train
from tests.helpers import ROOT

SHAPES = ROOT / "docs" / "own-data"


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory) -> Path:
    """A few images of the walkthrough's 5-class ImageFolder."""
    out = tmp_path_factory.mktemp("shapes") / "data"
    subprocess.run(
        [sys.executable, str(SHAPES / "make_shapes.py"), str(out), "--per-class", "8"],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory) -> dict[str, Path]:
    """A plain torchvision ResNet-18 (untrained) saved in every way a user might save it."""
    out = tmp_path_factory.mktemp("teachers")
    five, ten = (torchvision.models.resnet18(num_classes=n).eval() for n in (5, 10))
    files = {name: out / f"{name}.pt" for name in ("state", "ten", "whole", "ts", "ref", "text")}
    torch.save(five.state_dict(), files["state"])
    torch.save(ten.state_dict(), files["ten"])
    torch.save(five, files["whole"])
    torch.jit.script(five).save(str(files["ts"]))
    # torchvision's reference scripts save {"model", "optimizer", "args", "epoch"}
    args = argparse.Namespace(lr=0.1)
    torch.save({"model": five.state_dict(), "args": args, "epoch": 3}, files["ref"])
    files["text"].write_text("not a model\n")
    return files


def _recipe(data: Path, checkpoint: Path, **sections) -> dict:
    raw = yaml.safe_load((SHAPES / "shapes.yaml").read_text())
    raw["data"]["root"] = str(data)
    raw["teacher"]["checkpoint"] = str(checkpoint)
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def _build(tmp_path: Path, raw: dict, capsys) -> tuple[int, list[str]]:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    code = main(["build", str(recipe), "--out", str(tmp_path / "build")])
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    return code, lines


def test_a_torchscript_teacher_is_exported_as_torchscript_only(shapes_data, teacher_files):
    recipe = Recipe.from_dict(_recipe(shapes_data, teacher_files["ts"]))
    assert recipe.export.formats == ["torchscript", "pt2", "onnx"]
    assert recipe.teacher_is_torchscript and recipe.teacher_formats == ["torchscript"]
    state = Recipe.from_dict(_recipe(shapes_data, teacher_files["state"]))
    assert not state.teacher_is_torchscript
    assert state.teacher_formats == ["torchscript", "pt2", "onnx"]


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"export": {"teacher_formats": ["torchscript", "pt2"]}}, "export.teacher_formats"),
        ({"distill": {"feature": {"pairs": [["layer4", "features.2"]]}}}, "distill.feature"),
    ],
)
def test_what_a_torchscript_teacher_cannot_do_is_refused_before_any_work(
    shapes_data, teacher_files, tmp_path, capsys, sections, key
):
    code, lines = _build(tmp_path, _recipe(shapes_data, teacher_files["ts"], **sections), capsys)
    assert code == 2
    (line,) = lines
    assert f"recipe key '{key}'" in line and "TorchScript teacher" in line
    assert "give a state dict of teacher.arch" in line  # the fix
    assert not (tmp_path / "build").exists()  # nothing was trained


@pytest.mark.parametrize(
    ("kind", "cause"),
    [
        ("ten", "size mismatch (2): fc.weight (10, 512) in the file, (5, 512) in resnet18"),
        ("whole", "whole model saved with torch.save(model)"),
        ("text", "is not a PyTorch file"),
    ],
)
def test_a_bad_teacher_file_says_why_and_lists_the_accepted_kinds(
    shapes_data, teacher_files, tmp_path, capsys, kind, cause
):
    code, lines = _build(tmp_path, _recipe(shapes_data, teacher_files[kind]), capsys)
    assert code == 2
    (line,) = lines
    assert line.startswith("distillserve build: error: recipe key 'teacher.checkpoint': ")
    assert cause in line
    assert "accepted: a state dict" in line and "TorchScript file" in line
    assert "weights_only" not in line and "\x1b[" not in line  # no unsafe advice, no escapes
    if kind == "ten":
        assert "its last layer has 10 outputs, the recipe's data 5 classes" in line


def test_state_dicts_load_as_plain_torchvision_and_its_references_save_them(teacher_files):
    from distillserve.students.checkpoint_files import load_state
    from distillserve.students.zoo import build_model

    reference = torch.load(teacher_files["state"], weights_only=True)
    for kind in ("state", "ref"):
        model = build_model("resnet18", 5, 3)  # torchvision's quantizable ResNet-18
        load_state(model, teacher_files[kind], "teacher.checkpoint", "resnet18")
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], reference[k]) for k in ("conv1.weight", "fc.bias"))


def test_resume_accepts_export_changes_and_names_a_training_change(tmp_path):
    recipe = {"name": "a", "distill": {"epochs": 10}, "export": {"min_int8_agreement": 0.99}}
    Checkpointer(tmp_path, recipe, resume=False)
    (tmp_path / "student-1.pt").write_bytes(b"an epoch")
    lowered = {**recipe, "export": {"min_int8_agreement": 0.98}, "archive": {"version": "2"}}
    Checkpointer(tmp_path, lowered, resume=True)  # export/archive only: accepted
    assert (tmp_path / "student-1.pt").is_file()
    with pytest.raises(RecipeError) as refused:
        Checkpointer(tmp_path, {**lowered, "distill": {"epochs": 12}}, resume=True)
    assert refused.value.key == "distill.epochs" and "without --resume" in str(refused.value)
    assert first_difference({"a": {"b": 1}}, {"a": {"b": 1}}) is None


def _tiny_data(n: int = 32):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, 4, generator=generator)
    return [(images[i : i + 8], (images[i : i + 8, 0] > 0).long()) for i in range(0, n, 8)]


class _Lines(logging.Handler):
    """The messages a logger emits, whatever else handles them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_every_epoch_is_a_line_off_a_terminal_and_resume_names_its_epoch(tmp_path, monkeypatch):
    data = _tiny_data()
    logger, lines = logging.getLogger("distillserve.train"), _Lines()
    monkeypatch.setattr(logger, "handlers", [lines])
    previous = logger.level
    logger.setLevel(logging.INFO)

    def stop_after_two(epoch: int, _epochs: int, _acc: float) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    try:
        first = Checkpointer(tmp_path, {"name": "x"}, resume=False)
        settings = DistillSettings(epochs=4, lr=0.1, weight_decay=0.0)
        with pytest.raises(KeyboardInterrupt):
            train(
                nn.Linear(4, 2),
                data,
                data,
                settings,
                desc="teacher 1/1",
                on_epoch=stop_after_two,
                checkpoint=first.phase("teacher 1/1"),
            )
        epochs = [line for line in lines.lines if "epoch" in line]
        assert epochs[0].startswith("[train] teacher 1/1: epoch 1/4 loss ")
        assert len(epochs) == 2  # the second was interrupted after its line, before its checkpoint
        lines.lines.clear()
        again = Checkpointer(tmp_path, {"name": "x"}, resume=True)
        train(
            nn.Linear(4, 2),
            data,
            data,
            settings,
            desc="teacher 1/1",
            checkpoint=again.phase("teacher 1/1"),
        )
    finally:
        logger.setLevel(previous)
    assert "resuming at epoch 2/4" in lines.lines[0]
    assert [m.split(": ")[1].split(" loss")[0] for m in lines.lines[1:]] == [
        "epoch 2/4",
        "epoch 3/4",
        "epoch 4/4",
    ]


def test_ctrl_c_and_a_parity_failure_say_how_to_resume(tmp_path, capsys, monkeypatch):
    from distillserve.students import pipeline

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r"}))
    monkeypatch.setattr(pipeline, "build", _raises(KeyboardInterrupt()))
    assert main(["build", str(recipe)]) == 130
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "interrupted" in line and f"distillserve build {recipe} --resume" in line
    monkeypatch.setattr(pipeline, "build", _raises(ExportError("model.onnx: int8 agreement")))
    assert main(["build", str(recipe)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "checkpointed" in line and "--resume skips it" in line


def _raises(error: BaseException):
    def build(*_args, **_kwargs):
        raise error

    return build


def test_the_int8_parity_failure_suggests_what_to_try(tmp_path):
    from distillserve.students.export import check_parity

    torch.manual_seed(0)
    model, other = nn.Linear(4, 3), nn.Linear(4, 3)
    path = tmp_path / "model.pt"
    path.write_bytes(b"x")
    with pytest.raises(ExportError) as failed:
        check_parity(
            model, path, reference=other, batches=_tiny_data(), atol=1e-4, min_agreement=0.99
        )
    assert "Try: quantize.mode qat" in str(failed.value)
    assert "export.min_int8_agreement" in str(failed.value)


def test_a_port_in_use_is_named_with_how_to_choose_another(tmp_path, capsys):
    from distillserve.archiver.properties import ServerConfig

    store = tmp_path / "store"
    store.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = ServerConfig.with_free_ports(store)
        config.inference_port = port
        path = config.write(tmp_path / "c.properties")
        code = main(["serve", "start", "--config", str(path), "--run-dir", str(tmp_path / "r")])
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"127.0.0.1:{port} (inference_address in c.properties) is already in use" in line
    assert "copy c.properties, change inference_address" in line and "--config" in line


def test_a_failed_start_names_the_cause_from_the_logs(tmp_path):
    from distillserve.serving.startup import startup_cause

    (tmp_path / "ts_log.log").write_text(
        "2026-12-03 INFO Initializing plugins manager...\n"
        "2026-12-03 ERROR Failed to bind\n"
        "java.net.BindException: bind(..) failed: Address already in use\n"
    )
    assert startup_cause(tmp_path).endswith("bind(..) failed: Address already in use")
    assert startup_cause(tmp_path / "absent") == ""


def test_unknown_models_are_answered_with_what_the_server_has():
    from distillserve.serving.versions import is_unknown_model, unknown_model_error

    class Management:
        def list_models(self):
            return [{"modelName": "digits-student"}, {"modelName": "shapes-student"}]

        def default_version(self, name):
            return "1.0"

        def describe(self, name, version):
            versions = ("1.0", "2.0") if name == "digits-student" else ("1.0",)
            return [{"modelVersion": v, "workers": []} for v in versions]

    assert is_unknown_model(404, None, "Model not found: shapes-studnet")
    assert is_unknown_model(None, "INTERNAL", "gRPC INTERNAL: Model version: 3.0 does not exist")
    assert not is_unknown_model(None, "INTERNAL", "gRPC INTERNAL: Worker died.")
    assert not is_unknown_model(400, None, "Model not found")  # a handler's own 400
    message = str(unknown_model_error(Management(), "shapes-studnet", None))
    assert message == (
        "the server has no model 'shapes-studnet': it has digits-student (1.0*, 2.0); "
        "shapes-student (1.0*)"
    )


def test_kserve_image_installs_what_each_format_needs():
    from distillserve.archiver.image import dockerfile

    text = dockerfile({"torch": "2.14.1", "torchvision": "0.29.1", "onnxruntime": "1.32.0"})
    assert "torch==2.14.1 torchvision==0.29.1\n" in text
    assert "RUN python -m pip install --no-cache-dir onnxruntime==1.32.0\n" in text
    assert "onnxruntime" not in dockerfile({"torch": "2.14.1", "torchvision": "0.29.1"})


def test_the_build_says_when_int8_is_slower_than_fp32():
    from distillserve.students.measure import log_int8_speedup

    def formats(b1: float, b8: float) -> dict:
        return {"latency_ms_batch1": b1, "latency_ms_batch8": b8, "size_bytes": 1000}

    metrics = {
        "student-fp32": {
            "model_name": "s-fp32",
            "formats": {"onnx": formats(0.033, 0.04), "torchscript": formats(0.1, 0.4)},
        },
        "student": {
            "quantized": True,
            "formats": {"onnx": formats(0.060, 0.05), "torchscript": formats(0.05, 0.2)},
        },
    }
    lines: list[str] = []
    log_int8_speedup(metrics, lines.append, Path("build/s/1.0"))
    notes = [line for line in lines if "NOTE" in line]
    assert len(notes) == 1 and "the onnx int8 file is slower than fp32 here (0.55x)" in notes[0]
    assert "distillserve archive build/s/1.0/student-fp32 --format onnx" in notes[0]
    assert metrics["student"]["formats"]["torchscript"]["int8_speedup"] == {
        "batch1": 2.0,
        "batch8": 2.0,
    }


@pytest.mark.slow  # trains a student for an epoch
def test_a_failed_export_resumes_without_retraining_after_an_export_change(
    shapes_data, teacher_files, tmp_path, capsys, monkeypatch
):
    from distillserve.students import pipeline

    raw = _recipe(shapes_data, teacher_files["state"])
    raw["distill"]["epochs"] = 1
    raw["export"] = {"formats": ["torchscript"], "min_int8_agreement": 0.99}
    real = pipeline.export_formats

    def parity_fails(*_args, **_kwargs):
        raise ExportError("model.pt: int8 top-1 agreement with the fp32 model is 0.9895 < 0.99")

    monkeypatch.setattr(pipeline, "export_formats", parity_fails)
    code, lines = _build(tmp_path, raw, capsys)
    assert code == 2
    (line,) = lines
    assert "the training is checkpointed" in line and "--resume skips it" in line
    monkeypatch.setattr(pipeline, "export_formats", real)
    raw["export"]["min_int8_agreement"] = 0.5  # an export-only change
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    assert main(["build", str(recipe), "--out", str(tmp_path / "build"), "--resume"]) == 0
    lines = capsys.readouterr().err.splitlines()  # what the user sees on stderr
    restored = [line for line in lines if "restored from" in line]
    assert restored and restored[0].startswith("[train] student: finished before")
    assert not [line for line in lines if "student: epoch" in line]  # no retraining
    assert any(line.startswith("[build] artifacts in") for line in lines)
