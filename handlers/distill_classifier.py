"""TorchServe handler for fp32 or int8 image classifiers built by distillserve.

Lifecycle:
  initialize  verify the model file against build-info.json, set the quantized engine and thread
              count, load the model in its format's runtime (TorchScript ``.pt``, AOTInductor
              ``.pt2``, ONNX Runtime ``.onnx``: ``runtimes``), read index_to_name.json, warm up
              at the batch size.
  preprocess  decode every request of the batch on its own (an image as raw bytes, multipart or
              base64 JSON; or a KServe v2 request of N images or N input tensors); a bad one
              gets its own 4xx, the good ones are stacked into one tensor.
  inference   one forward pass for the whole batch.
  postprocess one ``{label: probability}`` top-k dict (or one v2 response) per request, in order.

Settings come from the ``handler:`` section of the archive's model-config.yaml. The module name is
deliberately unlike TorchServe's built-ins (a file named ``image_classifier.py`` would shadow one).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

try:  # inside this repository
    from . import classification, imageprep, kserve_v2, payloads, runtimes
except ImportError:  # inside a .mar, where the helpers sit flat at the archive root
    import classification
    import imageprep
    import kserve_v2
    import payloads
    import runtimes

logger = logging.getLogger(__name__)


class DistillClassifierHandler(BaseHandler):
    """Batch image classification with per-request errors; see the module docstring."""

    def initialize(self, context) -> None:
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
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
        threads = classification.thread_count(self.settings.threads, workers)
        torch.set_num_threads(threads)

        use_cuda = (
            model_format == "torchscript"  # the compiled .pt2 and the ONNX session are CPU ones
            and not self.settings.quantized
            and torch.cuda.is_available()
            and properties.get("gpu_id") is not None
        )
        self.device = torch.device(f"cuda:{properties['gpu_id']}" if use_cuda else "cpu")
        self.model = runtimes.load_runtime(model_dir / serialized, self.device, threads)
        self.mapping = json.loads((model_dir / "index_to_name.json").read_text())

        batch_size = int(properties.get("batch_size") or 1)
        self._warm_up(batch_size)
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

    def _warm_up(self, batch_size: int) -> None:
        """Run the model at batch 1 and at the server's batch size: TorchScript's profiling
        executor specialises on the first calls of each input shape, which are slow (and the
        other runtimes allocate their buffers)."""
        spec = self.settings.spec
        with torch.inference_mode():
            for size in sorted({1, batch_size}):
                example = torch.zeros((size, spec.channels, *spec.image_size), device=self.device)
                for _ in range(self.settings.warmup_iterations):
                    self.model(example)

    def preprocess(self, data: list[dict]) -> dict:
        """Decode each request on its own; stack every usable image into one batch tensor.

        A plain request carries one image; a KServe v2 request carries a tensor of N base64
        images (BYTES) or N model inputs (FP32). ``rows[idx]`` is the slice of the batch that
        belongs to request ``idx``; ``errors[idx]`` the ``InputError`` of a request refused.
        """
        started = time.perf_counter()
        inputs, errors, v2 = {}, {}, {}
        images: list[torch.Tensor] = []  # every decoded image of the batch, preprocessed at once
        for idx, request in enumerate(data):
            try:
                inputs[idx] = self._request_input(request, idx, v2, images)
            except imageprep.InputError as err:
                errors[idx] = err
            except Exception as err:  # the safety net: one request, never its batch
                errors[idx] = self._unreadable(idx, err)
        spec = self.settings.spec
        pixels = imageprep.preprocess(images, spec)
        parts, rows, offset = [], {}, 0
        for idx, item in inputs.items():
            part = pixels[item[0] : item[0] + item[1]] if isinstance(item, tuple) else item
            parts.append(part)
            rows[idx] = (offset, offset + len(part))
            offset += len(part)
        batch = torch.cat(parts) if parts else torch.empty((0, spec.channels, *spec.image_size))
        self._add_metric("ImageDecodeTime", (time.perf_counter() - started) * 1000, "ms")
        return {
            "batch": batch.to(self.device),
            "rows": rows,
            "errors": errors,
            "v2": v2,
            "size": len(data),
        }

    def _unreadable(self, idx: int, err: BaseException) -> imageprep.InputError:
        """An exception no decoding step foresaw, kept to its own request: logged with its
        traceback (it marks a missing guard) and answered 400, or 413 for memory."""
        logger.error("request %d of the batch could not be read", idx, exc_info=err)
        if isinstance(err, MemoryError):
            return imageprep.InputError("request is too large to read", 413, "TooLarge")
        return imageprep.InputError(
            f"request could not be read ({type(err).__name__})", 400, "UnreadableRequest"
        )

    def _request_input(
        self, request: dict, idx: int, v2: dict, images: list[torch.Tensor]
    ) -> tuple[int, int] | torch.Tensor:
        """Decode one request (raises ``InputError``): its images are appended to ``images`` and
        their ``(start, count)`` there returned; a v2 FP32 request returns its input tensor."""
        channels, limits = self.settings.spec.channels, self.settings.limits
        headers = self._headers(idx)
        request_v2 = kserve_v2.v2_payload(request, headers)
        if request_v2 is None:
            key, _ = payloads.body_of(request)
            encoded = [payloads.request_bytes(request, payloads.content_type_of(headers, key))]
        else:
            answer_as = (kserve_v2.v2_request_id(request_v2.body), request_v2.binary_output)
            kind, value = kserve_v2.parse_v2_inputs(request_v2, self.settings.spec)
            if kind == "tensor":
                v2[idx] = answer_as
                return value
            encoded = value
        size = self.settings.spec.image_size
        # all of the request's images, or none
        decoded = [imageprep.decode_image(b, channels, limits, size) for b in encoded]
        if request_v2 is not None:
            v2[idx] = answer_as
        images.extend(decoded)
        return (len(images) - len(decoded), len(decoded))

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

    def inference(self, prepared: dict) -> dict:
        """One forward pass over every usable image of the batch. A failure here is the model's,
        not a request's: it is logged and fails the batch with 500."""
        logits = None
        if len(prepared["batch"]):
            started = time.perf_counter()
            try:
                with torch.inference_mode():
                    logits = self.model(prepared["batch"]).cpu()
            except Exception as err:
                logger.exception("forward pass failed on a batch of %d", len(prepared["batch"]))
                raise PredictionException(f"model forward pass failed: {err}", 500) from err
            self._add_metric("ForwardTime", (time.perf_counter() - started) * 1000, "ms")
        self._add_metric("BatchSize", prepared["size"], "count")
        return {**prepared, "logits": logits}

    def postprocess(self, predicted: dict) -> list:
        """Exactly one entry per request: top-k dict, v2 response, or that request's JSON error."""
        answers: list = [None] * predicted["size"]
        model = self.manifest["model"]
        name = getattr(self.context, "model_name", None) or model.get("modelName", "")
        for idx, (start, stop) in predicted["rows"].items():
            logits = predicted["logits"][start:stop]
            if idx not in predicted["v2"]:
                top = classification.topk_answers(logits, self.mapping, self.settings.topk)
                answers[idx] = top[0]
                continue
            request_id, binary = predicted["v2"][idx]
            answers[idx] = kserve_v2.v2_response(
                request_id or self._request_id(idx),
                name,
                self.version,
                logits,
                self.mapping,
                self.settings.topk,
                binary=binary,
            )
            if binary:  # the JSON header, then the raw outputs
                answers[idx], header_length = answers[idx]
                self.context.set_response_content_type(idx, "application/octet-stream")
                self.context.set_response_header(idx, kserve_v2.HEADER_LENGTH, str(header_length))
        for idx, err in predicted["errors"].items():
            self.context.set_response_status(err.status, str(err), idx)
            self._add_metric("RejectedInputs", 1, "count", "counter", Reason=err.kind)
            answers[idx] = err.to_body()
        return answers

    def describe_handle(self) -> dict:
        """What ``GET /models/{name}?customized=true`` shows as ``customizedMetadata``: the
        model's KServe v2 inputs and outputs, with the normalisation an FP32 input must have."""
        spec = self.settings.spec
        return {
            "platform": self.model.platform,
            "inputs": [
                {"name": "images", "datatype": "BYTES", "shape": [-1]},
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [-1, spec.channels, *spec.image_size],
                    "parameters": {
                        "normalisation": "(pixel / 255 - mean) / std, per channel",
                        "mean": list(spec.mean),
                        "std": list(spec.std),
                    },
                },
            ],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, self.settings.topk]},
                {"name": "labels", "datatype": "BYTES", "shape": [-1, self.settings.topk]},
            ],
            "labels": len(self.mapping),
        }

    def _add_metric(
        self, name: str, value: float, unit: str, kind: str = "gauge", **dimensions: str
    ) -> None:
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
