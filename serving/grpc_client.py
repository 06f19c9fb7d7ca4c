"""TorchServe over gRPC (Predictions, Ping and the management calls) with bearer tokens."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import grpc

from distillserve.errors import ServerError
from distillserve.serving.grpc_stubs import load_stubs
from distillserve.serving.rest import Prediction
from distillserve.serving.retry import Retrier, RetryPolicy, worker_died

__all__ = ["GrpcClient"]


class GrpcClient:
    """Inference and management stubs on ``host:port`` addresses; tokens go in the metadata.

    ``predict`` is retried under ``retry`` when the server is UNAVAILABLE (TorchServe's 503)
    or says "Worker died." (its 507 or 500, which reach gRPC as INTERNAL); management calls are not.
    """

    def __init__(
        self,
        inference_address: str,
        management_address: str | None = None,
        inference_token: str | None = None,
        management_token: str | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.pb = load_stubs()
        self.retrier = Retrier(retry or RetryPolicy())
        self.timeout = timeout
        self._channels = [grpc.insecure_channel(inference_address)]
        self.inference = self.pb.inference_pb2_grpc.InferenceAPIsServiceStub(self._channels[0])
        self.management = None
        if management_address:
            self._channels.append(grpc.insecure_channel(management_address))
            self.management = self.pb.management_pb2_grpc.ManagementAPIsServiceStub(
                self._channels[-1]
            )
        self._inference_meta = _metadata(inference_token)
        self._management_meta = _metadata(management_token)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _rpc(self, method, request, metadata):
        try:
            return method(request, metadata=metadata, timeout=self.timeout)
        except grpc.RpcError as err:
            code = err.code().name
            raise ServerError(f"gRPC {code}: {err.details()}", code=code) from None

    def ping(self) -> str:
        from google.protobuf import empty_pb2

        return self._rpc(self.inference.Ping, empty_pb2.Empty(), self._inference_meta).health

    def predict(self, model: str, image: bytes, version: str | None = None) -> dict:
        """One image; returns the handler's JSON answer (a top-k dict, or an error object)."""
        request = self.pb.inference_pb2.PredictionsRequest(
            model_name=model, model_version=version or "", input={"data": image}
        )
        response = self.retrier.call(
            lambda: self._rpc(self.inference.Predictions, request, self._inference_meta),
            lambda _result, error: _worth_retrying(error),
        )
        return json.loads(response.prediction)

    def predict_result(self, model: str, image: bytes, version: str | None = None) -> Prediction:
        """One image as a ``Prediction``. TorchServe drops per-request HTTP codes over gRPC, so a
        handler error object in the answer (it has ``code`` and ``message``) gives the status."""
        body = self.predict(model, image, version)
        if isinstance(body, dict) and {"code", "message"} <= set(body):
            return Prediction(int(body["code"]), body)
        return Prediction(200, body if isinstance(body, dict) else {"value": body})

    def predict_many(
        self, model: str, images: list[bytes], concurrency: int = 8, version: str | None = None
    ) -> list[Prediction]:
        """Many images concurrently (so TorchServe can batch them); answers in input order."""
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            return list(pool.map(lambda image: self.predict_result(model, image, version), images))

    def _manage(self, name: str, **fields) -> dict | list | str:
        if self.management is None:
            raise ServerError("no gRPC management address given")
        request = getattr(self.pb.management_pb2, f"{name}Request")(**fields)
        reply = self._rpc(getattr(self.management, name), request, self._management_meta)
        try:
            return json.loads(reply.msg)
        except ValueError:
            return reply.msg

    def describe(self, model: str, version: str = "") -> list[dict]:
        return self._manage("DescribeModel", model_name=model, model_version=version)

    def list_models(self) -> list[dict]:
        return self._manage("ListModels", limit=1000).get("models", [])

    def register(self, url: str, **fields) -> dict:
        return self._manage("RegisterModel", url=url, **fields)

    def scale(self, model: str, version: str = "", *, min_worker: int, max_worker: int) -> dict:
        return self._manage(
            "ScaleWorker",
            model_name=model,
            model_version=version,
            min_worker=min_worker,
            max_worker=max_worker,
            synchronous=True,
        )

    def set_default(self, model: str, version: str) -> dict:
        return self._manage("SetDefault", model_name=model, model_version=version)

    def unregister(self, model: str, version: str) -> dict:
        return self._manage("UnregisterModel", model_name=model, model_version=version)


def _worth_retrying(error: Exception | None) -> bool:
    """UNAVAILABLE (503, or no connection), or INTERNAL from a worker that died (507)."""
    if not isinstance(error, ServerError):
        return False
    return error.code == "UNAVAILABLE" or (error.code == "INTERNAL" and worker_died(str(error)))


def _metadata(token: str | None) -> tuple:
    return (("authorization", f"Bearer {token}"),) if token else ()
