"""The text-classification task adapter of the handler core (``core.TaskAdapter``).

decode     a plain request's text (raw UTF-8 body, JSON ``{"text"}``/``{"data"}``) -> one
           ``Text`` item; a v2 ``BYTES`` input of N strings -> N items (all of them or none);
           each checked on its own (empty, not UTF-8, over the byte limit, and with
           ``too_long: refuse`` over ``max_length`` tokens)
collate    the whole batch tokenized in one call of the fast tokenizer, padded to its longest
           text (``textprep.encode_batch``)
prepare    every row ranked at once (top-k probabilities and class indices), with its flag
answer     ``{"label", "probabilities" (top-k), "truncated"}``; over v2 ``probabilities`` (FP32)
           and ``labels`` (BYTES), both ``[N, k]``, and ``truncated`` (BOOL, ``[N]``)

The model's output travels with the batch's truncation flags (``bind``), so each answer can say
whether its text was cut. Ships inside every .mar; imports flat there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

try:  # inside this repository
    from . import arrays, kserve_v2, textprep
    from .classification import HandlerSettings, ranked, ranked_v2_outputs
    from .core import Request, V2Output
    from .imageprep import InputError
except ImportError:  # inside a .mar, where the helpers sit flat at the archive root
    import arrays
    import kserve_v2
    import textprep
    from classification import HandlerSettings, ranked, ranked_v2_outputs
    from core import Request, V2Output
    from imageprep import InputError

__all__ = ["Text", "TextBatch", "TextClassification"]

WARM_UP_TEXT = "a warm-up sentence of about average length for this model to run once"


@dataclass(frozen=True)
class Text:
    """One request's text, checked."""

    text: str


@dataclass(frozen=True)
class TextBatch:
    """The batch's token ids ``(N, longest)`` and whether each text was truncated."""

    ids: object  # int64 (N, longest): torch.Tensor, or np.ndarray on a host without torch
    truncated: object  # bool (N,)


class TextClassification:
    """Texts in, the label and top-k probabilities out, for a model of ``settings`` whose
    tokenizer file sits in ``model_dir``."""

    decode_metric = "TextDecodeTime"

    def __init__(
        self,
        settings: HandlerSettings,
        mapping: dict[str, str],
        model_dir: Path,
        device=None,
    ) -> None:
        self.settings = settings
        self.spec: textprep.TextSpec = settings.spec
        self.mapping = mapping
        self.device = device  # a torch.device; None: the CPU
        self.tokenizer = textprep.load_tokenizer(Path(model_dir) / self.spec.tokenizer, self.spec)

    def _checked(self, text: str) -> Text:
        text = textprep.check_text(text, self.spec)
        if self.spec.too_long == "refuse" and textprep.too_long(self.tokenizer, text):
            raise InputError(
                f"text is longer than this model's {self.spec.max_length} tokens "
                "(too_long: refuse)",
                413,
                "TooLong",
            )
        return Text(text)

    def decode(self, request: Request) -> list:
        return [self._checked(textprep.text_of(request.payload, request.content_type, self.spec))]

    def decode_v2(self, tensor: kserve_v2.V2Tensor) -> list:
        if tensor.datatype != "BYTES":
            raise InputError("a text model's v2 input must be BYTES (one UTF-8 string per text)")
        texts = []
        for value in tensor.values:
            if isinstance(value, (bytes, bytearray)):
                value = textprep.utf8_text(bytes(value), self.spec)
            elif not isinstance(value, str):
                raise InputError("v2 BYTES elements must be strings")
            texts.append(self._checked(value))
        return texts

    def collate(self, items: Sequence[Text]) -> TextBatch:
        ids, truncated = textprep.encode_batch(self.tokenizer, [item.text for item in items])
        return TextBatch(arrays.to_device(ids, self.device), arrays.bools(truncated))

    def empty(self) -> TextBatch:
        ids = arrays.to_device(arrays.empty((0, 2), integer=True), self.device)
        return TextBatch(ids, arrays.bools([]))

    def example(self, batch_size: int):
        """Token ids of a typical sentence ``batch_size`` times, for warming the model up."""
        ids, _ = textprep.encode_batch(self.tokenizer, [WARM_UP_TEXT] * batch_size)
        return arrays.to_device(ids, self.device)

    def bind(self, model: Callable) -> Callable:
        """What the core calls: the model on the batch's ids, with its truncation flags."""

        def run(batch: TextBatch) -> tuple:
            return model(batch.ids), batch.truncated

        return run

    def prepare_outputs(self, outputs: tuple) -> tuple:
        """Every row's top-k probabilities and class indices, ranked in one call, with its
        truncation flag."""
        logits, truncated = outputs
        return (*ranked(logits, self.settings.topk), truncated)

    def answer(self, rows: tuple) -> dict:
        values, indices, truncated = rows
        labels = [self.mapping.get(str(i), str(i)) for i in indices[0].tolist()]
        return {
            "label": labels[0],
            "probabilities": {label: round(v, 6) for label, v in zip(labels, values[0].tolist())},
            "truncated": bool(truncated[0]),
        }

    def v2_outputs(self, rows: tuple) -> list[V2Output]:
        values, indices, truncated = rows
        flags = [bool(t) for t in truncated.tolist()]
        return [
            *ranked_v2_outputs(values, indices, self.mapping),
            V2Output("truncated", "BOOL", [len(flags)], flags),
        ]

    def describe(self) -> dict:
        """The model's v2 input and outputs, with its text limits."""
        spec, k = self.spec, self.settings.topk
        return {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [-1],
                    "parameters": {
                        "max_length_tokens": spec.max_length,
                        "too_long": spec.too_long,
                        "max_bytes": spec.max_bytes,
                    },
                }
            ],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, k]},
                {"name": "labels", "datatype": "BYTES", "shape": [-1, k]},
                {"name": "truncated", "datatype": "BOOL", "shape": [-1]},
            ],
            "labels": len(self.mapping),
        }
