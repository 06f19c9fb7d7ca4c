"""How many workers and intra-op threads a model is served with: the one home of that policy.

The recipe's ``archive`` section is this module's ``ArchiveConfig``: its ``min_workers``,
``max_workers`` and ``threads`` are numbers or ``AUTO`` (this module's sentinel, the only one).
``check`` validates them; ``choose`` resolves ``AUTO`` from the build host's cores and the
model's cost, measured when the archive is built (``archiver.serving_measure``);
``serve_threads`` is the rule a worker applies at start on the inference host;
``build_threads`` the count the build measures latency at. Ships inside every .mar (the
handler needs ``serve_threads``); imports nothing of distillserve.

The rule (``choose``), from what ``make bench`` measured on TorchServe 0.12 and Triton (README,
Performance and Engines):

- **workers**: one per core, whatever the model costs. Every request's decoding, forward pass
  and answer run in a worker's own Python process, under its GIL, and the engine hands that
  process its next batch only after the last one's answers are out: one process is the bound
  even for a model as cheap as the digits student. On 2 cores two one-thread workers served
  1.2-1.8x the requests of one, on TorchServe and on Triton, for the digits and the BERT-Small
  int8 students, and 1.9-2.0x for MobileNetV3 int8, at the same CPU per request
  (docs/bench/2026-12-04-workers.md; ``make bench``'s engines section measures it again).
- **threads**: one when the workers take every core. For given workers with cores to spare:
  one for a model cheaper than ``CHEAP_MS_PER_INPUT`` per input (its intra-op threads only wait
  at barriers: the digits student served 1.85x more at one thread than at two, though two run
  its batch 1.5x faster in isolation); otherwise cores ÷ workers when that many threads make one
  batch's forward pass at least ``MIN_THREAD_SPEEDUP`` faster than one thread.

Cores are ``usable_cores``: those a process may run on, capped by its container's CPU limit.
Workers chosen one per core (``ServingChoice.per_core``) are counted on the host that serves:
the archive's model-config.yaml names none, so TorchServe starts ``default_workers_per_model``
(``serve start`` sets it to the host's usable cores; ``export-kserve`` writes the pods' cores)
and Triton one instance per core (``archiver.triton.instance_count``). Numbers in the recipe
are written into model-config.yaml and win. The choice, the measurements and the sentence
saying why go into ``build-info.json`` (``serving``).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import ClassVar

__all__ = [
    "AUTO",
    "CHEAP_MS_PER_INPUT",
    "MAX_BATCH_SIZE",
    "MIN_THREAD_SPEEDUP",
    "ArchiveConfig",
    "Measured",
    "PolicyError",
    "ServingChoice",
    "build_threads",
    "check",
    "check_batch_size",
    "choose",
    "is_auto",
    "serve_threads",
    "usable_cores",
    "workers_of",
]

AUTO = "auto"  # workers (one per core) or threads (by the model's cost) chosen when archived
# below this cost per input at one thread, a model's intra-op threads only wait at barriers
CHEAP_MS_PER_INPUT = 1.0
MIN_THREAD_SPEEDUP = 1.5  # what more intra-op threads must gain on one batch to be used
# The largest batch an archive may ask TorchServe for: far past where batching stops paying on
# CPU (bench: 8-32), and a worker warms up at its batch size (100,000 cost one ONNX worker 400 MB).
MAX_BATCH_SIZE = 256

Count = int | str  # a number, or AUTO


class PolicyError(ValueError):
    """A workers/threads setting that cannot work; ``key`` is the recipe key."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)


