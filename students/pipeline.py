"""``build``: a recipe in, student artifact directories out.

    build/NAME/VERSION/               the final student (int8 when quantized, else fp32)
    build/NAME/VERSION/student-fp32/  the fp32 student it was quantized from (when quantized)
    build/NAME/VERSION/teacher/       the teacher, for comparison and serving

The stages (``students.stages``) run in order: data, teacher, distill, prune, quantize; then every
model is exported with its parity checks, measured, and written as an artifact
(``students.artifact``). The build is written to a staging directory and moved into place only
when every stage, parity checks included, has passed.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from distillserve import __version__
from distillserve.handlers.classification import HandlerSettings, thread_count
from distillserve.students.artifact import MODEL_FILE, write_artifact
from distillserve.students.distill import evaluate
from distillserve.students.export import ParityReport, export_torchscript, load_torchscript
from distillserve.students.measure import latency_ms, threads
from distillserve.students.quantize import check_engine
from distillserve.students.recipe import Recipe
from distillserve.students.stages import (
    DataStage,
    QuantizedStudent,
    distill_student,
    load_data,
    load_teacher,
    make_teacher,
    prune_student,
    quantize_student,
)
from distillserve.students.zoo import count_parameters

__all__ = ["BuildResult", "ExportedModel", "build", "load_teacher"]


@dataclass
class ExportedModel:
    """One model of the build, as it is exported: its role, served name and eager module."""

    role: str  # teacher | student-fp32 | student
    model_name: str
    model: nn.Module
    quantized: bool
    params: int


@dataclass
class BuildResult:
    """Where the build wrote its artifacts and the metrics of each."""

    root: Path
    artifacts: dict[str, Path]
    metrics: dict[str, dict]
    stage_seconds: dict[str, float] = field(default_factory=dict)
    models: dict[str, nn.Module] = field(default_factory=dict)  # eager models, by role


def _log(message: str) -> None:
    print(f"[build] {message}", file=sys.stderr, flush=True)


class _Timer:
    """Seconds per stage, each measured from the end of the one before."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._clock = time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._clock, 3)
        self._clock = now


def build(
    recipe: Recipe,
    out_root: str | Path = "build",
    log: Callable[[str], None] = _log,
    teacher_cache_dir: str | Path | None = None,
    on_epoch: Callable[[int, int, float], None] | None = None,
) -> BuildResult:
    """Train or load the teacher, distill, prune, quantize and export the student; write the
    artifacts.

    With ``teacher_cache_dir`` a trained teacher is saved there and reused by later builds whose
    seed, data and teacher settings (and training code) are the same. ``on_epoch`` follows the
    student's distillation epochs (``students.distill.train``).
    """
    torch.manual_seed(recipe.seed)
    timer = _Timer()
    if recipe.quantize.mode != "none":
        check_engine(recipe.quantize.engine)
    data = load_data(recipe, log)
    timer.done("data")
    cache = Path(teacher_cache_dir) if teacher_cache_dir is not None else None
    teacher = make_teacher(recipe, data, log, cache)
    timer.done("teacher")
    distilled = distill_student(recipe, data, teacher, log, on_epoch)
    timer.done("distill")
    student = prune_student(recipe, distilled, log)
    timer.done("prune")
    quantized = quantize_student(recipe, student, data, distilled, log)
    timer.done("quantize")

    models = _models(recipe, teacher.teacher, student, quantized)
    final = Path(out_root) / recipe.name / recipe.archive.version
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    staging.chmod(0o755)
    try:
        dirs = {m.role: staging if m.role == "student" else staging / m.role for m in models}
        parity = {m.role: _export(recipe, m, dirs[m.role], data, quantized, log) for m in models}
        loaded = {m.role: load_torchscript(dirs[m.role] / MODEL_FILE) for m in models}
        accuracy = {role: evaluate(model, data.test) for role, model in loaded.items()}
        val_accuracy = {role: evaluate(model, data.val) for role, model in loaded.items()}
        for m in models:
            log(f"export: {m.role} -> model.pt, test accuracy {accuracy[m.role]:.4f}")
        timer.done("export")
        metrics = {
            m.role: {
                **_measure(recipe, m, dirs[m.role], data, accuracy, parity[m.role]),
                "val_accuracy": val_accuracy[m.role],
            }
            for m in models
        }
        timer.done("measure")
        metrics["student"].update(
            stage_seconds=timer.seconds,
            stages=distilled.stages_run,
            distill_epochs_run=distilled.epochs_run,
        )
        if quantized.mixed is not None:
            metrics["student"]["mixed_precision"] = quantized.mixed.to_dict()
        for m in models:
            _write(recipe, m, dirs[m.role], data, metrics[m.role])
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"artifacts in {final}")
    return BuildResult(
        root=final,
        artifacts={m.role: final if m.role == "student" else final / m.role for m in models},
        metrics=metrics,
        stage_seconds=timer.seconds,
        models={m.role: m.model for m in models},
    )


