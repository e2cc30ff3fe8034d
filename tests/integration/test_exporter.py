"""The exporter process against rings the test fills and the recording backend (gRPC and HTTP)."""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from otlp_ingest.config import Settings
from otlp_ingest.errors import ExitCode
from otlp_ingest.exporter.batcher import Batch
from otlp_ingest.exporter.congestion import SendWindow
from otlp_ingest.exporter.main import _Exporter, _SendPool
from otlp_ingest.exporter.otlp_http import HttpSender
from otlp_ingest.exporter.retry import RetryPolicy
from otlp_ingest.exporter.sender import Sender, SendError, SendResult
from otlp_ingest.otlp.signals import Signal
from otlp_ingest.ring import Record, ring_usage
from otlp_ingest.wal import WalReader, WalWriter
from tests.integration._exporter_harness import (
    ExporterProcess,
    Rings,
    log_keys,
    logs,
    metric_keys,
    metric_points,
    span_keys,
    spans,
)
from tests.support.backend import RecordingBackend
from tests.support.waiting import wait_until


@pytest.fixture
def exporters(tmp_path: Path) -> Iterator[list[ExporterProcess]]:
    started: list[ExporterProcess] = []
    yield started
    for e in started:
        if e.proc.poll() is None:
            e.kill()


def start(
    exporters: list[ExporterProcess], tmp_path: Path, rings: list[str], **settings: object
) -> ExporterProcess:
    base: dict[str, object] = {
        "batch_timeout": 0.05,
        "retry_initial_interval": 0.05,
        "shutdown_timeout": 10.0,
    }
    e = ExporterProcess(Settings(**{**base, **settings}), rings, tmp_path)  # type: ignore[arg-type]
    exporters.append(e)
    return e


def exact_once(keys: dict[str, int], expected: set[str]) -> None:
    assert set(keys) == expected
    assert {k: c for k, c in keys.items() if c != 1} == {}


def ring_empty(name: str) -> bool:
    return ring_usage(name).records == 0


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_every_item_exactly_once_in_batches_of_batch_size(
    protocol: str, rings: Rings, exporters: list[ExporterProcess], tmp_path: Path
) -> None:
    names = rings.create(2)
    # Two rings, three signals interleaved in each: batches complete out of ring order.
    for i in range(30):
        ring = names[i % 2]
        rings.write(ring, Signal.TRACES, 10, spans(i * 10, 10))
        rings.write(ring, Signal.LOGS, 5, logs(i * 5, 5))
        rings.write(ring, Signal.METRICS, 3, metric_points(i * 3, 3))
    with RecordingBackend() as backend:
        endpoint = backend.grpc_endpoint if protocol == "grpc" else backend.http_endpoint
        e = start(exporters, tmp_path, names, endpoint=endpoint, export_protocol=protocol, batch_size=100)
        backend.wait_for_items("traces", 300)
        backend.wait_for_items("logs", 150)
        backend.wait_for_items("metrics", 90)
        records = backend.records()
        exact_once(records["traces"]["keys"], span_keys(0, 300))
        exact_once(records["logs"]["keys"], log_keys(0, 150))
        exact_once(records["metrics"]["keys"], metric_keys(0, 90))
        assert records["traces"]["max_request_items"] == 100  # 10-span records fill batches exactly
        assert records["logs"]["max_request_items"] == 100
        assert records["metrics"]["max_request_items"] <= 100
        wait_until(lambda: all(ring_empty(n) for n in names), 10, what="rings committed")
        assert e.counter("otlp_exporter_sent_spans", exporter="0") == 300
        assert e.terminate() == ExitCode.OK


def test_batch_timeout_flushes_a_partial_batch(
    rings: Rings, exporters: list[ExporterProcess], tmp_path: Path
) -> None:
    [name] = rings.create()
    with RecordingBackend() as backend:
        start(
            exporters, tmp_path, [name], endpoint=backend.grpc_endpoint, batch_size=10_000, batch_timeout=0.3
        )
        written = time.monotonic()
        for i in range(5):
            rings.write(name, Signal.TRACES, 2, spans(i * 2, 2))
        current = backend.wait_for_items("traces", 10, timeout=10)
        assert time.monotonic() - written >= 0.25  # it waited for the timeout...
        assert current["requests"] == 1  # ...and sent the records as one batch
        exact_once(current["keys"], span_keys(0, 10))


