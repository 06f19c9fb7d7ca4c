"""Where a running TorchServe is and how to authenticate to it, and the clients that follow.

A ``Connection`` is made from the server's ``config.properties`` (its addresses and model store)
and its run directory (where TorchServe wrote ``key_file.json``); every verb that talks to a
server makes its clients here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distillserve.archiver.properties import read_properties
from distillserve.serving.management import ManagementClient
from distillserve.serving.rest import InferenceClient, read_key

__all__ = ["Connection"]


@dataclass
class Connection:
    """A server's addresses, model store and token file."""

    config: Path
    props: dict[str, str]
    key_file: Path
    model_store: Path
    url: str | None = None  # overrides the config's inference address
    token_auth: bool = True

    @classmethod
    def make(
        cls,
        config: str | Path = "config.properties",
        run_dir: str | Path = "build/serve",
        key_file: str | Path | None = None,
        model_store: str | Path | None = None,
        url: str | None = None,
        token_auth: bool = True,
        config_optional: bool = False,
    ) -> Connection:
        """From a config file (``ServerError`` naming it when missing, unless
        ``config_optional``: a caller that was given the URL) and a run directory."""
        config = Path(config)
        props = {} if config_optional and not config.is_file() else read_properties(config)
        store = Path(model_store or props.get("model_store", "model_store"))
        if not store.is_absolute():  # relative to the config, as TorchServe control reads it
            store = config.resolve().parent / store
        key = Path(key_file) if key_file else Path(run_dir) / "key_file.json"
        return cls(config, props, key, store, url, token_auth)

    @property
    def inference_url(self) -> str:
        return self.url or self.props.get("inference_address", "http://127.0.0.1:8080")

    @property
    def management_url(self) -> str:
        return self.props.get("management_address", "http://127.0.0.1:8081")

    @property
    def grpc_inference_address(self) -> str:
        host = self.props.get("grpc_inference_address", "127.0.0.1")
        return f"{host}:{self.props.get('grpc_inference_port', '7070')}"

    def token(self, role: str = "inference") -> str | None:
        """The ``role`` key from the token file (``None`` when token auth is not used)."""
        return read_key(self.key_file, role) if self.token_auth else None

    def inference_client(self, timeout: float = 60.0, **kwargs) -> InferenceClient:
        return InferenceClient(self.inference_url, self.token("inference"), timeout, **kwargs)

    def management_client(self) -> ManagementClient:
        return ManagementClient(self.management_url, self.token("management"))

    def grpc_client(self, timeout: float = 60.0):
        """A gRPC inference client on the config's address (TorchServe's defaults where the
        config sets none); its stubs are generated on first use."""
        from distillserve.serving.grpc_client import GrpcClient

        return GrpcClient(
            self.grpc_inference_address, inference_token=self.token("inference"), timeout=timeout
        )
