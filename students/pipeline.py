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
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from distillserve import __version__
from distillserve.handlers import serving_policy
from distillserve.handlers.classification import HandlerSettings, sha256_file
from distillserve.handlers.runtimes import MODEL_FILES
from distillserve.log import progress
from distillserve.students import distributed
from distillserve.students.artifact import write_artifact
from distillserve.students.checkpoints import Checkpointer
from distillserve.students.distill import evaluate
from distillserve.students.distill_settings import for_qat
from distillserve.students.export_formats import FormatSource, export_formats
from distillserve.students.exported import load_exported
from distillserve.students.measure import latency_ms, log_int8_speedup, threads
from distillserve.students.quantize import check_engine
from distillserve.students.recipe import Recipe
from distillserve.students.stages import (
    DataStage,
    DistilledStudent,
    QuantizedStudent,
    distill_student,
    load_data,
    load_teacher,
    make_teacher,
    prune_student,
    quantize_student,
)
from distillserve.students.text_stages import (
    distill_text_student,
    load_text_data,
    make_text_teacher,
)
from distillserve.students.training import train
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
    source: FormatSource
    formats: list[str]  # the export formats, primary first


@dataclass
class BuildResult:
    """Where the build wrote its artifacts and the metrics of each."""

    root: Path
    artifacts: dict[str, Path]
    metrics: dict[str, dict]
    stage_seconds: dict[str, float] = field(default_factory=dict)
    # eager models, by role; kept out of repr (a quantized module's repr can fail once pickled,
    # which hid test failures behind the repr's own error)
    models: dict[str, nn.Module] = field(default_factory=dict, repr=False)


_log = progress("build")


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
    resume: bool = False,
) -> BuildResult | None:
    """Train or load the teacher, distill, prune, quantize and export the student; write the
    artifacts.

    With ``teacher_cache_dir`` a trained teacher is saved there and reused by later builds whose
    seed, data and teacher settings (and training code) are the same. ``on_epoch`` follows the
    student's distillation epochs (``students.training.train``). Every training epoch is
    checkpointed in ``build/NAME/VERSION/.checkpoints/`` (``students.checkpoints``); ``resume``
    continues from them (as does a process torchrun restarted). Under torchrun every process
    trains its shard; only rank 0 goes on to export and write, the others return ``None``.
    """
    distributed.init_from_env()
    resume = resume or distributed.restarted()
    if not distributed.is_main():
        log = _silent
    torch.manual_seed(recipe.seed)
    timer = _Timer()
    if recipe.quantize.mode != "none":
        check_engine(recipe.quantize.engine)
    final = Path(out_root) / recipe.name / recipe.archive.version
    checkpointer = Checkpointer(final / ".checkpoints", recipe.to_dict(), resume)
    if resume and checkpointer.completed():
        log(f"resuming from {checkpointer.directory}: {', '.join(checkpointer.completed())}")
    cache = Path(teacher_cache_dir) if teacher_cache_dir is not None else None
    if recipe.is_text:
        data, loaded = load_text_data(recipe, log, cache, checkpointer)
        timer.done("data")
        teacher = make_text_teacher(recipe, data, loaded, log, cache, checkpointer)
        timer.done("teacher")
        distilled = distill_text_student(recipe, data, teacher, log, on_epoch, checkpointer)
    else:
        data = load_data(recipe, log)
        timer.done("data")
        teacher = make_teacher(recipe, data, log, cache, checkpointer)
        timer.done("teacher")
        distilled = distill_student(recipe, data, teacher, log, on_epoch, checkpointer)
    timer.done("distill")
    student = prune_student(recipe, distilled, data, log, checkpointer)
    timer.done("prune")
    quantized = quantize_student(recipe, student, data, distilled, log, checkpointer)
    timer.done("quantize")
    if distributed.is_distributed():
        log(f"trained in {distributed.world_size()} processes; rank 0 exports")
    main = distributed.is_main()
    distributed.shutdown()  # what follows (export, PT2E QAT, measuring) is rank 0's alone
    if not main:
        return None
    qat_train = _qat_trainer(recipe, data, distilled, checkpointer)
    result = _export_and_write(
        recipe, data, teacher, distilled, student, quantized, log, timer, final, qat_train
    )
    checkpointer.remove()
    return result


def _silent(_message: str) -> None:
    """The log of every process but rank 0."""


