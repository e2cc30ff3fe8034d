"""The receiver worker in a real process, driven by real clients (grpcio, HTTP, the OTel SDK).

Each worker runs `run_worker` in its own interpreter on free ephemeral ports against a ring this
test creates; what the worker acknowledged is read back from the ring with `RingReader`. One row of
design.md section 4 per test. Teardown SIGTERMs the worker and asserts it exits 0.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import msgspec
import pytest
import requests
import zstandard
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from otlp_ingest.config import Settings
from otlp_ingest.errors import ExitCode
from otlp_ingest.otlp.signals import SIGNALS, Signal
from otlp_ingest.ring import RingReader, create_ring, ring_name, unlink_ring
from tests.conftest import REPO_ROOT, free_port, wait_until
from tests.support.sdk import finished_spans

KiB = 1024
MiB = 1024 * KiB
LIMIT = 1 * MiB  # http_max_body_bytes and grpc_max_recv_bytes of the test workers: small = fast

_LAUNCHER = """
import logging, os, sys
import msgspec
from otlp_ingest.config import Settings
from otlp_ingest.receiver.worker import run_worker

logging.basicConfig(level=logging.INFO, format="worker %(levelname)s %(name)s %(message)s")
settings = msgspec.json.decode(os.environ["OTLP_INGEST_SETTINGS_JSON"], type=Settings)
ready = sys.argv[2]

def notify_ready():
    with open(ready + ".tmp", "w") as f:
        f.write("ready")
    os.rename(ready + ".tmp", ready)

sys.exit(run_worker(settings, 0, sys.argv[1], notify_ready))
"""

_ring_ids = itertools.count(900)


class Worker:
    """A `run_worker` subprocess on fresh ports with its own ring."""

    def __init__(
        self,
        tmp: Path,
        ring_bytes: int = 8 * MiB,
        max_records: int = 4096,
        ports: tuple[int, int] | None = None,
        **overrides,
    ) -> None:
        self.ring = ring_name(os.getpid(), next(_ring_ids))
        create_ring(self.ring, ring_bytes, max_records)
        self.grpc_port, self.http_port = ports or (free_port(), free_port())
        overrides.setdefault("grpc_port", self.grpc_port)
        overrides.setdefault("http_port", self.http_port)
        settings = Settings(
            **{
                "bind": "127.0.0.1",
                "grpc_max_recv_bytes": LIMIT,
                "http_max_body_bytes": LIMIT,
                "shutdown_timeout": 3.0,
                **overrides,
            }
        )
        self.ready_file = tmp / f"{self.ring}.ready"
        env = dict(os.environ, OTLP_INGEST_SETTINGS_JSON=msgspec.json.encode(settings).decode())
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, self.ring, str(self.ready_file)], env=env, cwd=REPO_ROOT
        )
        self.reader: RingReader | None = None

    def wait_ready(self, timeout: float = 15.0) -> Worker:
        wait_until(
            lambda: self.ready_file.exists() or self.proc.poll() is not None, timeout, what="worker ready"
        )
        assert self.proc.poll() is None, f"worker exited with {self.proc.returncode}"
        self.reader = RingReader.attach(self.ring)
        return self

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def drain(self) -> list:
        """Every record published since the last drain (committed, so the ring empties)."""
        assert self.reader is not None
        records = []
        while (record := self.reader.read()) is not None:
            self.reader.commit(record)
            records.append(record)
        return records

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            if self.reader is not None:
                self.reader.close()
            unlink_ring(self.ring)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    w = Worker(tmp_path_factory.mktemp("worker")).wait_ready()
    yield w
    assert w.stop() == ExitCode.OK


@pytest.fixture
def w(worker: Worker) -> Worker:
    """The shared worker with an empty ring."""
    worker.drain()
    return worker


@pytest.fixture(scope="module")
def channel(worker: Worker) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(worker.grpc_target) as ch:
        yield ch


# --- payloads ---------------------------------------------------------------------------------


def spans_request(
    n: int, bad_trace_ids: int = 0, name: str = "op"
) -> trace_service_pb2.ExportTraceServiceRequest:
    """n valid spans plus `bad_trace_ids` spans with a 12-byte trace id."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for i in range(n):
        scope.spans.add(trace_id=bytes(15) + bytes([1]), span_id=i.to_bytes(8, "big"), name=f"{name}{i}")
    for i in range(bad_trace_ids):
        scope.spans.add(trace_id=bytes(12), span_id=(1000 + i).to_bytes(8, "big"), name="bad")
    return request


