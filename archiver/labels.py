"""The archive's labels, checked against the model they will name: every label a string (numbers
converted, anything else refused) and one for each of the model's outputs, counted by running the
model file once on its task's typical input in its own runtime (in ``archiver.model_probe``'s
fresh process: the caller's thread pools stay unstarted, so a caller that forks later cannot
deadlock in them)."""

from __future__ import annotations

from pathlib import Path

import torch

from distillserve.errors import ArchiveError
from distillserve.handlers.classification import HandlerSettings, checked_labels
from distillserve.handlers.runtimes import load_runtime

__all__ = ["archive_labels", "outputs_here"]


def outputs_here(model_path: Path, handler: HandlerSettings) -> int:
    """Logits per input of the model file at ``model_path``, run in this process."""
    if handler.is_text:
        from distillserve.handlers.text_task import TextClassification

        adapter = TextClassification(handler, {}, model_path.parent)
    else:
        from distillserve.handlers.image_task import ImageClassification

        adapter = ImageClassification(handler, {})
    if handler.quantized:
        torch.backends.quantized.engine = handler.engine
    torch.set_num_threads(1)
    model = load_runtime(model_path, threads=1)
    with torch.inference_mode():
        logits = model(adapter.example(1))
    return int((logits[0] if isinstance(logits, tuple) else logits).shape[-1])


def archive_labels(mapping: object, outputs: int, model_path: Path) -> dict[str, str]:
    """``index_to_name.json`` as the archive will carry it, one label for each of the
    ``outputs`` of the model at ``model_path``, or ``ArchiveError`` in one line."""
    try:
        labels = checked_labels(mapping)
        return checked_labels(labels, outputs)
    except ValueError as err:
        raise ArchiveError(f"{model_path.parent / 'index_to_name.json'}: {err}") from None
