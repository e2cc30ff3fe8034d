"""The exporter process's main loop.

One thread (this one) owns the rings, the batcher and the commit bookkeeping; a small pool of
sending threads (settings.export_concurrency) only calls `Sender.send` with retries and posts the
outcome back on a queue. So ring readers and pending lists are never shared between threads.

Loop: apply completed sends (mark records done, commit each ring's done prefix), read new records
into per-signal batches (unless enough batches are already waiting, or a queue already has
`max_pending` uncommitted records: then the queue fills up and the receivers refuse, which is the
backpressure), close timed-out batches, hand closed batches to the
senders, and when nothing happened wait on an Event with a timeout growing from 1 ms to 20 ms
(sends completing and signals set the Event, so idle CPU is near zero and latency stays low).

Backend trouble: each attempt passes a `SendWindow` (congestion.py: one attempt at a time after a
retryable failure, doubling per success up to export_concurrency, so a recovered backend is not hit
by every thread at once); a "too large" answer splits the batch (split.py); permanent failures are
dropped and counted in otlp_exporter_send_failed_*_total{reason}; partial_success rejections in
otlp_exporter_backend_rejected_*_total. A batch's records are committed only after every part of
it was acknowledged or given up.

Memory: a record's payload lives only in its batch; the pending list keeps the record without it
(seq/start/end are all `commit` and `mark_acked` need). So one batch failing retryably for ever
while later ones complete holds at most `max_pending` payload-less records per queue, not every
payload read since.

Queues: shared-memory rings or, in durable mode, write-ahead logs (`otlp_ingest.queue`; both
readers have the same shape). A log's commit persists its offset (fsynced) only after the backend
acknowledged the batch; corrupt log data found while opening or reading is quarantined by the
reader and counted in otlp_queue_quarantined_*_total. An OSError reading a queue (EIO, a full disk
while quarantining, EMFILE) is logged and that queue is skipped for READ_ERROR_BACKOFF, then read
again: the exporter never crash-loops on it. Acknowledged records a log's commit cannot cover yet
(an older record is still open) are saved with `mark_acked` at most every ACKED_SAVE_INTERVAL.

SIGTERM/SIGINT only set an Event. Draining then reads on until every queue is empty, flushes open
batches at once and returns 0 when nothing is pending. Its deadline is settings.shutdown_timeout
or, if earlier, the supervisor's own deadline (otlp_ingest.shutdown_deadline): the supervisor
stops the exporters last and kills at its deadline, so an exporter must stop before that. Past it,
retries are aborted and ExitCode.SHUTDOWN_TIMEOUT is returned if anything is left uncommitted (it
stays in the queue for the next exporter), with the count logged.
"""

from __future__ import annotations

import logging
import queue
import signal as signal_mod
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from otlp_ingest.config import Settings
from otlp_ingest.errors import ExitCode
from otlp_ingest.exporter import congestion
from otlp_ingest.exporter.batcher import Batch, Batcher
from otlp_ingest.exporter.pending import PendingEntry, PendingRing
from otlp_ingest.exporter.retry import RetryAborted, RetryPolicy, call_with_retry
from otlp_ingest.exporter.sender import Sender, SendError, SendResult
from otlp_ingest.exporter.split import REASONS, SendReport, send_batch
from otlp_ingest.exporter.state import ExporterState
from otlp_ingest.otlp.signals import SIGNALS, Signal
from otlp_ingest.processing import Pipeline, build_pipelines
from otlp_ingest.queue import QueueSpec, open_reader, parse_queue, queue_usage
from otlp_ingest.ring import Record, RingCorrupt, RingReader
from otlp_ingest.shutdown_deadline import child_deadline
from otlp_ingest.telemetry import child_status, metrics
from otlp_ingest.telemetry.logging import RateLimitedLogger
from otlp_ingest.telemetry.memory import MemoryGate, malloc_trimmer
from otlp_ingest.wal import RecoveryReport, WalLocked, WalReader

log = logging.getLogger(__name__)
limited = RateLimitedLogger(log, interval=10.0)

