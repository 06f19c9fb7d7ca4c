"""TorchServe's side of the handler core: one ``BaseHandler`` subclass that every task's handler
extends with a few lines (``distill_classifier.DistillClassifierHandler`` for images).

  initialize   verify every file of the archive against its signature (``integrity``), the
               model file against build-info.json and the host's torch against the
               one that built it, set the quantized engine and thread count, load the model in
               its format's runtime (``runtimes``), read index_to_name.json, make the task
               adapter (``make_adapter``) and the core, warm up at the server's batch size;
  preprocess   ``core.HandlerCore.decode`` on TorchServe's requests;
  inference    ``core.HandlerCore.forward`` (a failed forward pass fails the batch with 500);
  postprocess  ``core.HandlerCore.encode``: each answer's status and headers are set on its
               request alone (``context.set_response_status``), its body returned.

Settings come from the ``handler:`` section of the archive's model-config.yaml. Ships inside every
.mar; imports flat there.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

try:  # inside this repository
    from . import classification, core, integrity, runtimes, serving_policy
except ImportError:  # inside a .mar, where the helpers sit flat at the archive root
    import classification
    import core
    import integrity
    import runtimes
    import serving_policy

__all__ = ["CoreHandler"]

logger = logging.getLogger(__name__)


class CoreHandler(BaseHandler):
    """The task-independent TorchServe handler; a task's subclass says how to make its
    adapter (``make_adapter``)."""

    def make_adapter(self, settings, mapping: dict[str, str], device: torch.device):
        """The task adapter (``core.TaskAdapter``) for this model (``self.model_dir`` holds
        the archive's files)."""
        raise NotImplementedError

    def bind(self, model):
        """What the core calls on a collated batch: the model itself, unless the task's
        batches carry more than the model's input."""
        return model

    def initialize(self, context) -> None:
        properties = context.system_properties
        model_dir = self.model_dir = Path(properties["model_dir"])
        logger.info("archive files: %s", integrity.check_model_dir(model_dir))
        yaml_config = getattr(context, "model_yaml_config", None) or {}
        self.settings = classification.HandlerSettings.from_dict(yaml_config.get("handler", {}))
        self.manifest = context.manifest
        serialized = self.manifest["model"].get("serializedFile", "model.pt")
        classification.verify_checksum(model_dir, serialized)
        model_format = runtimes.format_of(serialized)
        classification.check_torch_version(model_dir, torch.__version__, model_format)
        self.version = str(self.manifest["model"].get("modelVersion", ""))
        if self.settings.quantized:
            supported = torch.backends.quantized.supported_engines
            if self.settings.engine not in supported:
                raise RuntimeError(
                    f"quantized engine {self.settings.engine!r} is not supported by this torch "
                    f"build (supported: {', '.join(supported)}); rebuild with one of them"
                )
            torch.backends.quantized.engine = self.settings.engine
        workers = int(yaml_config.get("maxWorkers") or yaml_config.get("minWorkers") or 1)
        threads = serving_policy.serve_threads(self.settings.threads, workers)
        torch.set_num_threads(threads)
        use_cuda = (
            model_format == "torchscript"  # the compiled .pt2 and the ONNX session are CPU ones
            and not self.settings.quantized
            and torch.cuda.is_available()
            and properties.get("gpu_id") is not None
        )
        self.device = torch.device(f"cuda:{properties['gpu_id']}" if use_cuda else "cpu")
        self.model = runtimes.load_runtime(model_dir / serialized, self.device, threads)
        labels = json.loads((model_dir / "index_to_name.json").read_text())
        self.mapping = classification.checked_labels(labels)
        self.adapter = self.make_adapter(self.settings, self.mapping, self.device)
        name = getattr(context, "model_name", None) or self.manifest["model"].get("modelName", "")
        self.core = core.HandlerCore(
            self.adapter,
            self.bind(self.model),
            model_name=name,
            model_version=self.version,
            metrics=self._add_metric,
        )
        batch_size = int(properties.get("batch_size") or 1)
        # never warm up past the largest batch an archive may ask for (a registration by hand
        # can ask for more: the model then meets larger batches only if they really come)
        outputs = self._warm_up(min(batch_size, serving_policy.MAX_BATCH_SIZE))
        classification.checked_labels(labels, outputs)  # every output has a label
        logger.info(
            "loaded %s (%s, %s, engine=%s, threads=%d, device=%s, batch_size=%d)",
            serialized,
            model_format,
            "int8" if self.settings.quantized else "fp32",
            torch.backends.quantized.engine,
            threads,
            self.device,
            batch_size,
        )
        self.initialized = True

    def _warm_up(self, batch_size: int) -> int:
        """Run the model at batch 1 and at the server's batch size, and return its number of
        outputs (logits per input): TorchScript's profiling executor specialises on the first
        calls of each input shape, which are slow (and the other runtimes allocate their
        buffers)."""
        outputs = 0
        with torch.inference_mode():
            for size in sorted({1, batch_size}):
                example = self.adapter.example(size)
                for _ in range(max(1, self.settings.warmup_iterations)):
                    logits = self.model(example)
                    outputs = int((logits[0] if isinstance(logits, tuple) else logits).shape[-1])
        return outputs

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
