"""A closed-loop load generator light enough to share two cores with the server it measures.

The bench runs each server and its load generator on the same cores (every served point of
``bench.served`` and the engines section), so every CPU-millisecond the generator spends per
request is one the server cannot have. ``run_load`` (``serving.load``: ``requests`` in threads,
with retries) spends about 0.8 ms per request here; this one sends pre-built bodies over
keep-alive connections with ``geventhttpclient`` (C HTTP parser, one greenlet per client, no
threads), about 0.15 ms: close to ``hey``'s, and the rest of the two cores goes to the server.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Sequence
from urllib.parse import urlparse

from distillserve.errors import ServerError
from distillserve.serving.load import check_loopback, percentile

__all__ = ["closed_loop"]


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
    clients) to ``url + path`` as soon as its previous answer arrives, for ``seconds``
    (loopback only). Returns answers/s (``rps``, 200s only), their p50/p99 latency (ms), and
    the counts of answers and errors (other statuses and failed connections)."""
    import gevent
    from geventhttpclient import HTTPClient

    check_loopback(url)
    if not bodies:
        raise ServerError("no bodies to send")
    address = urlparse(url)
    client = HTTPClient(
        address.hostname,
        address.port,
        concurrency=concurrency,
        connection_timeout=timeout_s,
        network_timeout=timeout_s,
    )
    sent_headers = {"Content-Type": "application/json", **(headers or {})}
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    turn = itertools.count()  # greenlets switch only at I/O: no lock needed

    def one_client() -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            index = next(turn)
            started = time.monotonic()
            try:
                response = client.post(path, body=bodies[index % len(bodies)],
                                       headers=sent_headers)  # fmt: skip
                response.read()
                status = response.status_code
                response.release()
            except (OSError, gevent.Timeout, ValueError):  # refused, reset, timed out
                status = 0
            if status == 200:
                latencies.append((time.monotonic() - started) * 1000.0)
            else:
                errors += 1
                if status == 0:
                    gevent.sleep(0.01)  # no answer: do not spin on a dead port

    start = time.monotonic()
    try:
        gevent.joinall([gevent.spawn(one_client) for _ in range(concurrency)])
    finally:
        client.close()
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
