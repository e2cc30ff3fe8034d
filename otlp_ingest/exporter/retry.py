"""Retry policy for batch sends: what is retryable, how long to wait, and the retry loop.

Per the OTLP specification (opentelemetry-proto docs/specification.md, "Failures"):

- gRPC retryable codes: UNAVAILABLE, ABORTED, CANCELLED, DEADLINE_EXCEEDED, OUT_OF_RANGE,
  DATA_LOSS, and RESOURCE_EXHAUSTED *only* when the server attached `google.rpc.RetryInfo`
  (without it, RESOURCE_EXHAUSTED means "too large" and retrying cannot help).
- HTTP retryable statuses: 429, 502, 503, 504. Everything else >= 400 is permanent.
- "Too large" (HTTP 413, RESOURCE_EXHAUSTED without RetryInfo) is permanent *as sent*; the error
  says so (`SendError.too_large`) and the exporter splits the batch (`split.py`).
- The server's hint wins: RetryInfo.retry_delay (from the `grpc-status-details-bin` trailer, a
  serialized `google.rpc.Status`) or `Retry-After` (delay-seconds or an HTTP-date).
- Otherwise exponential backoff with full jitter: uniform(0, min(max, initial * 2**attempt)).
- `max_elapsed == 0` means retry forever (the OpenTelemetry Collector's `max_elapsed_time: 0`):
  with a ring or WAL behind the exporter, a long outage then turns into honest retryable refusals
  at the receiver instead of acknowledged data silently given up.

Waits happen on an Event so that an abort (the shutdown deadline) interrupts them at once.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2

from otlp_ingest.config import Settings
from otlp_ingest.exporter.sender import SendError

T = TypeVar("T")

RETRYABLE_GRPC_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.DATA_LOSS,
    }
)
RETRYABLE_HTTP_STATUSES = frozenset({429, 502, 503, 504})

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class RetryAborted(Exception):
    """The abort event was set (shutdown deadline): the batch was neither sent nor given up."""


class RetriesExhausted(SendError):
    """Retrying would pass retry_max_elapsed (> 0); the batch is given up (counted as send-failed)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


def grpc_retry_delay(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> float | None:
    """Seconds from a RetryInfo inside the `grpc-status-details-bin` trailer, or None."""
    for key, value in trailing_metadata or ():
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:
            return None
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return max(0.0, info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None


def grpc_send_error(
    code: grpc.StatusCode,
    details: str | None,
    trailing_metadata: Iterable[tuple[str, str | bytes]] | None,
) -> SendError:
    """Classify a failed gRPC call."""
    delay = grpc_retry_delay(trailing_metadata)
    too_large = False
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        retryable = delay is not None
        too_large = not retryable  # without RetryInfo it means "message too large"
    else:
        retryable = code in RETRYABLE_GRPC_CODES
    return SendError(
        f"gRPC {code.name}: {details or ''}", retryable=retryable, retry_after=delay, too_large=too_large
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds: delay-seconds (fractions tolerated) or an HTTP-date; else None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def http_send_error(status: int, retry_after: str | None, body_snippet: str = "") -> SendError:
    """Classify a non-2xx HTTP response."""
    return SendError(
        f"HTTP {status}: {body_snippet[:200]}",
        retryable=status in RETRYABLE_HTTP_STATUSES,
        retry_after=parse_retry_after(retry_after),
        too_large=status == 413,
    )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff parameters (seconds). `max_elapsed == 0` means no deadline: retry until success,
    a permanent error or abort."""

    initial_interval: float = 0.5
    max_interval: float = 30.0
    max_elapsed: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.retry_initial_interval, settings.retry_max_interval, settings.retry_max_elapsed)

    def backoff(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Full jitter: uniform in [0, min(max_interval, initial * 2**attempt)]."""
        ceiling = min(self.max_interval, self.initial_interval * (2 ** min(attempt, 62)))
        return rand() * ceiling


def call_with_retry(
    attempt: Callable[[], T],
    policy: RetryPolicy,
    abort: threading.Event,
    on_retry: Callable[[SendError, float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    rand: Callable[[], float] = random.random,
) -> T:
    """Call `attempt` until it succeeds, fails permanently, or retrying would pass max_elapsed
    (never, when max_elapsed is 0).

    Raises the permanent `SendError`, `RetriesExhausted`, or `RetryAborted` when `abort` is set
    (checked before every attempt and interrupting every wait). A server hint is used as given
    (not capped by max_interval: the server knows best), but a hint beyond the remaining budget
    gives up at once rather than sleeping to no purpose.
    """
    start = clock()
    n = 0
    while True:
        if abort.is_set():
            raise RetryAborted()
        try:
            return attempt()
        except SendError as error:
            if not error.retryable:
                raise
            delay = error.retry_after if error.retry_after is not None else policy.backoff(n, rand)
            if policy.max_elapsed > 0 and clock() - start + delay > policy.max_elapsed:
                raise RetriesExhausted(f"gave up after {n + 1} attempts: {error.message}") from error
            if on_retry is not None:
                on_retry(error, delay)
            if abort.wait(delay):
                raise RetryAborted() from error
            n += 1
