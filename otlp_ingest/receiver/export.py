"""The one export path both transports call: decode, validate, write to the ring, count.

    ExportService(ring_writer, settings).export(signal, body, content_format, transport)
        -> ExportResult(response, accepted, rejected)

`body` is the (already decompressed, size-checked) request body; `content_format` is "protobuf"
or "json"; `transport` ("grpc" | "http") only labels metrics. Errors are raised as the types in
`otlp_ingest.errors` (InvalidArgument, QueueFull, ShuttingDown); the transport maps them with
`otlp_ingest.status`. This module knows nothing of HTTP/1.1, HTTP/2 or gRPC.

What lands in the ring is always the serialized protobuf `Export*ServiceRequest` holding only the
valid items: the original bytes when every item is valid (no re-encode), else the re-serialized
subset that `validate` produced. A request with no valid items writes nothing.

Durable mode (the queue is a `WalWriter`): `export` appends the record and returns a result whose
`ticket` is not None. The record is not on disk yet: the transport must not answer before
`await durable` (an asyncio future: the event loop keeps serving) confirms it. While requests
wait, the log's fsync thread covers all records appended so far with one fsync (group commit), so
concurrent requests share it. Accepted counters and the ok/partial outcome are counted only then;
a failed or timed-out fsync, a full or unwritable disk, or the disk bound (`queue_max_bytes`) is
a retryable refusal (QueueFull / DiskFull: UNAVAILABLE + RetryInfo, 503 + Retry-After) and the
worker keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from otlp_ingest import errors
from otlp_ingest.config import Settings
from otlp_ingest.otlp.json_codec import decode_json
from otlp_ingest.otlp.signals import SIGNALS, Signal, response_bytes
from otlp_ingest.otlp.validate import ValidatedPayload, validate_message, validate_protobuf
from otlp_ingest.telemetry import metrics
from otlp_ingest.telemetry.logging import RateLimitedLogger
from otlp_ingest.wal import DiskFull

log = logging.getLogger(__name__)

ContentFormat = Literal["protobuf", "json"]

# Advice given to clients when the ring is full (see QueueFullHint): the exporter drains a ring in
# well under a second when the backend keeps up, so one second (the smallest hint the wire formats
# allow) is the first hint; it doubles as the queue stays full, up to the cap.
QUEUE_FULL_RETRY_AFTER = 1.0
QUEUE_FULL_RETRY_AFTER_MAX = 30.0
SHUTTING_DOWN_RETRY_AFTER = 1.0
# The limiter samples every 0.2 s and usage falls as soon as in-flight requests finish and the
# exporters drain: a short hint; clients back off exponentially on repeated refusals anyway.
MEMORY_RETRY_AFTER = 1.0

# Longest a request waits for its fsync before it is refused (retryable): a healthy disk takes
# milliseconds; a stalled one must not hold clients (or gRPC handler threads) for ever.
DURABLE_WAIT_TIMEOUT = 5.0
DISK_RETRY_AFTER = 5.0

# JSON names of Export*PartialSuccess.rejected_* (OTLP/JSON uses lowerCamelCase).
_JSON_REJECTED_FIELD = {
    Signal.TRACES: "rejectedSpans",
    Signal.METRICS: "rejectedDataPoints",
    Signal.LOGS: "rejectedLogRecords",
}


class RingWriterLike(Protocol):
    """The seam to the ring: `otlp_ingest.ring.RingWriter` satisfies it."""

    @property
    def max_payload(self) -> int: ...

    def try_write(self, signal: int, item_count: int, payload: bytes | memoryview) -> bool: ...

    def close(self) -> None: ...


class MemoryGateLike(Protocol):
    """The seam to the memory limiter: `otlp_ingest.telemetry.memory.MemoryGate` satisfies it.
    `state()` is 0 (accept), 1 (refuse) or 2 (refuse, above the hard limit)."""

    def state(self) -> int: ...


class DurableLogLike(Protocol):
    """The seam to a write-ahead log: `otlp_ingest.wal.WalWriter` satisfies it."""

    @property
    def max_payload(self) -> int: ...

    def append(self, signal: int, item_count: int, payload: bytes | memoryview) -> int | None: ...

    def wait_durable(self, ticket: int, timeout: float | None = None) -> bool: ...

    def durable_future(self, ticket: int, loop: asyncio.AbstractEventLoop) -> asyncio.Future[bool]: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class _Pending:
    """What to count once a durable-mode request's fsync is decided."""

    series: _Series
    outcome: str  # "ok" | "partial"
    started: float


