"""``build``: a recipe in, student artifact directories out.

    build/NAME/VERSION/               the final student (int8 when quantized, else fp32)
    build/NAME/VERSION/student-fp32/  the fp32 student it was quantized from (when quantized)
    build/NAME/VERSION/teacher/       the teacher, for comparison and serving

Each directory follows the artifact contract (DESIGN.md): ``model.pt``, ``index_to_name.json``,
``handler.yaml``, ``metrics.json``, ``recipe.yaml``. The build is written to a staging directory
and moved into place only when every stage, parity checks included, has passed.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn

from distillserve import __version__
from distillserve.errors import RecipeError
from distillserve.handlers.classification import thread_count
from distillserve.students import teacher_cache
from distillserve.students.data import (
    Splits,
    labelled_fraction,
    load_splits,
    make_loader,
    preprocess_spec,
)
from distillserve.students.distill import evaluate, train
from distillserve.students.export import export_torchscript, load_torchscript
from distillserve.students.features import FeatureKD
from distillserve.students.finetune import make_trainable
from distillserve.students.measure import latency_ms, threads
from distillserve.students.mixed_precision import quantize_mixed
from distillserve.students.prune import (
    channel_prune,
    channel_widths,
    l1_unstructured,
    make_permanent,
    sparsity,
)
from distillserve.students.quantize import check_engine, quantize, quantize_qat
from distillserve.students.recipe import Recipe, TeacherConfig
from distillserve.students.schedules import make_schedule
from distillserve.students.zoo import Ensemble, build_model, count_parameters

__all__ = ["Artifact", "BuildResult", "build", "load_teacher"]

AUGMENT = {"degrees": 10.0, "translate": 0.1, "scale": 0.1}


@dataclass
class Artifact:
    """One exported model and what to write beside it."""

    role: str
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


def _load_state(model: nn.Module, path: str | Path, key: str) -> None:
    """Load a state dict (or a checkpoint dict with ``state_dict``) into ``model``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        model.load_state_dict(state)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, KeyError...
        text = str(err).strip()
        first_line = text.splitlines()[0] if text else type(err).__name__
        raise RecipeError(
            key, f"{path} is not a state dict for {type(model).__name__}: {first_line}"
        ) from None


def load_teacher(config: TeacherConfig, num_classes: int, channels: int) -> nn.Module:
    """A teacher from a TorchScript file, or the recipe's architecture plus a state-dict file."""
    path = Path(config.checkpoint or "")
    try:
        return load_torchscript(path)
    except RuntimeError:
        pass  # not TorchScript: try a state dict
    model = build_model(config.arch, num_classes, channels, config.kwargs)
    _load_state(model, path, "teacher.checkpoint")
    return model.eval()


def _train_teacher(
    recipe: Recipe,
    classes: int,
    train_loader,
    val_loader,
    log: Callable[[str], None],
    cache_dir: Path | None,
) -> list[nn.Module]:
    """Train ``teacher.members`` independently seeded models, or reuse them from ``cache_dir``."""
    config = recipe.teacher
    if cache_dir is not None:
        fresh = [
            build_model(config.arch, classes, recipe.data.channels, config.kwargs)
            for _ in range(config.members)
        ]
        entry = teacher_cache.load_members(cache_dir, recipe, fresh)
        if entry is not None:
            log(f"teacher: reused {config.members} trained {config.arch} from {entry}")
            return fresh
    members = []
    for index in range(config.members):
        seed = recipe.seed + index
        log(
            f"teacher: training {config.arch} {index + 1}/{config.members} "
            f"for {config.epochs} epochs"
        )
        torch.manual_seed(seed)
        member = build_model(config.arch, classes, recipe.data.channels, config.kwargs)
        train(
            member,
            train_loader,
            val_loader,
            epochs=config.epochs,
            lr=config.lr,
            weight_decay=config.weight_decay,
            label_smoothing=config.label_smoothing,
            augment=AUGMENT,
            seed=seed,
            desc=f"teacher {index + 1}/{config.members}",
        )
        members.append(member.eval())
    if cache_dir is not None:
        teacher_cache.save_members(cache_dir, recipe, members)
    return members


