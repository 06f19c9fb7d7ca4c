"""Recipes: one YAML file naming the data, teacher, student, distillation, pruning,
quantization, export and archive settings. Each section is a dataclass validated on construction
(``students.recipe_sections``); an unknown key or a bad value raises ``RecipeError`` naming the key
and what is allowed.

Read with ``yaml.safe_load`` only: a recipe can never import or call code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from distillserve.errors import RecipeError
from distillserve.students import recipe_sections
from distillserve.students.checkpoint_files import is_torchscript
from distillserve.students.recipe_sections import (  # noqa: F401 - re-exported
    ArchiveConfig,
    DataConfig,
    DistillConfig,
    ExportConfig,
    FeatureConfig,
    ModelConfig,
    PruneConfig,
    QuantizeConfig,
    StageConfig,
    TeacherConfig,
    _coerce,
    _Section,
)
from distillserve.students.recipe_text import (
    IMAGE_TASK,
    TEXT_TASK,
    TextDataConfig,
    TextModelConfig,
    TextTeacherConfig,
    check_task_keys,
)
from distillserve.students.recipe_tune import TuneConfig

__all__ = [*recipe_sections.__all__, "Recipe", "TuneConfig", "load_recipe", "merge"]


@dataclass
class Recipe:
    """A whole recipe; ``load_recipe`` builds one from YAML."""

    name: str
    data: DataConfig | TextDataConfig
    teacher: TeacherConfig | TextTeacherConfig
    student: ModelConfig | TextModelConfig
    distill: DistillConfig
    prune: PruneConfig
    quantize: QuantizeConfig
    export: ExportConfig
    archive: ArchiveConfig
    seed: int = 0
    tune: TuneConfig = field(default_factory=TuneConfig)
    task: str = IMAGE_TASK  # image-classification | text-classification

    SECTIONS: ClassVar[dict[str, type[_Section]]] = {
        "data": DataConfig,
        "teacher": TeacherConfig,
        "student": ModelConfig,
        "distill": DistillConfig,
        "prune": PruneConfig,
        "quantize": QuantizeConfig,
        "export": ExportConfig,
        "archive": ArchiveConfig,
        "tune": TuneConfig,
    }
    # The sections a text-classification recipe reads in place of the image ones.
    TEXT_SECTIONS: ClassVar[dict[str, type[_Section]]] = {
        "data": TextDataConfig,
        "teacher": TextTeacherConfig,
        "student": TextModelConfig,
    }

    @classmethod
    def from_dict(cls, raw: Any) -> Recipe:
        if not isinstance(raw, dict):
            raise RecipeError(None, "a recipe must be a YAML mapping")
        allowed = ("name", "seed", "task", *cls.SECTIONS)
        for key in raw:
            if key not in allowed:
                raise RecipeError(key, f"unknown key (allowed: {', '.join(allowed)})")
        name = _coerce(raw.get("name"), str, "name") if raw.get("name") is not None else None
        if not name:
            raise RecipeError("name", "is required")
        seed = _coerce(raw.get("seed", 0), int, "seed")
        task = _coerce(raw.get("task", IMAGE_TASK), str, "task")
        check_task_keys(task, raw)
        kinds = dict(cls.SECTIONS)
        if task == TEXT_TASK:
            kinds.update(cls.TEXT_SECTIONS)
        sections = {key: kind.parse(raw.get(key)) for key, kind in kinds.items()}
        recipe = cls(name=name, seed=seed, task=task, **sections)
        if task == TEXT_TASK:
            return recipe
        other = [f for f in recipe.export.formats if f != "torchscript"]
        if other and recipe.quantize.mode == "mixed":
            raise RecipeError(
                "export.formats",
                f"{', '.join(other)} cannot carry quantize.mode mixed (an eager-mode layer "
                "choice); use torchscript, or quantize.mode static, qat or dynamic",
            )
        _check_torchscript_teacher(recipe)
        return recipe

    @property
    def is_text(self) -> bool:
        """Whether this recipe builds a text classifier."""
        return self.task == TEXT_TASK

    @property
    def teacher_is_torchscript(self) -> bool:
        """Whether the teacher is a TorchScript file (it runs as it is, without its code)."""
        if self.is_text:
            return False
        return bool(self.teacher.checkpoint) and is_torchscript(self.teacher.checkpoint)

    @property
    def teacher_formats(self) -> list[str]:
        """The formats the teacher is exported to: ``export.teacher_formats``, or else
        ``export.formats`` (only TorchScript for a TorchScript teacher)."""
        if self.export.teacher_formats is not None:
            return list(self.export.teacher_formats)
        return ["torchscript"] if self.teacher_is_torchscript else list(self.export.formats)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "seed": self.seed}
        if self.is_text:
            out["task"] = self.task
        out.update({key: getattr(self, key).to_dict() for key in self.SECTIONS})
        return out


def _check_torchscript_teacher(recipe: Recipe) -> None:
    """What a TorchScript teacher cannot do, refused before any work, with the fix."""
    if not recipe.teacher_is_torchscript:
        return
    path = recipe.teacher.checkpoint
    fix = f"give a state dict of teacher.arch ({recipe.teacher.arch}) instead of {path}"
    asked = [f for f in recipe.export.teacher_formats or [] if f != "torchscript"]
    if asked:
        raise RecipeError(
            "export.teacher_formats",
            f"a TorchScript teacher ({path}) can only be exported as torchscript: "
            f"torch.export and the ONNX exporter need the eager model, not {', '.join(asked)}; "
            f"{fix}, or leave export.teacher_formats out (the teacher is then archived as "
            "TorchScript only)",
        )
    for key, on in (
        ("distill.feature", recipe.distill.feature),
        ("tune.feature_kd", recipe.tune.feature_kd),
    ):
        if not on:
            continue
        raise RecipeError(
            key,
            f"feature KD hooks the teacher's layers, and a TorchScript teacher ({path}) has "
            f"none to hook: {fix}, or remove {key}",
        )


def merge(base: dict, override: dict) -> dict:
    """``override`` laid over ``base``: mappings merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """A recipe file's mapping with its ``base:`` recipes (relative to the file) merged under it."""
    if not path.is_file():
        where = f" (base of {chain[-1]})" if chain else ""
        raise RecipeError("base" if chain else None, f"file not found: {path}{where}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise RecipeError(None, f"{path} is not valid YAML{where}") from None
    if not isinstance(raw, dict) or "base" not in raw:
        return raw
    base = raw.pop("base")
    if not isinstance(base, str):
        raise RecipeError("base", f"must be a recipe path, got {base!r} (in {path})")
    base_path = (path.parent / base).resolve()
    if base_path in chain or base_path == path.resolve():
        raise RecipeError("base", f"{path} inherits from itself through {base}")
    return merge(_read_yaml(base_path, (*chain, path.resolve())), raw)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; every problem is a one-line ``RecipeError``.

    A recipe may name another with ``base: other.yaml`` (relative to itself) and give only what
    differs: its mappings are merged over the base's, key by key.
    """
    path = Path(path)
    raw = _read_yaml(path)
    try:
        return Recipe.from_dict(raw)
    except RecipeError as err:
        raise RecipeError(err.key, f"{err.message} (in {path})") from None
