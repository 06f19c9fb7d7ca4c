"""Helpers shared by the bench summary's modules."""

from __future__ import annotations

import itertools
from pathlib import Path

__all__ = ["ceiling_at", "fmt"]


def ceiling_at(ceiling: dict[str, dict], batch: float) -> float:
    """Images/s at a (possibly fractional) batch size, interpolating ms per batch linearly
    between the measured batch sizes (and per image beyond them)."""
    points = sorted((int(b), v["ms_per_batch"]) for b, v in ceiling.items())
    if batch <= points[0][0]:
        b, ms = points[0]
        return b / ms * 1000
    for (b0, ms0), (b1, ms1) in itertools.pairwise(points):
        if b0 <= batch <= b1:
            ms = ms0 + (ms1 - ms0) * (batch - b0) / (b1 - b0)
            return batch / ms * 1000
    b, ms = points[-1]
    return b / ms * 1000


def fmt(value: float) -> str:
    """A figure with the digits that matter: 1,234 / 12.3 / 1.23."""
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