# When the rings are empty the loop waits before polling again. Clients were acked when their
# record hit the ring, so this only delays export, never an ack; 5 ms lets several records
# gather per loop turn (a 1 ms wait cost ~40% more exporter CPU per span at 130k spans/s). With
# no traffic the wait doubles up to IDLE_WAIT_MAX: a turn costs ~0.2 ms of CPU on this machine,
# so polling every 20 ms kept an idle exporter at 1.2% of a core; every 250 ms it is ~0.1%, and
# the first record after a quiet spell is picked up at most that late (batches wait for
# OTLP_BATCH_TIMEOUT anyway).
IDLE_WAIT_MIN = 0.005
IDLE_WAIT_MAX = 0.250
# A burst of big batches leaves the exporter's heap tens of MiB larger (measured: 23 MiB USS idle,
# 149 after 512-span bursts, still 64 after 8 s of quiet: glibc keeps freed memory); handing it
# back every few seconds costs ~1 ms and no ack waits on this loop.
HEAP_TRIM_EVERY = 5.0
# Signal(n) costs ~1.1 us (enum lookup machinery), a dict lookup ~0.05: paid per record read.
_SIGNAL_OF = {signal.value: signal for signal in Signal}
READ_BURST = 512  # records per ring per loop turn, so one busy ring cannot starve the others
# A queue whose read raised OSError is left alone this long before the next try: a failing disk
# is not hammered every loop turn, and a transient error (EMFILE) costs only this much delay.
READ_ERROR_BACKOFF = 0.5
# mark_acked rewrites and fsyncs the log's whole acked file. Saving at most this often, and only
# when new acknowledged records appeared, keeps that off the hot path; the trade-off is that a
# crash re-sends at most this window's worth more acknowledged records (at-least-once anyway).
ACKED_SAVE_INTERVAL = 0.1


def build_sender(settings: Settings) -> Sender:
    """The backend sender for settings: gRPC, HTTP/protobuf, or the file sink without endpoint."""
    if settings.endpoint is None:
        from otlp_ingest.exporter.file_sink import FileSink

        return FileSink(settings)
    if settings.export_protocol == "http/protobuf":
        from otlp_ingest.exporter.otlp_http import HttpSender

        return HttpSender(settings)
    from otlp_ingest.exporter.otlp_grpc import GrpcSender

    return GrpcSender(settings)


@dataclass(slots=True)
class _Outcome:
    batch: Batch[PendingEntry[Record]]
    report: SendReport | None  # None: aborted (shutdown deadline), nothing may be committed


class _SendPool:
    """Daemon sending threads. Daemon, so an exporter past its deadline can exit while a send is
    still blocked in a socket (ThreadPoolExecutor would join it at interpreter exit)."""

    def __init__(
        self,
        size: int,
        sender: Sender,
        policy: RetryPolicy,
        abort: threading.Event,
        wake: threading.Event,
        exporter: str,
        window: congestion.SendWindow,
        state: ExporterState | None = None,
    ) -> None:
        self._sender = sender
        self._window = window
        self._state = state if state is not None else ExporterState()
        self._policy = policy
        self._abort = abort
        self._wake = wake
        self._exporter = exporter
        self._jobs: queue.SimpleQueue[Batch[PendingEntry[Record]] | None] = queue.SimpleQueue()
        self.outcomes: queue.SimpleQueue[_Outcome] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"send-{i}", daemon=True) for i in range(max(1, size))
        ]
        for t in self._threads:
            t.start()

    def submit(self, batch: Batch[PendingEntry[Record]]) -> None:
        self._jobs.put(batch)

    def stop(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)

    def _run(self) -> None:
        while (batch := self._jobs.get()) is not None:
            self.outcomes.put(self._send_until_done(batch))
            self._wake.set()

    def _send_until_done(self, batch: Batch[PendingEntry[Record]]) -> _Outcome:
        """`_send`, surviving anything unexpected it raises (a bug in a sender or the split and
        report code): a dead thread would never post its outcome, so `in_flight` would never drop
        and after export_concurrency such deaths the exporter would stall with /ready green.

        The batch is treated as a retryable failure and sent again, whole, with backoff until it
        goes through or the abort (shutdown deadline) leaves it uncommitted for the next exporter.
        Parts already acknowledged may be delivered twice (at-least-once, as after a crash).
        """
        n = 0
        while True:
            try:
                return self._send(batch)
            except Exception as error:
                name = SIGNALS[batch.signal].name
                delay = self._policy.backoff(n)
                metrics.EXPORTER_SEND_RETRIES.labels(self._exporter, name).inc()
                self._state.attempt_done(None, f"unexpected: {error!r}", retryable=True)
                self._state.retry_scheduled(delay)
                if limited.error(
                    f"unexpected-{name}",
                    "unexpected error sending a %s batch, resending it in %.2fs: %r",
                    name,
                    delay,
                    error,
                ):
                    log.error("traceback of the unexpected error", exc_info=error)
                if self._abort.wait(delay):
                    return _Outcome(batch, None)
                n += 1

    def _send(self, batch: Batch[PendingEntry[Record]]) -> _Outcome:
        name = SIGNALS[batch.signal].name
        duration = metrics.EXPORT_DURATION.labels(self._exporter, name)

        def attempt(payload: bytes) -> SendResult:
            self._window.acquire()  # raises RetryAborted at the shutdown deadline
            start = time.perf_counter()
            outcome = congestion.OTHER
            failure: SendError | None = None
            try:
                result = self._sender.send(batch.signal, payload)
                outcome = congestion.OK
                return result
            except SendError as error:
                failure = error
                if error.retryable:
                    outcome = congestion.RETRY
                raise
            except Exception as error:  # a bug or an odd library error: retry rather than drop
                # Rate-limited: with retry_max_elapsed=0 a broken sender is retried for ever.
                if limited.error(f"unexpected-send-{name}", "unexpected error sending %s batch", name):
                    log.error("traceback of the unexpected send error", exc_info=error)
                outcome = congestion.RETRY
                failure = SendError(f"unexpected: {error!r}", retryable=True)
                raise failure from error
            finally:
                elapsed = time.perf_counter() - start
                duration.observe(elapsed)
                self._window.release(outcome)
                if failure is None:
                    self._state.attempt_done(elapsed)
                else:
                    self._state.attempt_done(elapsed, failure.message, failure.retryable)

        def on_retry(error: SendError, delay: float) -> None:
            metrics.EXPORTER_SEND_RETRIES.labels(self._exporter, name).inc()
            self._state.retry_scheduled(delay)
            limited.warning(
                f"retry-{name}", "sending %s batch failed, retrying in %.2fs: %s", name, delay, error.message
            )

        def send(payload: bytes) -> SendResult:
            return call_with_retry(lambda: attempt(payload), self._policy, self._abort, on_retry)

        try:
            return _Outcome(batch, send_batch(batch.signal, batch.parts(), send))
        except RetryAborted:
            return _Outcome(batch, None)