def _models(
    recipe: Recipe, teacher: nn.Module, student: nn.Module, quantized: QuantizedStudent
) -> list[ExportedModel]:
    """What the build exports, in order: teacher, fp32 student (when quantized), student."""
    name, params = recipe.archive.model_name, count_parameters(student)
    models = [
        ExportedModel(
            "teacher", f"{recipe.name}-teacher", teacher, False, count_parameters(teacher)
        )
    ]
    if quantized.int8 is None:
        return [*models, ExportedModel("student", name, student, False, params)]
    return [
        *models,
        ExportedModel("student-fp32", f"{name}-fp32", student, False, params),
        ExportedModel("student", name, quantized.int8, True, params),
    ]


def _export(
    recipe: Recipe,
    model: ExportedModel,
    directory: Path,
    data: DataStage,
    quantized: QuantizedStudent,
    log: Callable[[str], None],
) -> dict:
    """Export one model to ``directory/model.pt`` with its parity checks; the parity record."""
    reference = quantized.reference if model.quantized else None
    report: ParityReport = export_torchscript(
        model.model,
        directory / MODEL_FILE,
        torch.zeros(1, recipe.data.channels, *recipe.data.image_size),
        data.test,
        method=recipe.export.method,
        reference=reference,
        atol=recipe.export.atol,
        min_agreement=recipe.export.min_int8_agreement,
    )
    if reference is None:
        against = "eager model"
    elif recipe.quantize.mode == "qat":
        against = "fake-quantized QAT model it was converted from"
    else:
        against = "fp32 model it was converted from"
    return {**report.to_dict(), "against": against}


def _measure(
    recipe: Recipe,
    model: ExportedModel,
    directory: Path,
    data: DataStage,
    accuracy: dict[str, float],
    parity: dict,
) -> dict:
    """The metrics of one exported model (batch-1 latency with one worker's threads). The file
    is loaded afresh: a TorchScript module that has already run other batch shapes (the
    evaluation's) is specialised for them and runs batch 1 up to 2x slower."""
    worker_threads = thread_count(recipe.archive.threads, recipe.archive.max_workers)
    example = torch.zeros(1, recipe.data.channels, *recipe.data.image_size)
    with threads(worker_threads):
        latency = latency_ms(load_torchscript(directory / MODEL_FILE), example)
    return {
        "role": model.role,
        "model_name": model.model_name,
        "quantized": model.quantized,
        "params": model.params,
        "size_bytes": (directory / MODEL_FILE).stat().st_size,
        "latency_ms_batch1": round(latency, 4),
        "latency_threads": worker_threads,
        "test_accuracy": accuracy[model.role],
        "test_samples": len(data.splits.test),
        "parity": parity,
        "accuracy": dict(accuracy),
        "toolkit_version": __version__,
        "torch_version": torch.__version__,
    }


def _write(
    recipe: Recipe, model: ExportedModel, directory: Path, data: DataStage, metrics: dict
) -> None:
    """The artifact files beside the exported model."""
    resolved = recipe.to_dict()
    resolved["archive"]["model_name"] = model.model_name
    handler = HandlerSettings(
        spec=data.spec,
        topk=recipe.archive.topk,
        quantized=model.quantized,
        engine=recipe.quantize.engine,
        threads=recipe.archive.threads,
    )
    write_artifact(
        directory, classes=data.splits.classes, handler=handler, metrics=metrics, recipe=resolved
    )