@dataclass
class ArchiveConfig:
    """The recipe's ``archive`` section: how the artifact becomes a .mar and how TorchServe
    batches and scales it; validated on construction (``PolicyError`` naming the key). The
    recipe reads it through ``students.recipe_sections.ArchiveConfig``, which adds YAML parsing.
    """

    SECTION: ClassVar[str] = "archive"
    model_name: str = "student"
    version: str = "1.0"
    batch_size: int = 8
    max_batch_delay: int = 50  # ms TorchServe waits to fill a batch
    min_workers: int | str = 1  # a number, or AUTO
    max_workers: int | str = 1
    response_timeout: int = 120
    topk: int = 3
    threads: int | str = 0  # 0 = cores / max_workers on the inference host; or AUTO

    def __post_init__(self) -> None:
        if not self.model_name or not all(c.isalnum() or c in "-_" for c in self.model_name):
            raise PolicyError("archive.model_name", "may use only letters, digits, - and _")
        if not self.version or not all(c.isalnum() or c in "._-" for c in self.version):
            raise PolicyError("archive.version", "may use letters, digits, . _ -")
        for key in ("batch_size", "max_batch_delay", "response_timeout", "topk"):
            if getattr(self, key) < 1:
                raise PolicyError(f"archive.{key}", "must be >= 1")
        check_batch_size(self.batch_size, "archive.batch_size")
        check(self.min_workers, self.max_workers, self.threads)

    @property
    def is_auto(self) -> bool:
        """Whether the archive step chooses workers or threads (``choose``)."""
        return is_auto(self.min_workers, self.max_workers, self.threads)


def check(min_workers: Count, max_workers: Count, threads: Count) -> None:
    """Validate the three settings (``PolicyError`` naming the key)."""
    for key, value in (("min_workers", min_workers), ("max_workers", max_workers)):
        if value != AUTO and (isinstance(value, str) or value < 1):
            raise PolicyError(f"archive.{key}", f"must be an integer >= 1 or {AUTO!r}")
    if threads != AUTO and (isinstance(threads, str) or threads < 0):
        raise PolicyError("archive.threads", f"must be an integer >= 0 or {AUTO!r}")
    if AUTO in (min_workers, max_workers) and min_workers != max_workers:
        raise PolicyError("archive.max_workers", "auto workers need min_workers: auto too")
    if min_workers != AUTO and max_workers < min_workers:
        raise PolicyError("archive.max_workers", f"must be >= min_workers ({min_workers})")


def check_batch_size(batch_size: int, key: str = "batch_size") -> None:
    """Refuse a batch size outside ``1 .. MAX_BATCH_SIZE`` (``PolicyError`` naming ``key``)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PolicyError(key, f"must be an integer from 1 to {MAX_BATCH_SIZE}")
    if batch_size > MAX_BATCH_SIZE:
        raise PolicyError(
            key,
            f"is above the maximum of {MAX_BATCH_SIZE} (on CPU batching stops paying long "
            "before; each worker warms up at its batch size)",
        )


def is_auto(min_workers: Count, max_workers: Count, threads: Count) -> bool:
    """Whether the archive step chooses workers or threads (``choose``)."""
    return AUTO in (min_workers, max_workers, threads)


def build_threads(threads: Count) -> int:
    """The intra-op threads the build measures latency at: the recipe's number, else one (what
    ``AUTO`` chooses for a model cheaper than the server, and a worker's least)."""
    return threads if isinstance(threads, int) and threads > 0 else 1


