"""Counting the protocol servers' defences, the token buckets some of them use, and the byte
budget that admits request bodies.

Every time a connection or a stream is refused, reset or closed to protect the worker, the
protocol code calls `Defences.hit(reason, message)`: the count goes up (the worker turns the
counts into `otlp_transport_defences_total{transport, reason}` in its sweep, so this package
imports no metrics library) and the message is logged through the project's `RateLimitedLogger`,
at most once per LOG_INTERVAL per reason with the number suppressed since: a flood of bad
connections must not flood the log.
The reasons, their limits and the settings that move them are listed in docs/hostile-input.md.
"""

from __future__ import annotations

import logging
import threading

from otlp_ingest.telemetry.logging import RateLimitedLogger

log = logging.getLogger("otlp_ingest.transport")

LOG_INTERVAL = 10.0


class Defences:
    """Per-reason counts of one transport of one worker (single-threaded: the event loop)."""

    __slots__ = ("_log", "counts", "transport")

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.counts: dict[str, int] = {}
        self._log = RateLimitedLogger(log, LOG_INTERVAL)

    def hit(self, reason: str, message: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self._log.warning(reason, "%s defence %s: %s", self.transport, reason, message)

    def take(self) -> dict[str, int]:
        """The counts since the last call (for the metrics flush)."""
        counts, self.counts = self.counts, {}
        return counts


class TokenBucket:
    """`burst` tokens, refilled at `rate` per second; `spend` says whether any were left.

    Used for what a well-behaved peer does rarely and an abuser does in floods (resets, empty
    frames, PINGs): a burst is fine, a sustained rate above `rate` is not."""

    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, burst: float, rate: float, now: float) -> None:
        self.burst = burst
        self.rate = rate
        self._tokens = burst
        self._at = now

    def spend(self, now: float, cost: float = 1.0) -> bool:
        tokens = self._tokens + (now - self._at) * self.rate
        self._at = now
        if tokens > self.burst:
            tokens = self.burst
        tokens -= cost
        self._tokens = tokens
        return tokens >= 0

    def refund(self, amount: float = 1.0) -> None:
        self._tokens = min(self.burst, self._tokens + amount)


class BodyBudget:
    """A byte budget for request bodies held by one worker; `try_charge` is all or nothing.

    Used from the event loop and the offload threads, hence the lock (uncontended: ~100 ns)."""

    __slots__ = ("_lock", "capacity", "used")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._lock = threading.Lock()

    def try_charge(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.capacity:
                return False
            self.used += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self.used -= n
