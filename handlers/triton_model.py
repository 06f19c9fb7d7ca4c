"""Triton's side of the handler core: the Python-backend model that serves an archive's files.

``distillserve export-triton`` unpacks a signed ``.mar`` as a Triton model version directory,
unchanged, and names this module in ``config.pbtxt`` (``default_model_filename``), so the
signature still covers every file Triton reads. Triton's dynamic batcher forms the batches;
then, for each batch:

  initialize   ``served_model.load`` (the signature, checksum and torch checks, the model in
               its format's runtime, labels, adapter, core), warm-up at the batch size;
  execute      each request's input tensor (``images`` or ``input`` for an image model,
               ``text`` for a text model) to ``core.Request``; decode, one forward pass,
               then each request its own response: its output tensors, or its own error
               (``InvalidArgument``, HTTP 400) while its neighbours are answered;
  metrics      the core's metrics as Triton custom metrics (``distillserve_*``) on Triton's
               Prometheus endpoint, beside Triton's own: counters on every increment, gauges
               (the per-batch times and size) sampled, at most once a second each.

Ships inside every .mar; imports flat there (Triton puts the version directory on sys.path).
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import numpy as np

try:  # Triton's stub provides it
    import triton_python_backend_utils as pb_utils
except ImportError:  # anywhere else (TorchServe's worker never imports this module)
    pb_utils = None

try:  # inside this repository
    from . import arrays, core, kserve_v2, served_model
except ImportError:  # inside a .mar, where the helpers sit flat at the archive root
    import arrays
    import core
    import kserve_v2
    import served_model

__all__ = ["TritonPythonModel"]

logger = logging.getLogger(__name__)

_NUMPY = {"FP32": np.float32, "BOOL": np.bool_}

# Each metric update is a round trip from this process to Triton's, on the batch's path: three
# gauges a batch cost a small model about a fifth of the model process's time (measured on the
# digits student). A scrape sees one value in several seconds anyway.
GAUGE_EVERY_S = 1.0


class TritonPythonModel:
    """One model instance (``instance_group`` count of them, each its own process)."""

    def initialize(self, args: dict) -> None:
        model_dir = Path(args["model_repository"]) / args["model_version"]
        config = json.loads(args["model_config"])
        self.name = args["model_name"]
        yaml_config = _yaml(model_dir / "model-config.yaml")
        manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
        instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
        self._families: dict[tuple[str, str, str], object] = {}
        self._metrics: dict[tuple, object] = {}
        self._gauge_due: dict[tuple, float] = {}  # when each gauge may be set again
        self.served = served_model.load(
            model_dir,
            yaml_config,
            manifest,
            workers=instances,
            model_name=self.name,
            metrics=self._add_metric,
        )
        self.inputs = [i["name"] for i in config.get("input", [])]
        self.served.warm_up(int(config.get("max_batch_size") or 1))
        logger.info("loaded %s for Triton", self.served.describe())

    def execute(self, requests: list) -> list:
        handler = self.served.core
        batch = handler.decode([self._request(r) for r in requests])
        try:
            batch = handler.forward(batch)
        except core.ForwardError as err:  # the batch's failure: every request answers 500
            error = pb_utils.TritonError(str(err), pb_utils.TritonError.INTERNAL)
            return [pb_utils.InferenceResponse(output_tensors=[], error=error)] * len(requests)
        return [_response(result) for result in handler.tensors(batch)]

    def _request(self, request) -> core.Request:
        """The request's first input that is present, as the core's decoded v2 tensor (an
        absent one becomes the request's ``InputError`` in the adapter)."""
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                return core.Request({}, {}, request.request_id(), _v2_tensor(name, tensor))
        empty = kserve_v2.V2Tensor("", "BYTES", [0], [], binary=True)
        return core.Request({}, {}, request.request_id(), empty)

    def _add_metric(self, name: str, value: float, unit: str, kind: str, dimensions: dict):
        """The core's metric as a Triton custom metric ``distillserve_<name>_<unit>``: a
        counter's every increment, a gauge's value at most every ``GAUGE_EVERY_S``."""
        counter = kind == "counter"
        key = (name, unit, kind)  # per batch: the family's name is built once
        family = self._families.get(key)
        if family is None:
            family_name = f"distillserve_{_snake(name)}_{unit}" + ("_total" if counter else "")
            kind_of = pb_utils.MetricFamily.COUNTER if counter else pb_utils.MetricFamily.GAUGE
            family = pb_utils.MetricFamily(family_name, f"distillserve {name} ({unit})", kind_of)
            self._families[key] = family
        labels = {"model": self.name, "version": self.served.version, **dimensions}
        metric_key = (key, tuple(sorted(labels.items())))
        metric = self._metrics.get(metric_key)
        if metric is None:
            metric = self._metrics[metric_key] = family.Metric(labels=labels)
        if counter:
            metric.increment(value)
            return
        now = time.monotonic()
        if now >= self._gauge_due.get(metric_key, 0.0):
            metric.set(value)
            self._gauge_due[metric_key] = now + GAUGE_EVERY_S


def _v2_tensor(name: str, tensor) -> kserve_v2.V2Tensor:
    """Triton's input tensor as the core's v2 tensor (BYTES elements raw, FP32 a tensor)."""
    array = tensor.as_numpy()
    if array.dtype == np.object_:
        return kserve_v2.V2Tensor(name, "BYTES", list(array.shape), list(array.ravel()), True)
    values = arrays.from_numpy(np.array(array, dtype=np.float32))  # a copy Triton does not own
    return kserve_v2.V2Tensor(name, "FP32", list(array.shape), values)


def _response(result):
    """One request's response: its output tensors, or its error."""
    if isinstance(result, Exception):
        error = pb_utils.TritonError(str(result), pb_utils.TritonError.INVALID_ARG)
        return pb_utils.InferenceResponse(output_tensors=[], error=error)
    tensors = []
    for output in result:
        if output.datatype == "BYTES":
            array = np.array([str(v).encode() for v in output.values], dtype=np.object_)
        else:
            array = np.asarray(output.values, dtype=_NUMPY[output.datatype])
        shape = output.shape if len(output.shape) > 1 else [*output.shape, 1]  # rows of [1]
        tensors.append(pb_utils.Tensor(output.name, array.reshape(shape)))
    return pb_utils.InferenceResponse(output_tensors=tensors)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _yaml(path: Path) -> dict:
    if not path.exists():
        return {}
    import yaml

    return yaml.safe_load(path.read_text()) or {}