def test_retryable_failures_are_retried_honouring_retry_info(
    rings: Rings, exporters: list[ExporterProcess], tmp_path: Path
) -> None:
    [name] = rings.create()
    rings.write(name, Signal.TRACES, 20, spans(0, 20))
    # Our own backoff would retry within milliseconds; the server asks for 0.4 s each time.
    with RecordingBackend(fail_first=3, fail_code="unavailable", retry_after_s=0.4) as backend:
        started = time.monotonic()
        e = start(
            exporters,
            tmp_path,
            [name],
            endpoint=backend.grpc_endpoint,
            retry_initial_interval=0.001,
            retry_max_interval=0.002,
        )
        current = backend.wait_for_items("traces", 20, timeout=15)
        assert time.monotonic() - started >= 1.1
        assert current["failed"] == 3
        exact_once(current["keys"], span_keys(0, 20))
        assert e.counter("otlp_exporter_send_retries", exporter="0", signal="traces") == 3
        assert e.counter("otlp_exporter_send_failed_spans", exporter="0") == 0


def test_http_503_retry_after_is_honoured(
    rings: Rings, exporters: list[ExporterProcess], tmp_path: Path
) -> None:
    [name] = rings.create()
    rings.write(name, Signal.LOGS, 4, logs(0, 4))
    with RecordingBackend(fail_first=2, fail_code="http_503", retry_after_s=0.3) as backend:
        started = time.monotonic()
        start(
            exporters,
            tmp_path,
            [name],
            endpoint=backend.http_endpoint,
            export_protocol="http/protobuf",
            retry_initial_interval=0.001,
            retry_max_interval=0.002,
        )
        current = backend.wait_for_items("logs", 4, timeout=15)
        assert time.monotonic() - started >= 0.55
        assert current["failed"] == 2
        exact_once(current["keys"], log_keys(0, 4))


@pytest.mark.parametrize(("protocol", "code"), [("http/protobuf", "http_400"), ("grpc", "invalid")])
def test_permanent_failure_drops_counts_and_commits(
    protocol: str, code: str, rings: Rings, exporters: list[ExporterProcess], tmp_path: Path
) -> None:
    [name] = rings.create()
    rings.write(name, Signal.TRACES, 7, spans(0, 7))
    with RecordingBackend(fail_first=1, fail_code=code) as backend:
        endpoint = backend.grpc_endpoint if protocol == "grpc" else backend.http_endpoint
        e = start(exporters, tmp_path, [name], endpoint=endpoint, export_protocol=protocol)
        wait_until(lambda: ring_empty(name), 10, what="dropped batch committed")
        assert e.counter("otlp_exporter_send_failed_spans", exporter="0", reason="permanent") == 7
        assert e.counter("otlp_exporter_send_failed_spans", exporter="0") == 7
        assert backend.records()["traces"]["failed"] == 1
        # The exporter carries on with later data.
        rings.write(name, Signal.TRACES, 3, spans(100, 3))
        current = backend.wait_for_items("traces", 3)
        exact_once(current["keys"], span_keys(100, 3))
        assert e.counter("otlp_exporter_send_retries", exporter="0", signal="traces") == 0


