"""`ExporterState`: what an exporter is doing right now, for the admin status page.

The sending threads report every attempt (`attempt_done`) and every retry they schedule
(`retry_scheduled`); the child's status writer (telemetry.child_status) calls `section()` once a
second and writes it to the status file under "exporter". Per batch attempt, never per record or
per request: a lock and a few assignments.

The "exporter" section of the status file::

    {
      "state": "retrying",          # "idle": nothing in flight; "sending": batches in flight and
                                    # the last attempt succeeded; "retrying": the last attempt
                                    # failed with a retryable error (backend down, overloaded)
      "in_flight": 1,               # batches handed to the sending threads, not finished
      "window": 1, "window_limit": 4,   # send window (congestion.py) and its ceiling
      "attempts": 12, "failed_attempts": 9,  # since the exporter started
      "retrying": {                 # null unless state is "retrying"
        "since": 1732700001.2,      # wall clock of the first failure in a row
        "failures": 9,              # retryable failures in a row
        "backoff_s": 1.0,           # the delay chosen before the next attempt (server hint first)
        "next_attempt": 1732700011.7  # wall clock when the next attempt is due
      },
      "last_error": {"time": 1732700010.7, "message": "gRPC UNAVAILABLE: ...", "retryable": true},
      "last_success": 1732700000.9, # wall clock of the last acknowledged attempt (null: none yet)
      "latency": {"window_s": 60, "samples": 40, "p50_s": 0.004, "p99_s": 0.05}
    }

Latency is the duration of every attempt, success or failure (like
`otlp_export_duration_seconds`) over the last `LATENCY_WINDOW` seconds, at most `LATENCY_SAMPLES`
of them; p50/p99 are null without samples.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

LATENCY_WINDOW = 60.0
LATENCY_SAMPLES = 1024
MAX_ERROR = 300  # characters of an error message kept


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1) of an ascending list; None when empty."""
    if not sorted_values:
        return None
    rank = max(0, min(len(sorted_values) - 1, int(q * len(sorted_values) + 0.999999) - 1))
    return sorted_values[rank]


class ExporterState:
    """Thread-safe record of attempts and retries (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._latencies: deque[tuple[float, float]] = deque(maxlen=LATENCY_SAMPLES)
        self.attempts = 0
        self.failed_attempts = 0
        self._failures_in_a_row = 0
        self._failing_since: float | None = None
        self._backoff: float | None = None
        self._next_attempt: float | None = None
        self._last_error: dict[str, Any] | None = None
        self._last_success: float | None = None

    def attempt_done(self, duration: float | None, error: str | None = None, retryable: bool = False) -> None:
        """One send attempt finished: acknowledged (`error` None) or failed with `error`.
        `duration` None: no backend call was timed (a failure in our own code around it)."""
        now = self._clock()
        with self._lock:
            self.attempts += 1
            if duration is not None:
                self._latencies.append((now, duration))
            if error is None:
                self._last_success = now
                self._failures_in_a_row = 0
                self._failing_since = self._backoff = self._next_attempt = None
                return
            self.failed_attempts += 1
            self._last_error = {"time": round(now, 3), "message": error[:MAX_ERROR], "retryable": retryable}
            if retryable:
                if self._failures_in_a_row == 0:
                    self._failing_since = now
                self._failures_in_a_row += 1

    def retry_scheduled(self, delay: float) -> None:
        """A retryable failure will be retried after `delay` seconds."""
        now = self._clock()
        with self._lock:
            self._backoff = delay
            self._next_attempt = now + delay

    def section(self, in_flight: int, window: int, window_limit: int) -> dict[str, Any]:
        """The "exporter" section of the status file."""
        now = self._clock()
        with self._lock:
            recent = sorted(d for t, d in self._latencies if now - t <= LATENCY_WINDOW)
            retrying = None
            if self._failures_in_a_row:
                retrying = {
                    "since": _round(self._failing_since),
                    "failures": self._failures_in_a_row,
                    "backoff_s": _round(self._backoff),
                    "next_attempt": _round(self._next_attempt),
                }
            state = "retrying" if retrying else ("sending" if in_flight else "idle")
            return {
                "state": state,
                "in_flight": in_flight,
                "window": window,
                "window_limit": window_limit,
                "attempts": self.attempts,
                "failed_attempts": self.failed_attempts,
                "retrying": retrying,
                "last_error": dict(self._last_error) if self._last_error else None,
                "last_success": _round(self._last_success),
                "latency": {
                    "window_s": LATENCY_WINDOW,
                    "samples": len(recent),
                    "p50_s": _round(percentile(recent, 0.50), 6),
                    "p99_s": _round(percentile(recent, 0.99), 6),
                },
            }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)
