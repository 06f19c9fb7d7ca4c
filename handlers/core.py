"""The task-independent handler core: requests in, one answer per request out.

Lifecycle of one batch (``HandlerCore``), whatever the task:

  decode   each request on its own: a KServe v2 request (its first input tensor, ``kserve_v2``)
           or a plain one; the task adapter turns it into model-input items, or raises
           ``InputError`` for that request alone (anything unforeseen becomes its 400; an
           explanation request gets its 501: explanations are not implemented); the adapter
           collates every item of the batch into one model input;
  forward  one forward pass; the adapter prepares what the answers are read from, once for
           the batch (a classifier's top-k of every row);
  encode   the outputs are split back per request in order; the adapter answers each (plain
           JSON, or v2 outputs the core encodes as JSON or binary); a refused request gets its
           JSON error with its status. Exactly one answer per request, checked.

A task adapter (``TaskAdapter``) knows only its task: decode a request's payload into items,
collate items into a batch, prepare the batch's outputs, answer one request's rows of them.
The core owns request parsing, per-request errors, batching, v2, metrics and the answer count.
It imports nothing from TorchServe, so any server (TorchServe's ``BaseHandler``, Triton) can
drive it.

Ships inside every .mar; imports flat there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

try:  # inside this repository
    from . import arrays, kserve_v2, payloads
    from .imageprep import InputError
except ImportError:  # inside a .mar, where the helpers sit flat at the archive root
    import arrays
    import kserve_v2
    import payloads
    from imageprep import InputError

__all__ = [
    "Answer",
    "Batch",
    "ForwardError",
    "HandlerCore",
    "Request",
    "TaskAdapter",
    "V2Output",
]

logger = logging.getLogger(__name__)
# record(name, value, unit, kind, dimensions): how the core reports a metric to its server
MetricSink = Callable[[str, float, str, str, dict], None]


@dataclass(frozen=True)
class Request:
    """One request as the server hands it over: TorchServe's per-request dict (``data`` or
    ``body``), its headers, and the server's id for it."""

    payload: dict
    headers: dict = field(default_factory=dict)
    request_id: str = ""
    # a v2 input already decoded by the server (Triton hands its model tensors, not bodies)
    tensor: kserve_v2.V2Tensor | None = None

    @property
    def wants_explanation(self) -> bool:
        """Whether it came to ``/explanations/{m}`` or v2 ``.../explain`` (TorchServe sets the
        header ``explain: True`` on each such request, ``False`` on the others)."""
        value = self.headers.get("explain", "")
        return (value.decode() if isinstance(value, bytes) else str(value)) == "True"

    @property
    def body(self) -> tuple[str | None, Any]:
        """``(key, value)`` of the payload's body (``payloads.body_of``)."""
        return payloads.body_of(self.payload)

    @property
    def content_type(self) -> str | None:
        key, _ = self.body
        return payloads.content_type_of(self.headers, key)


@dataclass(frozen=True)
class V2Output:
    """One output tensor of a v2 answer: ``values`` flat, row-major."""

    name: str
    datatype: str  # FP32 | BYTES
    shape: list[int]
    values: list


@dataclass(frozen=True)
class Answer:
    """One request's answer: its body (JSON-able, or bytes for a binary v2 answer), status,
    and the headers to set (content type, the v2 binary header length)."""

    body: Any
    status: int = 200
    message: str = "OK"
    kind: str = ""  # the rejection reason for a refused request (metrics)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Batch:
    """A batch between the steps: what each request decoded to, and the model's outputs."""

    size: int
    items: dict[int, list] = field(default_factory=dict)  # request index -> its items
    errors: dict[int, InputError] = field(default_factory=dict)
    v2: dict[int, tuple[str, bool]] = field(default_factory=dict)  # index -> (id, binary)
    request_ids: dict[int, str] = field(default_factory=dict)
    inputs: Any = None  # every item collated into one model input, in order
    count: int = 0  # how many items (rows) that is
    outputs: Any = None  # the model's outputs for every item, in order (``prepare_outputs``)


