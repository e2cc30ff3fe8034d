"""The exporter process against rings the test fills and the recording backend (gRPC and HTTP)."""

from __future__ import annotations

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
from otlp_ingest.exporter.main import _SendPool
from otlp_ingest.exporter.otlp_http import HttpSender
from otlp_ingest.exporter.retry import RetryPolicy
from otlp_ingest.exporter.sender import SendResult
from otlp_ingest.otlp.signals import Signal
from otlp_ingest.ring import ring_usage
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
