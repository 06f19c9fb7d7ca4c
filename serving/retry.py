"""Retries for inference calls: bounded exponential backoff with full jitter, within a budget.

Inference is idempotent, so a request that failed because its worker died or whose connection
was reset can be sent again. TorchServe 0.12 answers the requests a dying worker held with
"Worker died.": 507 when it has read the worker's exit code 137 (killed) by then, 500 when it
has not yet (a race inside its frontend: seen on a killed worker), and 503 while no worker can
take a request; over gRPC UNAVAILABLE, or INTERNAL "Worker died.". Each call tries at most
``attempts`` times and starts no retry after ``deadline_s``; across a client, retries may not
exceed ``budget_ratio`` of its calls (plus ``budget_min``), so a server that is down is not
hammered by every client at once (the retry budget of Finagle and gRPC's retry throttling).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = ["NO_RETRY", "WORKER_DIED", "Retrier", "RetryPolicy", "RetryStats", "worker_died"]

T = TypeVar("T")

# How TorchServe's message for the requests a worker held when it died begins ("Worker died.",
# whatever the status or protocol).
WORKER_DIED = "Worker died"


def worker_died(message: object) -> bool:
    """Whether a server's error message is TorchServe's answer for a worker that died."""
    return isinstance(message, str) and WORKER_DIED in message


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently one client retries."""

    attempts: int = 8  # tries of one call, the first included
    base_s: float = 0.05  # the first backoff's upper bound; doubles each retry
    max_backoff_s: float = 2.0
    deadline_s: float = 30.0  # no retry starts later than this after the call began
    budget_ratio: float = 0.2  # retries allowed per call made, across the client
    budget_min: int = 20  # retries allowed before any call has been made
    retry_statuses: frozenset[int] = field(default_factory=lambda: frozenset({503, 507}))

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")

    def retries_answer(self, status: int, message: object) -> bool:
        """Whether an HTTP answer is worth sending again: one of ``retry_statuses``, or any
        server error whose message is TorchServe's for a worker that died."""
        return status in self.retry_statuses or (status >= 500 and worker_died(message))

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(max_backoff, base * 2**retry)]."""
        return rng.uniform(0.0, min(self.max_backoff_s, self.base_s * 2**retry))


NO_RETRY = RetryPolicy(attempts=1)


@dataclass
class RetryStats:
    """What the retries of one client did (for reports)."""

    calls: int = 0
    retries: int = 0  # extra attempts made
    retried_calls: int = 0  # calls that needed at least one retry
    recovered_calls: int = 0  # calls that failed at first and succeeded on a retry
    budget_refusals: int = 0  # retries not made because the budget was spent

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Retrier:
    """Runs calls under one ``RetryPolicy`` and one budget; thread-safe."""

    def __init__(self, policy: RetryPolicy = RetryPolicy(), seed: int | None = None) -> None:
        self.policy = policy
        self.stats = RetryStats()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def _take_budget(self) -> bool:
        with self._lock:
            allowed = self.policy.budget_min + self.policy.budget_ratio * self.stats.calls
            if self.stats.retries + 1 > allowed:
                self.stats.budget_refusals += 1
                return False
            self.stats.retries += 1
            return True

    def call(self, attempt: Callable[[], T], failed: Callable[[T | None, Exception | None], bool]):
        """``attempt()`` until ``failed(result, error)`` is false or the policy says stop.

        Returns the last result, or raises the last error, exactly as the last attempt did.
        """
        with self._lock:
            self.stats.calls += 1
        started = time.monotonic()
        retried = False
        for number in range(self.policy.attempts):
            result, error = None, None
            try:
                result = attempt()
            except Exception as err:  # classified by ``failed``; re-raised below if final
                error = err
            retry = failed(result, error)
            last_try = (
                number + 1 >= self.policy.attempts
                or time.monotonic() - started >= self.policy.deadline_s
            )
            if not retry or last_try or not self._take_budget():
                if retried and not retry:
                    with self._lock:
                        self.stats.recovered_calls += 1
                if error is not None:
                    raise error
                return result
            if not retried:
                retried = True
                with self._lock:
                    self.stats.retried_calls += 1
            with self._lock:
                pause = self.policy.backoff(number, self._rng)
            time.sleep(pause)
        raise AssertionError("unreachable")  # the loop always returns or raises
