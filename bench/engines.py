"""The engines section (``distillserve bench --engines``): the same int8 ONNX students on
TorchServe (our handler) and on Triton (our core in its Python backend), each beside its own
engine's no-op floor, measured side by side in one run.

- Models: the digits int8 ONNX student (built from the recipe) and MobileNetV3-Large int8 ONNX
  (random weights, 224x224 JPEGs: speed only), each archived and signed like any student.
- Requests: the same KServe v2 JSON bodies to both engines (one encoded image, BYTES), at 16
  and 32 clients, in rounds whose engine order rotates (medians over the rounds), from
  ``bench.loadgen``'s closed loop (about 0.03 CPU-ms per request, on the same cores).
- Per point: req/s, p50/p99, and the CPU time of every server process (TorchServe's frontend
  and workers; tritonserver and its model stubs) per request, which a shared machine's noise
  moves far less than req/s; and the model's own process (TorchServe's worker, Triton's
  Python-backend stub): its CPU per request and how busy it was. Per engine: resident (RSS)
  and unique (USS) memory of all its processes with every model loaded.
- Limits: each engine's no-op floor (TorchServe: ``floor_handler``; Triton: a Python-backend
  model that answers without reading its input) on each model's own requests, and our
  handler's in-process ceiling on the same v2 requests at the archive's batch size times its
  workers (measured at the start of every round, with every engine up: the median); the target
  is served ÷ min(floor, ceiling) ≥ 0.9, reported beside served ÷ the shared-cores limit
  1 / (1/floor + 1/ceiling) (``engines_run._targets``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import psutil

from distillserve.bench.loadgen import closed_loop

__all__ = [
    "cpu_seconds",
    "engines_section",
    "floor_of",
    "is_floor",
    "model_stubs",
    "process_memory",
    "write_triton_floor",
]

TRITON_FLOOR = "triton-floor"
FLOOR = "floor-"  # the floor's points on a model's requests: floor-digits, floor-mobilenet


def floor_of(model: str) -> str:
    """The key of the engine's no-op floor measured on ``model``'s requests."""
    return FLOOR + model


def is_floor(key: str) -> bool:
    return key.startswith(FLOOR)


_FLOOR_MODEL = '''"""No-op floor: answers every request without reading it."""
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([
                pb_utils.Tensor("probabilities", np.zeros((1, 1), np.float32)),
                pb_utils.Tensor("labels", np.array([[b"x"]], dtype=np.object_)),
            ])
            for _ in requests
        ]
'''


def write_triton_floor(repository: Path, batch_size: int, delay_ms: int) -> None:
    """Triton's no-op floor model, batched like the archives."""
    folder = repository / TRITON_FLOOR
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "model.py").write_text(_FLOOR_MODEL)
    (folder / "config.pbtxt").write_text(
        f'name: "{TRITON_FLOOR}"\nbackend: "python"\nmax_batch_size: {batch_size}\n'
        'input [ { name: "images" data_type: TYPE_STRING dims: [ 1 ] } ]\n'
        'output [ { name: "probabilities" data_type: TYPE_FP32 dims: [ -1 ] },\n'
        '  { name: "labels" data_type: TYPE_STRING dims: [ -1 ] } ]\n'
        f"dynamic_batching {{ preferred_batch_size: [ {batch_size} ] "
        f"max_queue_delay_microseconds: {delay_ms * 1000} }}\n"
        "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
    )


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _cpu(processes: Iterable[psutil.Process]) -> float:
    """User and system CPU seconds of these processes (one gone meanwhile counts nothing)."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of ``pid`` and every process under it."""
    return _cpu(_tree(pid))


def _own_cpu_seconds(pids: Sequence[int]) -> float:
    """User and system CPU seconds of exactly these processes (not their children)."""
    processes = []
    for pid in pids:
        try:
            processes.append(psutil.Process(pid))
        except psutil.Error:  # gone already: counts nothing
            continue
    return _cpu(processes)


def model_stubs(triton_pid: int, model: str) -> list[int]:
    """The pids of Triton's Python-backend stubs that serve ``model`` (one per instance): each
    is started on a file under the model's directory in the repository."""
    stubs = []
    for process in _tree(triton_pid):
        try:
            if "python_backend_stub" in process.name() and any(
                f"/{model}/" in arg for arg in process.cmdline()
            ):
                stubs.append(process.pid)
        except psutil.Error:
            continue
    return stubs


