"""The stages of a build, each a function with a typed result: data -> teacher -> distilled
student -> pruned student -> quantized student. ``students.pipeline.build`` runs them in order,
then exports and writes the artifacts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from distillserve.errors import RecipeError
from distillserve.handlers.imageprep import PreprocessSpec
from distillserve.handlers.textprep import TextSpec
from distillserve.students.checkpoint_files import is_torchscript, load_state
from distillserve.students.checkpoints import NO_CHECKPOINTS, Checkpointer, NoCheckpoints
from distillserve.students.data import (
    Splits,
    labelled_fraction,
    load_splits,
    make_loader,
    preprocess_spec,
)
from distillserve.students.distill import evaluate
from distillserve.students.distill_settings import AUGMENT, DistillSettings, for_qat, student_seed
from distillserve.students.distill_settings import of_recipe as distill_settings
from distillserve.students.export import load_torchscript
from distillserve.students.features import FeatureKD
from distillserve.students.finetune import make_trainable
from distillserve.students.mixed_precision import MixedPrecisionReport, quantize_mixed
from distillserve.students.prune import (
    channel_prune,
    channel_widths,
    l1_unstructured,
    make_permanent,
    sparsity,
)
from distillserve.students.quantize import quantize, quantize_linears_static, quantize_qat
from distillserve.students.recipe import Recipe, TeacherConfig
from distillserve.students.teachers import TeacherStage, teacher_stage, train_members
from distillserve.students.training import train
from distillserve.students.zoo import build_model, count_parameters

__all__ = [
    "DataStage",
    "DistilledStudent",
    "QuantizedStudent",
    "TeacherStage",
    "distill_student",
    "load_data",
    "load_teacher",
    "make_teacher",
    "prune_student",
    "quantize_student",
]

Log = Callable[[str], None]


@dataclass
class DataStage:
    """The splits and the loaders every later stage reads."""

    splits: Splits
    spec: PreprocessSpec | TextSpec
    train: DataLoader  # shuffled, for the teacher
    students: DataLoader  # shuffled, the (possibly reduced) labelled share the students see
    calibration: DataLoader
    val: DataLoader
    test: DataLoader
    files: dict[str, bytes] = field(default_factory=dict)  # more artifact files (a tokenizer)
    example: Callable[[int], torch.Tensor] | None = None  # the task's typical model input

    @property
    def classes(self) -> int:
        return len(self.splits.classes)

    def input_example(self, size: int) -> torch.Tensor:
        """Model input of ``size`` rows: the task's typical input, or zero images."""
        if self.example is not None:
            return self.example(size)
        return torch.zeros(size, self.spec.channels, *self.spec.image_size)

    @property
    def max_length(self) -> int | None:
        """A text model's longest input (its dynamic sequence axis's bound); None for images."""
        return getattr(self.spec, "max_length", None)


@dataclass
class DistilledStudent:
    """The student after distillation, the models it learnt from last, and how it went."""

    model: nn.Module
    settings: DistillSettings  # how it was distilled: what it learnt from, with what loss
    stages_run: list[dict] = field(default_factory=list)
    epochs_run: int = 0
    throughput: dict = field(default_factory=dict)  # the student's distillation speed


@dataclass
class QuantizedStudent:
    """The int8 student (``None`` with ``quantize.mode: none``), the model its parity is checked
    against, and the mixed-precision choice when there was one."""

    int8: nn.Module | None
    reference: nn.Module
    mixed: MixedPrecisionReport | None = None


def load_data(recipe: Recipe, log: Log) -> DataStage:
    """Split the recipe's dataset and make the loaders (preprocessed as the handler does)."""
    data = recipe.data
    splits = load_splits(data, recipe.seed)
    log(
        f"data: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test, "
        f"{len(splits.classes)} classes, input {data.channels}x{data.image_size[0]}x"
        f"{data.image_size[1]}"
    )
    return data_stage(recipe, splits, log)


def data_stage(recipe: Recipe, splits: Splits, log: Log) -> DataStage:
    """The loaders over ``splits`` (the recipe's own, or other ones such as a k-fold split)."""
    data, seed = recipe.data, recipe.seed
    spec = preprocess_spec(data)
    labelled = labelled_fraction(splits.train, recipe.distill.label_fraction, seed)
    if recipe.distill.label_fraction < 1.0:
        log(
            f"students learn from {len(labelled)} labelled images "
            f"({recipe.distill.label_fraction:.0%})"
        )
    return DataStage(
        splits=splits,
        spec=spec,
        train=make_loader(splits.train, spec, data.batch_size, shuffle=True, seed=seed),
        students=make_loader(labelled, spec, data.batch_size, shuffle=True, seed=seed),
        calibration=make_loader(splits.train, spec, data.batch_size),
        val=make_loader(splits.val, spec, 256),
        test=make_loader(splits.test, spec, 256),
    )


