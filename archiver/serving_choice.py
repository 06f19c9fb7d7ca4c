"""``archive.min_workers/max_workers/threads: auto``: how many workers and intra-op threads a
model is served with, chosen from its measured cost when the archive is built.

Measured on the build host (``ServingChoice.measured``), at the archive's batch size: one batch's
forward pass at one thread and at every core, and one image's decode and preprocessing in the
shipped handler's own code. The rule (``choose``), from what ``make bench`` measured on TorchServe
0.12 (README, Performance):

- **workers**: one when a worker at one thread needs less than ``SERVER_MS_PER_REQUEST`` per
  image: TorchServe's own cost per request (frontend, batching, the worker's Python protocol) is
  about that, so one worker keeps up with what the server hands it, and a second one only adds
  batches and contention. Otherwise one worker per core: decoding runs under each worker's GIL,
  so only more workers decode in parallel (MobileNetV3 and ResNet-18 int8 at 224x224 served
  1.3-1.5x more at concurrency 32 with two one-thread workers than one two-thread worker).
- **threads**: one for a model cheaper than the server (its intra-op threads only wait at
  barriers while the frontend holds the other cores: the digits student served 1.85x more at one
  thread than at two, though two run its batch 1.5x faster in isolation) and when the workers
  take every core; otherwise cores ÷ workers when that many threads make one batch's forward
  pass at least ``MIN_THREAD_SPEEDUP`` faster than one thread.

The worker count is the build host's cores: an inference host with more cores wants more
workers (``PUT /models/{name}?min_worker=N``, or a number in the recipe). The choice, the
measurements and the sentence saying why go into ``build-info.json`` (``serving``).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image

from distillserve.errors import ArchiveError
from distillserve.handlers import imageprep
from distillserve.handlers.classification import HandlerSettings
from distillserve.handlers.runtimes import load_runtime
from distillserve.students.measure import latency_ms, threads
from distillserve.students.recipe_sections import AUTO, ArchiveConfig

__all__ = ["MIN_THREAD_SPEEDUP", "SERVER_MS_PER_REQUEST", "ServingChoice", "choose", "resolve"]

SERVER_MS_PER_REQUEST = 1.0  # TorchServe's own CPU time per request, about (bench: no-op floor)
MIN_THREAD_SPEEDUP = 1.5  # what more intra-op threads must gain on one batch to be used


@dataclass(frozen=True)
class Measured:
    """The model's cost on the build host, in milliseconds."""

    cores: int
    batch_size: int
    forward_ms_1_thread: float  # one batch
    forward_ms_all_cores: float  # one batch, ``cores`` threads
    decode_ms_per_image: float  # decode + preprocess of one image at the model's input size

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

    def record(self) -> dict:
        """What ``build-info.json`` keeps under ``serving``."""
        return asdict(self)