def _export_and_write(
    recipe: Recipe,
    data: DataStage,
    teacher,
    distilled: DistilledStudent,
    student: nn.Module,
    quantized: QuantizedStudent,
    log: Callable[[str], None],
    timer: _Timer,
    final: Path,
    qat_train,
) -> BuildResult:
    """Export every model in every format with its checks, measure, and write the artifacts
    into ``build/NAME/VERSION/`` (staged, moved into place when everything passed)."""
    models = _models(recipe, teacher.teacher, student, quantized, qat_train)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    staging.chmod(0o755)
    try:
        dirs = {m.role: staging if m.role == "student" else staging / m.role for m in models}
        if models[0].formats != recipe.export.formats:
            why = "export.teacher_formats"
            if recipe.export.teacher_formats is None:
                why = "a TorchScript teacher: the other formats need its eager model"
            log(f"export: the teacher as {', '.join(models[0].formats)} only ({why})")
        parity = {
            m.role: export_formats(recipe, m.source, dirs[m.role], data, log, m.role, m.formats)
            for m in models
        }
        scores = {m.role: _scores(m.formats, dirs[m.role], data) for m in models}
        accuracy = {m.role: scores[m.role][m.formats[0]]["test_accuracy"] for m in models}
        for m in models:
            log(
                f"export: {m.role} -> "
                + ", ".join(
                    f"{MODEL_FILES[f]} (test accuracy {score['test_accuracy']:.4f})"
                    for f, score in scores[m.role].items()
                )
            )
        timer.done("export")
        metrics = {
            m.role: _measure(
                recipe, m, dirs[m.role], data, accuracy, parity[m.role], scores[m.role]
            )
            for m in models
        }
        log_int8_speedup(metrics, log, final)
        timer.done("measure")
        metrics["student"].update(
            stage_seconds=timer.seconds,
            stages=distilled.stages_run,
            distill_epochs_run=distilled.epochs_run,
            **distilled.throughput,
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
    recipe: Recipe,
    teacher: nn.Module,
    student: nn.Module,
    quantized: QuantizedStudent,
    qat_train,
) -> list[ExportedModel]:
    """What the build exports, in order: teacher, fp32 student (when quantized), student."""
    name, params = recipe.archive.model_name, count_parameters(student)
    formats = list(recipe.export.formats)

    def fp32(model: nn.Module) -> FormatSource:
        return FormatSource(model, model, None, False, "eager model")

    models = [
        ExportedModel(
            "teacher",
            f"{recipe.name}-teacher",
            teacher,
            False,
            count_parameters(teacher),
            fp32(teacher),
            recipe.teacher_formats,
        )
    ]
    if quantized.int8 is None:
        student_model = ExportedModel(
            "student", name, student, False, params, fp32(student), formats
        )
        return [*models, student_model]
    if recipe.quantize.mode == "qat":
        against = "fake-quantized QAT model it was converted from"
    else:
        against = "fp32 model it was converted from"
    int8 = FormatSource(quantized.int8, student, quantized.reference, True, against, qat_train)
    return [
        *models,
        ExportedModel(
            "student-fp32", f"{name}-fp32", student, False, params, fp32(student), formats
        ),
        ExportedModel("student", name, quantized.int8, True, params, int8, formats),
    ]


def _qat_trainer(
    recipe: Recipe, data: DataStage, distilled: DistilledStudent, checkpointer: Checkpointer
):
    """The QAT loop for a PT2E fake-quantized graph: the KD loss at ``quantize.qat_lr``."""
    settings = for_qat(recipe, distilled.settings)

    def run(prepared: nn.Module) -> None:
        checkpoint = checkpointer.phase("qat-pt2e")
        train(prepared, data.students, data.val, settings, desc="qat-pt2e", checkpoint=checkpoint)

    return run


def _scores(formats: list[str], directory: Path, data: DataStage) -> dict[str, dict]:
    """Test and validation accuracy of each format's file, re-loaded."""
    out = {}
    for fmt in formats:
        model = load_exported(directory / MODEL_FILES[fmt], threads=torch.get_num_threads())
        out[fmt] = {
            "test_accuracy": evaluate(model, data.test),
            "val_accuracy": evaluate(model, data.val),
        }
    return out


def _measure(
    recipe: Recipe,
    model: ExportedModel,
    directory: Path,
    data: DataStage,
    accuracy: dict[str, float],
    parity: dict[str, dict],
    scores: dict[str, dict],
) -> dict:
    """The metrics of one exported model: per format (``formats``) and, at the top level, those
    of the primary (first) format. Latency is measured with one worker's threads on a freshly
    loaded file: a TorchScript module that has already run other batch shapes (the
    evaluation's) is specialised for them and runs batch 1 up to 2x slower."""
    worker_threads = serving_policy.build_threads(recipe.archive.threads)
    one, eight = data.input_example(1), data.input_example(8)
    formats = {}
    for fmt in model.formats:
        path = directory / MODEL_FILES[fmt]
        record = dict(parity[fmt])
        export_seconds = record.pop("export_seconds")
        with threads(worker_threads):
            loaded = load_exported(path, threads=worker_threads)
            batch1 = latency_ms(loaded, one)
            batch8 = latency_ms(loaded, eight, repeats=30)
        formats[fmt] = {
            "file": path.name,
            "size_bytes": path.stat().st_size,
            "sha256": sha256_file(path),
            "latency_ms_batch1": round(batch1, 4),
            "latency_ms_batch8": round(batch8, 4),
            "export_seconds": export_seconds,
            **scores[fmt],
            "parity": record,
        }
    primary = formats[model.formats[0]]
    return {
        "role": model.role,
        "model_name": model.model_name,
        "quantized": model.quantized,
        "params": model.params,
        "format": model.formats[0],
        "size_bytes": primary["size_bytes"],
        "latency_ms_batch1": primary["latency_ms_batch1"],
        "latency_threads": worker_threads,
        "test_accuracy": primary["test_accuracy"],
        "val_accuracy": primary["val_accuracy"],
        "test_samples": len(data.splits.test),
        "parity": primary["parity"],
        "accuracy": dict(accuracy),
        "formats": formats,
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
        threads=recipe.archive.threads,  # AUTO is resolved when the archive is built
    )
    write_artifact(
        directory,
        classes=data.splits.classes,
        handler=handler,
        metrics=metrics,
        recipe=resolved,
        files=data.files,
    )
