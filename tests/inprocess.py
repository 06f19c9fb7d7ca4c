"""TorchServe's handler contract without the server: unpack a ``.mar`` as a worker does, build
TorchServe's own ``Context`` and call ``handle`` on a batch. ``distillserve bench`` measures the
handler's in-process ceiling with it; the tests drive the handler with it."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import yaml

__all__ = ["RecordedMetrics", "handle", "handler_context", "load_handler"]


class RecordedMetrics:
    """Stands in for TorchServe's metrics cache: keeps what the handler records, in order."""

    def __init__(self) -> None:
        self.records: list[tuple[str, float, str]] = []

    def add_metric(self, name: str, value: float, unit: str = "ms", *args, **kwargs) -> None:
        self.records.append((name, value, unit))

    def add_time(self, name: str, value: float, *args, unit: str = "ms", **kwargs) -> None:
        self.records.append((name, value, unit))

    def last(self, name: str) -> float | None:
        """The value last recorded under ``name``."""
        return next((v for n, v, _ in reversed(self.records) if n == name), None)


def handler_context(model_dir: Path, batch_size: int = 4, name: str = "digits-student"):
    """TorchServe's own Context for an unpacked archive, recording metrics in memory."""
    from ts.context import Context

    return Context(
        name,
        str(model_dir),
        json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text()),
        batch_size,
        None,
        "0.12.0",
        metrics=RecordedMetrics(),
        model_yaml_config=yaml.safe_load((model_dir / "model-config.yaml").read_text()),
    )


def handle(handler, ctx, requests: list[dict], headers: list[dict] | None = None) -> list:
    """One batch through ``handler.handle`` with a fresh per-request status record each;
    ``headers`` are the requests' headers as TorchServe passes them (none by default)."""
    from ts.context import RequestProcessor

    headers = headers or [{} for _ in requests]
    ctx.request_processor = [RequestProcessor(h) for h in headers]
    return handler.handle(requests, ctx)


def load_handler(archive: Path, workdir: Path, batch_size: int = 4):
    """Unpack ``archive`` as TorchServe does for a worker and initialise our handler on it."""
    from distillserve.handlers.distill_classifier import DistillClassifierHandler

    with zipfile.ZipFile(archive) as mar:
        mar.extractall(workdir / "unpacked")
    ctx = handler_context(workdir / "unpacked", batch_size)
    handler = DistillClassifierHandler()
    handler.initialize(ctx)
    return handler, ctx
