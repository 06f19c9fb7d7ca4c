"""TorchServe handler for fp32 or int8 text classifiers built by distillserve: the handler core
(``core_handler.CoreHandler``, ``core.HandlerCore``) with the text adapter
(``text_task.TextClassification``), whose tokenizer file is verified against build-info.json
before it is read.

The module name is deliberately unlike TorchServe's built-in ``text_classifier`` (a file of that
name would shadow it); it defines exactly one class, as TorchServe requires.
"""

from __future__ import annotations

try:  # inside this repository
    from .classification import verify_checksum
    from .core_handler import CoreHandler
    from .text_task import TextClassification
except ImportError:  # inside a .mar, where the helpers sit flat at the archive root
    from classification import verify_checksum
    from core_handler import CoreHandler
    from text_task import TextClassification


class DistillTextClassifierHandler(CoreHandler):
    """Batch text classification with per-request errors."""

    def make_adapter(self, settings, mapping, device) -> TextClassification:
        verify_checksum(self.model_dir, settings.spec.tokenizer)
        return TextClassification(settings, mapping, self.model_dir, device)

    def bind(self, model):
        return self.adapter.bind(model)
