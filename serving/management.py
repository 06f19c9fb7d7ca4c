"""TorchServe's management API over REST: register, set-default, scale, unregister, describe."""

from __future__ import annotations

import requests

from distillserve.errors import ServerError
from distillserve.serving.rest import explain, send

__all__ = ["ManagementClient"]


class ManagementClient:
    """A thin client: a non-2xx answer becomes a ``ServerError`` with TorchServe's message."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 180.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, path: str, **params) -> dict | list:
        params = {k: v for k, v in params.items() if v is not None}
        status, body = send(
            self.session,
            method,
            f"{self.base_url}{path}",
            self.base_url,
            params=params,
            timeout=self.timeout,
        )
        if not 200 <= status < 300:
            raise ServerError(f"{method} {path}: {explain(status, body)}", status)
        return body

    def register(
        self,
        url: str,
        *,
        model_name: str | None = None,
        batch_size: int | None = None,
        max_batch_delay: int | None = None,
        initial_workers: int | None = 1,
        response_timeout: int | None = None,
        synchronous: bool = True,
    ) -> dict:
        return self._call(
            "POST",
            "/models",
            url=url,
            model_name=model_name,
            batch_size=batch_size,
            max_batch_delay=max_batch_delay,
            initial_workers=initial_workers,
            response_timeout=response_timeout,
            synchronous=str(synchronous).lower(),
        )

    def set_default(self, model: str, version: str) -> dict:
        return self._call("PUT", f"/models/{model}/{version}/set-default")

    def scale(
        self, model: str, version: str | None = None, *, min_worker: int, max_worker: int | None
    ) -> dict:
        path = f"/models/{model}" + (f"/{version}" if version else "")
        return self._call(
            "PUT",
            path,
            min_worker=min_worker,
            max_worker=max_worker or min_worker,
            synchronous="true",
        )

    def unregister(self, model: str, version: str) -> dict:
        return self._call("DELETE", f"/models/{model}/{version}")

    def unregister_model(self, model: str) -> dict:
        """Remove a model with a single version (TorchServe refuses while others remain)."""
        return self._call("DELETE", f"/models/{model}")

    def describe(self, model: str, version: str | None = "all") -> list[dict]:
        return self._call("GET", f"/models/{model}" + (f"/{version}" if version else ""))

    def list_models(self) -> list[dict]:
        return self._call("GET", "/models", limit=1000).get("models", [])

    def default_version(self, model: str) -> str | None:
        """The version that answers ``/predictions/{model}``."""
        for entry in self.describe(model, None):
            return entry.get("modelVersion")
        return None