class ForwardError(RuntimeError):
    """The model's forward pass failed: the batch's failure, not a request's."""


class TaskAdapter(Protocol):
    """What a task tells the core. Items are whatever ``collate`` turns into model input."""

    decode_metric: str  # the metric that times ``decode``

    def decode(self, request: Request) -> list:
        """A plain request's items (usually one); ``InputError`` for a bad request."""

    def decode_v2(self, tensor: kserve_v2.V2Tensor) -> list:
        """A v2 request's first input tensor as items; ``InputError`` when it does not fit."""

    def collate(self, items: Sequence) -> Any:
        """Every item of the batch, in order, as one model input (rows follow items)."""

    def empty(self) -> Any:
        """The model input of a batch with no usable item."""

    def prepare_outputs(self, outputs: Any) -> Any:
        """What the answers are read from, made once for the whole batch's outputs (rows still
        follow items): a classifier ranks every row in one call instead of one per request."""

    def answer(self, rows: Any) -> Any:
        """A plain request's answer from its rows of the model's output."""

    def v2_outputs(self, rows: Any) -> list[V2Output]:
        """A v2 request's outputs from its rows of the model's output."""


class HandlerCore:
    """Decode, forward and encode a batch for one model through a task adapter."""

    def __init__(
        self,
        adapter: TaskAdapter,
        model: Callable[[Any], Any],
        *,
        model_name: str = "",
        model_version: str = "",
        metrics: MetricSink | None = None,
    ) -> None:
        self.adapter = adapter
        self.model = model
        self.model_name = model_name
        self.model_version = model_version
        self._metrics = metrics

    def handle(self, requests: Sequence[Request]) -> list[Answer]:
        """The whole batch: one answer per request, in order."""
        return self.encode(self.forward(self.decode(requests)))

    # -- the steps ---------------------------------------------------------------------------
    def decode(self, requests: Sequence[Request]) -> Batch:
        """Each request on its own; a bad one is that request's ``InputError``."""
        started = time.perf_counter()
        batch = Batch(size=len(requests))
        for idx, request in enumerate(requests):
            batch.request_ids[idx] = request.request_id
            try:
                batch.items[idx] = self._decode_one(request, idx, batch)
            except InputError as err:
                batch.errors[idx] = err
            except Exception as err:  # the safety net: one request, never its batch
                batch.errors[idx] = _unreadable(idx, err)
        items = [item for idx in sorted(batch.items) for item in batch.items[idx]]
        batch.inputs = self.adapter.collate(items) if items else self.adapter.empty()
        batch.count = len(items)
        self.metric(self.adapter.decode_metric, (time.perf_counter() - started) * 1000, "ms")
        return batch

    def _decode_one(self, request: Request, idx: int, batch: Batch) -> list:
        if request.wants_explanation:
            raise InputError(
                "explanations are not supported by this model: send the input to "
                "/predictions/{model} or /v2/models/{model}/infer for its answer",
                501,
                "NotImplemented",
            )
        if request.tensor is not None:
            v2, answer_as = True, (request.request_id, False)
            items = self.adapter.decode_v2(request.tensor)
        elif (v2 := kserve_v2.v2_payload(request.payload, request.headers)) is None:
            items = self.adapter.decode(request)
        else:
            answer_as = (kserve_v2.v2_request_id(v2.body) or "", v2.binary_output)
            items = self.adapter.decode_v2(kserve_v2.first_input(v2))
        if not items:  # every answer needs rows of the output
            raise InputError("the request holds no input", 400, "EmptyRequest")
        if v2:
            batch.v2[idx] = answer_as
        return items

    def forward(self, batch: Batch) -> Batch:
        """One forward pass over every item of the batch (``ForwardError`` when it fails)."""
        if batch.count:
            started = time.perf_counter()
            try:
                with arrays.inference():
                    outputs = _to_cpu(self.model(batch.inputs))
                forward_ms = (time.perf_counter() - started) * 1000
                batch.outputs = self.adapter.prepare_outputs(outputs)
            except Exception as err:
                logger.exception("forward pass failed on a batch of %d", batch.count)
                raise ForwardError(f"model forward pass failed: {err}") from err
            self.metric("ForwardTime", forward_ms, "ms")
        self.metric("BatchSize", batch.size, "count")
        return batch

    def encode(self, batch: Batch) -> list[Answer]:
        """Exactly one answer per request: the adapter's, a v2 response, or the request's
        JSON error with its own status."""
        answers: list[Answer | None] = [None] * batch.size
        for idx, rows in self._rows_by_request(batch):
            if idx in batch.v2:
                answers[idx] = self._v2_answer(idx, batch, rows)
            else:
                answers[idx] = Answer(self.adapter.answer(rows))
        for idx, err in self._refused(batch):
            answers[idx] = Answer(err.to_body(), err.status, str(err), err.kind)
        return _every_one(answers)

    def tensors(self, batch: Batch) -> list[list[V2Output] | InputError]:
        """Exactly one result per request: its v2 output tensors, or its error (for a server
        that encodes tensors itself, as Triton does)."""
        results: list[list[V2Output] | InputError | None] = [None] * batch.size
        for idx, rows in self._rows_by_request(batch):
            results[idx] = self.adapter.v2_outputs(rows)
        for idx, err in self._refused(batch):
            results[idx] = err
        return _every_one(results)

    @staticmethod
    def _rows_by_request(batch: Batch):
        """``(request index, its rows of the output)`` for every request that decoded."""
        offset = 0
        for idx in sorted(batch.items):
            count = len(batch.items[idx])
            yield idx, _rows(batch.outputs, offset, offset + count)
            offset += count

    def _refused(self, batch: Batch):
        """``(request index, its error)`` for every refused request, each counted."""
        for idx, err in batch.errors.items():
            self.metric("RejectedInputs", 1, "count", "counter", Reason=err.kind)
            yield idx, err

    def _v2_answer(self, idx: int, batch: Batch, rows: Any) -> Answer:
        request_id, binary = batch.v2[idx]
        body = kserve_v2.v2_response(
            request_id or batch.request_ids.get(idx, ""),
            self.model_name,
            self.model_version,
            self.adapter.v2_outputs(rows),
            binary=binary,
        )
        if not binary:
            return Answer(body)
        data, header_length = body  # the JSON header, then the raw outputs
        headers = {
            "Content-Type": "application/octet-stream",
            kserve_v2.HEADER_LENGTH: str(header_length),
        }
        return Answer(data, headers=headers)

    def metric(
        self, name: str, value: float, unit: str, kind: str = "gauge", **dimensions: str
    ) -> None:
        """Report a metric to the server, when it takes metrics."""
        if self._metrics is not None:
            self._metrics(name, value, unit, kind, dimensions)


def _every_one(results: list) -> list:
    """``results`` once every request has one (the contract, as LitServe checks it)."""
    if any(result is None for result in results):
        raise RuntimeError(f"{results.count(None)} of {len(results)} requests got no answer")
    return results


def _to_cpu(outputs: Any) -> Any:
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(_to_cpu(o) for o in outputs)
    return outputs if isinstance(outputs, np.ndarray) else outputs.cpu()


def _rows(outputs: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of a model output (a tensor, or a tuple of tensors)."""
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(o[start:stop] for o in outputs)
    return outputs[start:stop]


def _unreadable(idx: int, err: BaseException) -> InputError:
    """An exception no decoding step foresaw, kept to its own request: logged with its
    traceback (it marks a missing guard) and answered 400, or 413 for memory."""
    logger.error("request %d of the batch could not be read", idx, exc_info=err)
    if isinstance(err, MemoryError):
        return InputError("request is too large to read", 413, "TooLarge")
    return InputError(f"request could not be read ({type(err).__name__})", 400, "UnreadableRequest")
