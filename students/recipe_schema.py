"""How a recipe section is read: unknown keys refused with the known ones, values checked
against the section dataclass's type hints (YAML is loose: ``1e-4`` is a string), and the small
checks every section's ``__post_init__`` uses, each a ``RecipeError`` naming the key."""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from typing import Any, ClassVar

from distillserve.errors import RecipeError

__all__ = ["DERIVED"]  # the rest is for the recipe modules: _Section, _coerce, _choice, ...

# A field computed from the others (a built schedule): never read from or written to YAML.
DERIVED = {"derived": True}


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise RecipeError(key, f"{value!r} is not one of: {', '.join(allowed)}")


def _at_least(key: str, value: float, low: float) -> None:
    if value < low:
        raise RecipeError(key, f"must be >= {low}, got {value}")


def _between(key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise RecipeError(key, f"must be between {low} and {high}, got {value}")


class _Section:
    """Shared parsing for recipe sections: unknown keys and value types are checked here."""

    SECTION: ClassVar[str] = ""

    @classmethod
    def parse(cls, raw: Any, where: str | None = None) -> Any:
        where = where or cls.SECTION
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise RecipeError(where, f"must be a mapping, got {type(raw).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls) if f.init}
        for key in raw:
            if key not in known:
                raise RecipeError(
                    f"{where}.{key}", f"unknown key (allowed: {', '.join(sorted(known))})"
                )
        hints = typing.get_type_hints(cls)
        values = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in raw.items()}
        missing = [
            name
            for name, f in known.items()
            if name not in values
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise RecipeError(f"{where}.{missing[0]}", "is required")
        return cls(**values)

    def to_dict(self) -> dict:
        """The section as plain YAML values (nested sections too; derived fields left out)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.metadata.get("derived"):
                continue
            value = getattr(self, f.name)
            if isinstance(value, _Section):
                value = value.to_dict()
            elif isinstance(value, list):
                value = [
                    v.to_dict() if isinstance(v, _Section) else copy.deepcopy(v) for v in value
                ]
            else:
                value = copy.deepcopy(value)
            out[f.name] = value
        return out


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a simple type hint; convert where YAML is loose (1e-4 is a str)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        choices = [o for o in options if o is not type(None)]
        for option in choices[:-1]:  # the first option the value fits; the last one explains
            try:
                return _coerce(value, option, key)
            except RecipeError:
                pass
        hint = choices[-1]
        origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(key, f"must be a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise RecipeError(key, f"must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise RecipeError(key, f"must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(key, f"must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool):
            raise RecipeError(key, f"must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise RecipeError(key, f"must be a number, got {value!r}") from None
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise RecipeError(key, f"must be a string, got {value!r}")
        return value
    return value