class _Exporter:
    def __init__(self, settings: Settings, index: int, ring_names: list[str]) -> None:
        self.settings = settings
        self.label = str(index)
        self.ring_names = ring_names
        self.specs: list[QueueSpec] = [parse_queue(name) for name in ring_names]
        self.stop = threading.Event()  # SIGTERM/SIGINT
        self.wake = threading.Event()  # a send finished or a signal arrived
        self.abort = threading.Event()  # the drain deadline passed: interrupt retries
        self.readers: list[RingReader | WalReader] = []
        self._recovery_seen: list[RecoveryReport | None] = []
        self.pending: list[PendingRing[Record]] = []
        self.batcher: Batcher[PendingEntry[Record]] = Batcher(
            settings.batch_size, settings.batch_max_bytes, settings.batch_timeout, time.monotonic
        )
        self.ready: deque[Batch[PendingEntry[Record]]] = deque()
        self.in_flight = 0
        self.max_in_flight = max(1, settings.export_concurrency)
        # Closed batches allowed to wait for a sender before we stop reading the rings.
        self.max_ready = self.max_in_flight * 2
        self.window = congestion.SendWindow(self.max_in_flight)
        self.state = ExporterState()  # for the status page (telemetry.child_status)
        # Uncommitted records per queue beyond which we stop reading it. Healthy operation holds
        # at most one batch_size per in-flight, waiting and open batch (a record has >= 1 item);
        # twice that leaves room for batches completing out of order. Past it, the oldest open
        # record is stuck (a batch retried for ever): reading on would only grow memory.
        self.max_pending = (
            2 * max(1, settings.batch_size) * (self.max_in_flight + self.max_ready + len(SIGNALS))
        )
        self._read_retry_at: list[float] = []  # per queue: monotonic time of the next read after an OSError
        self._acked_dirty: list[bool] = []  # per queue: acknowledged records not yet saved by mark_acked
        self._acked_saved_at: list[float] = []  # per queue: monotonic time of the last mark_acked
        # Processors per signal (otlp_ingest.processing), run on each record before batching; a
        # signal without processors is absent and its records are batched untouched.
        self.pipelines: dict[Signal, Pipeline] = {}

    def add_queue(self, reader: RingReader | WalReader) -> None:
        """Read `reader` as the next queue (index len(readers)): its pending list and bookkeeping."""
        self.readers.append(reader)
        self.pending.append(PendingRing(len(self.pending)))
        report = getattr(reader, "recovery_report", None)
        metrics.count_recovery(report)
        self._recovery_seen.append(_copy_report(report))
        self._read_retry_at.append(float("-inf"))
        self._acked_dirty.append(False)
        self._acked_saved_at.append(float("-inf"))

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop.set()
        self.wake.set()

    def run(self, notify_ready: Callable[[], None]) -> int:
        signal_mod.signal(signal_mod.SIGTERM, self._on_signal)
        signal_mod.signal(signal_mod.SIGINT, self._on_signal)
        try:
            # A python processor's module that stopped importing since the config was checked
            # fails here (ProcessingConfigError is a ValueError): a boot failure, not a crash loop.
            self.pipelines = build_pipelines(self.settings.processors, self.settings.pipelines)
            for spec in self.specs:
                self.add_queue(open_reader(spec))
            sender = build_sender(self.settings)
        except (OSError, ValueError, RingCorrupt, WalLocked) as error:
            # Missing ring, bad endpoint, unwritable data dir: restarting cannot fix it.
            log.error("exporter %s cannot start: %s", self.label, error)
            for reader in self.readers:
                reader.close()
            return ExitCode.CHILD_BOOT
        pool = _SendPool(
            self.max_in_flight,
            sender,
            RetryPolicy.from_settings(self.settings),
            self.abort,
            self.wake,
            self.label,
            self.window,
            self.state,
        )
        status = child_status.current()
        if status is not None:
            status.add_section("exporter", self.status_section)
        log.info(
            "exporter %s reading %s, sending to %s",
            self.label,
            ",".join(self.ring_names) or "-",
            self.settings.endpoint or f"files in {self.settings.data_dir}",
        )
        _create_series(self.label)
        notify_ready()
        try:
            return self._loop(pool)
        finally:
            pool.stop()
            sender.close()
            for reader in self.readers:
                reader.close()

    def status_section(self) -> dict[str, object]:
        """The "exporter" section of this child's status file (exporter/state.py). Called from
        the status writer's thread: it only reads ints the loop and the window update."""
        return self.state.section(self.in_flight, self.window.window, self.window.limit)

    def _loop(self, pool: _SendPool) -> int:
        idle = IDLE_WAIT_MIN
        deadline: float | None = None
        trim_heap = malloc_trimmer()
        trimmed_at = time.monotonic()
        while True:
            if time.monotonic() - trimmed_at >= HEAP_TRIM_EVERY:
                trim_heap()
                trimmed_at = time.monotonic()
            progressed = self._apply_outcomes(pool)
            self._save_acked(time.monotonic())
            rings_empty = True
            read = False
            if len(self.ready) < self.max_ready:
                read, rings_empty = self._read_rings()
                progressed |= read
            else:
                rings_empty = False
            now = time.monotonic()
            if self.stop.is_set():
                if deadline is None:
                    deadline = child_deadline(self.settings.shutdown_timeout)
                    log.info("exporter %s draining (deadline %.1fs)", self.label, deadline - now)
                # Receivers stop first, so the rings only shrink now: send what we hold at once.
                self.ready.extend(self.batcher.flush())
            else:
                self.ready.extend(self.batcher.expired(now))
            while self.ready and self.in_flight < self.max_in_flight:
                pool.submit(self.ready.popleft())
                self.in_flight += 1
                progressed = True
            if deadline is not None:
                if rings_empty and not self.ready and not self.in_flight and not len(self.batcher):
                    log.info("exporter %s drained", self.label)
                    return ExitCode.OK
                if now >= deadline:
                    return self._give_up()
            if progressed:
                idle = IDLE_WAIT_MIN
                if read and not rings_empty:
                    continue  # a read burst stopped early: more records are waiting now
            # Otherwise wait even after progress, so records gather between turns: a turn that
            # finds one or two new records costs as much as one that finds fifty.
            timeout = idle
            next_close = self.batcher.next_deadline()
            if next_close is not None:
                timeout = min(timeout, max(0.0, next_close - now))
            if deadline is not None:
                timeout = min(timeout, max(0.0, deadline - now))
            if self.wake.wait(timeout):
                self.wake.clear()
            idle = min(idle * 2, IDLE_WAIT_MAX)

    def _read_rings(self) -> tuple[bool, bool]:
        """Read up to READ_BURST records per ring into batches. Returns (read any, all empty)."""
        read_any = False
        all_empty = True
        now = time.monotonic()
        for i, (reader, pending) in enumerate(zip(self.readers, self.pending, strict=True)):
            if now < self._read_retry_at[i]:
                all_empty = False  # unknown: it may hold records (and drain must not end early)
                continue
            room = self.max_pending - len(pending)
            if room <= 0:
                all_empty = False  # backpressure: the queue fills and receivers refuse
                continue
            dropped_whole = False  # processors left some record of this burst with nothing to send
            for _ in range(min(READ_BURST, room)):
                try:
                    record = reader.read()
                except RingCorrupt:
                    # A corrupt record cannot be skipped safely (its length is not trusted);
                    # exit loudly so the supervisor sees it rather than silently losing data.
                    log.exception("ring %s is corrupt", self.ring_names[pending.ring])
                    raise
                except OSError as exc:
                    # EIO, ENOSPC while quarantining, EMFILE: restarting would not help and a
                    # crash loop halts the server. Skip this queue for a while and read again.
                    limited.error(
                        f"read_failed-{i}", "queue %s: read failed, retrying: %s", self.ring_names[i], exc
                    )
                    self._read_retry_at[i] = now + READ_ERROR_BACKOFF
                    all_empty = False
                    break
                if record is None:
                    break
                read_any = True
                # The payload goes to the batch only; pending keeps seq/start/end for the commit.
                # (The constructor, not dataclasses.replace: 0.7 vs 1.7 us on this per-record path.)
                entry = pending.track(
                    Record(record.seq, record.signal, record.item_count, record.start, record.end, b"")
                )
                signal = _SIGNAL_OF[record.signal]
                payload, items = record.payload, record.item_count
                pipeline = self.pipelines.get(signal)
                if pipeline is not None:
                    payload, items = pipeline.run(payload, items)
                    if not items:  # processors dropped it all: nothing to send, done already
                        entry.done = True
                        dropped_whole = True
                        continue
                self.ready.extend(self.batcher.add(signal, items, payload, entry))
            else:
                all_empty = False
            if dropped_whole:
                # Once per burst, not per record: a log's commit writes and fsyncs its offset, and a
                # sampler or filter may leave most records of a burst empty.
                self._commit_done(i)
        self._count_quarantine()
        return read_any, all_empty

    def _count_quarantine(self) -> None:
        """A log reader quarantines corrupt data as it meets it: count what is new."""
        for i, reader in enumerate(self.readers):
            report, seen = getattr(reader, "recovery_report", None), self._recovery_seen[i]
            if (
                report is not None
                and seen is not None
                and (
                    report.quarantined_bytes != seen.quarantined_bytes
                    or report.truncated_bytes != seen.truncated_bytes
                )
            ):
                metrics.count_recovery(report, seen)
                self._recovery_seen[i] = _copy_report(report)

    def _apply_outcomes(self, pool: _SendPool) -> bool:
        touched: set[int] = set()
        while True:
            try:
                outcome = pool.outcomes.get_nowait()
            except queue.Empty:
                break
            self.in_flight -= 1
            report = outcome.report
            if report is None:
                continue  # aborted: left uncommitted, the next exporter re-reads it
            batch = outcome.batch
            self._count(batch, report)
            for entry in batch.tokens:
                entry.done = True
                touched.add(entry.ring)
        for ring in touched:
            self._commit_done(ring)
        return bool(touched)

    def _commit_done(self, ring: int) -> None:
        """Commit the queue's leading done records (acknowledged, given up, or wholly dropped by
        processors), and note the done ones an older open record keeps from the commit."""
        committable = self.pending[ring].pop_committable()
        if committable:
            # commit releases a record and every one before it: the last one is enough.
            try:
                self.readers[ring].commit(committable[-1])
            except OSError as exc:
                # A full disk (ENOSPC writing a WAL's commit offset) must not kill the exporter:
                # the offset stays behind on disk, the next commit of a later record covers
                # these too, and a crash meanwhile re-sends them (at-least-once).
                limited.warning("commit_failed", "queue %s: commit failed: %s", ring, exc)
        # New acknowledged records the commit could not cover: `_save_acked` persists them.
        if hasattr(self.readers[ring], "mark_acked") and self.pending[ring].has_done():
            self._acked_dirty[ring] = True

    def _save_acked(self, now: float, force: bool = False) -> None:
        """A durable log also records acknowledged records the commit cannot cover yet, so a crash
        re-sends only what was in flight, not everything after the oldest open batch. Saved only
        when new ones appeared and at most every ACKED_SAVE_INTERVAL (each save rewrites and
        fsyncs the acked file): a crash re-sends at most that window's acknowledged records more."""
        for ring, dirty in enumerate(self._acked_dirty):
            if not dirty or (not force and now - self._acked_saved_at[ring] < ACKED_SAVE_INTERVAL):
                continue
            self._acked_dirty[ring] = False
            self._acked_saved_at[ring] = now
            done = self.pending[ring].done_records()
            if not done:
                continue  # committed meanwhile
            try:
                self.readers[ring].mark_acked(done)  # only logs (WalReader) are marked dirty
            except OSError as exc:  # full disk: costs re-delivery after a crash, no loss
                limited.warning("mark_acked_failed", "queue %s: saving acks failed: %s", ring, exc)

    def _count(self, batch: Batch[PendingEntry[Record]], report: SendReport) -> None:
        signal = batch.signal
        name = SIGNALS[signal].name
        noun = SIGNALS[signal].item_noun
        if report.sent:
            metrics.EXPORTER_SENT[signal].labels(self.label).inc(report.sent)
            metrics.EXPORTER_BATCH_ITEMS.labels(self.label, name).observe(batch.items)
        if report.splits:
            limited.warning(
                f"split-{name}",
                "backend said too large: split a %s batch of %d items %d times",
                name,
                batch.items,
                report.splits,
            )
        if report.rejected or report.rejected_message:
            metrics.EXPORTER_BACKEND_REJECTED[signal].labels(self.label).inc(report.rejected)
            limited.warning(
                f"partial-{name}",
                "backend rejected %d of %d %s: %s",
                report.rejected,
                batch.items,
                noun,
                report.rejected_message,
            )
        for reason, items in report.failed.items():
            metrics.EXPORTER_SEND_FAILED[signal].labels(self.label, reason).inc(items)
            limited.error(
                f"failed-{name}-{reason}",
                "dropping %d %s (%s): %s",
                items,
                noun,
                reason,
                report.failure_message,
            )

    def _give_up(self) -> int:
        self.abort.set()
        self.window.close()
        self._save_acked(time.monotonic(), force=True)  # so the next exporter re-sends less
        left = sum(len(p) for p in self.pending)
        queued = 0
        for spec in self.specs:
            try:
                queued += queue_usage(spec).records
            except Exception:  # a gauge for the log line only: never fail the exit for it
                continue
        log.error(
            "exporter %s: shutdown deadline with %d record(s) uncommitted (%d in flight), %d queued "
            "in total: kept in the queue for the next start",
            self.label,
            left,
            self.in_flight,
            max(queued, left),
        )
        return ExitCode.SHUTDOWN_TIMEOUT if left or queued or self.in_flight else ExitCode.OK