def metrics_request() -> metrics_service_pb2.ExportMetricsServiceRequest:
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    metric = request.resource_metrics.add().scope_metrics.add().metrics.add(name="m")
    for i in range(3):
        metric.gauge.data_points.add(time_unix_nano=i + 1, as_int=i)
    return request


def logs_request() -> logs_service_pb2.ExportLogsServiceRequest:
    request = logs_service_pb2.ExportLogsServiceRequest()
    scope = request.resource_logs.add().scope_logs.add()
    for i in range(2):
        scope.log_records.add(time_unix_nano=i + 1).body.string_value = f"line {i}"
    return request


def export_stub(channel: grpc.Channel, signal_: Signal):
    info = SIGNALS[signal_]
    return channel.unary_unary(
        info.grpc_method,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=info.response_type.FromString,
    )


def raw_stub(channel: grpc.Channel, signal_: Signal):
    return channel.unary_unary(SIGNALS[signal_].grpc_method)  # bytes in, bytes out


def rich_status(error: grpc.RpcError) -> status_pb2.Status:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    raise AssertionError("no grpc-status-details-bin trailer")


def retry_info(status: status_pb2.Status) -> error_details_pb2.RetryInfo | None:
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info
    return None


def span_count(payload: bytes) -> int:
    request = trace_service_pb2.ExportTraceServiceRequest.FromString(payload)
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


def post(
    w: Worker, path: str, body: bytes, ctype: str = "application/x-protobuf", **headers
) -> requests.Response:
    return requests.post(w.url(path), data=body, headers={"Content-Type": ctype, **headers}, timeout=10)


