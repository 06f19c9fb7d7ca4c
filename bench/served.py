"""Measurements through a real TorchServe for ``distillserve bench``.

- ``served_point``: closed-loop load at a concurrency for a fixed time (``bench.loadgen``: light
  enough to leave the shared cores to the server); throughput, p50/p99, and
  the batch size TorchServe actually formed, counted from its own per-batch ``PredictionTime``
  records (``ts/service.py`` writes one per batch, for any handler) in ``model_metrics.log``.
- ``register_timed``: register an archive and time it to the first answer (cold start).
- ``worker_peak_rss_mb``: peak resident memory (``VmHWM``) of a model's worker processes.
- ``builtin_archive``: the same TorchScript file packed for TorchServe's built-in
  ``image_classifier`` handler (which needs captum, the ``bench`` extra).
- ``floor_archive``: a no-op handler and no model: what TorchServe itself serves at a load.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import tempfile
import time
import zipfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import yaml

from distillserve.archiver.mar import archiver_tempdir
from distillserve.bench.loadgen import closed_loop
from distillserve.errors import ServerError
from distillserve.handlers.serving_policy import workers_of
from distillserve.serving.management import ManagementClient
from distillserve.serving.rest import InferenceClient
from distillserve.serving.server import TorchServe

# How each route sends one payload: the path under the inference address, and its content type.
ROUTES = {
    "predictions": ("/predictions/{model}", "application/octet-stream"),
    "v2": ("/v2/models/{model}/infer", "application/json"),
}

__all__ = [
    "archive_serving",
    "archive_workers",
    "batch_sizes",
    "builtin_archive",
    "floor_archive",
    "paired_points",
    "register_timed",
    "served_point",
    "unregister",
    "worker_peak_rss_mb",
]


def batch_sizes(ts: TorchServe, model: str) -> list[int]:
    """The size of every batch ``model``'s workers have run so far, from TorchServe's own
    ``PredictionTime`` records (one per batch, listing the batch's request ids)."""
    log = ts.log_dir / "model_metrics.log"
    if not log.exists():
        return []
    pattern = re.compile(
        rf" - PredictionTime\.\w+:[^|]*\|#ModelName:{re.escape(model)},[^|]*"
        r"\|#[^|]*requestID:([^|]*),timestamp:"
    )
    with log.open() as lines:
        return [len(m.group(1).split(",")) for line in lines if (m := pattern.search(line))]


def served_point(
    ts: TorchServe,
    model: str,
    payloads: Sequence[bytes],
    concurrency: int,
    seconds: float,
    route: str = "predictions",
) -> dict:
    """Closed-loop load for ``seconds``: throughput, latency percentiles, achieved batch size
    (in requests); ``route`` is a key of ``ROUTES`` (image or text bytes, or v2 JSON bodies)."""
    if route not in ROUTES:
        raise ServerError(f"route must be one of: {', '.join(ROUTES)}")
    path, content_type = ROUTES[route]
    before = len(batch_sizes(ts, model))
    report = closed_loop(
        ts.inference_url,
        path.format(model=model),
        payloads,
        concurrency,
        seconds,
        headers={"Content-Type": content_type, **ts.headers()},
    )
    time.sleep(1.0)  # the metrics logger flushes asynchronously
    sizes = batch_sizes(ts, model)[before:]
    return {
        "concurrency": concurrency,
        "requests": report["answered"],
        "errors": report["errors"],
        "throughput_rps": report["rps"],
        "p50_ms": report["p50_ms"],
        "p99_ms": report["p99_ms"],
        "batches": len(sizes),
        "mean_batch": round(sum(sizes) / len(sizes), 2) if sizes else 0.0,
    }


def paired_points(
    ts: TorchServe,
    names: tuple[str, str],
    payloads: Sequence[bytes],
    concurrency: int,
    seconds: float,
    rounds: int = 3,
) -> dict:
    """Two registered models loaded in turn, ``rounds`` times: what a shared machine's drift
    does to one it does to the other. ``{"rounds": [[a rps, b rps], ...], "ratio": the median
    of a ÷ b over the rounds, "a_rps"/"b_rps": the medians}``."""
    pairs = [
        [served_point(ts, name, payloads, concurrency, seconds)["throughput_rps"] for name in names]
        for _ in range(rounds)
    ]
    return {
        "rounds": pairs,
        "ratio": round(statistics.median(a / b for a, b in pairs), 3),
        "a_rps": round(statistics.median(a for a, _ in pairs), 2),
        "b_rps": round(statistics.median(b for _, b in pairs), 2),
    }


def _management(ts: TorchServe) -> ManagementClient:
    return ManagementClient(ts.management_url, ts.keys().get("management"), timeout=600)


def register_timed(
    ts: TorchServe,
    archive: Path,
    name: str,
    payload: bytes,
    batch_size: int,
    max_batch_delay: int,
    workers: int | None = None,
) -> float:
    """Register ``archive`` as ``name`` and return seconds until its first answer. ``workers``
    applies to an archive whose model-config.yaml names none (its minWorkers wins otherwise);
    by default what the archive runs (``archive_workers``)."""
    workers = archive_workers(archive) if workers is None else workers
    started = time.perf_counter()
    _management(ts).register(
        str(archive),
        model_name=name,
        batch_size=batch_size,
        max_batch_delay=max_batch_delay,
        initial_workers=workers,
        response_timeout=300,
    )
    answer = InferenceClient(ts.inference_url, ts.keys().get("inference"), timeout=300)
    result = answer.predict_raw(name, payload)
    if not result.ok:
        raise ServerError(f"first request to {name} failed: {result.status} {result.body}")
    return time.perf_counter() - started


def unregister(ts: TorchServe, name: str) -> None:
    """Remove ``name`` (registered once, so with one version); its workers stop."""
    _management(ts).unregister_model(name)


def worker_peak_rss_mb(ts: TorchServe, name: str) -> float:
    """The largest peak resident set (``VmHWM``) among ``name``'s worker processes, in MiB."""
    peaks = []
    for version in _management(ts).describe(name):
        for worker in version.get("workers", []):
            try:
                status = Path(f"/proc/{worker['pid']}/status").read_text()
            except (KeyError, OSError):
                continue
            match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
            if match:
                peaks.append(int(match.group(1)) / 1024)
    return round(max(peaks), 1) if peaks else 0.0


def archive_workers(archive: Path) -> int:
    """The workers an archive runs: its ``model-config.yaml``'s count, one per usable core of
    this host for 'auto' workers (which name none), else 1."""
    return archive_serving(archive)["workers"]


def archive_serving(archive: Path) -> dict[str, int]:
    """``{"workers", "threads"}`` of an archive (``archive_workers``; threads from its
    ``model-config.yaml``, 0: cores ÷ workers on the host)."""
    with zipfile.ZipFile(archive) as mar:
        names = mar.namelist()
        config = (
            yaml.safe_load(mar.read("model-config.yaml")) if "model-config.yaml" in names else {}
        )
        info = json.loads(mar.read("build-info.json")) if "build-info.json" in names else {}
    config = config or {}
    threads = (config.get("handler") or {}).get("threads", 0)
    return {"workers": workers_of(config, info.get("serving")), "threads": int(threads)}


def builtin_archive(model_pt: Path, index_to_name: Path, name: str, store: Path) -> Path:
    """``store/<name>.mar`` with ``model_pt`` and TorchServe's built-in ``image_classifier``."""
    return _archive(
        store,
        name,
        handler="image_classifier",
        serialized_file=str(model_pt),
        extra_files=str(index_to_name),
    )


def floor_archive(store: Path, name: str = "floor") -> Path:
    """``store/<name>.mar`` serving nothing: ``bench/floor_handler.py``'s no-op handler, no
    model file; TorchServe's floor under any load."""
    handler = resources.files("distillserve.bench") / "floor_handler.py"
    with resources.as_file(handler) as path:
        return _archive(store, name, handler=str(path))


def _archive(store: Path, name: str, **files: str) -> Path:
    """``store/<name>.mar`` through torch-model-archiver's API, staged beside the store."""
    from model_archiver.model_archiver import ModelArchiver
    from model_archiver.model_archiver_config import ModelArchiverConfig

    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=store))
    try:
        config = ModelArchiverConfig(
            model_name=name, version="1.0", export_path=str(staging), force=True, **files
        )
        with archiver_tempdir(staging):
            ModelArchiver.generate_model_archive(config)
        target = store / f"{name}.mar"
        (staging / f"{name}.mar").replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