def test_sigkill_mid_stream_then_replacement_delivers_everything(
    rings: Rings, exporters: list[ExporterProcess], tmp_path: Path
) -> None:
    names = rings.create(2)
    total = 2000
    for i in range(total // 10):
        rings.write(names[i % 2], Signal.TRACES, 10, spans(i * 10, 10))
    # A slow backend keeps batches in flight when the exporter dies.
    with RecordingBackend(delay_ms=30) as backend:
        settings = {"endpoint": backend.grpc_endpoint, "batch_size": 50, "export_concurrency": 2}
        first = start(exporters, tmp_path, names, **settings)
        backend.wait_for_items("traces", 200)
        first.kill()
        delivered_before = backend.records()["traces"]["items"]
        assert delivered_before < total, "too fast to test a crash mid-stream"
        start(exporters, tmp_path, names, **settings)
        wait_until(
            lambda: set(backend.records()["traces"]["keys"]) >= span_keys(0, total), 30, what="all spans"
        )
        keys = backend.records()["traces"]["keys"]
        assert set(keys) == span_keys(0, total)
        # Only the batches in flight at the kill may be delivered twice.
        duplicates = sum(c - 1 for c in keys.values())
        assert duplicates <= 2 * 50 * 2  # concurrency x batch_size, per ring read-ahead slack
        wait_until(lambda: all(ring_empty(n) for n in names), 10, what="rings committed")


def test_sigterm_drains_at_once_and_exits_zero(
    rings: Rings, exporters: list[ExporterProcess], tmp_path: Path
) -> None:
    [name] = rings.create()
    for i in range(10):
        rings.write(name, Signal.TRACES, 10, spans(i * 10, 10))
    with RecordingBackend(delay_ms=20) as backend:
        # A batch timeout far beyond the test: only the drain can flush the last partial batch.
        e = start(
            exporters, tmp_path, [name], endpoint=backend.grpc_endpoint, batch_size=30, batch_timeout=600
        )
        started = time.monotonic()
        assert e.terminate() == ExitCode.OK
        assert time.monotonic() - started < 10
        exact_once(backend.records()["traces"]["keys"], span_keys(0, 100))
        assert ring_empty(name)


def test_sigterm_with_backend_down_times_out_and_keeps_data(
    rings: Rings, exporters: list[ExporterProcess], tmp_path: Path
) -> None:
    [name] = rings.create()
    rings.write(name, Signal.TRACES, 5, spans(0, 5))
    with RecordingBackend(fail_first=1_000_000, fail_code="unavailable", retry_after_s=30) as backend:
        e = start(exporters, tmp_path, [name], endpoint=backend.grpc_endpoint, shutdown_timeout=1.0)
        wait_until(lambda: backend.records()["traces"]["failed"] >= 1, 10, what="a first attempt")
        started = time.monotonic()
        assert e.terminate() == ExitCode.SHUTDOWN_TIMEOUT
        assert time.monotonic() - started < 5  # the 30 s retry wait was interrupted
        assert ring_usage(name).records == 1  # left for the next exporter


def test_missing_ring_is_a_boot_failure(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="did not become ready"):
        ExporterProcess(Settings(endpoint="127.0.0.1:1"), ["otlp-ingest-1-w404"], tmp_path)


class _ClosingHandler(BaseHTTPRequestHandler):
    """200 with an empty Export*ServiceResponse and `Connection: close`: a reconnect per request."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()


def test_http_sender_forgets_dropped_connections_across_many_reconnects() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ClosingHandler)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    sender = HttpSender(
        Settings(endpoint=f"http://127.0.0.1:{server.server_address[1]}", export_protocol="http/protobuf")
    )
    try:
        sent: list[int] = []

        def send_many() -> None:
            for i in range(150):
                sender.send(Signal.TRACES, spans(i, 1))
                sent.append(i)

        threads = [threading.Thread(target=send_many) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(sent) == 300
        # 300 reconnects; only connections still open may be remembered (at most one per thread).
        assert len(sender._all) <= 2
    finally:
        sender.close()
        server.shutdown()
        server.server_close()
    assert sender._all == []


class _FlakySender:
    """A Sender that misbehaves on its first `bad` calls: returns junk instead of a SendResult (a
    sender bug that blows up outside the send attempt, in the split/report code), then delivers."""

    def __init__(self, bad: int) -> None:
        self.bad = bad
        self.delivered: list[bytes] = []
        self.lock = threading.Lock()

    def send(self, signal: Signal, payload: bytes) -> SendResult:
        with self.lock:
            if self.bad > 0:
                self.bad -= 1
                return None  # type: ignore[return-value]
            self.delivered.append(payload)
        return SendResult()

    def close(self) -> None:
        pass


def test_send_pool_survives_unexpected_errors_and_resends_the_batch() -> None:
    # As many failures as threads: before, every send thread died and the exporter stalled.
    sender = _FlakySender(bad=2)
    abort, wake = threading.Event(), threading.Event()
    pool = _SendPool(2, sender, RetryPolicy(0.01, 0.05, 0.0), abort, wake, "t", SendWindow(2))
    try:
        batches = [Batch(Signal.TRACES, 0.0, [spans(i, 1)], [1], [i], 1) for i in range(4)]
        for batch in batches:
            pool.submit(batch)
        outcomes = [pool.outcomes.get(timeout=10) for _ in batches]  # every batch comes back
        assert all(o.report is not None and o.report.sent == 1 for o in outcomes)
        assert sorted(sender.delivered) == sorted(b.payloads[0] for b in batches)
        assert wake.is_set()
        pool.submit(Batch(Signal.TRACES, 0.0, [spans(9, 1)], [1], [9], 1))  # threads still alive
        assert pool.outcomes.get(timeout=10).report.sent == 1  # type: ignore[union-attr]
    finally:
        abort.set()
        pool.stop()


def test_send_pool_unexpected_error_backoff_is_cut_short_by_abort() -> None:
    sender = _FlakySender(bad=10**9)  # always broken: retried with backoff until shutdown
    abort, wake = threading.Event(), threading.Event()
    pool = _SendPool(1, sender, RetryPolicy(5.0, 60.0, 0.0), abort, wake, "t", SendWindow(1))
    try:
        pool.submit(Batch(Signal.TRACES, 0.0, [spans(0, 1)], [1], [0], 1))
        wait_until(lambda: sender.bad < 10**9, 10, what="first attempt")
        start = time.monotonic()
        abort.set()
        outcome = pool.outcomes.get(timeout=10)
        assert outcome.report is None  # aborted: left uncommitted for the next exporter
        assert time.monotonic() - start < 5.0
    finally:
        pool.stop()


# --- the exporter loop in-process over a real write-ahead log, with seams at Sender and reader ---


class _PoisonSender:
    """Fails every batch holding b"POISON" retryably until `healthy` is set; delivers the rest."""

    def __init__(self) -> None:
        self.healthy = threading.Event()
        self.lock = threading.Lock()
        self.delivered: list[bytes] = []

    def send(self, signal: Signal, payload: bytes) -> SendResult:
        if b"POISON" in payload and not self.healthy.is_set():
            raise SendError("503 from a test backend", retryable=True)
        with self.lock:
            self.delivered.append(payload)
        return SendResult()

    def close(self) -> None:
        pass


class _LoopRun:
    """An `_Exporter` loop on a daemon thread (the real process only adds signals and boot)."""

    def __init__(self, ex: _Exporter, sender: Sender) -> None:
        self.ex = ex
        self.pool = _SendPool(
            ex.max_in_flight, sender, RetryPolicy(0.02, 0.1, 0.0), ex.abort, ex.wake, "t", ex.window
        )
        self.rc: list[int] = []
        self.thread = threading.Thread(target=lambda: self.rc.append(ex._loop(self.pool)), daemon=True)
        self.thread.start()

    def stop(self) -> int:
        self.ex.stop.set()
        self.ex.wake.set()
        self.thread.join(15)
        self.ex.abort.set()
        self.pool.stop()
        for reader in self.ex.readers:
            reader.close()
        assert not self.thread.is_alive()
        return self.rc[0]


def _fill_wal(directory: Path, payloads: list[tuple[int, bytes]]) -> int:
    """Append (signal, payload) records durably; returns the log's end offset in records."""
    writer = WalWriter.open(str(directory), 4 << 20, 1 << 30)
    try:
        ticket = None
        for signal, payload in payloads:
            ticket = writer.append(signal, 1, payload)
            assert ticket is not None
        assert ticket is not None and writer.wait_durable(ticket, 10)
    finally:
        writer.close()
    return len(payloads)


def test_one_batch_failing_for_ever_keeps_pending_and_memory_bounded(tmp_path: Path) -> None:
    # Review finding 5: the oldest batch retried for ever pins the commit while later batches
    # complete. Before, the exporter read on, keeping every record with its payload in `pending`
    # (bounded only by the log's byte bound) and rewrote the acked file on every outcome.
    n = 3000
    _fill_wal(tmp_path, [(Signal.TRACES, b"POISON")] + [(Signal.METRICS, b"y" * 1000)] * (n - 1))
    settings = Settings(batch_size=10, batch_timeout=0.02, export_concurrency=4, shutdown_timeout=10)
    ex = _Exporter(settings, 0, [f"wal:{tmp_path}"])
    reader = WalReader.open(str(tmp_path))
    saves: list[float] = []
    real_mark_acked = reader.mark_acked

    def mark_acked(records: list) -> None:  # counts calls; the real one persists
        saves.append(time.monotonic())
        real_mark_acked(records)

    reader.mark_acked = mark_acked  # type: ignore[method-assign]
    ex.add_queue(reader)
    sender = _PoisonSender()
    started = time.monotonic()
    run = _LoopRun(ex, sender)
    try:
        cap = ex.max_pending
        assert cap == 2 * 10 * (4 + 8 + 3) < n
        wait_until(lambda: len(ex.pending[0]) >= cap, 10, what="reading to stop at the pending cap")
        watch_start = time.monotonic()
        saves_before = len(saves)
        while time.monotonic() - watch_start < 0.5:  # it stays there: no more reading
            assert len(ex.pending[0]) <= cap
            entries = list(ex.pending[0]._entries)
            assert sum(len(e.record.payload) for e in entries) == 0  # payloads live in batches only
            time.sleep(0.02)
        watched = time.monotonic() - watch_start
        assert reader.committed == 0  # the poison record pins the commit
        assert reader.pending()  # the rest waits in the log (backpressure), not in memory
        # acked ranges were saved, but rate-limited and only when new ones appeared: none while
        # nothing completes (a save per outcome, before, would be hundreds)
        assert saves and len(saves) - saves_before <= watched / 0.1 + 1
        assert len(saves) <= (time.monotonic() - started) / 0.1 + 2
        assert (tmp_path / "acked").stat().st_size > 0

        sender.healthy.set()  # the backend recovers: everything drains, nothing is lost
        wait_until(lambda: not reader.uncommitted(), 20, what="everything committed")
    finally:
        rc = run.stop()
    assert rc == ExitCode.OK
    assert b"".join(sender.delivered).count(b"y" * 1000) == n - 1
    assert sum(p.count(b"POISON") for p in sender.delivered) == 1


class _FailingOnceReader:
    """A queue reader whose `read` raises OSError (EIO) `failures` times, then reads for real."""

    def __init__(self, reader: WalReader, failures: int) -> None:
        self._reader = reader
        self.failures = failures

    def read(self) -> Record | None:
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EIO, "Input/output error")
        return self._reader.read()

    def __getattr__(self, name: str) -> object:
        return getattr(self._reader, name)