def run_exporter(
    settings: Settings, exporter_index: int, ring_names: list[str], notify_ready: Callable[[], None]
) -> int:
    """Run exporter `exporter_index` over `ring_names` until SIGTERM/SIGINT; return an ExitCode.

    Must run in the process's main thread (it installs signal handlers). Everything process-wide
    (ring mappings, grpc channel, threads) is created here, never before.
    """
    # Attached only for its reclaim thread: an exporter keeps tens of MiB of freed heap after a
    # burst, which would hold the tree above the memory limiter's resume level (telemetry.memory).
    gate = MemoryGate.attach()
    try:
        return _Exporter(settings, exporter_index, ring_names).run(notify_ready)
    finally:
        if gate is not None:
            gate.close()


def _copy_report(report: RecoveryReport | None) -> RecoveryReport | None:
    if report is None:
        return None
    return RecoveryReport(report.truncated_bytes, report.quarantined_segments, report.quarantined_bytes)


def _create_series(label: str) -> None:
    """Touch every exporter series once so /metrics shows zeros before the first failure: the
    alert and dashboard ratios (failed / sent) are empty, not 0, while a series is missing."""
    for signal, info in SIGNALS.items():
        metrics.EXPORTER_SENT[signal].labels(label)
        metrics.EXPORTER_BACKEND_REJECTED[signal].labels(label)
        for reason in REASONS:
            metrics.EXPORTER_SEND_FAILED[signal].labels(label, reason)
        metrics.EXPORTER_SEND_RETRIES.labels(label, info.name)
