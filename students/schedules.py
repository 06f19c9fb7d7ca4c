"""Per-epoch schedules for distillation hyper-parameters (alpha, temperature), named in recipes as
``{key: NAME, kwargs: {...}}`` and resolved through ``SCHEDULES``:

    constant  value                      the same every epoch
    linear    start, end                 straight line from start (epoch 0) to end (last epoch)
    step      values, milestones         values[i] from milestones[i-1] on (milestones ascending)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from distillserve.errors import RecipeError

__all__ = ["SCHEDULES", "make_schedule"]

Schedule = Callable[[int, int], float]  # (epoch, total epochs) -> value


def constant(value: float) -> Schedule:
    return lambda epoch, total: float(value)


def linear(start: float, end: float) -> Schedule:
    def at(epoch: int, total: int) -> float:
        return float(start + (end - start) * (epoch / max(1, total - 1)))

    return at


def step(values: Sequence[float], milestones: Sequence[int]) -> Schedule:
    if len(values) != len(milestones) + 1 or list(milestones) != sorted(milestones):
        raise ValueError("step needs len(values) == len(milestones) + 1, milestones ascending")

    def at(epoch: int, total: int) -> float:
        return float(values[sum(epoch >= m for m in milestones)])

    return at


SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "constant": constant,
    "linear": linear,
    "step": step,
}


def make_schedule(spec: dict | float | None, default: float, key: str) -> Schedule:
    """A schedule from a recipe entry (``None`` means the constant ``default``)."""
    if spec is None:
        return constant(default)
    if not isinstance(spec, dict) or set(spec) - {"key", "kwargs"} or "key" not in spec:
        raise RecipeError(key, "must be {key: constant|linear|step, kwargs: {...}}")
    if spec["key"] not in SCHEDULES:
        raise RecipeError(f"{key}.key", f"{spec['key']!r} is not one of: {', '.join(SCHEDULES)}")
    try:
        return SCHEDULES[spec["key"]](**(spec.get("kwargs") or {}))
    except (TypeError, ValueError) as err:
        raise RecipeError(f"{key}.kwargs", str(err)) from None