def _prune(recipe: Recipe, student: nn.Module, fit, teachers, weights, log) -> nn.Module:
    """``prune.rounds`` rounds of pruning, each followed by ``finetune_epochs`` of KD."""
    config = recipe.prune
    if config.method == "none":
        return student
    keep_per_round = (1.0 - config.amount) ** (1.0 / config.rounds)
    original = channel_widths(student) if config.method == "channel" else []
    for round_index in range(config.rounds):
        keep = keep_per_round ** (round_index + 1)
        if config.method == "channel":  # targets from the original widths: no drift from rounding
            widths = [max(1, math.ceil(w * keep - 1e-9)) for w in original]
            student = channel_prune(student, config.amount, config.criterion, widths)
        else:  # masks stay on through fine-tuning, then are made permanent
            student = l1_unstructured(
                student, 1.0 - keep, config.scope == "global", permanent=False
            )
        log(
            f"prune: round {round_index + 1}/{config.rounds}, {config.method} -> "
            f"{count_parameters(student)} params, sparsity {sparsity(student):.2f}"
        )
        if config.finetune_epochs:
            fit(
                student,
                epochs=config.finetune_epochs,
                teacher=teachers,
                teacher_weights=weights,
                lr=recipe.distill.lr / 10,
                desc=f"prune {round_index + 1}",
            )
        if config.method == "l1_unstructured":
            student = make_permanent(student)
    return student.eval()


