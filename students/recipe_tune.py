"""The ``tune`` section of a recipe: the search space of ``distillserve tune``, validated on
construction like the other sections (``students.recipe_sections``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from distillserve.errors import RecipeError
from distillserve.students.recipe_schema import _at_least, _between, _choice, _Section
from distillserve.students.recipe_sections import FeatureConfig

__all__ = ["TuneConfig"]


def _range(key: str, value: list | None, low: float, high: float) -> None:
    if value is None:
        return
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise RecipeError(key, f"must be [low, high] within [{low}, {high}], got {value}")


@dataclass
class TuneConfig(_Section):
    """The search space of ``distillserve tune``: each key left out (or null) keeps the recipe's
    own value. Ranges are [low, high]: ``width`` multiplies every student stage's channels,
    ``depth`` sets the number of stages (tiny_cnn students), ``temperature`` and ``alpha`` are
    the KD settings, ``prune_amount`` the share of channels pruned (0 = none); ``feature_kd``
    searches feature KD on/off with the pairs in ``feature``; ``quantize`` lists the modes to try.
    ``epochs`` is each trial's distillation length; ``prune_margin`` how far below the target a
    trial's validation accuracy may be at half its epochs before it is stopped. Before one is
    chosen, up to ``finalists`` students within the budget, cheapest first, are checked by
    ``cv_folds``-fold cross-validation on the training split (0: choose on validation alone)."""

    SECTION: ClassVar[str] = "tune"
    width: list[float] | None = None
    depth: list[int] | None = None
    temperature: list[float] | None = None
    alpha: list[float] | None = None
    feature_kd: bool = False
    feature: FeatureConfig | None = None
    prune_amount: list[float] | None = None
    quantize: list[str] | None = None
    epochs: int | None = None
    prune_margin: float = 0.05
    cv_folds: int = 5
    finalists: int = 3

    def __post_init__(self) -> None:
        _range("tune.width", self.width, 0.05, 8.0)
        _range("tune.depth", self.depth, 1, 8)
        _range("tune.temperature", self.temperature, 1e-3, 100.0)
        _range("tune.alpha", self.alpha, 0.0, 1.0)
        _range("tune.prune_amount", self.prune_amount, 0.0, 0.95)
        if self.feature is not None and not isinstance(self.feature, FeatureConfig):
            self.feature = FeatureConfig.parse(self.feature, "tune.feature")
        if self.feature_kd and self.feature is None:
            raise RecipeError("tune.feature", "is required when tune.feature_kd is true")
        for mode in self.quantize or []:
            _choice("tune.quantize", mode, ("static", "qat", "mixed", "dynamic", "none"))
        if self.epochs is not None:
            _at_least("tune.epochs", self.epochs, 1)
        _between("tune.prune_margin", self.prune_margin, 0.0, 1.0)
        if self.cv_folds != 0 and not 2 <= self.cv_folds <= 20:
            raise RecipeError("tune.cv_folds", f"must be 0 (off) or 2 to 20, got {self.cv_folds}")
        _at_least("tune.finalists", self.finalists, 1)

    def searches(self) -> bool:
        """Whether any key of the space is set."""
        return any(
            (
                self.width,
                self.depth,
                self.temperature,
                self.alpha,
                self.feature_kd,
                self.prune_amount,
                self.quantize,
            )
        )
