"""TorchServe handler for fp32 or int8 text classifiers built by distillserve: the handler core
(``core_handler.CoreHandler``, ``core.HandlerCore``) with the text adapter
(``text_task.TextClassification``), whose tokenizer file is verified against build-info.json
before it is read.

The module name is deliberately unlike TorchServe's built-in ``text_classifier`` (a file of that
name would shadow it); it defines exactly one class, as TorchServe requires.
"""

from __future__ import annotations

try:  # inside this repository
    from .core_handler import CoreHandler
except ImportError:  # inside a .mar, where the helpers sit flat at the archive root
    from core_handler import CoreHandler


class DistillTextClassifierHandler(CoreHandler):
    """Batch text classification with per-request errors."""

    task = "text-classification"
