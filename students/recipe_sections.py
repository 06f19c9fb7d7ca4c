"""The sections of a recipe, one dataclass each, validated on construction: an unknown key or a
bad value raises ``RecipeError`` naming the key and what is allowed. ``students.recipe`` puts
them together into a ``Recipe``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from distillserve.errors import RecipeError
from distillserve.handlers import serving_policy
from distillserve.handlers.classification import QUANTIZED_ENGINES
from distillserve.handlers.runtimes import MODEL_FILES
from distillserve.students.recipe_schema import (  # noqa: F401 - _coerce re-exported
    DERIVED,
    _at_least,
    _between,
    _choice,
    _coerce,
    _Section,
)

__all__ = [
    "ArchiveConfig",
    "DataConfig",
    "DistillConfig",
    "ExportConfig",
    "FeatureConfig",
    "ModelConfig",
    "PruneConfig",
    "QuantizeConfig",
    "StageConfig",
    "TeacherConfig",
]

DATA_SOURCES = ("digits", "imagefolder")
QUANT_MODES = ("static", "dynamic", "qat", "mixed", "none")
TEACHER_COMBINE = ("logits", "soft_targets")
FEATURE_LOSSES = ("mse", "cosine")
PRUNE_METHODS = ("none", "channel", "l1_unstructured")
PRUNE_CRITERIA = ("bn_gamma", "l1")
EXPORT_METHODS = ("trace", "script")
EXPORT_FORMATS = tuple(MODEL_FILES)  # torchscript, pt2, onnx: the runtimes the handler loads


@dataclass
class DataConfig(_Section):
    """Where the images come from and how they become model input."""

    SECTION: ClassVar[str] = "data"
    source: str = "digits"
    root: str | None = None
    image_size: list[int] = field(default_factory=lambda: [8, 8])
    channels: int = 1
    mean: list[float] = field(default_factory=lambda: [0.5])
    std: list[float] = field(default_factory=lambda: [0.5])
    val_fraction: float = 0.1
    test_fraction: float = 0.25
    batch_size: int = 64

    def __post_init__(self) -> None:
        _choice("data.source", self.source, DATA_SOURCES)
        if self.source == "imagefolder":
            if not self.root:
                raise RecipeError("data.root", "is required when data.source is imagefolder")
            if not Path(self.root).is_dir():
                raise RecipeError("data.root", f"directory not found: {self.root}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise RecipeError("data.image_size", f"must be [height, width], got {self.image_size}")
        _choice("data.channels", str(self.channels), ("1", "3"))
        for key in ("mean", "std"):
            if len(getattr(self, key)) != self.channels:
                raise RecipeError(f"data.{key}", f"needs {self.channels} value(s), one per channel")
        if min(self.std) <= 0:
            raise RecipeError("data.std", "values must be > 0")
        _between("data.val_fraction", self.val_fraction, 0.01, 0.5)
        _between("data.test_fraction", self.test_fraction, 0.01, 0.5)
        _at_least("data.batch_size", self.batch_size, 1)


@dataclass
class ModelConfig(_Section):
    """A zoo architecture by name with its keyword arguments; ``checkpoint`` (a state dict)
    initialises it, e.g. a pre-trained student to fine-tune."""

    SECTION: ClassVar[str] = "student"
    arch: str = "tiny_cnn"
    kwargs: dict = field(default_factory=dict)
    max_params: int = 0
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        if self.checkpoint and not Path(self.checkpoint).is_file():
            raise RecipeError(f"{self.SECTION}.checkpoint", f"file not found: {self.checkpoint}")
        from distillserve.students.zoo import MODELS  # local import: zoo imports torch

        if self.arch not in MODELS:
            raise RecipeError(
                f"{self.SECTION}.arch", f"{self.arch!r} is not one of: {', '.join(sorted(MODELS))}"
            )
        _at_least(f"{self.SECTION}.max_params", self.max_params, 0)


@dataclass
class TeacherConfig(ModelConfig):
    """The teacher: trained here, or loaded from a checkpoint (TorchScript, or a state dict for
    ``arch``). ``members`` > 1 trains several: ``combine: logits`` averages their logits into one
    ensemble teacher; ``combine: soft_targets`` is multi-teacher KD, the student learning the
    (``weights``-weighted) mean of their softened probabilities."""

    SECTION: ClassVar[str] = "teacher"
    arch: str = "cifar_resnet"
    members: int = 1
    combine: str = "logits"
    weights: list[float] | None = None
    epochs: int = 30
    lr: float = 0.05
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least("teacher.members", self.members, 1)
        _choice("teacher.combine", self.combine, TEACHER_COMBINE)
        weights = self.weights
        if weights is not None and (
            len(weights) != self.members or min(weights) < 0 or sum(weights) <= 0
        ):
            raise RecipeError(
                "teacher.weights", f"needs {self.members} non-negative weight(s), one per member"
            )
        _at_least("teacher.epochs", self.epochs, 0)
        _at_least("teacher.lr", self.lr, 0.0)
        _at_least("teacher.weight_decay", self.weight_decay, 0.0)
        _between("teacher.label_smoothing", self.label_smoothing, 0.0, 0.5)
        if self.epochs == 0 and not self.checkpoint:
            raise RecipeError("teacher.epochs", "is 0 but no teacher.checkpoint is given")


@dataclass
class FeatureConfig(_Section):
    """Feature KD: ``pairs`` of [teacher layer, student layer] names, loss and weight."""

    SECTION: ClassVar[str] = "distill.feature"
    pairs: list[list[str]] = field(default_factory=list)
    loss: str = "mse"
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.pairs or any(len(pair) != 2 for pair in self.pairs):
            raise RecipeError(
                "distill.feature.pairs", "must be a list of [teacher_layer, student_layer]"
            )
        _choice("distill.feature.loss", self.loss, FEATURE_LOSSES)
        _at_least("distill.feature.weight", self.weight, 0.0)


@dataclass
class StageConfig(_Section):
    """One intermediate student of progressive distillation (teacher -> stage... -> student)."""

    SECTION: ClassVar[str] = "distill.stages"
    arch: str = "tiny_cnn"
    kwargs: dict = field(default_factory=dict)
    epochs: int | None = None

    def __post_init__(self) -> None:
        from distillserve.students.zoo import MODELS

        if self.arch not in MODELS:
            raise RecipeError(
                "distill.stages.arch", f"{self.arch!r} is not one of: {', '.join(sorted(MODELS))}"
            )


@dataclass
class DistillConfig(_Section):
    """Response KD (Hinton et al. 2015): temperature, alpha and the student's training schedule;
    optional feature KD, early stopping (``patience`` epochs without a better validation loss;
    0 = off), progressive ``stages`` distilled in order before the final student, alpha and
    temperature schedules, a fine-tuning mode, and ``label_fraction``: the share of the training
    split (stratified) the students learn from (the teacher always sees all of it). ``augment``
    applies random affine augmentation to the students' images; without it the teacher's outputs
    are computed once (``cache_teacher_outputs``, within ``teacher_outputs_mb``)."""

    SECTION: ClassVar[str] = "distill"
    temperature: float = 4.0
    alpha: float = 0.9
    epochs: int = 60
    lr: float = 0.05
    weight_decay: float = 1e-4
    patience: int = 0
    feature: FeatureConfig | None = None
    stages: list[StageConfig] = field(default_factory=list)
    alpha_schedule: dict | None = None
    temperature_schedule: dict | None = None
    finetune: str = "full"
    unfreeze_every: int = 2
    label_fraction: float = 1.0
    augment: bool = True
    cache_teacher_outputs: bool = True
    teacher_outputs_mb: float = 256.0
    optimizer: str | None = None  # sgd | adamw; default sgd for images, adamw for text
    hidden_weight: float = 0.0  # text: TinyBERT hidden-state MSE (students.text_kd)
    attention_weight: float = 0.0  # text: TinyBERT attention-map MSE
    layer_map: list[list[int]] | None = None  # text: [teacher layer, student layer] pairs
    seed: int | None = None  # the students' random state (init, dropout, order); default: recipe's
    # built once from the schedules above: (epoch, epochs) -> value
    alpha_at: Callable[[int, int], float] = field(
        init=False, repr=False, compare=False, metadata=DERIVED
    )
    temperature_at: Callable[[int, int], float] = field(
        init=False, repr=False, compare=False, metadata=DERIVED
    )

    def __post_init__(self) -> None:
        from distillserve.students.finetune import FINETUNE_MODES
        from distillserve.students.schedules import make_schedule

        _at_least("distill.patience", self.patience, 0)
        self.alpha_at = make_schedule(self.alpha_schedule, self.alpha, "distill.alpha_schedule")
        self.temperature_at = make_schedule(
            self.temperature_schedule, self.temperature, "distill.temperature_schedule"
        )
        _choice("distill.finetune", self.finetune, FINETUNE_MODES)
        _at_least("distill.unfreeze_every", self.unfreeze_every, 1)
        _between("distill.label_fraction", self.label_fraction, 0.01, 1.0)
        _at_least("distill.teacher_outputs_mb", self.teacher_outputs_mb, 0.0)
        if self.feature is not None and not isinstance(self.feature, FeatureConfig):
            self.feature = FeatureConfig.parse(self.feature, "distill.feature")
        self.stages = [
            stage
            if isinstance(stage, StageConfig)
            else StageConfig.parse(stage, f"distill.stages[{i}]")
            for i, stage in enumerate(self.stages)
        ]
        _at_least("distill.temperature", self.temperature, 1e-3)
        _between("distill.alpha", self.alpha, 0.0, 1.0)
        _at_least("distill.epochs", self.epochs, 1)
        _at_least("distill.lr", self.lr, 0.0)
        _at_least("distill.weight_decay", self.weight_decay, 0.0)
        if self.optimizer is not None:
            _choice("distill.optimizer", self.optimizer, ("sgd", "adamw"))
        _at_least("distill.hidden_weight", self.hidden_weight, 0.0)
        _at_least("distill.attention_weight", self.attention_weight, 0.0)
        for i, pair in enumerate(self.layer_map or []):
            if len(pair) != 2 or min(pair) < 0:
                raise RecipeError(
                    f"distill.layer_map[{i}]", f"must be [teacher layer, student layer], got {pair}"
                )


@dataclass
class QuantizeConfig(_Section):
    """int8: static post-training (fused, calibrated, per-channel), dynamic (Linear layers),
    ``qat``: quantization-aware training with the distillation loss, then conversion, or ``mixed``:
    static int8 with the most quantization-sensitive layers kept in fp32 until the validation
    accuracy is within ``accuracy_budget`` (a fraction, 0.01 = one point) of the fp32 student."""

    SECTION: ClassVar[str] = "quantize"
    mode: str = "static"
    engine: str = "x86"
    per_channel: bool = True
    calibration_batches: int = 8
    qat_epochs: int = 3
    qat_lr: float = 0.005
    accuracy_budget: float = 0.01

    def __post_init__(self) -> None:
        _choice("quantize.mode", self.mode, QUANT_MODES)
        _between("quantize.accuracy_budget", self.accuracy_budget, 0.0, 1.0)
        _at_least("quantize.qat_epochs", self.qat_epochs, 1)
        _at_least("quantize.qat_lr", self.qat_lr, 0.0)
        _choice("quantize.engine", self.engine, QUANTIZED_ENGINES)
        _at_least("quantize.calibration_batches", self.calibration_batches, 1)


@dataclass
class PruneConfig(_Section):
    """Pruning after distillation: ``channel`` removes channels (ranked by ``criterion``),
    ``l1_unstructured`` zeroes weights (``scope`` global or per layer); ``rounds`` of prune then
    ``finetune_epochs`` of KD each."""

    SECTION: ClassVar[str] = "prune"
    method: str = "none"
    amount: float = 0.5
    criterion: str = "bn_gamma"
    rounds: int = 1
    finetune_epochs: int = 5
    scope: str = "global"

    def __post_init__(self) -> None:
        _choice("prune.method", self.method, PRUNE_METHODS)
        _between("prune.amount", self.amount, 0.0, 0.95)
        _choice("prune.criterion", self.criterion, PRUNE_CRITERIA)
        _at_least("prune.rounds", self.rounds, 1)
        _at_least("prune.finetune_epochs", self.finetune_epochs, 0)
        _choice("prune.scope", self.scope, ("global", "layer"))


@dataclass
class ExportConfig(_Section):
    """The formats every model is exported to (the first is the artifact's primary one), and
    the parity checks each must pass before an artifact is written. ``teacher_formats`` (default:
    ``formats``, less those a TorchScript teacher cannot be exported to) are the teacher's."""

    SECTION: ClassVar[str] = "export"
    formats: list[str] = field(default_factory=lambda: ["torchscript"])
    teacher_formats: list[str] | None = None
    method: str = "trace"  # TorchScript: trace | script
    atol: float = 1e-4
    min_int8_agreement: float = 0.99

    def __post_init__(self) -> None:
        if not self.formats:
            raise RecipeError(
                "export.formats", f"needs at least one of {', '.join(EXPORT_FORMATS)}"
            )
        for key in ("formats", "teacher_formats"):
            listed = getattr(self, key)
            for value in listed or []:
                _choice(f"export.{key}", value, EXPORT_FORMATS)
            if listed is not None and len(set(listed)) != len(listed):
                raise RecipeError(f"export.{key}", f"lists a format twice: {listed}")
        if self.teacher_formats == []:
            raise RecipeError(
                "export.teacher_formats", f"needs at least one of {', '.join(EXPORT_FORMATS)}"
            )
        _choice("export.method", self.method, EXPORT_METHODS)
        _at_least("export.atol", self.atol, 0.0)
        _between("export.min_int8_agreement", self.min_int8_agreement, 0.0, 1.0)


@dataclass
class ArchiveConfig(_Section, serving_policy.ArchiveConfig):
    """``handlers.serving_policy.ArchiveConfig`` (the section's one home: its keys, their
    checks, ``auto``) read from YAML, its errors as ``RecipeError``s."""

    SECTION: ClassVar[str] = serving_policy.ArchiveConfig.SECTION

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except serving_policy.PolicyError as err:
            value = getattr(self, err.key.split(".")[1])
            raise RecipeError(err.key, f"{value!r}: {err}") from None
