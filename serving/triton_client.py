"""KServe v2 requests to the Triton engine through tritonclient (HTTP or gRPC), answered in the
shape the TorchServe clients answer (``rest.Prediction``: status, and the top-k as
``{label: probability}``, or ``{"error": ...}``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from distillserve.serving.rest import Prediction
from distillserve.serving.retry import RetryStats
from distillserve.serving.triton_engine import TritonAddresses

__all__ = ["TritonClient", "VersionedTritonClient", "input_name"]


def input_name(text: bool) -> str:
    """The v2 input a request fills: encoded image files, or UTF-8 texts."""
    return "text" if text else "images"


class TritonClient:
    """One client per call of ``predict_many`` thread (tritonclient's HTTP client is not
    shared across threads)."""

    def __init__(self, addresses: TritonAddresses, grpc: bool = False, timeout: float = 60.0):
        self.addresses = addresses
        self.grpc = grpc
        self.timeout = timeout

    def _module(self):
        if self.grpc:
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        return module

    def _client(self):
        module = self._module()
        if self.grpc:
            return module.InferenceServerClient(self.addresses.grpc_target)
        return module.InferenceServerClient(
            f"{self.addresses.host}:{self.addresses.http_port}",
            connection_timeout=self.timeout,
            network_timeout=self.timeout,
        )

    def predict(
        self, model: str, payload: bytes, text: bool = False, client=None, version: str = ""
    ) -> Prediction:
        """One payload (an image file's bytes, or a UTF-8 text) as one request, to Triton's
        ``version`` of the model (a number; default: the newest)."""
        from tritonclient.utils import InferenceServerException

        module = self._module()
        client = client or self._client()
        tensor = module.InferInput(input_name(text), [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[payload]], dtype=np.object_))
        try:
            answer = client.infer(model, [tensor], model_version=version)
        except InferenceServerException as err:
            return Prediction(_status(err), {"error": err.message()})
        labels = [v.decode() for v in answer.as_numpy("labels")[0]]
        probabilities = answer.as_numpy("probabilities")[0].tolist()
        return Prediction(200, dict(zip(labels, probabilities)))

    def predict_many(
        self,
        model: str,
        payloads: Sequence[bytes],
        text: bool = False,
        concurrency: int = 8,
        version: str = "",
    ) -> list[Prediction]:
        """Many payloads concurrently (Triton's dynamic batcher batches them), in order."""

        def one(payload: bytes) -> Prediction:
            return self.predict(model, payload, text, version=version)

        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            return list(pool.map(one, payloads))


class VersionedTritonClient:
    """``timed_predictions``'s client (and so ``ab``'s) on the Triton engine: ``predict_raw``
    sends to the Triton version serving an archive version (``versions`` maps one to the
    other). tritonclient does not retry, so ``retry_stats`` stays at zero."""

    def __init__(self, client: TritonClient, versions: Callable[[str], str]) -> None:
        self.client, self.versions = client, versions
        self.retry_stats = RetryStats()

    def predict_raw(self, model: str, payload: bytes, version: str | None = None) -> Prediction:
        number = self.versions(version) if version else ""
        return self.client.predict(model, payload, version=number)


def _status(err) -> int:
    """The HTTP status of a tritonclient error (gRPC codes mapped as Triton maps them)."""
    status = str(err.status() or "")
    if status.isdigit():
        return int(status)
    grpc_codes = {
        "StatusCode.INVALID_ARGUMENT": 400,
        "StatusCode.NOT_FOUND": 404,
        "StatusCode.UNAVAILABLE": 503,
        "StatusCode.UNIMPLEMENTED": 501,
    }
    return grpc_codes.get(status, 500)
