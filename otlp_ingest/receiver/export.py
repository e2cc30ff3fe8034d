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
from otlp_ingest.otlp.item_count import count_items_unread
from otlp_ingest.otlp.json_codec import decode_json
from otlp_ingest.otlp.signals import SIGNALS, Signal, response_bytes
from otlp_ingest.otlp.validate import ValidatedPayload, validate_message, validate_protobuf
from otlp_ingest.otlp.wire_check import item_counter
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

# Bytes of requests one staged ring record holds at most (see `ExportService.export`): enough to
# merge every small request of a loop turn, small beside a batch (OTLP_BATCH_MAX_BYTES).
COALESCE_MAX_BYTES = 256 * 1024

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

    def try_write(self, signal: int, item_count: int, payload: bytes | memoryview | list[bytes]) -> bool: ...

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


Done = Callable[["ExportResult | None", "BaseException | None"], None]


@dataclass(slots=True)
class _Staged:
    """A validated request whose payload waits in `ExportService` for the next `flush_staged`."""

    series: _Series
    response: bytes
    accepted: int
    rejected: int
    outcome: str
    started: float
    done: Done


class _StagedRecord:
    """The staged requests of one signal: the ring record `flush_staged` will write for them."""

    __slots__ = ("accepted", "entries", "payloads", "size")

    def __init__(self) -> None:
        self.entries: list[_Staged] = []
        self.payloads: list[bytes] = []
        self.size = 0  # bytes of the payloads
        self.accepted = 0  # items of the payloads

    def add(self, payload: bytes, entry: _Staged) -> None:
        self.entries.append(entry)
        self.payloads.append(payload)
        self.size += len(payload)
        self.accepted += entry.accepted


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
    """Metric children for one (signal, transport), resolved once (`.labels()` is not free), and
    the counts not yet written to them.

    Why batched: a prometheus_client multiprocess value costs ~1.6 us per `inc` (a lock, a
    getpid syscall, an mmap write) and a histogram observation ~3.2 us: 6-7 us per request, a
    fifth of what a small request costs otherwise. So `count` adds to plain numbers under one
    lock (the event loop and the offload threads both count) and `flush` writes them out; the
    worker flushes every sweep (0.25 s) and before it exits, so a scrape may trail by that much.
    """

    __slots__ = (
        "_accepted",
        "_durations",
        "_lock",
        "_outcomes",
        "_refused",
        "_signal_name",
        "_transport",
        "accepted",
        "duration",
        "outcomes",
        "refused",
    )

    def __init__(self, signal: Signal, transport: str, lock: threading.Lock) -> None:
        name = SIGNALS[signal].name
        self.accepted = metrics.RECEIVER_ACCEPTED[signal].labels(transport)
        self.refused = metrics.RECEIVER_REFUSED[signal].labels(transport)
        self.duration = metrics.RECEIVER_REQUEST_DURATION.labels(transport, name)
        self.outcomes: dict[str, object] = {}
        self._signal_name = name
        self._transport = transport
        self._lock = lock
        self._accepted = 0
        self._refused = 0
        self._outcomes: dict[str, int] = {}
        self._durations: list[float] = []

    def count(
        self, accepted: int = 0, refused: int = 0, outcome: str | None = None, duration: float | None = None
    ) -> None:
        """Add one request's figures (written out by the next `flush`)."""
        with self._lock:
            self._accepted += accepted
            self._refused += refused
            if outcome is not None:
                self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1
            if duration is not None:
                self._durations.append(duration)

    def flush(self) -> None:
        """Write what `count` gathered to the metric values."""
        with self._lock:
            accepted, refused, outcomes, durations = (
                self._accepted,
                self._refused,
                self._outcomes,
                self._durations,
            )
            if not (accepted or refused or outcomes or durations):
                return
            self._accepted = self._refused = 0
            self._outcomes = {}
            self._durations = []
        if accepted:
            self.accepted.inc(accepted)
        if refused:
            self.refused.inc(refused)
        for outcome, n in outcomes.items():
            child = self.outcomes.get(outcome)
            if child is None:
                child = metrics.RECEIVER_REQUESTS.labels(self._transport, self._signal_name, outcome)
                self.outcomes[outcome] = child
            child.inc(n)  # type: ignore[attr-defined]
        metrics.observe_many(self.duration, durations)


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
        self._metrics_lock = threading.Lock()
        self._draining = False
        self._closed = False
        self._series: dict[tuple[Signal, str], _Series] = {}
        self._full_log = RateLimitedLogger(log)
        self._full_hint = QueueFullHint()
        # Staged requests per signal (see `export(done=...)`), and the bytes they hold in all.
        self._staged: dict[Signal, _StagedRecord] = {}
        self._staged_size = 0
        # Fixed for the writer's lifetime, read on every request: looked up once.
        self._has_room_for = getattr(ring_writer, "has_room_for", None) if self._log is None else None
        # Bytes one staged record may hold: small beside a batch, and always a valid record.
        self._coalesce_max = min(COALESCE_MAX_BYTES, settings.batch_max_bytes, ring_writer.max_payload)
        # The wire proof per signal, for `export_proven`: -1 when not proven.
        self._item_counts = {signal: item_counter(signal) for signal in SIGNALS}
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
            series = self._series[(signal, transport)] = _Series(signal, transport, self._metrics_lock)
        return series

    def memory_refusing(self) -> bool:
        """True while the memory limiter refuses: lets a transport refuse before reading a body."""
        return self._memory is not None and self._memory.state() != 0

    def record_failure(self, signal: Signal, transport: str, error: BaseException) -> None:
        """Count a request the transport refused before calling `export` (413, 415, ...)."""
        self._series_for(signal, transport).count(outcome=outcome_for(error))

    def trim_queue(self, now: float) -> None:
        """Let a shared-memory ring give back pages it will not need soon (ring/layout.py,
        "Memory follows the load"); under the write lock, as the ring has one writer."""
        trim = getattr(self._ring, "trim", None)
        if trim is not None and not self._closed:
            with self._lock:
                if not self._closed:
                    trim(now)

    def flush_metrics(self) -> None:
        """Write the counts gathered since the last flush to the metric values (see _Series)."""
        for series in list(self._series.values()):
            series.flush()

    def export(
        self,
        signal: Signal,
        body: bytes,
        content_format: ContentFormat,
        transport: str,
        done: Done | None = None,
    ) -> ExportResult | None:
        """Validate `body` and queue its valid items. See the module docstring.

        With `done` (the event loop's requests, shared-memory rings only), valid items are not
        written at once but *staged*: `export` returns None and `flush_staged` (the runner calls
        it once the loop has handled the events at hand) writes every staged request of a signal
        as one ring record, then calls each `done(result, error)`. Concatenated requests are one
        valid request (field 1 only, design.md section 2), so nothing downstream changes, and a
        small request no longer costs the exporter a record of its own: at 10 spans per request
        the exporter's per-record work was a fifth of the tree's CPU. Errors found while
        validating are raised at once, as without `done`.
        """
        started = time.perf_counter()
        series = self._series_for(signal, transport)
        refused = 0
        try:
            if self._draining:
                raise errors.ShuttingDown(
                    "server is shutting down; retry against another replica",
                    retry_after=SHUTTING_DOWN_RETRY_AFTER,
                )
            if self._memory is not None and (memory_state := self._memory.state()):
                self._refuse_for_memory(signal, body, content_format, series, memory_state)
            if content_format == "protobuf" and not self._room_for(len(body)):
                # Refused unread: decoding a body only to refuse it doubled the cost of overload.
                refused = count_items_unread(signal, body)
                raise self._queue_full(signal, refused)
            # Items over the batch byte cap could never be sent: refused here (partial_success).
            validated = _validated(signal, body, content_format, self._settings.batch_max_bytes)
            accepted = validated.accepted
            rejected = validated.rejected
            outcome = "partial" if rejected or validated.error_message else "ok"
            if outcome == "partial":
                if content_format == "protobuf":
                    response = response_bytes(signal, rejected, validated.error_message)
                else:
                    response = response_json(signal, rejected, validated.error_message)
            else:
                response = self._empty[(signal, content_format)]
            ticket = None
            if accepted:
                if done is not None and self._log is None:
                    self._stage(
                        signal,
                        validated.payload,
                        _Staged(series, response, accepted, rejected, outcome, started, done),
                    )
                    return None
                try:
                    ticket = self._write(signal, accepted, validated.payload, len(validated.payload))
                except (errors.RetryableError, errors.PayloadTooLarge):
                    refused = accepted + rejected
                    raise
            if ticket is not None:  # accepted and the outcome are counted when durable (`durable`)
                if rejected:
                    series.count(refused=rejected)
                return ExportResult(response, accepted, rejected, ticket, _Pending(series, outcome, started))
            series.count(accepted, rejected, outcome, time.perf_counter() - started)
            return ExportResult(response, accepted, rejected)
        except BaseException as exc:
            series.count(0, refused, outcome_for(exc), time.perf_counter() - started)
            raise

    def export_proven(self, signal: Signal, body: bytes, transport: str) -> bool:
        """The fast path's export (shared-memory rings only): when `body` is a protobuf request
        proven valid as it stands (`wire_check`) and the ring takes it as one record now, count
        it and return True: the caller answers 200 with an empty response. Otherwise return
        False having done and counted nothing, and the caller runs the general path (`export`),
        which finds and answers whatever the matter is (draining, memory, queue full, invalid
        items, ...): this only skips work for the request that needs none of it."""
        if self._draining or self._log is not None or (self._memory is not None and self._memory.state()):
            return False
        if len(body) > self._coalesce_max:
            return False  # also keeps the batch byte cap's check (`_validated`) out of this path
        started = time.perf_counter()
        count = self._item_counts[signal](body)
        if count <= 0:  # not proven (-1), or no items (the general path writes nothing for those)
            return False
        with self._lock:
            if self._closed or not self._ring.try_write(signal, count, body):  # type: ignore[union-attr]
                return False
            self._full_hint.accepted()
        self._series_for(signal, transport).count(count, 0, "ok", time.perf_counter() - started)
        return True

    def _stage(self, signal: Signal, payload: bytes, entry: _Staged) -> None:
        if len(payload) > self._ring.max_payload:
            self._check_fits(len(payload))  # raises: it would never fit
        record = self._staged.get(signal)
        if record is not None and record.size + len(payload) > self._coalesce_max:
            self._flush_signal(signal)
            record = None
        if record is None:
            record = self._staged[signal] = _StagedRecord()
        record.add(payload, entry)
        self._staged_size += len(payload)

    def flush_staged(self) -> None:
        """Write the staged requests (one record per signal) and answer each (see `export`)."""
        for signal in list(self._staged):
            self._flush_signal(signal)

    def _flush_signal(self, signal: Signal) -> None:
        record = self._staged.pop(signal, None)
        if record is None:
            return
        self._staged_size -= record.size
        error: BaseException | None = None
        try:
            self._write(signal, record.accepted, record.payloads, record.size)
        except Exception as exc:  # every staged request gets the same answer
            error = exc
        now = time.perf_counter()
        for entry in record.entries:
            if error is None:
                entry.series.count(entry.accepted, entry.rejected, entry.outcome, now - entry.started)
                result: ExportResult | None = ExportResult(entry.response, entry.accepted, entry.rejected)
            else:
                entry.series.count(
                    0, entry.accepted + entry.rejected, outcome_for(error), now - entry.started
                )
                result = None
            try:
                entry.done(result, error)
            except Exception:  # one transport's failure must not keep the others unanswered
                log.exception("answering a staged %s request failed", SIGNALS[signal].name)

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
        duration = time.perf_counter() - pending.started
        if not ok:
            series.count(refused=result.accepted, outcome="refused", duration=duration)
            self._full_log.warning(
                "fsync", "write-ahead log: fsync failed or too slow: refusing (clients retry)"
            )
            raise DiskFull(
                "queue not durable (disk error or too slow): the data was not accepted, retry later",
                retry_after=DISK_RETRY_AFTER,
            )
        series.count(accepted=result.accepted, outcome=pending.outcome, duration=duration)
        return result

    def _refuse_for_memory(
        self, signal: Signal, body: bytes, content_format: ContentFormat, series: _Series, state: int
    ) -> None:
        """Raise MemoryLimited. Between the soft and the hard limit the body is decoded only to
        count the refused items (the decode's memory is transient, the body is already held);
        above the hard limit nothing more is allocated and only the request is counted."""
        if state == 1:
            try:
                counted = _validated(signal, body, content_format)
                series.count(refused=counted.accepted + counted.rejected)
            except errors.OtlpError:
                pass  # malformed: nothing to count; the client still gets the retryable answer
        raise errors.MemoryLimited(
            "memory limit reached: the server is overloaded, retry later", retry_after=MEMORY_RETRY_AFTER
        )

    def _check_fits(self, size: int) -> None:
        if size > self._ring.max_payload:
            # It would never fit, however empty the ring: "retry later" would be a lie.
            raise errors.PayloadTooLarge(
                f"request of {size} bytes exceeds the queue's record limit of "
                f"{self._ring.max_payload} bytes (raise OTLP_QUEUE_BYTES)"
            )

    def _write(self, signal: Signal, accepted: int, payload: bytes | list[bytes], size: int) -> int | None:
        """Queue the record (`payload`, or the concatenation of staged payloads: `size` bytes);
        None (ring) or the log's durability ticket. Raises QueueFull / DiskFull / PayloadTooLarge /
        ShuttingDown."""
        self._check_fits(size)
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
                return ticket
        raise self._queue_full(signal, accepted)

    def _room_for(self, size: int) -> bool:
        """Whether the shared-memory ring has room now for `size` more bytes after what is
        staged (optimistic: the write itself decides; the log and test fakes always say yes)."""
        has_room_for = self._has_room_for
        if has_room_for is None or size > self._ring.max_payload:
            return True  # a body that never fits is answered 413 by the write path
        with self._lock:
            return has_room_for(size + self._staged_size)

    def _queue_full(self, signal: Signal, items: int) -> errors.QueueFull:
        """The refusal for a full queue, with the growing retry hint (QueueFullHint), logged at a
        limited rate."""
        with self._lock:
            retry_after = self._full_hint.refused()
        self._full_log.warning(
            "queue_full",
            "queue full: refusing %s request with %d items (exporter behind or backend slow)",
            SIGNALS[signal].name,
            items,
        )
        return errors.QueueFull("queue full: the server is overloaded, retry later", retry_after=retry_after)


def _validated(
    signal: Signal, body: bytes, content_format: ContentFormat, max_item_bytes: int = 0
) -> ValidatedPayload:
    """Decode `body` in its format and validate it (InvalidArgument when it does not decode)."""
    if content_format == "protobuf":
        return validate_protobuf(signal, body, max_item_bytes)
    return validate_message(signal, decode_json(signal, body), max_item_bytes)
