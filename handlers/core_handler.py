"""TorchServe's side of the handler core: one ``BaseHandler`` subclass that every task's handler
extends with a line (``distill_classifier.DistillClassifierHandler`` for images).

  initialize   ``served_model.load``: verify every file of the archive against its signature,
               the model file against build-info.json and the host's torch against the one
               that built it, load the model in its format's runtime, its labels, the task's
               adapter and the core; then warm up at the server's batch size;
  preprocess   ``core.HandlerCore.decode`` on TorchServe's requests;
  inference    ``core.HandlerCore.forward`` (a failed forward pass fails the batch with 500);
  postprocess  ``core.HandlerCore.encode``: each answer's status and headers are set on its
               request alone (``context.set_response_status``), its body returned.

Settings come from the ``handler:`` section of the archive's model-config.yaml. Ships inside every
.mar; imports flat there.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

try:  # inside this repository
    from . import core, served_model, serving_policy
except ImportError:  # inside a .mar, where the helpers sit flat at the archive root
    import core
    import served_model
    import serving_policy

__all__ = ["CoreHandler"]

logger = logging.getLogger(__name__)


class CoreHandler(BaseHandler):
    """The task-independent TorchServe handler; a task's subclass names its task (``task``,
    one of ``served_model.TASK_OF_HANDLER``'s)."""

    task = "image-classification"

    def initialize(self, context) -> None:
        properties = context.system_properties
        self.model_dir = Path(properties["model_dir"])
        yaml_config = getattr(context, "model_yaml_config", None) or {}
        self.manifest = context.manifest
        served = served_model.load(
            self.model_dir,
            yaml_config,
            self.manifest,
            task=self.task,
            # none in model-config.yaml ('auto'): the server runs one per core of this host
            workers=int(
                yaml_config.get("maxWorkers")
                or yaml_config.get("minWorkers")
                or serving_policy.usable_cores()
            ),
            gpu_id=properties.get("gpu_id"),
            model_name=getattr(context, "model_name", None) or "",
            metrics=self._add_metric,
        )
        self.served = served
        self.settings, self.model, self.mapping = served.settings, served.model, served.mapping
        self.adapter, self.core, self.version = served.adapter, served.core, served.version
        self.device = served.device
        batch_size = int(properties.get("batch_size") or 1)
        # never warm up past the largest batch an archive may ask for (a registration by hand
        # can ask for more: the model then meets larger batches only if they really come)
        self._warm_up(min(batch_size, serving_policy.MAX_BATCH_SIZE))
        logger.info("loaded %s, batch_size=%d", served.describe(), batch_size)
        self.initialized = True

    def _warm_up(self, batch_size: int) -> int:
        """``served_model.ServedModel.warm_up``: the model's number of outputs, each labelled."""
        return self.served.warm_up(batch_size)

    def preprocess(self, data: list[dict]) -> core.Batch:
        requests = [
            core.Request(request, self._headers(idx), self._request_id(idx))
            for idx, request in enumerate(data)
        ]
        return self.core.decode(requests)

    def inference(self, batch: core.Batch) -> core.Batch:
        try:
            return self.core.forward(batch)
        except core.ForwardError as err:
            raise PredictionException(str(err), 500) from err

    def postprocess(self, batch: core.Batch) -> list:
        """Exactly one body per request; each request's status and headers set on it alone."""
        bodies = []
        for idx, answer in enumerate(self.core.encode(batch)):
            if answer.status != 200:
                self.context.set_response_status(answer.status, answer.message, idx)
            for header, value in answer.headers.items():
                if header == "Content-Type":
                    self.context.set_response_content_type(idx, value)
                else:
                    self.context.set_response_header(idx, header, value)
            bodies.append(answer.body)
        return bodies

    def _is_explain(self) -> bool:
        """Never for the whole batch: ``BaseHandler`` asks request 0 alone and would send every
        request to ``explain_handle``; the core answers each explanation request with its own
        501 and its neighbours as usual."""
        return False

    def describe_handle(self) -> dict:
        """What ``GET /models/{name}?customized=true`` shows as ``customizedMetadata``."""
        return {"platform": self.model.platform, **self.adapter.describe()}

    def _request_id(self, idx: int) -> str:
        try:
            return self.context.get_request_id(idx) or ""
        except (AttributeError, IndexError, KeyError, TypeError):
            return ""

    def _headers(self, idx: int) -> dict:
        try:
            headers = self.context.get_all_request_header(idx)
        except (AttributeError, IndexError, KeyError, TypeError):
            return {}
        return headers if isinstance(headers, dict) else {}

    def _add_metric(self, name: str, value: float, unit: str, kind: str, dimensions: dict) -> None:
        """Record a model metric (metrics log, or the Prometheus endpoint in prometheus mode)."""
        metrics = getattr(self.context, "metrics", None)
        if metrics is None:
            return
        metrics.add_metric(
            name,
            round(value, 3),
            unit=unit,
            # a fresh list each call, in metrics.yaml's order (ModelName and Level are appended)
            dimensions=[Dimension(k, v) for k, v in dimensions.items()]
            + [Dimension("ModelVersion", self.version)],
            metric_type=MetricTypes(kind),
        )