@dataclass(slots=True)
class ExportResult:
    """What the transport sends back: `response` is the serialized Export*ServiceResponse in the
    request's content format (protobuf bytes, or OTLP/JSON bytes such as `{}`). `ticket` is not
    None in durable mode: answer only after `ExportService.durable`."""

    response: bytes
    accepted: int
    rejected: int
    ticket: int | None = None
    pending: _Pending | None = None


def response_json(signal: Signal, rejected: int = 0, error_message: str = "") -> bytes:
    """OTLP/JSON of an Export*ServiceResponse: `{}` when empty, else `partialSuccess` (int64 as a
    decimal string, per the proto3 JSON mapping)."""
    if not rejected and not error_message:
        return b"{}"
    partial: dict[str, str] = {}
    if rejected:
        partial[_JSON_REJECTED_FIELD[signal]] = str(rejected)
    if error_message:
        partial["errorMessage"] = error_message
    return json.dumps({"partialSuccess": partial}, separators=(",", ":")).encode()


class QueueFullHint:
    """The Retry-After / RetryInfo delay for "queue full": honest and cheap.

    The ring only stays full when the exporter cannot drain it (backend down or slower than the
    clients), and an outage that has lasted T seconds is likely to last about as long again. So
    the hint is 1 s while the queue has been full for under a second, then doubles with the time
    it has been full without a successful write (1, 2, 4, 8, 16, 30 s cap), times a jitter factor
    in [0.5, 1.5) so refused clients come back spread out rather than all at once. Any successful
    write (the exporter freed room) resets it. Per worker, no I/O, one clock read per refusal;
    the transports round it to whole seconds (at least 1).
    """

    __slots__ = ("_clock", "_rand", "_since")

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, rand: Callable[[], float] = random.random
    ) -> None:
        self._clock = clock
        self._rand = rand
        self._since: float | None = None

    def refused(self) -> float:
        """A write was refused: the delay to advise, in seconds."""
        now = self._clock()
        if self._since is None:
            self._since = now
        full_for = now - self._since
        base = min(
            QUEUE_FULL_RETRY_AFTER_MAX, QUEUE_FULL_RETRY_AFTER * 2 ** math.floor(math.log2(1 + full_for))
        )
        return min(QUEUE_FULL_RETRY_AFTER_MAX, base * (0.5 + self._rand()))

    def accepted(self) -> None:
        """A write succeeded: the queue drains again."""
        self._since = None


class _Series:
    """Metric children for one (signal, transport), resolved once: `.labels()` is not free."""

    __slots__ = ("_signal_name", "_transport", "accepted", "duration", "outcomes", "refused")

    def __init__(self, signal: Signal, transport: str) -> None:
        name = SIGNALS[signal].name
        self.accepted = metrics.RECEIVER_ACCEPTED[signal].labels(transport)
        self.refused = metrics.RECEIVER_REFUSED[signal].labels(transport)
        self.duration = metrics.RECEIVER_REQUEST_DURATION.labels(transport, name)
        self.outcomes: dict[str, object] = {}
        self._signal_name = name
        self._transport = transport

    def outcome(self, outcome: str) -> None:
        child = self.outcomes.get(outcome)
        if child is None:
            child = metrics.RECEIVER_REQUESTS.labels(self._transport, self._signal_name, outcome)
            self.outcomes[outcome] = child
        child.inc()  # type: ignore[attr-defined]


def outcome_for(error: BaseException) -> str:
    """The `outcome` label of otlp_receiver_requests_total for a failed request."""
    if isinstance(error, errors.PayloadTooLarge):
        return "too_large"
    if isinstance(error, errors.UnsupportedMediaType | errors.UnsupportedEncoding):
        return "unsupported"
    if isinstance(error, errors.PermanentError):
        return "invalid"
    if isinstance(error, errors.RetryableError):
        return "refused"
    return "error"