def choose(config: ArchiveConfig, measured: Measured) -> ServingChoice:
    """Resolve every ``auto`` of ``config`` from ``measured`` (see the module docstring)."""
    reasons = []
    per_image = measured.ms_per_image_1_thread
    cheap = per_image < SERVER_MS_PER_REQUEST
    cost = (
        f"one image costs {per_image:.2f} ms at one thread, "
        f"{'below' if cheap else 'above'} TorchServe's ~{SERVER_MS_PER_REQUEST:g} ms per request"
    )
    if config.min_workers == AUTO:
        low = high = 1 if cheap else measured.cores
        reasons.append(f"{high} worker{'s' if high > 1 else ''} ({cost})")
    else:
        low, high = int(config.min_workers), int(config.max_workers)
    if config.threads == AUTO:
        share = max(1, measured.cores // high)
        speedup = f"{measured.cores} threads run a batch of {measured.batch_size} " + (
            f"{measured.thread_speedup:.2f}x faster than one"
        )
        if cheap:
            count, because = 1, "cheaper than the server: more threads only contend with it"
        elif share == 1:
            count, because = 1, f"no core left over with {high} workers"
        else:
            pays = measured.thread_speedup >= MIN_THREAD_SPEEDUP
            count = share if pays else 1
            because = speedup + ("" if pays else f", under {MIN_THREAD_SPEEDUP:g}x")
        reasons.append(f"{count} thread{'s' if count > 1 else ''} per worker ({because})")
    else:
        count = int(config.threads)
    return ServingChoice(low, high, count, "; ".join(reasons), asdict(measured))


def resolve(
    config: ArchiveConfig, model_path: Path, handler: HandlerSettings
) -> ServingChoice | None:
    """The choice for an archive whose section says ``auto`` somewhere (None otherwise)."""
    if not config.is_auto:
        return None
    return choose(config, measure(model_path, handler, config.batch_size))


def measure(model_path: Path, handler: HandlerSettings, batch_size: int) -> Measured:
    """Time the model file and the handler's decode on this host (a few seconds), in a fresh
    Python process: the caller's thread pools, quantized engine and loaded modules stay as they
    are, and a caller that forked after torch started its threads cannot deadlock in them."""
    command = [sys.executable, "-m", __name__, str(model_path), json.dumps(handler.to_dict())]
    done = subprocess.run(
        [*command, str(batch_size)], capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        raise ArchiveError(
            f"measuring {model_path.name} for archive workers/threads 'auto' failed: "
            + (done.stderr.strip().splitlines() or ["no output"])[-1]
        )
    return Measured(**json.loads(done.stdout.strip().splitlines()[-1]))


def _measure_here(model_path: Path, handler: HandlerSettings, batch_size: int) -> Measured:
    """``measure`` in this process."""
    cores = len(os.sched_getaffinity(0))
    spec = handler.spec
    if handler.quantized:
        torch.backends.quantized.engine = handler.engine
    example = torch.zeros((batch_size, spec.channels, *spec.image_size))
    with threads(1):
        model = load_runtime(model_path, threads=1)
        one = latency_ms(model, example, warmup=3, repeats=15)
    with threads(cores):
        model = load_runtime(model_path, threads=cores)
        every = latency_ms(model, example, warmup=3, repeats=15)
    payload = _sample_image(spec)
    with threads(1):
        decode = latency_ms(_decoder(payload, handler), None, warmup=3, repeats=30)
    return Measured(cores, batch_size, round(one, 4), round(every, 4), round(decode, 4))


def _decoder(payload: bytes, handler: HandlerSettings):
    """A callable that decodes and preprocesses ``payload`` as the shipped handler does."""
    spec = handler.spec

    def run(_: None) -> torch.Tensor:
        image = imageprep.decode_image(payload, spec.channels, handler.limits, spec.image_size)
        return imageprep.preprocess([image], spec)

    return run


def _sample_image(spec: imageprep.PreprocessSpec) -> bytes:
    """An image at the model's input size as a client sends one: PNG up to 64 pixels a side
    (sketches, digits), JPEG above (photos)."""
    width, height = spec.image_size[1], spec.image_size[0]
    mode = "L" if spec.channels == 1 else "RGB"
    generator = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 256, (8, 8, spec.channels), generator=generator)
    image = Image.fromarray(coarse.byte().squeeze(-1).numpy(), mode)
    image = image.resize((width, height), Image.Resampling.BICUBIC)  # smooth, like a photo
    buffer = io.BytesIO()
    image.save(buffer, "PNG" if max(width, height) <= 64 else "JPEG", quality=90)
    return buffer.getvalue()


if __name__ == "__main__":  # measure's subprocess: MODEL_PATH HANDLER_JSON BATCH_SIZE
    settings = HandlerSettings.from_dict(json.loads(sys.argv[2]))
    print(json.dumps(asdict(_measure_here(Path(sys.argv[1]), settings, int(sys.argv[3])))))
