"""Client retries: bounded exponential backoff with jitter, within a budget, against a scripted
loopback HTTP server (no TorchServe needed)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from distillserve.archiver.properties import free_port
from distillserve.errors import ConnectionFailed, ServerError
from distillserve.serving.grpc_client import _worth_retrying
from distillserve.serving.rest import InferenceClient
from distillserve.serving.retry import NO_RETRY, Retrier, RetryPolicy

FAST = RetryPolicy(attempts=4, base_s=0.001, max_backoff_s=0.002)


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Answers POSTs with the next status of ``server.script`` (200 once it runs out)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            status = self.server.script.pop(0) if self.server.script else 200
            self.server.seen += 1
        if isinstance(status, tuple):  # (status, TorchServe's message)
            status, message = status
            body = json.dumps({"code": status, "message": message}).encode()
        else:
            body = json.dumps({"7": 0.9} if status == 200 else {"code": status}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    server.script, server.seen, server.lock = [], 0, threading.Lock()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _client(server, policy: RetryPolicy = FAST) -> InferenceClient:
    return InferenceClient(f"http://127.0.0.1:{server.server_address[1]}", retry=policy)


def test_a_dying_worker_is_retried_until_answered(scripted):
    scripted.script = [507, 503, 507]
    client = _client(scripted)
    answer = client.predict_raw("m", b"image")
    assert answer.status == 200 and answer.top1 == "7"
    assert scripted.seen == 4
    stats = client.retry_stats
    assert (stats.calls, stats.retries, stats.retried_calls, stats.recovered_calls) == (1, 3, 1, 1)


def test_a_worker_that_died_before_torchserve_read_its_exit_code_is_retried(scripted):
    """TorchServe answers 500 "Worker died." when its frontend sees the worker's channel close
    before the process's exit code (507 after it): both are the same dead worker."""
    scripted.script = [(500, "Worker died."), (507, "Worker died.")]
    client = _client(scripted)
    assert client.predict_raw("m", b"image").status == 200
    assert scripted.seen == 3 and client.retry_stats.recovered_calls == 1


def test_other_server_errors_are_not_retried(scripted):
    scripted.script = [(500, "the model failed on this batch"), (502, "Worker died.")]
    client = _client(scripted)
    assert client.predict_raw("m", b"image").status == 500
    assert scripted.seen == 1 and client.retry_stats.retries == 0


def test_retries_are_bounded_and_the_last_answer_is_returned(scripted):
    scripted.script = [507] * 10
    client = _client(scripted)
    assert client.predict_raw("m", b"image").status == 507
    assert scripted.seen == FAST.attempts and client.retry_stats.recovered_calls == 0


def test_client_errors_are_never_retried(scripted):
    scripted.script = [400, 415]
    client = _client(scripted)
    assert client.predict_raw("m", b"image").status == 400
    assert scripted.seen == 1 and client.retry_stats.retries == 0


def test_no_retry_shows_the_first_failure(scripted):
    scripted.script = [507]
    assert _client(scripted, NO_RETRY).predict_raw("m", b"image").status == 507


def test_the_budget_caps_retries_across_calls(scripted):
    scripted.script = [507] * 100
    policy = RetryPolicy(
        attempts=10, base_s=0.001, max_backoff_s=0.001, budget_min=3, budget_ratio=0.0
    )
    client = _client(scripted, policy)
    statuses = [client.predict_raw("m", b"x").status for _ in range(3)]
    assert statuses == [507, 507, 507]
    stats = client.retry_stats
    assert stats.retries == 3 and stats.budget_refusals == 3  # 3 spent, then one refusal a call
    assert scripted.seen == 3 + 3


def test_a_refused_connection_is_retried_then_raised():
    client = InferenceClient(f"http://127.0.0.1:{free_port()}", retry=FAST, timeout=2)
    with pytest.raises(ConnectionFailed, match="cannot reach"):
        client.predict_raw("m", b"image")
    assert client.retry_stats.retries == FAST.attempts - 1


def test_backoff_is_jittered_exponential_and_capped():
    import random

    policy = RetryPolicy(base_s=0.1, max_backoff_s=1.0)
    rng = random.Random(0)
    draws = [[policy.backoff(n, rng) for _ in range(200)] for n in range(6)]
    for n, values in enumerate(draws):
        bound = min(1.0, 0.1 * 2**n)
        assert all(0 <= v <= bound for v in values) and max(values) > 0.8 * bound
    assert len({round(v, 6) for v in draws[2]}) > 150  # jittered, not a fixed schedule


def test_the_deadline_stops_retrying():
    policy = RetryPolicy(attempts=50, base_s=0.05, max_backoff_s=0.05, deadline_s=0.2)
    retrier = Retrier(policy, seed=1)
    tries = []
    retrier.call(lambda: tries.append(1) or 507, lambda result, _error: result == 507)
    assert 2 <= len(tries) < 50


def test_grpc_retries_unavailable_and_dead_workers_only():
    assert _worth_retrying(ServerError("gRPC UNAVAILABLE: x", code="UNAVAILABLE"))
    assert _worth_retrying(ServerError("gRPC INTERNAL: Worker died.", code="INTERNAL"))
    assert not _worth_retrying(ServerError("gRPC INTERNAL: bug", code="INTERNAL"))
    assert not _worth_retrying(ServerError("gRPC INVALID_ARGUMENT: x", code="INVALID_ARGUMENT"))
    assert not _worth_retrying(None)
