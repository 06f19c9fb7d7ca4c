"""A small REST client for TorchServe's inference API with bearer-token authorization."""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests
import requests.adapters

from distillserve.errors import ConnectionFailed, ServerError
from distillserve.serving.retry import Retrier, RetryPolicy

__all__ = ["InferenceClient", "Prediction", "explain", "read_key", "send", "timed_predictions"]


def send(
    session: requests.Session, method: str, url: str, base_url: str, **kwargs
) -> tuple[int, dict | list]:
    """One HTTP call: ``(status, decoded JSON body)``; a non-JSON body becomes
    ``{"message": text}``, a server that cannot be reached or drops the connection a
    ``ConnectionFailed``, any other transport failure (a timeout) a ``ServerError``."""
    try:
        response = session.request(method, url, **kwargs)
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as err:
        raise ConnectionFailed(f"cannot reach {base_url}: {err}") from None
    except requests.RequestException as err:
        raise ServerError(f"{base_url}: {err}") from None
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, {"message": response.text.strip()}


def explain(status: int, body: dict | list | str, role: str = "management") -> str:
    """TorchServe's error answer as what to do about it: a refused token, a registration API
    that the server's profile turns off, or TorchServe's own message."""
    kind = body.get("type", "") if isinstance(body, dict) else ""
    message = body.get("message", body) if isinstance(body, dict) else body
    if kind == "InvalidKeyException":
        return (
            f"the server refused the {role} key (missing, wrong, or expired: keys last "
            "token_expiration_min, 60 min by default): pass the running server's key_file.json "
            "with --run-dir or --key-file; a restart writes fresh keys"
        )
    if status == 405 and kind == "MethodNotAllowedException":
        return (
            "this server's registration API is off (enable_model_api=false, the serving "
            "profile): start it with --config config.mlops.properties to register or "
            "unregister models"
        )
    return f"HTTP {status}: {message}"


def read_key(key_file: str | Path, role: str = "inference") -> str:
    """The ``role`` key (inference, management or API) from TorchServe's ``key_file.json``."""
    path = Path(key_file)
    try:
        return json.loads(path.read_text())[role]["key"]
    except FileNotFoundError:
        raise ServerError(
            f"token file not found: {path} (it is written where TorchServe started)"
        ) from None
    except (ValueError, KeyError, TypeError):
        raise ServerError(f"{path} is not a TorchServe key file with a {role!r} key") from None


@dataclass
class Prediction:
    """One answer: HTTP status and the decoded JSON body (top-k dict, or an error object)."""

    status: int
    body: dict

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def top1(self) -> str | None:
        """The top label: a text answer's ``label``, an image answer's first key."""
        if not self.ok or not self.body:
            return None
        if isinstance(self.body.get("probabilities"), dict) and "label" in self.body:
            return str(self.body["label"])
        return next(iter(self.body))


class InferenceClient:
    """``POST /predictions/{model}[/{version}]`` with a raw body: image bytes, or UTF-8 text.

    A request whose worker died (503/507, or 500 "Worker died.") or whose connection broke is
    sent again under ``retry`` (bounded exponential backoff with jitter, within a retry budget);
    ``retry_stats`` says how often that happened. Pass ``NO_RETRY`` to see every failure.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 60.0,
        pool_size: int = 64,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.retrier = Retrier(retry or RetryPolicy())

    @property
    def retry_stats(self):
        return self.retrier.stats

    def _url(self, model: str, version: str | None) -> str:
        return f"{self.base_url}/predictions/{model}" + (f"/{version}" if version else "")

    def predict_raw(self, model: str, image: bytes, version: str | None = None) -> Prediction:
        """Send one image (retrying as the policy allows); the last status and JSON body,
        whatever the status. Raises ``ServerError`` when no answer came at all."""
        return self._post(self._url(model, version), image, "application/octet-stream")

    def infer_v2_raw(self, model: str, body: bytes) -> Prediction:
        """Send one KServe v2 (Open Inference Protocol) JSON request to
        ``/v2/models/{model}/infer``, as ``predict_raw`` does."""
        return self._post(f"{self.base_url}/v2/models/{model}/infer", body, "application/json")

    def _post(self, url: str, body: bytes, content_type: str) -> Prediction:
        policy = self.retrier.policy

        def attempt() -> Prediction:
            status, answer = send(
                self.session,
                "POST",
                url,
                self.base_url,
                data=body,
                headers={"Content-Type": content_type},
                timeout=self.timeout,
            )
            return Prediction(status, answer if isinstance(answer, dict) else {"value": answer})

        def failed(result: Prediction | None, error: Exception | None) -> bool:
            if error is not None:
                return isinstance(error, ConnectionFailed)
            return policy.retries_answer(result.status, result.body.get("message"))

        return self.retrier.call(attempt, failed)

    def predict(self, model: str, image: bytes, version: str | None = None) -> dict[str, float]:
        """Send one image; returns ``{label: probability}`` or raises ``ServerError``."""
        result = self.predict_raw(model, image, version)
        if not result.ok:
            message = explain(result.status, result.body, "inference")
            raise ServerError(f"{model}: {message}", result.status)
        return result.body

    def predict_many(
        self,
        model: str,
        images: Sequence[bytes] | Iterable[bytes],
        concurrency: int = 8,
        version: str | None = None,
    ) -> list[Prediction]:
        """Send many images concurrently (so TorchServe can batch them); answers in input order."""
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            return list(pool.map(lambda img: self.predict_raw(model, img, version), images))

    def ping(self) -> str:
        response = self.session.get(f"{self.base_url}/ping", timeout=self.timeout)
        if response.status_code != 200:
            raise ServerError(
                f"ping: HTTP {response.status_code}: {response.text.strip()}", response.status_code
            )
        return response.json().get("status", "")


def timed_predictions(
    client: InferenceClient,
    model: str,
    payloads: Sequence[bytes],
    concurrency: int,
    version: str | None = None,
) -> dict:
    """Send every payload with ``concurrency`` in flight; top-1 labels (``None`` for a failed
    request) in input order, the failure count (after retries), the retries made, latency
    percentiles and throughput."""

    def one(payload: bytes) -> tuple[float, str | None, int]:
        start = time.perf_counter()
        try:
            result = client.predict_raw(model, payload, version)
            top1, status = result.top1, result.status
        except ServerError:
            top1, status = None, 0  # no answer at all, retries included
        return (time.perf_counter() - start) * 1000.0, top1, status

    retries_before = client.retry_stats.retries
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        answers = list(pool.map(one, payloads))
    wall = time.perf_counter() - start
    latencies = sorted(ms for ms, _, _ in answers)
    return {
        "labels": [label for _, label, _ in answers],
        "failures": sum(status != 200 for _, _, status in answers),
        "statuses": dict(Counter(str(status) for _, _, status in answers if status != 200)),
        "retries": client.retry_stats.retries - retries_before,
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "throughput_rps": len(payloads) / wall,
    }
