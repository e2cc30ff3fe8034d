"""Micro-benchmarks of one request through our own protocols, in one process (docs/performance.md).

What our code costs per request, without the kernel, the event loop's wakeups or another process:
`HttpConnection` and `H2Connection` + `GrpcReceiver` are fed the bytes a client sends (a
keep-alive HTTP/1.1 request; HEADERS + DATA of a warm gRPC connection, whose header block is
indexed fields only) through a stand-in transport that only counts writes (the seam: asyncio's
transport), export() writes to a real ring, and the loop turn's flush runs after each request,
as the worker's event loop does. The ring is drained every 100 requests.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest
import uvloop

from otlp_ingest.config import Settings
from otlp_ingest.receiver.dispatch import ExportRunner, Receiving
from otlp_ingest.receiver.export import ExportService
from otlp_ingest.receiver.grpc_service import GrpcReceiver
from otlp_ingest.receiver.http_app import OtlpHttpApp
from otlp_ingest.ring import RingReader, RingWriter, create_ring, ring_name, unlink_ring
from otlp_ingest.transport.defences import BodyBudget
from otlp_ingest.transport.frames import (
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PREFACE,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
)
from otlp_ingest.transport.h2 import H2Config, H2Connection
from otlp_ingest.transport.hpack import encode_literal
from otlp_ingest.transport.http1 import HttpConfig, HttpConnection

TRACES_PATH = b"/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class CountingTransport:
    """The asyncio transport seam: counts responses written, never sends."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


@pytest.fixture(scope="module")
def pipeline() -> Iterator[tuple[ExportService, ExportRunner, Callable[[], None]]]:
    name = ring_name(os.getpid(), 991)
    create_ring(name, 64 << 20, 1 << 20)
    writer, reader = RingWriter.attach(name), RingReader.attach(name)
    service = ExportService(writer, Settings())
    loop = uvloop.new_event_loop()

    def drain() -> None:
        while (record := reader.read()) is not None:
            reader.commit(record)

    try:
        yield service, ExportRunner(service, loop), drain
    finally:
        reader.close()
        service.close()
        loop.close()
        unlink_ring(name)


def _feed(connection: object, service: ExportService, requests: list[bytes], drain: Callable[[], None]):
    def run() -> None:
        for i, data in enumerate(requests):
            connection.data_received(data)  # type: ignore[attr-defined]
            service.flush_staged()  # the loop turn's flush (dispatch.ExportRunner)
            if i % 100 == 99:
                drain()

    return run


@pytest.mark.parametrize("items", [10, 100])
def test_http_request(benchmark, pipeline, otlp_payload, items: int) -> None:
    service, runner, drain = pipeline
    app = OtlpHttpApp(Receiving(service, runner, Settings()))
    connection = HttpConnection(app, HttpConfig(), set(), time.monotonic)
    transport = CountingTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    head = (
        b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1:4318\r\nUser-Agent: python-requests/2.32\r\n"
        b"Accept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\n"
        b"Content-Type: application/x-protobuf\r\nContent-Length: %d\r\n\r\n"
    )
    requests = [head % len(body) + body for body in (otlp_payload("traces", items) for _ in range(500))]
    benchmark.pedantic(_feed(connection, service, requests, drain), rounds=5, iterations=1)
    benchmark.extra_info["us_per_request"] = benchmark.stats.stats.min / len(requests) * 1e6
    assert transport.writes >= 500


@pytest.mark.parametrize("items", [10, 100])
def test_grpc_request(benchmark, pipeline, otlp_payload, items: int) -> None:
    service, runner, drain = pipeline
    receiver = GrpcReceiver(Receiving(service, runner, Settings()), BodyBudget(1 << 30))
    connection = H2Connection(receiver, H2Config(), set(), time.monotonic)
    transport = CountingTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    connection.data_received(PREFACE + frame(SETTINGS, 0, 0))
    # As a warm grpc client sends them: its first block adds the fields to the HPACK table
    # (literal with incremental indexing), every later one is indexed fields only.
    fields = [
        (b":path", TRACES_PATH),
        (b":authority", b"127.0.0.1:4317"),
        (b"content-type", b"application/grpc"),
    ]
    first = b"\x83\x86" + b"".join(b"\x40" + encode_literal([field])[1:] for field in fields)
    indexed = bytes([0x83, 0x86, 0x80 | 64, 0x80 | 63, 0x80 | 62])
    requests = []
    stream_ids = iter(range(1, 1 << 30, 2))
    for _ in range(5 * 500):  # a fresh stream per request and round
        body = otlp_payload("traces", items)
        message = b"\x00" + len(body).to_bytes(4, "big") + body
        sid = next(stream_ids)
        data = b"".join(
            frame(DATA, END_STREAM if i + 16384 >= len(message) else 0, sid, message[i : i + 16384])
            for i in range(0, len(message), 16384)
        )
        credit = frame(WINDOW_UPDATE, 0, 0, (len(message) + 64).to_bytes(4, "big"))
        block = first if sid == 1 else indexed
        requests.append(frame(HEADERS, END_HEADERS, sid, block) + data + credit)
    rounds = iter(range(5))

    def one_round() -> None:
        start = next(rounds) * 500
        _feed(connection, service, requests[start : start + 500], drain)()

    benchmark.pedantic(one_round, rounds=5, iterations=1)
    benchmark.extra_info["us_per_request"] = benchmark.stats.stats.min / 500 * 1e6
    assert transport.writes >= 2500
