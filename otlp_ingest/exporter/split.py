"""Sending a batch the backend says is too large: split it and send the halves.

A backend answers HTTP 413 or gRPC RESOURCE_EXHAUSTED without RetryInfo when a request is over
its size limit (`SendError.too_large`). Retrying the same bytes cannot help, so `send_batch`
splits and resends, depth first and oldest part first (delivery order is kept):

1. A batch of several ring records splits at record boundaries (no decode: each half is still a
   concatenation of whole serialized requests).
2. A single record is decoded once and split at the first level that has more than one entry:
   its resource list, else the one resource's scope list, else the one scope's items (spans,
   log records; for metrics the metric list, else the one metric's data points).
3. A single item that is still too large is given up and counted with reason `too_large`.

The caller commits the batch's records only after `send_batch` returns, i.e. after every part
was acknowledged or given up. An abort (shutdown) propagates as `RetryAborted` and nothing is
committed, so parts already delivered may be delivered again by the next exporter
(at-least-once).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from otlp_ingest.exporter.retry import RetriesExhausted
from otlp_ingest.exporter.sender import SendError, SendResult
from otlp_ingest.otlp.signals import SIGNALS, Signal

# The `reason` label of otlp_exporter_send_failed_*_total: why items were given up on.
PERMANENT = "permanent"  # the backend rejected the data (HTTP 400/4xx, INVALID_ARGUMENT, ...)
RETRIES_EXHAUSTED = "retries_exhausted"  # retryable failures past OTLP_RETRY_MAX_ELAPSED
TOO_LARGE = "too_large"  # one item alone is over the backend's size limit
REASONS = (PERMANENT, RETRIES_EXHAUSTED, TOO_LARGE)

# Repeated fields from the request down to the items, per signal.
_PATHS: dict[Signal, tuple[str, ...]] = {
    Signal.TRACES: ("resource_spans", "scope_spans", "spans"),
    Signal.LOGS: ("resource_logs", "scope_logs", "log_records"),
    Signal.METRICS: ("resource_metrics", "scope_metrics", "metrics", "*data_points"),
}

Part = tuple[bytes, int]  # (serialized Export*ServiceRequest, item count)


def _children(node: Any, name: str) -> Any:
    """The repeated field `name` of `node`; `*data_points` is the points of a Metric's data."""
    if name == "*data_points":
        kind = node.WhichOneof("data")
        return getattr(node, kind).data_points if kind else []
    return getattr(node, name)


def count_items(signal: Signal, message: Message) -> int:
    """Items (spans, metric data points, log records) in a decoded Export*ServiceRequest."""
    path = _PATHS[signal]

    def walk(node: Any, depth: int) -> int:
        children = _children(node, path[depth])
        if depth == len(path) - 1:
            return len(children)
        return sum(walk(child, depth + 1) for child in children)

    return walk(message, 0)


def split_request(signal: Signal, payload: bytes) -> tuple[Part, Part] | None:
    """Split one serialized Export*ServiceRequest into two valid requests holding its items
    between them (see the module docstring for where), or None if it holds at most one item."""
    request_type = SIGNALS[signal].request_type
    first = request_type.FromString(payload)
    second = request_type.FromString(payload)
    node_a: Any = first
    node_b: Any = second
    for name in _PATHS[signal]:
        children_a = _children(node_a, name)
        n = len(children_a)
        if n == 0:
            return None
        if n > 1:
            mid = n // 2
            del children_a[mid:]
            del _children(node_b, name)[:mid]
            return (
                (first.SerializeToString(), count_items(signal, first)),
                (second.SerializeToString(), count_items(signal, second)),
            )
        node_a, node_b = children_a[0], _children(node_b, name)[0]
    return None


def _halves(signal: Signal, parts: list[Part]) -> list[list[Part]] | None:
    if len(parts) > 1:
        mid = len(parts) // 2
        return [parts[:mid], parts[mid:]]
    try:
        split = split_request(signal, parts[0][0])
    except Exception:  # a record that does not decode cannot be split (nor ever accepted)
        return None
    return None if split is None else [[split[0]], [split[1]]]


@dataclass(slots=True)
class SendReport:
    """What became of a batch: items acknowledged, items given up per reason, and the backend's
    partial_success (rejected count and last message)."""

    sent: int = 0
    rejected: int = 0
    rejected_message: str = ""
    failed: dict[str, int] = field(default_factory=dict)
    failure_message: str = ""
    splits: int = 0

    def fail(self, reason: str, items: int, message: str) -> None:
        self.failed[reason] = self.failed.get(reason, 0) + items
        self.failure_message = message


def reason_for(error: SendError) -> str:
    if error.too_large:
        return TOO_LARGE
    if isinstance(error, RetriesExhausted):
        return RETRIES_EXHAUSTED
    return PERMANENT


def send_batch(signal: Signal, parts: list[Part], send: Callable[[bytes], SendResult]) -> SendReport:
    """Send the concatenation of `parts`, splitting on "too large" as the module docstring says.

    `send` sends one payload with retries and raises `SendError` when it gives up (or
    `RetryAborted`, which propagates). Never raises SendError itself: failures are in the report.
    """
    report = SendReport()
    stack = [parts]  # last = next to send; halves are pushed second-first so order is kept
    while stack:
        chunk = stack.pop()
        items = sum(n for _, n in chunk)
        payload = chunk[0][0] if len(chunk) == 1 else b"".join(p for p, _ in chunk)
        try:
            result = send(payload)
        except SendError as error:
            if error.too_large:
                halves = _halves(signal, chunk)
                if halves is not None:
                    report.splits += 1
                    stack.extend(reversed(halves))
                    continue
            report.fail(reason_for(error), items, error.message)
            continue
        report.sent += items
        if result.rejected or result.error_message:
            report.rejected += result.rejected
            report.rejected_message = result.error_message
    return report