def process_memory(pid: int) -> dict[str, float]:
    """Resident and unique memory (MiB) of ``pid`` and every process under it."""
    rss = uss = 0
    for process in _tree(pid):
        try:
            info = process.memory_full_info()
        except psutil.Error:
            continue
        rss, uss = rss + info.rss, uss + info.uss
    return {"rss_mib": round(rss / 2**20, 1), "uss_mib": round(uss / 2**20, 1)}


def measure_point(
    url: str,
    model: str,
    bodies: Sequence[bytes],
    concurrency: int,
    seconds: float,
    server_pid: int,
    token: str | None = None,
    model_pids: Sequence[int] = (),
) -> dict:
    """Closed-loop v2 load for ``seconds`` (``bench.loadgen``), with the server processes' CPU
    per request and the load generator's (this process, on the same cores); with
    ``model_pids`` (the model's own processes) theirs too, and how busy they were (CPU
    seconds per wall second per process: 1.0 is a process that never waited)."""
    before, client_before = cpu_seconds(server_pid), time.process_time()
    model_before, started = _own_cpu_seconds(model_pids), time.monotonic()
    result = closed_loop(
        url,
        f"/v2/models/{model}/infer",
        bodies,
        concurrency,
        seconds,
        headers={"Authorization": f"Bearer {token}"} if token else None,
    )
    spent = cpu_seconds(server_pid) - before
    client = time.process_time() - client_before
    model, wall = _own_cpu_seconds(model_pids) - model_before, time.monotonic() - started
    requests = max(1, result["answered"] + result["errors"])
    point = {
        "rps": result["rps"],
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "errors": result["errors"],
        "cpu_ms_per_request": round(spent * 1000 / requests, 3),
        "client_cpu_ms_per_request": round(client * 1000 / requests, 3),
    }
    if model_pids:
        point["model_cpu_ms_per_request"] = round(model * 1000 / requests, 3)
        point["model_busy"] = round(model / wall / len(model_pids), 3)
    return point


def engines_section(
    engines: dict[str, dict],
    models: dict[str, Sequence[bytes]],
    concurrencies: Sequence[int],
    seconds: float,
    rounds: int,
    log: Callable[[str], None],
    warm_up_s: float = 3.0,
    before_round: Callable[[int], None] | None = None,
) -> list[dict]:
    """Every (model, concurrency, engine) point, rounds with the engine order rotated; the
    median of each measure over the rounds. ``engines[name]`` holds ``url``, ``pid``, ``token``
    and ``names`` (the served name of each model key: ``floor_of(model)`` for the floors), and
    optionally ``model_pids`` (each model key's own processes); an engine measures only the
    model keys its ``names`` holds (a variant of an engine may leave the floors out).
    First ``warm_up_s`` of unrecorded load per engine and model, at the highest concurrency:
    TorchServe's frontend runs on the JVM, whose first seconds are spent compiling. Then
    ``before_round(r)`` at the start of each round (the bench measures its in-process limits
    there, in the rounds' conditions)."""
    raw: dict[tuple, list[dict]] = {}
    order = list(engines)
    for engine, e in engines.items() if warm_up_s > 0 else ():
        for model, bodies in models.items():
            if model in e["names"]:
                measure_point(e["url"], e["names"][model], bodies, max(concurrencies), warm_up_s,
                              e["pid"], e.get("token"))  # fmt: skip
        log(f"engines: {engine} warmed up")
    for r in range(rounds):
        if before_round is not None:
            before_round(r)
        for model, bodies in models.items():
            for concurrency in concurrencies:
                for engine in order[r % len(order) :] + order[: r % len(order)]:
                    e = engines[engine]
                    if model not in e["names"]:
                        continue
                    point = measure_point(
                        e["url"], e["names"][model], bodies, concurrency, seconds, e["pid"],
                        e.get("token"), e.get("model_pids", {}).get(model, ()),
                    )  # fmt: skip
                    raw.setdefault((model, concurrency, engine), []).append(point)
                    log(f"engines: round {r + 1} {engine} {model} c{concurrency}: {point}")
                    time.sleep(0.5)
    rows = []
    for (model, concurrency, engine), points in raw.items():
        row = {"model": model, "concurrency": concurrency, "engine": engine, "rounds": points}
        for key in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_request", "client_cpu_ms_per_request",
                    "model_cpu_ms_per_request", "model_busy"):  # fmt: skip
            if all(key in p for p in points):
                row[key] = round(statistics.median(p[key] for p in points), 3)
        row["errors"] = sum(p["errors"] for p in points)
        pids = engines[engine].get("model_pids", {}).get(model)
        if pids:
            row["model_processes"] = len(pids)
        rows.append(row)
    return rows
