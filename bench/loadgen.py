"""A closed-loop load generator light enough to share two cores with the server it measures.

The bench runs each server and its load generator on the same cores (every served point of
``bench.served`` and the engines section), so every CPU-millisecond the generator spends per
request is one the server cannot have. ``run_load`` (``serving.load``: ``requests`` in threads,
with retries) spends about 0.8 ms per request here and ``geventhttpclient`` (C parser, one
greenlet per client) 0.07 to 0.1 ms; this one drives plain non-blocking sockets from one
``selectors`` loop with pre-built requests and reads only the status line and the framing
(``Content-Length`` or chunked) of each answer: about 0.01 ms, so nearly all of the two cores
goes to the server.
"""

from __future__ import annotations

import selectors
import socket
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlparse

from distillserve.errors import ServerError
from distillserve.serving.load import check_loopback, percentile

__all__ = ["closed_loop", "parse_answer"]

RETRY_S = 0.01  # wait after a refused or dropped connection: do not spin on a dead port


def _chunked_end(buffer: bytearray | bytes, start: int) -> int:
    """The end of a chunked body that starts at ``start``; -1 while incomplete."""
    at = start
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return -1
        size = int(bytes(buffer[at:line_end]).split(b";", 1)[0], 16)
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", line_end)
            return -1 if trailer_end < 0 else trailer_end + 4
        at = line_end + 2 + size + 2
        if at > len(buffer):
            return -1


def parse_answer(buffer: bytearray | bytes) -> tuple[int, int, bool] | None:
    """``(status, length, keep_alive)`` of the first complete HTTP/1.1 answer in ``buffer``
    (``length``: its bytes, head and body), or None while it is incomplete. Raises ValueError
    on an answer that is not HTTP or has no framing to read it by."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = bytes(buffer[:head_end]).lower()
    if not head.startswith(b"http/1."):
        raise ValueError("not an HTTP/1.x answer")
    status = int(head[9:12])
    keep_alive = b"\r\nconnection: close" not in head
    start = head_end + 4
    at = head.find(b"\r\ncontent-length:")
    if at >= 0:
        line_end = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : line_end if line_end >= 0 else None])
        return (status, start + length, keep_alive) if len(buffer) >= start + length else None
    if b"\r\ntransfer-encoding: chunked" in head:
        end = _chunked_end(buffer, start)
        return None if end < 0 else (status, end, keep_alive)
    if status in (204, 304) or 100 <= status < 200:
        return status, start, keep_alive
    raise ValueError("an answer with neither Content-Length nor chunked framing")


@dataclass
class _Client:
    """One closed-loop client: its connection, what it still has to send, what it has read."""

    sock: socket.socket | None = None
    outgoing: memoryview = field(default_factory=lambda: memoryview(b""))
    incoming: bytearray = field(default_factory=bytearray)
    started: float = 0.0
    in_flight: bool = False
    writing: bool = False  # registered for EVENT_WRITE: part of a request is still unsent
    retry_at: float = 0.0


def closed_loop(
    url: str,
    path: str,
    bodies: Sequence[bytes],
    concurrency: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> dict:
    """``concurrency`` clients, each posting the next body of ``bodies`` (in turn, across the
    clients) to ``url + path`` over its keep-alive connection as soon as its previous answer
    arrives, for ``seconds`` (loopback only). Returns answers/s (``rps``, 200s only), their
    p50/p99 latency (ms), and the counts of answers and errors (other statuses, refused or
    dropped connections, answers later than ``timeout_s``)."""
    check_loopback(url)
    if not bodies:
        raise ServerError("no bodies to send")
    address = urlparse(url)
    host, port = address.hostname or "127.0.0.1", address.port or 80
    sent = {"Content-Type": "application/json", **(headers or {})}
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in sent.items()
    )
    requests = [
        head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body for body in bodies
    ]
    selector = selectors.DefaultSelector()
    clients = [_Client() for _ in range(concurrency)]
    latencies: list[float] = []
    errors = 0
    turn = 0
    start = time.monotonic()
    deadline = start + seconds

    def drop(client: _Client, now: float) -> None:
        if client.sock is not None:
            selector.unregister(client.sock)
            client.sock.close()
        client.sock, client.incoming, client.in_flight = None, bytearray(), False
        client.writing = False
        client.retry_at = now + RETRY_S

    def send_next(client: _Client, now: float) -> None:
        nonlocal turn, errors
        if client.sock is None:
            try:
                client.sock = socket.create_connection((host, port), timeout=timeout_s)
            except OSError:
                errors += 1
                client.retry_at = now + RETRY_S
                return
            client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.sock.setblocking(False)
            selector.register(client.sock, selectors.EVENT_READ, client)
        client.outgoing = memoryview(requests[turn % len(requests)])
        turn += 1
        client.started, client.in_flight = now, True
        write(client, now)

    def write(client: _Client, now: float) -> None:
        nonlocal errors
        try:
            written = client.sock.send(client.outgoing)
        except BlockingIOError:
            written = 0
        except OSError:
            errors += 1
            drop(client, now)
            return
        client.outgoing = client.outgoing[written:]
        if bool(client.outgoing) != client.writing:  # one epoll call only when it changes
            client.writing = bool(client.outgoing)
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.writing else 0)
            selector.modify(client.sock, events, client)

    def read(client: _Client, now: float) -> None:
        nonlocal errors
        try:
            data = client.sock.recv(1 << 18)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the server closed the connection: the request is lost
            errors += 1
            drop(client, now)
            return
        client.incoming += data
        try:
            answer = parse_answer(client.incoming)
        except ValueError:
            errors += 1
            drop(client, now)
            return
        if answer is None:
            return
        status, length, keep_alive = answer
        if status == 200:
            latencies.append((now - client.started) * 1000.0)
        else:
            errors += 1
        del client.incoming[:length]
        client.in_flight = False
        if not keep_alive:
            drop(client, now)
            client.retry_at = now
        elif now < deadline:
            send_next(client, now)

    try:
        for client in clients:
            send_next(client, start)
        checked = start
        while True:
            now = time.monotonic()
            if now - checked >= RETRY_S:  # reconnect the dropped, give up on the late
                checked = now
                for client in clients:
                    if client.in_flight and now - client.started > timeout_s:
                        errors += 1
                        drop(client, now)
                    elif client.sock is None and client.retry_at <= now < deadline:
                        send_next(client, now)
            if now >= deadline and not any(c.in_flight for c in clients):
                break
            for key, events in selector.select(RETRY_S):
                client = key.data
                now = time.monotonic()
                if events & selectors.EVENT_WRITE and client.outgoing:
                    write(client, now)
                if client.sock is not None and events & selectors.EVENT_READ:
                    read(client, now)
    finally:
        for client in clients:
            if client.sock is not None:
                client.sock.close()
        selector.close()
    duration = time.monotonic() - start
    ordered = sorted(latencies)
    return {
        "rps": round(len(ordered) / duration, 2) if duration > 0 else 0.0,
        "p50_ms": round(percentile(ordered, 50), 3),
        "p99_ms": round(percentile(ordered, 99), 3),
        "mean_ms": round(statistics.fmean(ordered), 3) if ordered else 0.0,
        "answered": len(ordered),
        "errors": errors,
    }
