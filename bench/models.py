"""What ``distillserve bench`` serves and how fast it can go without a server.

- ``vision_artifact``: a 224x224 ImageNet-shaped model (random weights: speed only) exported as an
  artifact directory our archiver packs like a built student; int8 ones are statically quantized
  on random calibration images for the x86 engine.
- ``photo_jpegs``: photo-like JPEGs (smooth gradients, shapes, sensor noise), made offline.
- ``model_ceiling``: the TorchScript model alone, in process, per batch size;
  ``served_model_ceiling`` the same at an archive's workers and threads.
- ``handler_ceiling``: our handler core (``handlers.core``, the archive's own settings, image
  adapter and model file) in process on JPEG payloads, per batch size.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw, ImageFilter

from distillserve.bench.served import archive_serving, archive_workers
from distillserve.handlers.classification import HandlerSettings
from distillserve.handlers.core import HandlerCore, Request
from distillserve.handlers.imageprep import PreprocessSpec
from distillserve.handlers.runtimes import load_runtime
from distillserve.handlers.served_model import make_adapter, task_of
from distillserve.handlers.serving_policy import AUTO, serve_threads, usable_cores
from distillserve.students.artifact import write_artifact
from distillserve.students.export import export_torchscript
from distillserve.students.measure import threads
from distillserve.students.quantize import quantize_static
from distillserve.students.recipe import QuantizeConfig
from distillserve.students.zoo import build_model, count_parameters

__all__ = [
    "VISION_MODELS",
    "handler_ceiling",
    "model_ceiling",
    "photo_jpegs",
    "served_model_ceiling",
    "vision_artifact",
]

# name -> (torchvision architecture, int8); ResNet-50 fp32 stands for the teacher.
VISION_MODELS = {
    "resnet50-fp32": ("resnet50", False),
    "resnet18-fp32": ("resnet18", False),
    "resnet18-int8": ("resnet18", True),
    "mobilenetv3-int8": ("mobilenet_v3_large", True),
}
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def vision_artifact(name: str, out: Path, batch_size: int = 8, max_batch_delay: int = 10) -> Path:
    """Export ``VISION_MODELS[name]`` with random weights into ``out/name`` (artifact layout)."""
    arch, int8 = VISION_MODELS[name]
    directory = out / name
    if (directory / "model.pt").is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model(arch, 1000, 3).eval()
    params = count_parameters(model)
    example = torch.rand(1, 3, 224, 224)
    started = time.perf_counter()
    if int8:
        calibration = [(torch.randn(4, 3, 224, 224), None) for _ in range(2)]
        model = quantize_static(model, calibration, QuantizeConfig(calibration_batches=2))
    export_torchscript(model, directory / "model.pt", example, [], atol=1e9)
    export_seconds = round(time.perf_counter() - started, 1)
    spec = PreprocessSpec((224, 224), 3, tuple(IMAGENET["mean"]), tuple(IMAGENET["std"]))
    recipe = {
        "name": name,
        "archive": {
            "model_name": name,
            "version": "1.0",
            "batch_size": batch_size,
            "max_batch_delay": max_batch_delay,
            "min_workers": AUTO,  # as recipes/digits.yaml: chosen when archived
            "max_workers": AUTO,
            "threads": AUTO,
        },
    }
    write_artifact(
        directory,
        classes=[f"class_{i:03d}" for i in range(1000)],
        handler=HandlerSettings(spec=spec, topk=5, quantized=int8),
        metrics={
            "role": "benchmark",
            "params": params,
            "random_weights": True,
            "export_seconds": export_seconds,
        },
        recipe=recipe,
    )
    return directory


def photo_jpegs(count: int, size: tuple[int, int], quality: int = 90, seed: int = 0) -> list[bytes]:
    """``count`` photo-like RGB JPEGs of ``size`` (width, height): a blurred gradient scene
    with shapes and per-pixel noise, so they compress like photographs, not like flat art."""
    generator = torch.Generator().manual_seed(seed)
    width, height = size
    images = []
    for _ in range(count):
        low = torch.rand(3, 6, 8, generator=generator)
        scene = torch.nn.functional.interpolate(
            low[None], size=(height, width), mode="bicubic", align_corners=False
        )[0]
        pixels = (scene.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
        image = Image.fromarray(pixels, "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = (torch.rand(2, generator=generator) * torch.tensor([width, height])).tolist()
            w, h = (torch.rand(2, generator=generator) * torch.tensor([width, height]) / 3).tolist()
            colour = tuple(int(c) for c in torch.randint(0, 256, (3,), generator=generator))
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        image = image.filter(ImageFilter.GaussianBlur(1.2))
        noise = torch.randint(-12, 13, (height, width, 3), generator=generator)
        noisy = (torch.from_numpy(np.array(image)).int() + noise).clamp(0, 255)
        buffer = io.BytesIO()
        Image.fromarray(noisy.byte().numpy(), "RGB").save(buffer, "JPEG", quality=quality)
        images.append(buffer.getvalue())
    return images


def _median_seconds(run, repeats: int, min_seconds: float) -> float:
    """Median wall time of ``run()`` over at least ``repeats`` calls and ``min_seconds``."""
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < repeats or time.perf_counter() - started < min_seconds:
        clock = time.perf_counter()
        run()
        samples.append(time.perf_counter() - clock)
        if len(samples) >= 10 * repeats:
            break
    return statistics.median(samples)


def model_ceiling(
    model_path: Path,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int],
    thread_count: int,
    engine: str = "x86",
    repeats: int = 7,
    min_seconds: float = 1.0,
    workers: int = 1,
) -> dict[str, dict]:
    """Images/s and ms per batch of the model file alone (any format), warmed up at each batch
    size, at ``thread_count`` threads; with ``workers`` > 1, that many such processes running in
    parallel (images/s times ``workers``; ``ms_per_batch`` one process's time over them)."""
    torch.backends.quantized.engine = engine
    out = {}
    with threads(thread_count), torch.inference_mode():
        model = load_runtime(model_path, threads=thread_count)
        for batch in batch_sizes:
            example = torch.rand(batch, *input_shape)
            for _ in range(3):  # TorchScript's profiling executor specialises on the first calls
                model(example)
            seconds = _median_seconds(lambda x=example: model(x), repeats, min_seconds)
            out[str(batch)] = {
                "ms_per_batch": round(seconds * 1000 / workers, 3),
                "images_per_s": round(batch * workers / seconds, 2),
            }
            if workers > 1:
                out[str(batch)].update(workers=workers, threads=thread_count)
    return out


def served_model_ceiling(
    archive: Path, model_path: Path, input_shape: Sequence[int], batch_sizes: Sequence[int]
) -> dict[str, dict]:
    """The model ceiling of ``archive`` as served: at its threads, times the workers it runs in
    parallel (at most cores ÷ threads)."""
    cores = len(os.sched_getaffinity(0))
    serving = archive_serving(archive)
    threads_each = serving["threads"] or max(1, cores // serving["workers"])
    parallel = max(1, min(serving["workers"], cores // threads_each))
    return model_ceiling(model_path, input_shape, batch_sizes, threads_each, workers=parallel)


def handler_ceiling(
    archive: Path,
    payloads: Sequence[bytes],
    batch_sizes: Sequence[int],
    workdir: Path,
    repeats: int = 5,
    min_seconds: float = 1.0,
) -> dict[str, dict]:
    """Inputs/s of our handler core in process (decode, preprocess, forward, top-k: what a
    worker runs per batch, less TorchServe's protocol), with the archive's threads, times the
    workers its model-config runs in parallel (at most cores ÷ threads): ``ms_per_batch`` is one
    worker's time over that count. Either task (its adapter from the archive); the batches
    take the payloads in turn (up to 32 distinct batches), so that texts of every length
    count."""
    out = {}
    previous = torch.get_num_threads()
    with zipfile.ZipFile(archive) as mar:
        mar.extractall(workdir / "unpacked")
    unpacked = workdir / "unpacked"
    config = yaml.safe_load((unpacked / "model-config.yaml").read_text())
    settings = HandlerSettings.from_dict(config["handler"])
    workers_configured = archive_workers(archive)  # 'auto': one per core here
    threads = serve_threads(settings.threads, workers_configured)
    manifest = json.loads((unpacked / "MAR-INF" / "MANIFEST.json").read_text())
    serialized = manifest["model"]
    mapping = json.loads((unpacked / "index_to_name.json").read_text())
    for batch in batch_sizes:
        if settings.quantized:
            torch.backends.quantized.engine = settings.engine
        torch.set_num_threads(threads)
        model = load_runtime(unpacked / serialized["serializedFile"], threads=threads)
        adapter = make_adapter(task_of(manifest), settings, mapping, unpacked, None)
        core = HandlerCore(adapter, adapter.bind(model) if hasattr(adapter, "bind") else model)
        workers = max(1, min(workers_configured, usable_cores() // threads))
        count = max(1, min(32, len(payloads) // batch))
        batches = [
            [Request({"body": payloads[(k * batch + i) % len(payloads)]}) for i in range(batch)]
            for k in range(count)
        ]
        for _ in range(2):
            answers = core.handle(batches[0])
        refused = [a for a in answers if a.status != 200]
        if refused:  # a ceiling that timed refusals would be no ceiling
            raise RuntimeError(
                f"the handler refused {len(refused)} of {len(answers)} bench payloads: "
                f"{refused[0].status} {refused[0].message}"
            )

        def every_batch(c=core, b=batches) -> None:
            for requests in b:
                c.handle(requests)

        seconds = _median_seconds(every_batch, repeats, min_seconds) / count
        out[str(batch)] = {
            "ms_per_batch": round(seconds * 1000 / workers, 3),
            "images_per_s": round(batch * workers / seconds, 2),
            "one_worker_ms_per_batch": round(seconds * 1000, 3),
            "workers": workers,
            "threads": threads,
        }
        torch.set_num_threads(previous)
    return out