def raw_http(w: Worker, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send a hand-written request; return (status, headers, body) of the response."""
    with socket.create_connection(("127.0.0.1", w.http_port), timeout=10) as s:
        s.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
                if b"\r\n\r\n" in data:
                    head_part, _, rest = data.partition(b"\r\n\r\n")
                    hdrs = _parse_headers(head_part)
                    if len(rest) >= int(hdrs.get("content-length", "0")):
                        break
        except ConnectionResetError:
            pass  # the server may close once it answered; what it sent is in `data`
    head_part, _, rest = data.partition(b"\r\n\r\n")
    status = int(head_part.split(b" ", 2)[1])
    return status, _parse_headers(head_part), rest


def _parse_headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines if ":" in line)}


# --- gRPC -------------------------------------------------------------------------------------


def test_grpc_ok_empty_response_and_original_bytes_in_ring(w: Worker, channel: grpc.Channel) -> None:
    request = spans_request(5)
    response, call = export_stub(channel, Signal.TRACES).with_call(request, timeout=10)
    assert call.code() == grpc.StatusCode.OK
    assert not response.HasField("partial_success")
    [record] = w.drain()
    assert (record.signal, record.item_count) == (Signal.TRACES, 5)
    assert record.payload == request.SerializeToString()  # valid input is queued without re-encoding


@pytest.mark.parametrize(
    ("signal_", "make", "items"), [(Signal.METRICS, metrics_request, 3), (Signal.LOGS, logs_request, 2)]
)
def test_grpc_metrics_and_logs(w: Worker, channel: grpc.Channel, signal_: Signal, make, items: int) -> None:
    response = export_stub(channel, signal_)(make(), timeout=10)
    assert not response.HasField("partial_success")
    [record] = w.drain()
    assert (record.signal, record.item_count) == (signal_, items)


def test_grpc_gzip(w: Worker, channel: grpc.Channel) -> None:
    export_stub(channel, Signal.TRACES)(spans_request(50), timeout=10, compression=grpc.Compression.Gzip)
    [record] = w.drain()
    assert record.item_count == 50


def test_grpc_partial_success(w: Worker, channel: grpc.Channel) -> None:
    response = export_stub(channel, Signal.TRACES)(spans_request(3, bad_trace_ids=1), timeout=10)
    assert response.partial_success.rejected_spans == 1
    assert "trace_id" in response.partial_success.error_message
    [record] = w.drain()
    assert record.item_count == 3 and span_count(record.payload) == 3


def test_grpc_all_invalid_writes_nothing(w: Worker, channel: grpc.Channel) -> None:
    response = export_stub(channel, Signal.TRACES)(spans_request(0, bad_trace_ids=2), timeout=10)
    assert response.partial_success.rejected_spans == 2
    assert w.drain() == []


def test_grpc_empty_request_ok_nothing_written(w: Worker, channel: grpc.Channel) -> None:
    response = export_stub(channel, Signal.TRACES)(trace_service_pb2.ExportTraceServiceRequest(), timeout=10)
    assert not response.HasField("partial_success")
    assert w.drain() == []


def test_grpc_malformed_is_invalid_argument_without_retry_info(w: Worker, channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as info:
        raw_stub(channel, Signal.TRACES)(b"\x0a\xff\xff\xff", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rich_status(info.value)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert retry_info(status) is None
    assert w.drain() == []


def test_grpc_too_large_is_resource_exhausted_without_retry_info(w: Worker, channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as info:
        export_stub(channel, Signal.TRACES)(spans_request(1, name="x" * (LIMIT + 10)), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Refused as it arrives (not buffered past the limit), with a rich status but no RetryInfo:
    # clients must not resend it as is.
    assert retry_info(rich_status(info.value)) is None
    assert w.drain() == []


# --- HTTP -------------------------------------------------------------------------------------


def test_http_protobuf_ok(w: Worker) -> None:
    request = spans_request(4)
    r = post(w, "/v1/traces", request.SerializeToString())
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-protobuf"
    assert r.content == b""  # an empty ExportTraceServiceResponse
    [record] = w.drain()
    assert record.payload == request.SerializeToString()


def test_http_pipelined_requests_answered_in_order(w: Worker) -> None:
    """Twenty requests in one write (HTTP/1.1 pipelining), the last to an unknown path: twenty
    answers in request order, then the close that follows a refused request with a body; each
    valid request's spans queued once. Small requests are answered by the loop turn's flush
    without pausing the reads (http1.py): nothing is lost or reordered while the next requests
    are already in the buffer."""
    bodies = [spans_request(i + 1).SerializeToString() for i in range(20)]
    paths = [b"/v1/traces"] * 19 + [b"/v1/nothing"]
    wire = b"".join(
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (path, len(body), body)
        for path, body in zip(paths, bodies, strict=True)
    )
    with socket.create_connection(("127.0.0.1", w.http_port), timeout=10) as sock:
        sock.sendall(wire)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass  # closed after the refusal; what it sent is in `data`
    statuses = [int(part.split(b" ", 1)[0]) for part in data.split(b"HTTP/1.1 ")[1:]]
    assert statuses == [200] * 19 + [404]
    assert sum(record.item_count for record in w.drain()) == sum(range(1, 20))


@pytest.mark.parametrize(
    ("path", "signal_", "make", "items"),
    [("/v1/metrics", Signal.METRICS, metrics_request, 3), ("/v1/logs", Signal.LOGS, logs_request, 2)],
)
def test_http_metrics_and_logs(w: Worker, path: str, signal_: Signal, make, items: int) -> None:
    assert post(w, path, make().SerializeToString()).status_code == 200
    [record] = w.drain()
    assert (record.signal, record.item_count) == (signal_, items)


def _json_spans(ids: list[tuple[str, str]]) -> bytes:
    spans = [{"traceId": t, "spanId": s, "name": "j", "kind": 2} for t, s in ids]
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}).encode()


def test_http_json_ok_with_charset(w: Worker) -> None:
    body = _json_spans([("5B8EFFF798038103D269B633813FC60C", "EEE19B7EC3C1B174")])
    r = post(w, "/v1/traces", body, "application/json; charset=utf-8")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {}
    [record] = w.drain()
    span = trace_service_pb2.ExportTraceServiceRequest.FromString(record.payload).resource_spans[0]
    assert span.scope_spans[0].spans[0].trace_id.hex() == "5b8efff798038103d269b633813fc60c"


def test_http_json_partial_success(w: Worker) -> None:
    body = _json_spans(
        [("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"), ("abcd" * 6, "eee19b7ec3c1b175")]
    )
    r = post(w, "/v1/traces", body, "application/json")
    assert r.status_code == 200
    partial = r.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 1 and partial["errorMessage"]
    [record] = w.drain()
    assert record.item_count == 1


def test_http_protobuf_partial_success(w: Worker) -> None:
    r = post(w, "/v1/traces", spans_request(2, bad_trace_ids=3).SerializeToString())
    assert r.status_code == 200
    response = trace_service_pb2.ExportTraceServiceResponse.FromString(r.content)
    assert response.partial_success.rejected_spans == 3
    assert [rec.item_count for rec in w.drain()] == [2]


def test_http_400_protobuf_status_body(w: Worker) -> None:
    r = post(w, "/v1/traces", b"\x0a\xff\xff\xff")
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/x-protobuf"
    status = status_pb2.Status.FromString(r.content)
    assert status.code == 3 and status.message
    assert "retry-after" not in r.headers


def test_http_400_json_status_body(w: Worker) -> None:
    r = post(w, "/v1/logs", b"{not json", "application/json")
    assert r.status_code == 400
    body = r.json()
    assert body["code"] == 3 and body["message"]
    assert w.drain() == []


@pytest.mark.parametrize("ctype", ["text/plain", "application/protobuf", ""])
def test_http_415_content_type(w: Worker, ctype: str) -> None:
    r = post(w, "/v1/traces", spans_request(1).SerializeToString(), ctype)
    assert r.status_code == 415
    assert w.drain() == []


def test_http_415_content_encoding(w: Worker) -> None:
    r = post(w, "/v1/traces", spans_request(1).SerializeToString(), **{"Content-Encoding": "br"})
    assert r.status_code == 415


def test_http_gzip_and_deflate_bodies(w: Worker) -> None:
    body = spans_request(20).SerializeToString()
    assert post(w, "/v1/traces", gzip.compress(body), **{"Content-Encoding": "gzip"}).status_code == 200
    assert post(w, "/v1/traces", zlib.compress(body), **{"Content-Encoding": "deflate"}).status_code == 200
    assert [r.payload for r in w.drain()] == [body, body]


def test_http_zstd_bodies_protobuf_and_json(w: Worker) -> None:
    body = spans_request(20).SerializeToString()
    r = post(w, "/v1/traces", zstandard.ZstdCompressor().compress(body), **{"Content-Encoding": "zstd"})
    assert r.status_code == 200
    two_frames = zstandard.ZstdCompressor().compress(body[:50]) + zstandard.ZstdCompressor().compress(
        body[50:]
    )
    assert post(w, "/v1/traces", two_frames, **{"Content-Encoding": "zstd"}).status_code == 200
    as_json = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "0" * 31 + "1", "spanId": "0" * 15 + "1", "name": "z"}]}]}]}).encode()  # fmt: skip
    r = post(w, "/v1/traces", zstandard.ZstdCompressor().compress(as_json), "application/json",
             **{"Content-Encoding": "zstd"})  # fmt: skip
    assert r.status_code == 200
    records = w.drain()
    assert [r.payload for r in records[:2]] == [body, body]
    assert records[2].item_count == 1


def test_http_413_zstd_bomb_and_400_truncated_zstd(w: Worker) -> None:
    bomb = zstandard.ZstdCompressor().compress(b"\x00" * (20 * LIMIT))  # ~1 KiB, declares 20 MiB
    assert len(bomb) < LIMIT // 100
    r = post(w, "/v1/traces", bomb, **{"Content-Encoding": "zstd"})
    assert r.status_code == 413
    frame = zstandard.ZstdCompressor().compress(spans_request(200).SerializeToString())
    r = post(w, "/v1/traces", frame[:-3], **{"Content-Encoding": "zstd"})
    assert r.status_code == 400
    assert "zstd" in status_pb2.Status.FromString(r.content).message
    assert w.drain() == []


def test_http_413_by_content_length_before_reading(w: Worker) -> None:
    head = (
        "POST /v1/traces HTTP/1.1\nHost: x\nContent-Type: application/x-protobuf\n"
        f"Content-Length: {LIMIT + 1}\n"
    )
    status, _, _ = raw_http(w, head, b"\x00" * 1000)  # the rest is never sent
    assert status == 413


def test_http_413_chunked_without_content_length(w: Worker) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(LIMIT // (64 * KiB) + 2):
            yield b"\x00" * (64 * KiB)

    try:
        r = post(w, "/v1/traces", chunks())  # a generator body is sent chunked
        assert r.status_code == 413
    except requests.ConnectionError:
        pytest.fail("server closed the connection instead of answering 413")


def test_http_413_gzip_bomb(w: Worker) -> None:
    bomb = gzip.compress(b"\x00" * (20 * LIMIT))  # ~20 KiB that inflates to 20x the limit
    assert len(bomb) < LIMIT // 10
    r = post(w, "/v1/traces", bomb, **{"Content-Encoding": "gzip"})
    assert r.status_code == 413
    assert w.drain() == []


def test_http_chunked_body_accepted(w: Worker) -> None:
    body = spans_request(30).SerializeToString()
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 100]), body[i : i + 100]) for i in range(0, len(body), 100)
    )
    head = (
        "POST /v1/traces HTTP/1.1\nHost: x\nContent-Type: application/x-protobuf\n"
        "Transfer-Encoding: chunked\n"
    )
    status, _, _ = raw_http(w, head, chunked + b"0\r\n\r\n")
    assert status == 200
    [record] = w.drain()
    assert record.payload == body


def test_http_404_and_405(w: Worker) -> None:
    assert post(w, "/v1/nothing", b"").status_code == 404
    r = requests.get(w.url("/v1/traces"), timeout=10)
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"


# --- the OpenTelemetry SDK as the client --------------------------------------------------------


def _sdk_spans(n: int) -> list[object]:
    return finished_spans(f"sdk-{i}" for i in range(n))


@pytest.mark.parametrize("exporter", ["grpc", "http/protobuf", "http/json"])
def test_otel_sdk_exporters(w: Worker, exporter: str) -> None:
    from opentelemetry.sdk.trace.export import SpanExportResult

    if exporter == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

        client = Grpc(endpoint=w.grpc_target, insecure=True, timeout=10)
    elif exporter == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

        client = Http(endpoint=w.url("/v1/traces"), timeout=10)
    else:
        from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter as Json

        client = Json(endpoint=w.url("/v1/traces"), timeout=10)
    spans = _sdk_spans(7)
    try:
        assert client.export(spans) == SpanExportResult.SUCCESS
    finally:
        client.shutdown()
    records = w.drain()
    assert sum(r.item_count for r in records) == 7
    names = {
        s.name
        for r in records
        for rs in trace_service_pb2.ExportTraceServiceRequest.FromString(r.payload).resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    }
    assert names == {f"sdk-{i}" for i in range(7)}


# --- queue full, boot failure, SO_REUSEPORT -----------------------------------------------------


def test_queue_full_is_unavailable_with_retry_info_and_503_retry_after(tmp_path: Path) -> None:
    tiny = Worker(tmp_path, ring_bytes=64 * KiB, max_records=1).wait_ready()
    try:
        with grpc.insecure_channel(tiny.grpc_target) as ch:
            export_stub(ch, Signal.TRACES)(spans_request(2), timeout=10)  # fills the one record slot
            with pytest.raises(grpc.RpcError) as info:
                export_stub(ch, Signal.TRACES)(spans_request(2), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        hint = retry_info(rich_status(info.value))
        assert hint is not None and hint.retry_delay.seconds >= 1
        r = post(tiny, "/v1/traces", spans_request(2).SerializeToString())
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) >= 1
        assert status_pb2.Status.FromString(r.content).code == grpc.StatusCode.UNAVAILABLE.value[0]
        # Draining the ring makes room again: the refusal was backpressure, not a failure.
        assert [rec.item_count for rec in tiny.drain()] == [2]
        assert post(tiny, "/v1/traces", spans_request(2).SerializeToString()).status_code == 200
    finally:
        assert tiny.stop() == ExitCode.OK


def test_port_in_use_exits_child_boot(tmp_path: Path) -> None:
    with socket.socket() as holder:  # no SO_REUSEPORT: the worker cannot share this port
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = Worker(tmp_path, ring_bytes=64 * KiB, http_port=holder.getsockname()[1])
        try:
            assert busy.proc.wait(30) == ExitCode.CHILD_BOOT
        finally:
            busy.stop()
    assert not busy.ready_file.exists()


def test_two_workers_share_ports_and_stop_cleanly(tmp_path: Path) -> None:
    first = Worker(tmp_path).wait_ready()
    second = Worker(tmp_path, ports=(first.grpc_port, first.http_port)).wait_ready()
    try:
        for _ in range(20):  # new connections each time: the kernel spreads them over both
            assert post(first, "/v1/traces", spans_request(1).SerializeToString()).status_code == 200
        assert len(first.drain()) + len(second.drain()) == 20
    finally:
        assert second.stop() == ExitCode.OK
    # The first keeps serving after its sibling left.
    assert post(first, "/v1/traces", spans_request(1).SerializeToString()).status_code == 200
    assert first.stop() == ExitCode.OK


def test_sigterm_mid_stream_loses_no_acknowledged_request(tmp_path: Path) -> None:
    """Every request answered OK before or during the drain is in the ring; later ones are refused
    (UNAVAILABLE: retryable) or fail to connect, never acknowledged and dropped."""
    victim = Worker(tmp_path).wait_ready()
    acked: list[int] = []
    stop_sending = threading.Event()

    def send() -> None:
        with grpc.insecure_channel(victim.grpc_target) as ch:
            stub = raw_stub(ch, Signal.TRACES)
            for k in itertools.count():
                if stop_sending.is_set():
                    return
                try:
                    stub(spans_request(5, name=f"r{k}-").SerializeToString(), timeout=5)
                except grpc.RpcError:
                    return
                acked.append(k)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        wait_until(lambda: len(acked) >= 20, 15, what="requests acknowledged before SIGTERM")
        victim.proc.send_signal(signal.SIGTERM)
        assert victim.proc.wait(15) == ExitCode.OK
        sender.join(15)
        queued = set()
        for record in victim.drain():  # the ring outlives the worker: read what it acknowledged
            request = trace_service_pb2.ExportTraceServiceRequest.FromString(record.payload)
            queued |= {
                s.name.split("-")[0]
                for rs in request.resource_spans
                for ss in rs.scope_spans
                for s in ss.spans
            }
    finally:
        stop_sending.set()
        sender.join(15)
        victim.stop()
    assert {f"r{k}" for k in acked} <= queued


def test_a_full_ring_refuses_protobuf_unread_and_still_counts_its_items() -> None:
    """With the ring full a protobuf body is refused before it is decoded (decoding only to
    refuse doubled the cost of overload), and its items still count as refused."""
    from prometheus_client import REGISTRY

    from otlp_ingest import errors
    from otlp_ingest.receiver.export import ExportService
    from otlp_ingest.ring import RingWriter

    transport = f"full{os.getpid()}"
    name = ring_name(f"full-{os.getpid()}", 0)
    create_ring(name, 64 * 1024, 1000)
    try:
        with RingWriter.attach(name) as writer, RingReader.attach(name) as reader:
            service = ExportService(writer, Settings())

            def refused_spans() -> float:
                service.flush_metrics()
                labels = {"transport": transport}
                return REGISTRY.get_sample_value("otlp_receiver_refused_spans_total", labels) or 0

            body = spans_request(20).SerializeToString()
            while True:
                try:
                    service.export(Signal.TRACES, body, "protobuf", transport)
                except errors.QueueFull:
                    break
            before = refused_spans()
            with pytest.raises(errors.QueueFull):
                service.export(Signal.TRACES, spans_request(7).SerializeToString(), "protobuf", transport)
            assert refused_spans() == before + 7
            # Unread means undecoded: a malformed body gets "retry later" too, and its 400 once
            # there is room again.
            with pytest.raises(errors.QueueFull):
                service.export(Signal.TRACES, body[:-3], "protobuf", transport)
            while (record := reader.read()) is not None:
                reader.commit(record)
            with pytest.raises(errors.InvalidArgument):
                service.export(Signal.TRACES, body[:-3], "protobuf", transport)
            assert service.export(Signal.TRACES, body, "protobuf", transport).accepted == 20
    finally:
        unlink_ring(name)


def test_export_service_in_process_metrics_and_draining() -> None:
    """ExportService with a fake ring writer (the seam): counters by transport, drain, close."""
    from prometheus_client import REGISTRY

    from otlp_ingest import errors
    from otlp_ingest.receiver.export import ExportService

    class FakeWriter:
        def __init__(self) -> None:
            self.records: list[tuple[int, int, bytes]] = []
            self.full = False
            self.closed = False
            self.max_payload = 1 << 20

        def try_write(self, signal: int, item_count: int, payload: bytes) -> bool:
            if self.full:
                return False
            self.records.append((signal, item_count, bytes(payload)))
            return True

        def close(self) -> None:
            self.closed = True

    transport = f"t{os.getpid()}"  # a label no other test uses
    writer = FakeWriter()
    service = ExportService(writer, Settings())

    def sample(name: str, **labels: str) -> float:
        service.flush_metrics()  # counts are batched (export._Series); the worker flushes every sweep
        return REGISTRY.get_sample_value(name, labels) or 0.0

    result = service.export(
        Signal.TRACES, spans_request(4, bad_trace_ids=1).SerializeToString(), "protobuf", transport
    )
    assert (result.accepted, result.rejected) == (4, 1)
    assert sample("otlp_receiver_accepted_spans_total", transport=transport) == 4
    assert sample("otlp_receiver_refused_spans_total", transport=transport) == 1
    assert (
        sample("otlp_receiver_requests_total", transport=transport, signal="traces", outcome="partial") == 1
    )

    writer.full = True
    with pytest.raises(errors.QueueFull):
        service.export(Signal.TRACES, spans_request(2).SerializeToString(), "protobuf", transport)
    assert sample("otlp_receiver_refused_spans_total", transport=transport) == 3
    assert (
        sample("otlp_receiver_requests_total", transport=transport, signal="traces", outcome="refused") == 1
    )
    with pytest.raises(errors.InvalidArgument):
        service.export(Signal.LOGS, b"\xff", "protobuf", transport)
    assert sample("otlp_receiver_requests_total", transport=transport, signal="logs", outcome="invalid") == 1
    assert sample("otlp_receiver_request_duration_seconds_count", transport=transport, signal="traces") == 2

    writer.full = False
    writer.max_payload = 10  # a record that could never fit is 413-type, not "retry later"
    with pytest.raises(errors.PayloadTooLarge):
        service.export(Signal.TRACES, spans_request(1).SerializeToString(), "protobuf", transport)
    assert (
        sample("otlp_receiver_requests_total", transport=transport, signal="traces", outcome="too_large") == 1
    )
    writer.max_payload = 1 << 20

    service.start_draining()
    with pytest.raises(errors.ShuttingDown):
        service.export(Signal.TRACES, spans_request(1).SerializeToString(), "protobuf", transport)
    service.close()
    assert writer.closed and len(writer.records) == 1


# --- bearer tokens: what each transport must do (otlp_ingest.auth) ------------------------------
#
# A worker with OTLP_AUTH_TOKENS_FILE, run on its own (no supervisor: it reads the tokens file
# itself). These pin the transport contract: the token is checked before anything else, a refusal
# is UNAUTHENTICATED / 401 + WWW-Authenticate + google.rpc.Status, and SIGUSR1 re-reads the tokens.

TOKEN = "worker-test-token-0123456789abcdef"
OTHER = "worker-other-token-fedcba9876543210"


@pytest.fixture(scope="module")
def auth_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    tmp = tmp_path_factory.mktemp("auth-worker")
    tokens = tmp / "tokens"
    tokens.write_text(f"# test clients\nsdk: {TOKEN}\n")
    w = Worker(tmp, auth_tokens_file=str(tokens)).wait_ready()
    w.tokens_file = tokens  # type: ignore[attr-defined]
    yield w
    assert w.stop() == ExitCode.OK


@pytest.fixture
def aw(auth_worker: Worker) -> Worker:
    auth_worker.drain()
    return auth_worker


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.mark.parametrize(
    "metadata", [None, _bearer(OTHER), (("authorization", TOKEN),)], ids=["none", "wrong", "no-scheme"]
)
def test_auth_grpc_refusal_is_unauthenticated_with_status_details(aw: Worker, metadata) -> None:
    with grpc.insecure_channel(aw.grpc_target) as ch, pytest.raises(grpc.RpcError) as info:
        export_stub(ch, Signal.TRACES)(spans_request(3), timeout=10, metadata=metadata)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    status = rich_status(info.value)
    assert status.code == grpc.StatusCode.UNAUTHENTICATED.value[0] and retry_info(status) is None
    assert "Authorization: Bearer" in status.message and OTHER not in status.message
    assert aw.drain() == []


@pytest.mark.parametrize("signal_", list(Signal))
def test_auth_grpc_right_token_every_signal(aw: Worker, signal_: Signal) -> None:
    make = {
        Signal.TRACES: lambda: spans_request(2),
        Signal.METRICS: metrics_request,
        Signal.LOGS: logs_request,
    }
    with grpc.insecure_channel(aw.grpc_target) as ch:
        export_stub(ch, signal_)(
            make[signal_](), timeout=10, metadata=(("authorization", f"bearer {TOKEN}"),)
        )
    [record] = aw.drain()
    assert record.signal == signal_


def test_auth_grpc_is_decided_before_the_message_is_read(aw: Worker) -> None:
    """An oversized message without a token: UNAUTHENTICATED, not RESOURCE_EXHAUSTED."""
    with grpc.insecure_channel(aw.grpc_target) as ch, pytest.raises(grpc.RpcError) as info:
        raw_stub(ch, Signal.TRACES)(b"\x0a" * (LIMIT + 1000), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("ctype", "headers"),
    [
        ("application/x-protobuf", {}),
        ("application/json", {"Authorization": f"Bearer {OTHER}"}),
        ("application/x-protobuf", {"Authorization": f"Basic {TOKEN}"}),
    ],
    ids=["protobuf-none", "json-wrong", "basic-scheme"],
)
@pytest.mark.parametrize("path", ["/v1/traces", "/v1/metrics", "/v1/logs"])
def test_auth_http_401_with_challenge_and_status_body(aw: Worker, path: str, ctype: str, headers) -> None:
    r = post(aw, path, spans_request(2).SerializeToString(), ctype, **headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    wrong = "Bearer" in headers.get("Authorization", "")
    assert ('error="invalid_token"' in r.headers["www-authenticate"]) == wrong
    assert r.headers["connection"] == "close"
    assert "retry-after" not in r.headers
    if ctype == "application/json":
        body = r.json()
        assert body["code"] == 16 and "details" not in body
    else:
        status = status_pb2.Status.FromString(r.content)
        assert status.code == 16 and "Bearer" in status.message
    assert aw.drain() == []


def test_auth_http_right_token_json_and_zstd(aw: Worker) -> None:
    body = spans_request(3).SerializeToString()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert post(aw, "/v1/traces", body, **auth).status_code == 200
    r = post(
        aw, "/v1/traces", zstandard.ZstdCompressor().compress(body), **auth, **{"Content-Encoding": "zstd"}
    )
    assert r.status_code == 200
    assert [r.payload for r in aw.drain()] == [body, body]


def test_auth_http_is_decided_before_the_body_or_anything_else(aw: Worker) -> None:
    # Over the size limit by Content-Length, body never sent: 401, not 413.
    head = (
        "POST /v1/traces HTTP/1.1\nHost: x\nContent-Type: application/x-protobuf\n"
        f"Content-Length: {100 * LIMIT}\n"
    )
    status, headers, _ = raw_http(aw, head, b"\xff" * 1000)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    # Garbage, a bomb, a wrong content type or encoding: 401 before any of it is looked at.
    bomb = gzip.compress(b"\x00" * (20 * LIMIT))
    assert post(aw, "/v1/traces", bomb, **{"Content-Encoding": "gzip"}).status_code == 401
    assert post(aw, "/v1/traces", b"\xff\xfe garbage").status_code == 401
    assert post(aw, "/v1/traces", b"x", "text/plain").status_code == 401
    assert post(aw, "/v1/traces", b"x", **{"Content-Encoding": "br"}).status_code == 401
    # With the token, the same bomb is judged on its merits.
    assert (
        post(
            aw, "/v1/traces", bomb, Authorization=f"Bearer {TOKEN}", **{"Content-Encoding": "gzip"}
        ).status_code
        == 413
    )


def test_auth_sigusr1_rereads_tokens_and_keeps_them_when_the_file_is_bad(aw: Worker) -> None:
    tokens: Path = aw.tokens_file  # type: ignore[attr-defined]
    body = spans_request(1).SerializeToString()

    def status(token: str) -> int:
        return post(aw, "/v1/traces", body, Authorization=f"Bearer {token}").status_code

    try:
        tokens.write_text(f"sdk: {TOKEN}\nother: {OTHER}\n")
        assert status(OTHER) == 401  # not before the signal: the worker reads at boot and on SIGUSR1
        aw.proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: status(OTHER) == 200, 10, what="the added token accepted after SIGUSR1")
        tokens.write_text("# emptied by mistake\n")
        aw.proc.send_signal(signal.SIGUSR1)
        with grpc.insecure_channel(aw.grpc_target) as ch:  # gRPC sees the same store
            export_stub(ch, Signal.TRACES)(spans_request(1), timeout=10, metadata=_bearer(OTHER))
        assert status(TOKEN) == 200 and status(OTHER) == 200  # previous tokens kept
        tokens.write_text(f"sdk: {TOKEN}\n")
        aw.proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: status(OTHER) == 401, 10, what="the removed token refused after SIGUSR1")
        assert status(TOKEN) == 200
        assert aw.proc.poll() is None
    finally:
        tokens.write_text(f"# test clients\nsdk: {TOKEN}\n")
        aw.proc.send_signal(signal.SIGUSR1)
