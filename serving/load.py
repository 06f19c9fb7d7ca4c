"""Bounded load and fault checks against a TorchServe on this machine (loopback only).

``run_load`` sends a fixed number of requests at a fixed concurrency and stops by itself at a time
limit; it reports throughput, latency percentiles, errors by status as the client saw them after
its retries (``InferenceClient``'s policy), and the retries made. With ``kill_worker_after`` it
also kills one model worker process mid-run (a local process found through the management API)
and reports how many requests failed after retries, how long the model took to answer again,
and what the kill cost in p99/max latency.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import signal
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from urllib.parse import urlparse

import requests

from distillserve.errors import ServerError
from distillserve.serving.rest import InferenceClient
from distillserve.serving.retry import NO_RETRY, RetryPolicy

__all__ = [
    "NO_RETRY",
    "FaultReport",
    "LoadReport",
    "check_loopback",
    "format_report",
    "parse_target",
    "percentile",
    "run_load",
    "v2_image_bodies",
    "worker_pids",
]

MAX_REQUESTS = 1_000_000
ROUTES = {  # how one payload is sent
    "predictions": InferenceClient.predict_raw,
    "v2": InferenceClient.infer_v2_raw,
}


def check_loopback(url: str) -> None:
    """Refuse any URL whose host is not a loopback address of this machine."""
    host = urlparse(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        raise ServerError(f"cannot resolve {host!r} in {url}") from None
    if not addresses or not all(ipaddress.ip_address(a).is_loopback for a in addresses):
        raise ServerError(f"load is sent only to loopback addresses; {url} is not one")


def parse_target(target: str) -> tuple[str | None, str]:
    """``(base URL, model)`` of a load target: a model name (``(None, name)``: the base comes
    from the server's config) or ``http://HOST:PORT/predictions/MODEL``."""
    if not target.startswith(("http://", "https://")):
        return None, target
    base, _, model = target.rstrip("/").partition("/predictions/")
    if not model:
        raise ServerError("a URL target must look like http://HOST:PORT/predictions/MODEL")
    return base, model


@dataclass
class FaultReport:
    """What killing one worker mid-load cost, as the client saw it after its retries."""

    killed_pid: int
    killed_at_s: float
    failed_requests: int
    failed_by_status: dict[str, int]
    recovery_s: float | None  # kill -> the model's first successful answer after it
    worker_ready_s: float | None  # kill -> the management API shows its replacement READY
    latency_before_ms: dict[str, float] = field(default_factory=dict)  # answered before the kill
    latency_affected_ms: dict[str, float] = field(default_factory=dict)  # in flight kill..ready


@dataclass
class LoadReport:
    """Throughput, latency percentiles and errors of one bounded run."""

    url: str
    requests: int
    completed: int
    concurrency: int
    duration_s: float
    throughput_rps: float
    latency_ms: dict[str, float]
    errors_by_status: dict[str, int]
    stopped_by_time_limit: bool
    fault: FaultReport | None = None
    retries: dict = field(default_factory=dict)  # RetryStats of the run's client
    extra: dict = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return sum(self.errors_by_status.values())

    def to_dict(self) -> dict:
        return asdict(self)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``sorted_values`` (nearest rank; 0 when empty)."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def worker_pids(management_url: str, model: str, headers: dict) -> list[int]:
    """The pids of ``model``'s ready TorchServe workers, from the management API."""
    described = requests.get(f"{management_url}/models/{model}", headers=headers, timeout=10)
    if described.status_code != 200:
        raise ServerError(f"cannot describe {model}: HTTP {described.status_code}")
    return [
        int(w["pid"])
        for version in described.json()
        for w in version.get("workers", [])
        if w.get("status") == "READY" and w.get("pid")
    ]


def run_load(
    url: str,
    model: str,
    payloads: Sequence[bytes],
    *,
    total: int,
    concurrency: int,
    token: str | None = None,
    time_limit_s: float = 300.0,
    kill_worker_after_s: float | None = None,
    management_url: str | None = None,
    management_token: str | None = None,
    retry: RetryPolicy | None = None,
    route: str = "predictions",
) -> LoadReport:
    """Send ``total`` requests (cycling through ``payloads``) with ``concurrency`` in flight;
    ``retry`` is the client's policy (its default retries; ``NO_RETRY`` shows every failure).
    ``route`` is ``predictions`` (each payload an image body) or ``v2`` (each payload a KServe
    v2 JSON request, sent to ``/v2/models/{model}/infer``)."""
    check_loopback(url)
    if not payloads:
        raise ServerError("no payloads to send")
    if not 1 <= total <= MAX_REQUESTS:
        raise ServerError(f"--requests must be between 1 and {MAX_REQUESTS}")
    if not 1 <= concurrency <= 256:
        raise ServerError("--concurrency must be between 1 and 256")
    if route not in ROUTES:
        raise ServerError(f"route must be one of: {', '.join(ROUTES)}")
    client = InferenceClient(
        url, token, timeout=min(60.0, time_limit_s), pool_size=concurrency, retry=retry
    )
    deadline = time.monotonic() + time_limit_s
    counter = iter(range(total))
    lock = threading.Lock()
    results: list[tuple[float, float, int]] = []  # (sent at, latency ms, status)
    start = time.monotonic()

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            sent = time.monotonic()
            try:
                status = ROUTES[route](client, model, payloads[index % len(payloads)]).status
            except ServerError:
                status = 0  # no answer: connection refused or reset, retries included
            done = time.monotonic()
            with lock:
                results.append((sent - start, (done - sent) * 1000.0, status))

    fault_state: dict = {}
    killer = None
    if kill_worker_after_s is not None:
        if not management_url:
            raise ServerError("a fault check needs the management address")
        check_loopback(management_url)
        killer = threading.Thread(
            target=_kill_one_worker,
            args=(management_url, model, management_token, kill_worker_after_s, start, fault_state),
            daemon=True,
        )
        killer.start()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(worker)
    duration = time.monotonic() - start
    if killer is not None:
        killer.join(timeout=max(0.0, deadline - time.monotonic()) + 5)

    latencies = sorted(ms for _, ms, _ in results)
    errors = Counter(str(status) for _, _, status in results if status != 200)
    fault = _fault_report(fault_state, results) if fault_state.get("pid") else None
    return LoadReport(
        url=url.rstrip("/")
        + (f"/predictions/{model}" if route == "predictions" else f"/v2/models/{model}/infer"),
        requests=total,
        completed=len(results),
        concurrency=concurrency,
        duration_s=round(duration, 3),
        throughput_rps=round(len(results) / duration, 2) if duration > 0 else 0.0,
        latency_ms={
            "p50": round(percentile(latencies, 50), 3),
            "p90": round(percentile(latencies, 90), 3),
            "p99": round(percentile(latencies, 99), 3),
            "mean": round(statistics.fmean(latencies), 3) if latencies else 0.0,
            "max": round(latencies[-1], 3) if latencies else 0.0,
        },
        errors_by_status=dict(errors),
        stopped_by_time_limit=len(results) < total,
        fault=fault,
        retries={**client.retry_stats.to_dict(), "enabled": client.retrier.policy.attempts > 1},
    )


def _kill_one_worker(
    management_url: str,
    model: str,
    token: str | None,
    after_s: float,
    start: float,
    state: dict,
) -> None:
    """Kill one READY worker of ``model`` after ``after_s``; then wait for its replacement: a
    READY worker that was not there before the kill (with two or more workers the others stay
    READY throughout, and are no sign of recovery)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    time.sleep(after_s)
    pids = worker_pids(management_url, model, headers)
    if not pids:
        return
    state["pid"] = pids[0]
    state["at"] = time.monotonic() - start
    os.kill(pids[0], signal.SIGKILL)
    limit = time.monotonic() + 120
    while time.monotonic() < limit:
        try:
            fresh = [p for p in worker_pids(management_url, model, headers) if p not in pids]
        except (requests.RequestException, ServerError):
            fresh = []
        if fresh:
            state["ready"] = time.monotonic() - start
            return
        time.sleep(0.1)


def _latency_summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "p99": round(percentile(ordered, 99), 3),
        "max": round(ordered[-1], 3) if ordered else 0.0,
    }


def _fault_report(state: dict, results: list[tuple[float, float, int]]) -> FaultReport:
    killed_at = state["at"]
    ready_at = state.get("ready", max((sent for sent, _, _ in results), default=killed_at))
    failed = Counter(
        str(status)
        for sent, ms, status in results
        if status != 200 and sent + ms / 1000.0 >= killed_at
    )
    answered_after = [
        sent + ms / 1000.0 for sent, ms, status in results if status == 200 and sent >= killed_at
    ]
    before = [ms for sent, ms, _ in results if sent + ms / 1000.0 < killed_at]
    affected = [
        ms for sent, ms, _ in results if sent <= ready_at and sent + ms / 1000.0 >= killed_at
    ]
    return FaultReport(
        killed_pid=state["pid"],
        killed_at_s=round(killed_at, 3),
        failed_requests=sum(failed.values()),
        failed_by_status=dict(failed),
        recovery_s=round(min(answered_after) - killed_at, 3) if answered_after else None,
        worker_ready_s=round(state["ready"] - killed_at, 3) if "ready" in state else None,
        latency_before_ms=_latency_summary(before),
        latency_affected_ms=_latency_summary(affected),
    )


def format_report(report: LoadReport) -> str:
    """A short human-readable summary."""
    lat = report.latency_ms
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(report.errors_by_status.items())) or "none"
    lines = [
        f"{report.completed}/{report.requests} requests to {report.url} at concurrency "
        f"{report.concurrency} in {report.duration_s:.2f} s"
        + (" (stopped by the time limit)" if report.stopped_by_time_limit else ""),
        f"throughput {report.throughput_rps:.1f} req/s; latency ms p50 {lat['p50']:.1f}, "
        f"p90 {lat['p90']:.1f}, p99 {lat['p99']:.1f}, max {lat['max']:.1f}",
        f"errors by status: {errors}",
    ]
    retries = report.retries or {}
    if retries.get("retries"):
        lines.append(
            f"retries: {retries['retries']} for {retries['retried_calls']} requests "
            f"({retries['recovered_calls']} answered on a retry"
            + (
                f", {retries['budget_refusals']} refused by the retry budget"
                if retries.get("budget_refusals")
                else ""
            )
            + ")"
        )
    elif retries:
        lines.append("retries: none needed" if retries.get("enabled") else "retries: off")
    if report.fault:
        f = report.fault
        recovery = "never" if f.recovery_s is None else f"{f.recovery_s:.2f} s"
        ready = "never" if f.worker_ready_s is None else f"{f.worker_ready_s:.2f} s"
        before, hit = f.latency_before_ms, f.latency_affected_ms
        lines.append(
            f"fault: killed worker pid {f.killed_pid} at {f.killed_at_s:.2f} s; "
            f"{f.failed_requests} requests failed"
            + (" after retries" if retries.get("enabled") else "")
            + (f" {f.failed_by_status}" if f.failed_by_status else "")
            + f"; first answer after {recovery}, new worker ready after {ready}"
        )
        lines.append(
            f"fault cost: latency ms p99 {before['p99']:.1f} / max {before['max']:.1f} before "
            f"the kill; p99 {hit['p99']:.1f} / max {hit['max']:.1f} for the {hit['requests']} "
            f"requests in flight from the kill until the new worker was ready"
        )
    return "\n".join(lines)


def v2_image_bodies(images: Sequence[bytes]) -> list[bytes]:
    """One KServe v2 JSON request per image (for ``route="v2"``): input ``images``, BYTES
    ``[1, 1]``, base64 as the v2 JSON protocol carries bytes."""
    return [
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "images",
                        "shape": [1, 1],
                        "datatype": "BYTES",
                        "data": [base64.b64encode(image).decode()],
                    }
                ]
            }
        ).encode()
        for image in images
    ]