def serve_threads(configured: Count, workers: int, cores: int | None = None) -> int:
    """Intra-op threads for one worker on this host: the configured number, or cores ÷ workers
    (at least 1) for 0 (and for an ``AUTO`` that was never resolved)."""
    if isinstance(configured, int) and configured > 0:
        return configured
    cores = cores or usable_cores()
    return max(1, cores // max(1, workers))


# a container's CPU limit: cgroup v2's "quota period" (or "max"), else v1's quota (-1: none)
_CGROUP_V2_LIMIT = "/sys/fs/cgroup/cpu.max"
_CGROUP_V1_LIMIT = ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def usable_cores(v2: str = _CGROUP_V2_LIMIT, v1: tuple[str, str] = _CGROUP_V1_LIMIT) -> int:
    """The cores this process may keep busy: those it may run on, capped by its container's
    CPU limit (a Kubernetes ``limits.cpu`` of 2 on a 64-core node is 2, rounded up)."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = _read(v2).split()[:2]
    except (OSError, ValueError):
        try:
            quota, period = _read(v1[0]), _read(v1[1])
        except OSError:
            return cores
    if not quota.isdigit() or not period.isdigit() or int(quota) == 0:
        return cores  # "max" (v2) or -1 (v1): no limit
    return max(1, min(cores, -(-int(quota) // max(1, int(period)))))


def workers_of(model_config: dict, serving: dict | None, cores: int | None = None) -> int:
    """The workers an archive runs: for workers chosen one per core (build-info's ``serving``,
    ``per_core``; model-config.yaml names none) the serving host's ``cores`` (default: this
    host's usable cores), otherwise its model-config.yaml's count (1 when it names none)."""
    if (serving or {}).get("per_core"):
        return max(1, cores or usable_cores())
    return int(model_config.get("maxWorkers") or model_config.get("minWorkers") or 1)


def _read(path: str) -> str:
    with open(path) as file:
        return file.read().strip()


@dataclass(frozen=True)
class Measured:
    """The model's cost on the build host, in milliseconds."""

    cores: int
    batch_size: int
    forward_ms_1_thread: float  # one batch
    forward_ms_all_cores: float  # one batch, ``cores`` threads
    decode_ms_per_image: float  # one input's decoding: an image's decode + preprocess at the
    # model's input size, or a text's checks and tokenizing (the name kept for build-info)

    @property
    def ms_per_image_1_thread(self) -> float:
        return self.forward_ms_1_thread / self.batch_size + self.decode_ms_per_image

    @property
    def thread_speedup(self) -> float:
        return self.forward_ms_1_thread / max(self.forward_ms_all_cores, 1e-9)


@dataclass(frozen=True)
class ServingChoice:
    """Workers and threads for model-config.yaml, with what decided them."""

    min_workers: int
    max_workers: int
    threads: int
    why: str
    measured: dict = field(default_factory=dict)
    # workers were AUTO: one per core of the host that serves the model (model-config.yaml
    # names no count; min/max_workers are the build host's, for the record)
    per_core: bool = False

    def record(self) -> dict:
        """What ``build-info.json`` keeps under ``serving``."""
        return asdict(self)


def choose(min_workers: Count, max_workers: Count, threads: Count, measured: Measured):
    """Resolve every ``AUTO`` of the three settings from ``measured`` (the module docstring)."""
    reasons = []
    if min_workers == AUTO:
        low = high = measured.cores
        reasons.append(
            f"{high} worker{'s' if high > 1 else ''}, one per core (each decodes and runs its "
            "batches in its own process; counted again on the host that serves)"
        )
    else:
        low, high = int(min_workers), int(max_workers)
    if threads == AUTO:
        count, because = _auto_threads(measured, high)
        reasons.append(f"{count} thread{'s' if count > 1 else ''} per worker ({because})")
    else:
        count = int(threads)
    per_core = min_workers == AUTO
    return ServingChoice(low, high, count, "; ".join(reasons), asdict(measured), per_core)


def _auto_threads(measured: Measured, workers: int) -> tuple[int, str]:
    share = max(1, measured.cores // workers)
    if share == 1:
        return 1, f"no core left over with {workers} worker{'s' if workers > 1 else ''}"
    per_input = measured.ms_per_image_1_thread
    if per_input < CHEAP_MS_PER_INPUT:
        return 1, (
            f"one input costs {per_input:.2f} ms at one thread, under {CHEAP_MS_PER_INPUT:g} ms: "
            "more threads only wait at barriers"
        )
    pays = measured.thread_speedup >= MIN_THREAD_SPEEDUP
    speedup = (
        f"{measured.cores} threads run a batch of {measured.batch_size} "
        f"{measured.thread_speedup:.2f}x faster than one"
    )
    return (share if pays else 1), speedup + ("" if pays else f", under {MIN_THREAD_SPEEDUP:g}x")