def load_teacher(config: TeacherConfig, num_classes: int, channels: int) -> nn.Module:
    """A teacher from a TorchScript file, or the recipe's architecture plus a state-dict file
    (``students.checkpoint_files``: errors name the cause and the accepted kinds)."""
    path = Path(config.checkpoint or "")
    if is_torchscript(path):
        try:
            return load_torchscript(path)
        except RuntimeError as err:
            raise RecipeError(
                "teacher.checkpoint", f"{path} is a TorchScript file torch cannot load: {err}"
            ) from None
    model = build_model(config.arch, num_classes, channels, config.kwargs)
    load_state(model, path, "teacher.checkpoint", config.arch)
    return model.eval()


def _check_loaded_teacher(recipe: Recipe, teacher: nn.Module, data: DataStage, log: Log) -> None:
    """Log the loaded teacher's validation accuracy, and say so when it is near chance: the
    usual cause is a teacher trained on other input than the recipe's preprocessing."""
    accuracy = evaluate(teacher, data.val)
    chance = 1.0 / max(1, data.classes)
    log(f"teacher: loaded {recipe.teacher.checkpoint}, validation accuracy {accuracy:.2%}")
    if accuracy < min(1.0, 2 * chance):
        d = recipe.data
        log(
            f"teacher: WARNING: {accuracy:.2%} is near chance ({chance:.0%} for {data.classes} "
            f"classes): the teacher must have been trained on this data's classes in order "
            f"({', '.join(data.splits.classes[:5])}{', ...' if data.classes > 5 else ''}) and "
            f"on this recipe's input: {d.channels}x{d.image_size[0]}x{d.image_size[1]}, "
            f"(pixel/255 - mean)/std with mean {d.mean} and std {d.std}"
        )


def make_teacher(
    recipe: Recipe,
    data: DataStage,
    log: Log,
    cache: Path | None,
    checkpointer: Checkpointer | NoCheckpoints = NO_CHECKPOINTS,
) -> TeacherStage:
    """Load the recipe's teacher checkpoint, or train its members (reusing cached ones)."""
    config, channels = recipe.teacher, recipe.data.channels
    if config.checkpoint:
        members = [load_teacher(config, data.classes, channels)]
        _check_loaded_teacher(recipe, members[0], data, log)
    else:
        settings = DistillSettings(
            epochs=config.epochs,
            lr=config.lr,
            weight_decay=config.weight_decay,
            label_smoothing=config.label_smoothing,
            augment=AUGMENT,
        )
        members = train_members(
            recipe,
            log,
            cache,
            checkpointer,
            lambda: build_model(config.arch, data.classes, channels, config.kwargs),
            config.arch,
            settings,
            data,
        )
    return teacher_stage(recipe, members, log)


def _distill_stages(
    recipe: Recipe,
    data: DataStage,
    settings: DistillSettings,
    log: Log,
    checkpointer: Checkpointer | NoCheckpoints,
) -> tuple[DistillSettings, list[dict]]:
    """Progressive distillation: each of ``distill.stages`` learns from the one before (the
    first from the teacher); returns the settings the student learns with (from the last
    stage) and what each stage reached."""
    kd, channels = recipe.distill, recipe.data.channels
    stages_run: list[dict] = []
    for index, stage in enumerate(kd.stages):
        torch.manual_seed(student_seed(recipe) + 100 + index)
        middle = build_model(stage.arch, data.classes, channels, stage.kwargs)
        epochs = stage.epochs or kd.epochs
        log(
            f"stage {index + 1}/{len(kd.stages)}: distilling {stage.arch} "
            f"({count_parameters(middle)} params) for {epochs} epochs"
        )
        desc = f"stage {index + 1}"
        result = train(
            middle,
            data.students,
            data.val,
            settings.replace(epochs=epochs),
            desc=desc,
            checkpoint=checkpointer.phase(desc),
        )
        stages_run.append(
            {
                "arch": stage.arch,
                "params": count_parameters(middle),
                "val_accuracy": result.best_val_accuracy,
            }
        )
        settings = settings.learning_from([middle.eval()])
    return settings, stages_run