def test_os_error_reading_a_queue_is_logged_and_retried_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Review finding 6: an OSError from the log reader (EIO, ENOSPC while quarantining) escaped
    # the loop, so the exporter crash-looped until the supervisor halted the server.
    n = 50
    _fill_wal(tmp_path, [(Signal.TRACES, b"x%03d" % i) for i in range(n)])
    ex = _Exporter(Settings(batch_size=10, batch_timeout=0.02, shutdown_timeout=10), 0, [f"wal:{tmp_path}"])
    flaky = _FailingOnceReader(WalReader.open(str(tmp_path)), failures=1)
    ex.add_queue(flaky)  # type: ignore[arg-type]
    sender = _PoisonSender()
    with caplog.at_level(logging.ERROR, logger="otlp_ingest.exporter.main"):
        run = _LoopRun(ex, sender)
        try:
            wait_until(lambda: not flaky.uncommitted(), 10, what="everything committed after the error")
        finally:
            rc = run.stop()
    assert rc == ExitCode.OK
    assert flaky.failures == 0
    assert sorted(b"".join(sender.delivered)[i : i + 4] for i in range(0, 4 * n, 4)) == [
        b"x%03d" % i for i in range(n)
    ]
    assert any("read failed" in r.getMessage() and "Input/output" in r.getMessage() for r in caplog.records)
