"""TorchServe's own floor, for ``distillserve bench``: a handler that answers ``{"ok": 1}`` to
every request of a batch without reading it (no decode, no model). Packed alone into a .mar
(``bench.served.floor_archive``): what it serves under a load is what TorchServe's frontend, its
batching and its Python worker protocol allow, whatever the model. Imports only TorchServe."""

from ts.torch_handler.base_handler import BaseHandler


class NoOpHandler(BaseHandler):
    """Answers every request without decoding it or running anything."""

    def initialize(self, context) -> None:
        self.context = context
        self.initialized = True

    def handle(self, data: list, context) -> list[dict]:
        return [{"ok": 1} for _ in data]