def distill_student(
    recipe: Recipe,
    data: DataStage,
    teacher: TeacherStage,
    log: Log,
    on_epoch: Callable[[int, int, float], None] | None = None,
    checkpointer: Checkpointer | NoCheckpoints = NO_CHECKPOINTS,
) -> DistilledStudent:
    """Progressive stages (each distilled from the one before), then the student itself
    (``on_epoch`` sees the student's epochs: ``students.training.train``)."""
    kd, channels = recipe.distill, recipe.data.channels
    settings = distill_settings(recipe).learning_from(teacher.kd_teachers, teacher.kd_weights)
    settings, stages_run = _distill_stages(recipe, data, settings, log, checkpointer)
    torch.manual_seed(student_seed(recipe))
    config = recipe.student
    student = build_model(config.arch, data.classes, channels, config.kwargs)
    if config.checkpoint:
        load_state(student, config.checkpoint, "student.checkpoint", config.arch)
        log(f"student: initialised from {config.checkpoint}")
    params = count_parameters(student)
    if config.max_params and params > config.max_params:
        raise RecipeError(
            "student.max_params",
            f"{config.arch} with {config.kwargs} has {params} parameters "
            f"> {config.max_params}; make it smaller or raise the limit",
        )
    feature_kd = None
    if kd.feature:
        example = torch.zeros(2, channels, *recipe.data.image_size)
        pairs = [(pair[0], pair[1]) for pair in kd.feature.pairs]
        feature_kd = FeatureKD(
            settings.teachers[0], student, pairs, example, kd.feature.loss, kd.feature.weight
        )
    log(
        f"student: distilling {config.arch} ({params} params) for {kd.epochs} epochs, "
        f"T={kd.temperature:g}, alpha={kd.alpha:g}"
        + (f", feature KD on {len(kd.feature.pairs)} layer pair(s)" if kd.feature else "")
    )
    distilled = train(
        student,
        data.students,
        data.val,
        settings,
        desc="student",
        feature_kd=feature_kd,
        trainable=make_trainable(kd.finetune, kd.unfreeze_every),
        on_epoch=on_epoch,
        checkpoint=checkpointer.phase("student"),
    )
    if feature_kd is not None:
        feature_kd.remove()
    if distilled.stopped_early:
        log(f"student: early stop after {len(distilled.history)} epochs")
    log(
        f"student: teacher outputs {distilled.teacher_outputs}; {distilled.images_per_s:,.0f} "
        f"training images/s, {distilled.teacher_share:.0%} of the time in the teacher"
    )
    throughput = {
        "distill_images_per_s": distilled.images_per_s,
        "distill_teacher_share": distilled.teacher_share,
        "teacher_outputs": distilled.teacher_outputs,
    }
    return DistilledStudent(student, settings, stages_run, len(distilled.history), throughput)


def prune_student(
    recipe: Recipe,
    distilled: DistilledStudent,
    data: DataStage,
    log: Log,
    checkpointer: Checkpointer | NoCheckpoints = NO_CHECKPOINTS,
) -> nn.Module:
    """``prune.rounds`` rounds of pruning, each followed by ``finetune_epochs`` of KD."""
    config, student = recipe.prune, distilled.model
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
            desc = f"prune {round_index + 1}"
            settings = distilled.settings.replace(
                epochs=config.finetune_epochs, lr=recipe.distill.lr / 10
            )
            train(
                student,
                data.students,
                data.val,
                settings,
                desc=desc,
                checkpoint=checkpointer.phase(desc),
            )
        if config.method == "l1_unstructured":
            student = make_permanent(student)
    return student.eval()


def quantize_student(
    recipe: Recipe,
    student: nn.Module,
    data: DataStage,
    distilled: DistilledStudent,
    log: Log,
    checkpointer: Checkpointer | NoCheckpoints = NO_CHECKPOINTS,
) -> QuantizedStudent:
    """int8 by ``quantize.mode``: static/dynamic post-training, QAT with the KD loss, or mixed
    precision within the accuracy budget; ``none`` keeps the fp32 student."""
    q = recipe.quantize
    if q.mode == "mixed":
        int8, report = quantize_mixed(student, data.calibration, data.val, q)
        log(
            f"quantize: mixed precision within {q.accuracy_budget:g} of fp32 on validation: "
            f"{len(report.int8_layers)} layer(s) int8, fp32 kept for "
            f"{', '.join(report.fp32_layers) or 'none'}"
        )
        quantized = QuantizedStudent(int8, student, report)
    elif q.mode == "qat":
        log(f"quantize: QAT with KD for {q.qat_epochs} epochs, engine {q.engine}")
        int8, fake_quantized = quantize_qat(
            student,
            data.students,
            data.val,
            q,
            for_qat(recipe, distilled.settings),
            checkpointer=checkpointer,
            return_reference=True,
        )
        quantized = QuantizedStudent(int8, fake_quantized)
    elif recipe.is_text and q.mode == "static":
        quantized = QuantizedStudent(quantize_linears_static(student, data.calibration, q), student)
    else:
        quantized = QuantizedStudent(quantize(student, data.calibration, q), student)
    if quantized.int8 is not None:
        log(f"quantize: {q.mode} int8, engine {q.engine}")
    return quantized
