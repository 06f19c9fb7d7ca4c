"""A small REST client for TorchServe's inference API with bearer-token authorization."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests
import requests.adapters

from students.errors import ServerError

__all__ = ["InferenceClient", "Prediction", "read_key"]


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
        return next(iter(self.body)) if self.ok and self.body else None


class InferenceClient:
    """``POST /predictions/{model}[/{version}]`` with raw image bytes."""

    def __init__(
        self, base_url: str, token: str | None = None, timeout: float = 60.0, pool_size: int = 64
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _url(self, model: str, version: str | None) -> str:
        return f"{self.base_url}/predictions/{model}" + (f"/{version}" if version else "")

    def predict_raw(self, model: str, image: bytes, version: str | None = None) -> Prediction:
        """Send one image; returns the status and JSON body whatever the status."""
        try:
            response = self.session.post(
                self._url(model, version),
                data=image,
                headers={"Content-Type": "application/octet-stream"},
                timeout=self.timeout,
            )
        except requests.RequestException as err:
            raise ServerError(f"cannot reach {self.base_url}: {err}") from None
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text.strip()}
        return Prediction(response.status_code, body if isinstance(body, dict) else {"value": body})

    def predict(self, model: str, image: bytes, version: str | None = None) -> dict[str, float]:
        """Send one image; returns ``{label: probability}`` or raises ``ServerError``."""
        result = self.predict_raw(model, image, version)
        if not result.ok:
            message = result.body.get("message", result.body)
            raise ServerError(f"{model}: HTTP {result.status}: {message}", result.status)
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