def build(
    recipe: Recipe,
    out_root: str | Path = "build",
    log: Callable[[str], None] = _log,
    teacher_cache_dir: str | Path | None = None,
) -> BuildResult:
    """Train or load the teacher, distill, quantize and export the student; write the artifacts.

    With ``teacher_cache_dir`` a trained teacher is saved there and reused by later builds whose
    seed, data and teacher settings (and training code) are the same.
    """
    torch.manual_seed(recipe.seed)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    if recipe.quantize.mode != "none":
        check_engine(recipe.quantize.engine)
    data = recipe.data
    splits = load_splits(data, recipe.seed)
    spec = preprocess_spec(data)
    classes = len(splits.classes)
    train_loader = make_loader(splits.train, spec, data.batch_size, shuffle=True, seed=recipe.seed)
    calib_loader = make_loader(splits.train, spec, data.batch_size)
    val_loader = make_loader(splits.val, spec, 256)
    test_loader = make_loader(splits.test, spec, 256)
    log(
        f"data: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test, "
        f"{classes} classes, input {data.channels}x{data.image_size[0]}x{data.image_size[1]}"
    )
    stage("data")

    if recipe.teacher.checkpoint:
        members = [load_teacher(recipe.teacher, classes, data.channels)]
        log(f"teacher: loaded {recipe.teacher.checkpoint}")
    else:
        cache = Path(teacher_cache_dir) if teacher_cache_dir is not None else None
        members = _train_teacher(recipe, classes, train_loader, val_loader, log, cache)
    teacher = members[0] if len(members) == 1 else Ensemble(members).eval()
    teacher.eval()
    # What the student learns from: one (ensemble) teacher, or several with weighted soft targets.
    kd_teachers, kd_weights = [teacher], None
    if recipe.teacher.combine == "soft_targets" and len(members) > 1:
        kd_teachers, kd_weights = members, recipe.teacher.weights
        log(f"teacher: multi-teacher KD over {len(members)} members' soft targets")
    stage("teacher")

    kd = recipe.distill
    student_data = labelled_fraction(splits.train, kd.label_fraction, recipe.seed)
    if kd.label_fraction < 1.0:
        log(f"students learn from {len(student_data)} labelled images ({kd.label_fraction:.0%})")
    student_loader = make_loader(
        student_data, spec, data.batch_size, shuffle=True, seed=recipe.seed
    )
    fit = functools.partial(
        train,
        train_loader=student_loader,
        val_loader=val_loader,
        lr=kd.lr,
        weight_decay=kd.weight_decay,
        temperature=make_schedule(
            kd.temperature_schedule, kd.temperature, "distill.temperature_schedule"
        ),
        alpha=make_schedule(kd.alpha_schedule, kd.alpha, "distill.alpha_schedule"),
        patience=kd.patience or None,
        augment=AUGMENT,
        seed=recipe.seed,
    )
    stages_run = []
    for index, spec in enumerate(kd.stages):  # progressive distillation
        torch.manual_seed(recipe.seed + 100 + index)
        middle = build_model(spec["arch"], classes, data.channels, spec["kwargs"])
        epochs = spec["epochs"] or kd.epochs
        log(
            f"stage {index + 1}/{len(kd.stages)}: distilling {spec['arch']} "
            f"({count_parameters(middle)} params) for {epochs} epochs"
        )
        result = fit(
            middle,
            epochs=epochs,
            teacher=kd_teachers,
            teacher_weights=kd_weights,
            desc=f"stage {index + 1}",
        )
        stages_run.append(
            {
                "arch": spec["arch"],
                "params": count_parameters(middle),
                "val_accuracy": result.best_val_accuracy,
            }
        )
        kd_teachers, kd_weights = [middle.eval()], None

    torch.manual_seed(recipe.seed)
    student = build_model(recipe.student.arch, classes, data.channels, recipe.student.kwargs)
    if recipe.student.checkpoint:
        _load_state(student, recipe.student.checkpoint, "student.checkpoint")
        log(f"student: initialised from {recipe.student.checkpoint}")
    params = count_parameters(student)
    if recipe.student.max_params and params > recipe.student.max_params:
        raise RecipeError(
            "student.max_params",
            f"{recipe.student.arch} with {recipe.student.kwargs} has {params} parameters "
            f"> {recipe.student.max_params}; make it smaller or raise the limit",
        )
    feature_kd = None
    if kd.feature:
        example = torch.zeros(2, data.channels, *data.image_size)
        feature_kd = FeatureKD(
            kd_teachers[0],
            student,
            [tuple(pair) for pair in kd.feature["pairs"]],
            example,
            kd.feature["loss"],
            kd.feature["weight"],
        )
    log(
        f"student: distilling {recipe.student.arch} ({params} params) for {kd.epochs} epochs, "
        f"T={kd.temperature:g}, alpha={kd.alpha:g}"
        + (f", feature KD on {len(kd.feature['pairs'])} layer pair(s)" if kd.feature else "")
    )
    distilled = fit(
        student,
        epochs=kd.epochs,
        teacher=kd_teachers,
        teacher_weights=kd_weights,
        feature_kd=feature_kd,
        trainable=make_trainable(kd.finetune, kd.unfreeze_every),
        desc="student",
    )
    if feature_kd is not None:
        feature_kd.remove()
    if distilled.stopped_early:
        log(f"student: early stop after {len(distilled.history)} epochs")
    stage("distill")

    student = _prune(recipe, student, fit, kd_teachers, kd_weights, log)
    params = count_parameters(student)
    stage("prune")

    name = recipe.archive.model_name
    artifacts = {
        "teacher": Artifact(
            "teacher", f"{recipe.name}-teacher", teacher, False, count_parameters(teacher)
        ),
    }
    q = recipe.quantize
    mixed_report = None
    if q.mode == "mixed":
        int8, mixed_report = quantize_mixed(student, calib_loader, val_loader, q)
        int8_reference = student
        log(
            f"quantize: mixed precision within {q.accuracy_budget:g} of fp32 on validation: "
            f"{len(mixed_report.int8_layers)} layer(s) int8, fp32 kept for "
            f"{', '.join(mixed_report.fp32_layers) or 'none'}"
        )
    elif q.mode == "qat":
        log(f"quantize: QAT with KD for {q.qat_epochs} epochs, engine {q.engine}")
        int8, int8_reference = quantize_qat(
            student,
            student_loader,
            val_loader,
            q,
            teacher=kd_teachers,
            teacher_weights=kd_weights,
            epochs=q.qat_epochs,
            lr=q.qat_lr,
            temperature=kd.temperature,
            alpha=kd.alpha,
            seed=recipe.seed,
            return_reference=True,
        )
    else:
        int8 = quantize(student, calib_loader, q)
        int8_reference = student
    if int8 is not None:
        log(f"quantize: {recipe.quantize.mode} int8, engine {recipe.quantize.engine}")
        artifacts["student-fp32"] = Artifact("student-fp32", f"{name}-fp32", student, False, params)
        artifacts["student"] = Artifact("student", name, int8, True, params)
    else:
        artifacts["student"] = Artifact("student", name, student, False, params)
    stage("quantize")

    final = Path(out_root) / recipe.name / recipe.archive.version
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    staging.chmod(0o755)
    try:
        example = torch.zeros(1, data.channels, *data.image_size)
        dirs = {role: staging if role == "student" else staging / role for role in artifacts}
        accuracy: dict[str, float] = {}
        parity: dict[str, dict] = {}
        for role in ("teacher", "student-fp32", "student"):
            if role not in artifacts:
                continue
            art = artifacts[role]
            reference = int8_reference if art.quantized else None
            report = export_torchscript(
                art.model,
                dirs[role] / "model.pt",
                example,
                test_loader,
                method=recipe.export.method,
                reference=reference,
                atol=recipe.export.atol,
                min_agreement=recipe.export.min_int8_agreement,
            )
            parity[role] = {
                **report.to_dict(),
                "against": "eager model"
                if reference is None
                else "fake-quantized QAT model it was converted from"
                if recipe.quantize.mode == "qat"
                else "fp32 model it was converted from",
            }
            accuracy[role] = evaluate(load_torchscript(dirs[role] / "model.pt"), test_loader)
            log(f"export: {role} -> model.pt, test accuracy {accuracy[role]:.4f}")
        stage("export")

        worker_threads = thread_count(recipe.archive.threads, recipe.archive.max_workers)
        metrics = {}
        for role, art in artifacts.items():
            model = load_torchscript(dirs[role] / "model.pt")
            with threads(worker_threads):
                latency = latency_ms(model, example)
            metrics[role] = {
                "role": role,
                "model_name": art.model_name,
                "quantized": art.quantized,
                "params": art.params,
                "size_bytes": (dirs[role] / "model.pt").stat().st_size,
                "latency_ms_batch1": round(latency, 4),
                "latency_threads": worker_threads,
                "test_accuracy": accuracy[role],
                "test_samples": len(splits.test),
                "parity": parity[role],
                "accuracy": {f"{r}": a for r, a in accuracy.items()},
                "toolkit_version": __version__,
                "torch_version": torch.__version__,
            }
            _write_artifact(dirs[role], recipe, art, splits, metrics[role])
        stage("measure")
        metrics["student"]["stage_seconds"] = timings
        metrics["student"]["stages"] = stages_run
        metrics["student"]["distill_epochs_run"] = len(distilled.history)
        if mixed_report is not None:
            metrics["student"]["mixed_precision"] = mixed_report.to_dict()
        (staging / "metrics.json").write_text(json.dumps(metrics["student"], indent=2) + "\n")

        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    paths = {role: final if role == "student" else final / role for role in artifacts}
    log(f"artifacts in {final}")
    models = {role: art.model for role, art in artifacts.items()}
    return BuildResult(final, paths, metrics, timings, models)


def _write_artifact(
    directory: Path, recipe: Recipe, art: Artifact, splits: Splits, metrics: dict
) -> None:
    """index_to_name.json, handler.yaml, metrics.json and recipe.yaml beside model.pt."""
    index_to_name = {str(i): label for i, label in enumerate(splits.classes)}
    (directory / "index_to_name.json").write_text(json.dumps(index_to_name, indent=2) + "\n")
    handler = {
        **preprocess_spec(recipe.data).to_dict(),
        "topk": recipe.archive.topk,
        "quantized": art.quantized,
        "engine": recipe.quantize.engine,
        "threads": recipe.archive.threads,
        "warmup_iterations": 2,
    }
    (directory / "handler.yaml").write_text(yaml.safe_dump(handler, sort_keys=False))
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    resolved = recipe.to_dict()
    resolved["archive"]["model_name"] = art.model_name
    (directory / "recipe.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
