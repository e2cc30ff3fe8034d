"""The seam between the exporter loop and a backend: the `Sender` protocol.

A sender delivers one batch (a serialized `Export*ServiceRequest`, usually the concatenation of
several ring records) and either returns a `SendResult` (the backend or sink acknowledged it) or
raises `SendError` saying whether the failure is worth retrying and what the server hinted.
Senders are called from several sending threads at once and must be thread-safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from otlp_ingest.otlp.signals import SIGNALS, Signal


@dataclass(frozen=True, slots=True)
class SendResult:
    """An acknowledged batch. `rejected`/`error_message` come from the response's partial_success."""

    rejected: int = 0
    error_message: str = ""


class SendError(Exception):
    """A failed send attempt.

    `retryable` follows the OTLP specification's table (see `retry.py`); `retry_after` is the
    server's hint in seconds (gRPC RetryInfo, HTTP Retry-After) or None. `too_large` marks the
    backend's "request too large" (HTTP 413, gRPC RESOURCE_EXHAUSTED without RetryInfo): not
    retryable as sent, but the exporter splits the batch and sends the halves (`split.py`).
    """

    def __init__(
        self, message: str, *, retryable: bool, retry_after: float | None = None, too_large: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.too_large = too_large


class Sender(Protocol):
    """Delivers one batch of one signal. Thread-safe; `close` cancels whatever is in flight."""

    def send(self, signal: Signal, payload: bytes) -> SendResult: ...

    def close(self) -> None: ...


def partial_success(signal: Signal, response: bytes) -> SendResult:
    """Read partial_success from a serialized Export*ServiceResponse (empty bytes -> full success).

    Only the small response is decoded; the request payload never is.
    """
    if not response:
        return SendResult()
    info = SIGNALS[signal]
    try:
        message = info.response_type.FromString(response)
    except Exception:  # a backend answering 200 with junk still took the data
        return SendResult()
    if not message.HasField("partial_success"):
        return SendResult()
    ps = message.partial_success
    return SendResult(int(getattr(ps, info.rejected_field)), ps.error_message)
