"""TorchServe handler for fp32 or int8 image classifiers built by distillserve: the handler
core (``core_handler.CoreHandler``, ``core.HandlerCore``) with the image adapter
(``image_task.ImageClassification``).

The module name is deliberately unlike TorchServe's built-ins (a file named
``image_classifier.py`` would shadow one); it defines exactly one class, as TorchServe requires.
"""

from __future__ import annotations

try:  # inside this repository
    from .core_handler import CoreHandler
except ImportError:  # inside a .mar, where the helpers sit flat at the archive root
    from core_handler import CoreHandler


class DistillClassifierHandler(CoreHandler):
    """Batch image classification with per-request errors."""

    task = "image-classification"
