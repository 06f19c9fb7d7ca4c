"""The archive's labels, checked against the model they will name: every label a string (numbers
converted, anything else refused) and one for each of the model's outputs, counted by running the
model file once on its task's typical input in its own runtime, in a fresh Python process (the
caller's thread pools stay unstarted: a caller that forks later cannot deadlock in them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from distillserve.errors import ArchiveError
from distillserve.handlers.classification import HandlerSettings, checked_labels
from distillserve.handlers.runtimes import load_runtime

__all__ = ["archive_labels", "model_outputs"]


def model_outputs(model_path: Path, handler: HandlerSettings) -> int:
    """Logits per input of the model file at ``model_path`` (its tokenizer, for text, beside it),
    counted in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-m", __name__, str(model_path), json.dumps(handler.to_dict())],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise ArchiveError(
            f"cannot run {model_path.name} to count its outputs: "
            + (done.stderr.strip().splitlines() or ["no output"])[-1]
        )
    return int(done.stdout.strip().splitlines()[-1])


def _outputs_here(model_path: Path, handler: HandlerSettings) -> int:
    """``model_outputs`` in this process."""
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


def archive_labels(mapping: object, model_path: Path, handler: HandlerSettings) -> dict[str, str]:
    """``index_to_name.json`` as the archive will carry it, or ``ArchiveError`` in one line."""
    try:
        labels = checked_labels(mapping)
        return checked_labels(labels, model_outputs(model_path, handler))
    except ValueError as err:
        raise ArchiveError(f"{model_path.parent / 'index_to_name.json'}: {err}") from None


if __name__ == "__main__":  # model_outputs' subprocess: MODEL_PATH HANDLER_JSON
    settings = HandlerSettings.from_dict(json.loads(sys.argv[2]))
    print(_outputs_here(Path(sys.argv[1]), settings))
