"""bench.loadgen: the answer framing it reads, and its closed loop against real loopback servers
that refuse some bodies, close connections, answer chunked, or never answer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from distillserve.bench.loadgen import closed_loop, parse_answer
from distillserve.errors import ServerError

PATH = "/v2/models/m/infer"


def test_an_answer_is_read_by_its_content_length():
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    assert parse_answer(answer) == (200, len(answer), True)
    assert parse_answer(answer[:-1]) is None
    assert parse_answer(answer[:10]) is None
    two = answer + b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"
    assert parse_answer(two) == (200, len(answer), True)


def test_an_answer_is_read_by_its_chunks():
    head = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"4\r\nab\r\n\r\n3;x=y\r\ncde\r\n0\r\n\r\n"
    assert parse_answer(head + body) == (503, len(head + body), True)
    for cut in (1, 5, len(body) - 1):
        assert parse_answer(head + body[:-cut]) is None


def test_connection_close_and_bodiless_statuses():
    close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    assert parse_answer(close) == (200, len(close), False)
    assert parse_answer(b"HTTP/1.1 204 No Content\r\n\r\n") == (204, 27, True)


@pytest.mark.parametrize(
    "answer",
    [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nunframed"],
)
def test_an_answer_it_cannot_frame_is_an_error(answer):
    with pytest.raises(ValueError):
        parse_answer(answer)


@contextmanager
def _server(answer) -> Iterator[tuple[str, list[bytes]]]:
    """A threaded HTTP/1.1 loopback server; ``answer(handler, body)`` writes each answer."""
    seen: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the engines answer

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(body)
            answer(self, body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _reply(handler, status: int, reply: bytes, close: bool = False) -> None:
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(reply)))
    if close:
        handler.send_header("Connection", "close")
        handler.close_connection = True
    handler.end_headers()
    handler.wfile.write(reply)


def test_answers_and_errors_are_counted_apart():
    """Every fourth body is refused (400): counted as errors, the rest as answers."""

    def answer(handler, body):
        _reply(
            handler,
            400 if body == b"bad" else 200,
            b'{"error": "bad"}' if body == b"bad" else b"{}",
        )

    with _server(answer) as (url, seen):
        result = closed_loop(url, PATH, [b"a", b"b", b"c", b"bad"], 4, 0.5)
    assert result["answered"] > 0 and result["errors"] > 0
    assert result["answered"] + result["errors"] == len(seen)
    assert seen.count(b"bad") == result["errors"]
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert result["rps"] > 0


def test_a_closed_connection_is_reopened_and_chunked_answers_count():
    """Every other answer closes its connection and every third is chunked: the clients
    reconnect and go on, and no answer is lost or counted twice."""
    count = iter(range(10**9))
    lock = threading.Lock()

    def answer(handler, body):
        with lock:
            n = next(count)
        if n % 3 == 0:
            handler.send_response(200)
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            handler.wfile.write(b"2\r\n{}\r\n0\r\n\r\n")
        else:
            _reply(handler, 200, b"{}", close=n % 2 == 0)

    with _server(answer) as (url, seen):
        result = closed_loop(url, PATH, [b"x"], 3, 0.5)
    assert result["errors"] == 0
    assert result["answered"] == len(seen) > 10


def test_an_answer_later_than_the_timeout_is_an_error():
    release = threading.Event()

    def answer(handler, body):
        release.wait(5)
        _reply(handler, 200, b"{}")

    with _server(answer) as (url, seen):
        result = closed_loop(url, PATH, [b"x"], 2, 0.2, timeout_s=0.3)
        release.set()
    assert result["answered"] == 0
    assert result["errors"] == 2 == len(seen)


def test_a_refused_port_is_errors_not_a_hang():
    with _server(lambda handler, body: None) as (url, _):
        pass  # closed: nothing listens on its port now
    result = closed_loop(url, PATH, [b"x"], 2, 0.2)
    assert result["answered"] == 0 and result["errors"] > 0


def test_it_sends_to_loopback_only():
    with pytest.raises(ServerError, match="loopback"):
        closed_loop("http://192.0.2.1:8080", "/", [b"x"], 1, 0.1)