class ExportService:
    """The transport-agnostic export path of one receiver worker. Thread-safe: the event loop and
    the offload threads (big bodies) call `export` concurrently; ring writes are serialized by a
    lock because the ring has exactly one producer."""

    def __init__(
        self,
        ring_writer: RingWriterLike | DurableLogLike,
        settings: Settings,
        memory: MemoryGateLike | None = None,
    ) -> None:
        self._ring = ring_writer
        # Durable mode: the queue is a write-ahead log (it has group-commit durability).
        self._log: DurableLogLike | None = ring_writer if hasattr(ring_writer, "durable_future") else None  # type: ignore[assignment]
        self._memory = memory
        self._settings = settings
        self._lock = threading.Lock()
        self._draining = False
        self._closed = False
        self._series: dict[tuple[Signal, str], _Series] = {}
        self._full_log = RateLimitedLogger(log)
        self._full_hint = QueueFullHint()
        # Empty responses are the common case: build them once.
        self._empty = {(signal, "protobuf"): response_bytes(signal) for signal in SIGNALS} | {
            (signal, "json"): b"{}" for signal in SIGNALS
        }

    @property
    def is_durable(self) -> bool:
        """True in durable mode: results carry a ticket to wait for before answering."""
        return self._log is not None

    @property
    def draining(self) -> bool:
        return self._draining

    def start_draining(self) -> None:
        """From now on every export is refused with ShuttingDown (retryable)."""
        self._draining = True

    def close(self) -> None:
        """Refuse further exports and close the ring writer (after in-flight writes finish)."""
        with self._lock:
            self._draining = True
            if not self._closed:
                self._closed = True
                self._ring.close()

    def _series_for(self, signal: Signal, transport: str) -> _Series:
        series = self._series.get((signal, transport))
        if series is None:
            series = self._series[(signal, transport)] = _Series(signal, transport)
        return series

    def memory_refusing(self) -> bool:
        """True while the memory limiter refuses: lets a transport refuse before reading a body."""
        return self._memory is not None and self._memory.state() != 0

    def record_failure(self, signal: Signal, transport: str, error: BaseException) -> None:
        """Count a request the transport refused before calling `export` (413, 415, ...)."""
        self._series_for(signal, transport).outcome(outcome_for(error))

    def export(
        self, signal: Signal, body: bytes, content_format: ContentFormat, transport: str
    ) -> ExportResult:
        """Validate `body` and queue its valid items. See the module docstring."""
        started = time.perf_counter()
        series = self._series_for(signal, transport)
        try:
            if self._draining:
                raise errors.ShuttingDown(
                    "server is shutting down; retry against another replica",
                    retry_after=SHUTTING_DOWN_RETRY_AFTER,
                )
            if self._memory is not None and (memory_state := self._memory.state()):
                self._refuse_for_memory(signal, body, content_format, series, memory_state)
            # Items over the batch byte cap could never be sent: refused here (partial_success).
            validated = _validated(signal, body, content_format, self._settings.batch_max_bytes)
            accepted = validated.accepted
            rejected = validated.rejected
            ticket = None
            if accepted:
                try:
                    ticket = self._write(signal, accepted, validated.payload)
                except (errors.RetryableError, errors.PayloadTooLarge):
                    series.refused.inc(accepted + rejected)
                    raise
                if ticket is None:
                    series.accepted.inc(accepted)
            outcome = "partial" if rejected or validated.error_message else "ok"
            if rejected:
                series.refused.inc(rejected)
            if outcome == "partial":
                if content_format == "protobuf":
                    response = response_bytes(signal, rejected, validated.error_message)
                else:
                    response = response_json(signal, rejected, validated.error_message)
            else:
                response = self._empty[(signal, content_format)]
            if ticket is not None:  # counted when durable (see `durable`)
                return ExportResult(response, accepted, rejected, ticket, _Pending(series, outcome, started))
            series.outcome(outcome)
            series.duration.observe(time.perf_counter() - started)
            return ExportResult(response, accepted, rejected)
        except BaseException as exc:
            series.outcome(outcome_for(exc))
            series.duration.observe(time.perf_counter() - started)
            raise

    async def durable(self, result: ExportResult, timeout: float = DURABLE_WAIT_TIMEOUT) -> ExportResult:
        """Durable mode: return `result` once its record is on disk, without blocking the event loop;
        raise DiskFull (retryable) if the fsync failed or took longer than `timeout`."""
        if result.ticket is None or self._log is None:
            return result
        future = self._log.durable_future(result.ticket, asyncio.get_running_loop())
        try:
            ok = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            ok = False
        return self._settle(result, ok)

    def _settle(self, result: ExportResult, ok: bool) -> ExportResult:
        pending = result.pending
        assert pending is not None
        series = pending.series
        try:
            if not ok:
                series.refused.inc(result.accepted)
                series.outcome("refused")
                self._full_log.warning(
                    "fsync", "write-ahead log: fsync failed or too slow: refusing (clients retry)"
                )
                raise DiskFull(
                    "queue not durable (disk error or too slow): the data was not accepted, retry later",
                    retry_after=DISK_RETRY_AFTER,
                )
            series.accepted.inc(result.accepted)
            series.outcome(pending.outcome)
            return result
        finally:
            series.duration.observe(time.perf_counter() - pending.started)

    def _refuse_for_memory(
        self, signal: Signal, body: bytes, content_format: ContentFormat, series: _Series, state: int
    ) -> None:
        """Raise MemoryLimited. Between the soft and the hard limit the body is decoded only to
        count the refused items (the decode's memory is transient, the body is already held);
        above the hard limit nothing more is allocated and only the request is counted."""
        if state == 1:
            try:
                counted = _validated(signal, body, content_format)
                series.refused.inc(counted.accepted + counted.rejected)
            except errors.OtlpError:
                pass  # malformed: nothing to count; the client still gets the retryable answer
        raise errors.MemoryLimited(
            "memory limit reached: the server is overloaded, retry later", retry_after=MEMORY_RETRY_AFTER
        )

    def _write(self, signal: Signal, accepted: int, payload: bytes) -> int | None:
        """Queue the record; None (ring) or the log's durability ticket. Raises QueueFull /
        DiskFull / PayloadTooLarge / ShuttingDown."""
        if len(payload) > self._ring.max_payload:
            # It would never fit, however empty the ring: "retry later" would be a lie.
            raise errors.PayloadTooLarge(
                f"request of {len(payload)} bytes exceeds the queue's record limit of "
                f"{self._ring.max_payload} bytes (raise OTLP_QUEUE_BYTES)"
            )
        with self._lock:
            if self._closed:
                raise errors.ShuttingDown(
                    "server is shutting down; retry against another replica",
                    retry_after=SHUTTING_DOWN_RETRY_AFTER,
                )
            ticket = None
            if self._log is not None:
                try:
                    ticket = self._log.append(signal, accepted, payload)
                except DiskFull as exc:
                    self._full_log.warning(
                        "disk", "write-ahead log: %s: refusing (clients retry)", exc.message
                    )
                    raise DiskFull(exc.message, retry_after=DISK_RETRY_AFTER) from exc
                ok = ticket is not None
            else:
                ok = self._ring.try_write(signal, accepted, payload)  # type: ignore[union-attr]
            if ok:
                self._full_hint.accepted()
            else:
                retry_after = self._full_hint.refused()
        if ok:
            return ticket
        self._full_log.warning(
            "queue_full",
            "queue full: refusing %s request with %d items (exporter behind or backend slow)",
            SIGNALS[signal].name,
            accepted,
        )
        raise errors.QueueFull("queue full: the server is overloaded, retry later", retry_after=retry_after)


def _validated(
    signal: Signal, body: bytes, content_format: ContentFormat, max_item_bytes: int = 0
) -> ValidatedPayload:
    """Decode `body` in its format and validate it (InvalidArgument when it does not decode)."""
    if content_format == "protobuf":
        return validate_protobuf(signal, body, max_item_bytes)
    return validate_message(signal, decode_json(signal, body), max_item_bytes)
