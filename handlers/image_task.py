"""The image-classification task adapter of the handler core (``core.TaskAdapter``).

decode     a plain request's image (raw bytes, multipart, base64 JSON) -> one ``Pixels`` item;
           a v2 ``BYTES`` input -> one ``Pixels`` per image file, a v2 ``FP32`` input
           ``[N, C, H, W]`` (already normalised) -> N ``Normalised`` rows
collate    every image preprocessed at once (the build's own ``imageprep.preprocess``), rows in
           request order, one batch tensor
prepare    every row of the batch ranked at once (top-k probabilities and class indices)
answer     top-k ``{label: probability}``; over v2 ``probabilities`` (FP32) and ``labels``
           (BYTES), both ``[N, k]``

Ships inside every .mar; imports flat there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

try:  # inside this repository
    from . import arrays, imageprep, kserve_v2, payloads
    from .classification import HandlerSettings, labelled, ranked, ranked_v2_outputs
    from .core import Request, V2Output
except ImportError:  # inside a .mar, where the helpers sit flat at the archive root
    import arrays
    import imageprep
    import kserve_v2
    import payloads
    from classification import HandlerSettings, labelled, ranked, ranked_v2_outputs
    from core import Request, V2Output

__all__ = ["ImageClassification", "Normalised", "Pixels"]


@dataclass(frozen=True)
class Pixels:
    """A decoded image (uint8 ``C x H x W``), to be preprocessed with the batch."""

    image: object  # torch.Tensor, or np.ndarray on a host without torch


@dataclass(frozen=True)
class Normalised:
    """One row of model input a client sent already normalised (v2 FP32)."""

    row: object  # torch.Tensor, or np.ndarray on a host without torch


class ImageClassification:
    """Images in, top-k labels out, for a model of ``settings`` with labels ``mapping``."""

    decode_metric = "ImageDecodeTime"

    def __init__(
        self,
        settings: HandlerSettings,
        mapping: dict[str, str],
        device=None,
    ) -> None:
        self.settings = settings
        self.spec = settings.spec
        self.mapping = mapping
        self.device = device  # a torch.device; None: the CPU

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.spec.channels, *self.spec.image_size)

    def _image(self, encoded: bytes) -> Pixels:
        return Pixels(
            imageprep.decode_image(
                encoded, self.spec.channels, self.settings.limits, self.spec.image_size
            )
        )

    def decode(self, request: Request) -> list:
        return [self._image(payloads.request_bytes(request.payload, request.content_type))]

    def decode_v2(self, tensor: kserve_v2.V2Tensor) -> list:
        if tensor.datatype == "BYTES":  # image files; all of the request's images, or none
            encoded = [kserve_v2.bytes_element(v, tensor.binary) for v in tensor.values]
            return [self._image(e) for e in encoded]
        shape = list(self.input_shape)
        if tensor.shape[-3:] != shape or len(tensor.shape) not in (3, 4):
            raise imageprep.InputError(
                f"v2 FP32 input must have shape [N, {', '.join(map(str, shape))}]"
            )
        return [Normalised(row) for row in tensor.values.reshape(-1, *shape)]

    def collate(self, items: Sequence):
        images = [i.image for i in items if isinstance(i, Pixels)]
        pixels = imageprep.preprocess(images, self.spec) if images else None
        if len(images) == len(items):  # images only, the usual batch: already in order
            return arrays.to_device(pixels, self.device)
        rows, taken = [], iter(pixels if pixels is not None else [])
        for item in items:
            rows.append(next(taken) if isinstance(item, Pixels) else item.row)
        return arrays.to_device(arrays.stack(rows), self.device)

    def empty(self):
        return arrays.to_device(arrays.empty((0, *self.input_shape)), self.device)

    def example(self, batch_size: int):
        """Model input of ``batch_size`` zeros, for warming the model up."""
        return arrays.to_device(arrays.zeros((batch_size, *self.input_shape)), self.device)

    def prepare_outputs(self, logits) -> tuple:
        """Every row's top-k probabilities and class indices, ranked in one call."""
        return ranked(logits, self.settings.topk)

    def answer(self, rows: tuple) -> dict[str, float]:
        return labelled(*rows, self.mapping)[0]

    def v2_outputs(self, rows: tuple) -> list[V2Output]:
        return ranked_v2_outputs(*rows, self.mapping)

    def describe(self) -> dict:
        """The model's v2 inputs and outputs, with the normalisation an FP32 input must have."""
        spec, k = self.spec, self.settings.topk
        return {
            "inputs": [
                {"name": "images", "datatype": "BYTES", "shape": [-1]},
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [-1, *self.input_shape],
                    "parameters": {
                        "normalisation": "(pixel / 255 - mean) / std, per channel",
                        "mean": list(spec.mean),
                        "std": list(spec.std),
                    },
                },
            ],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, k]},
                {"name": "labels", "datatype": "BYTES", "shape": [-1, k]},
            ],
            "labels": len(self.mapping),
        }
