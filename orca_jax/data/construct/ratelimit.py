"""Pacing of teacher requests: per-minute request and token budgets, and retry backoff.

Hosted APIs meter both requests and tokens per minute. A request is admitted when both token
buckets hold enough; its token cost is estimated before sending (the reply's length is unknown) and
corrected from the reply's `usage` afterwards, so long replies slow later requests down.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable


class _Bucket:
    """A bucket refilled continuously at `per_minute / 60` per second, holding at most a minute's worth."""

    def __init__(self, per_minute: float, now: float):
        if per_minute <= 0:
            raise ValueError(f"a per-minute limit must be positive, got {per_minute}")
        self.capacity = float(per_minute)
        self.level = self.capacity
        self._rate = per_minute / 60.0
        self._updated = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self._updated) * self._rate)
        self._updated = now

    def seconds_until(self, amount: float) -> float:
        # A cost above the capacity would never fit: it waits for a full bucket instead.
        missing = min(amount, self.capacity) - self.level
        return max(0.0, missing / self._rate)


class RateLimiter:
    """Thread-safe admission of requests under requests-per-minute and tokens-per-minute limits."""

    def __init__(
        self,
        requests_per_minute: float,
        tokens_per_minute: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        now = clock()
        self._requests = _Bucket(requests_per_minute, now)
        self._tokens = _Bucket(tokens_per_minute, now)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()

    def acquire(self, tokens: int) -> None:
        """Block until one request costing about `tokens` may be sent, then charge it."""
        while True:
            with self._lock:
                now = self._clock()
                self._requests.refill(now)
                self._tokens.refill(now)
                wait = max(self._requests.seconds_until(1), self._tokens.seconds_until(tokens))
                if wait <= 0:
                    self._requests.level -= 1
                    self._tokens.level -= tokens
                    return
            self._sleep(wait)

    def settle(self, estimated_tokens: int, actual_tokens: int) -> None:
        """Replace a request's estimated token cost by what the reply says it used."""
        with self._lock:
            self._tokens.refill(self._clock())
            self._tokens.level = min(self._tokens.capacity, self._tokens.level + estimated_tokens - actual_tokens)


def backoff_delay(retry: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter, so clients that failed together do not retry together."""
    return rng.uniform(0.0, min(max_s, initial_s * 2.0 ** retry))
