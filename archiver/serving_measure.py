"""Measure a model for ``archive.min_workers/max_workers/threads: auto`` when its archive is
built, and resolve them by the policy (``handlers.serving_policy``, the rule and its reasons).

Measured on the build host, at the archive's batch size: one batch's forward pass at one thread
and at every core, and one input's decoding in the shipped handler's own code (an image's decode
and preprocessing; a text's checks and tokenizing), in the fresh Python process of
``archiver.model_probe``.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from PIL import Image

from distillserve.errors import ArchiveError
from distillserve.handlers import imageprep
from distillserve.handlers.classification import HandlerSettings
from distillserve.handlers.runtimes import load_runtime
from distillserve.handlers.serving_policy import Measured, ServingChoice, choose, usable_cores
from distillserve.students.measure import latency_ms, threads
from distillserve.students.recipe_sections import ArchiveConfig

__all__ = ["measure_here", "resolve"]


def resolve(config: ArchiveConfig, measured: Measured | None) -> ServingChoice | None:
    """The choice for an archive whose section says ``auto`` somewhere (None otherwise), from
    the model's timings (``model_probe.probe``, asked for when ``config.is_auto``)."""
    if not config.is_auto:
        return None
    if measured is None:
        raise ArchiveError("archive workers/threads 'auto' need the model measured")
    return choose(config.min_workers, config.max_workers, config.threads, measured)


def measure_here(model_path: Path, handler: HandlerSettings, batch_size: int) -> Measured:
    """One batch's forward pass at one thread and at every core, and one input's decoding,
    timed in this process (``model_probe``'s fresh one)."""
    cores = usable_cores()  # a build container's CPU limit counts
    if handler.quantized:
        torch.backends.quantized.engine = handler.engine
    if handler.is_text:
        example, decoder = _text_work(model_path, handler, batch_size)
    else:
        spec = handler.spec
        example = torch.zeros((batch_size, spec.channels, *spec.image_size))
        decoder = _decoder(_sample_image(spec), handler)
    with threads(1):
        model = load_runtime(model_path, threads=1)
        one = latency_ms(model, example, warmup=3, repeats=15)
    with threads(cores):
        model = load_runtime(model_path, threads=cores)
        every = latency_ms(model, example, warmup=3, repeats=15)
    with threads(1):
        decode = latency_ms(decoder, None, warmup=3, repeats=30)
    return Measured(cores, batch_size, round(one, 4), round(every, 4), round(decode, 4))


def _decoder(payload: bytes, handler: HandlerSettings):
    """A callable that decodes and preprocesses ``payload`` as the shipped handler does."""
    spec = handler.spec

    def run(_: None) -> torch.Tensor:
        image = imageprep.decode_image(payload, spec.channels, handler.limits, spec.image_size)
        return imageprep.preprocess([image], spec)

    return run


def _text_work(model_path: Path, handler: HandlerSettings, batch_size: int) -> tuple:
    """A typical batch of token ids, and a callable that checks and tokenizes one text as the
    shipped handler does (its tokenizer file beside the model)."""
    from distillserve.handlers.core import Request
    from distillserve.handlers.text_task import WARM_UP_TEXT, TextClassification

    adapter = TextClassification(handler, {}, model_path.parent)
    request = Request({"body": WARM_UP_TEXT.encode()})

    def run(_: None):
        return adapter.collate(adapter.decode(request))

    return adapter.example(batch_size), run


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
