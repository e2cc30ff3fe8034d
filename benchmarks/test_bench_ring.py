"""Ring micro-benchmarks: one write + read + commit cycle per round, in one process, with real
OTLP trace payloads of 10 and 512 spans. Run with ``pytest benchmarks/test_bench_ring.py -s``;
each case prints records/s and MB/s of payload moved.
"""

from __future__ import annotations

import os
import uuid

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otlp_ingest.ring import RingReader, RingWriter, create_ring, unlink_ring


def trace_payload(spans: int) -> bytes:
    """A serialized ExportTraceServiceRequest with ``spans`` typical spans (ids, times, a few
    attributes): the bytes a receiver worker writes into its ring."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    service = KeyValue(key="service.name", value=AnyValue(string_value="bench"))
    resource_spans.resource.attributes.append(service)
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "bench"
    for i in range(spans):
        span = scope_spans.spans.add()
        span.trace_id = os.urandom(16)
        span.span_id = os.urandom(8)
        span.parent_span_id = os.urandom(8)
        span.name = f"GET /api/items/{i}"
        span.kind = Span.SPAN_KIND_SERVER
        span.start_time_unix_nano = 1_700_000_000_000_000_000 + i
        span.end_time_unix_nano = span.start_time_unix_nano + 1_500_000
        span.attributes.extend(
            [
                KeyValue(key="http.method", value=AnyValue(string_value="GET")),
                KeyValue(key="http.status_code", value=AnyValue(int_value=200)),
                KeyValue(key="net.peer.name", value=AnyValue(string_value="10.0.0.1")),
            ]
        )
    return request.SerializeToString()


@pytest.fixture
def ring_pair():
    name = f"otlpbench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    create_ring(name, 64 * 1024 * 1024, 10_000)
    writer, reader = RingWriter.attach(name), RingReader.attach(name)
    yield writer, reader
    writer.close()
    reader.close()
    unlink_ring(name)


@pytest.mark.parametrize("spans", [10, 512])
def test_write_read_commit(benchmark, ring_pair, spans):
    writer, reader = ring_pair
    payload = trace_payload(spans)

    def cycle() -> None:
        if not writer.try_write(1, spans, payload):
            raise AssertionError("ring full")
        reader.commit(reader.read())

    benchmark(cycle)
    mean = benchmark.stats.stats.mean
    print(
        f"\nring write+read+commit, {spans} spans ({len(payload)} B): "
        f"{1 / mean:,.0f} records/s, {len(payload) / mean / 1e6:,.0f} MB/s, {spans / mean:,.0f} spans/s"
    )


@pytest.mark.parametrize("spans", [10, 512])
def test_write_only(benchmark, ring_pair, spans):
    """The cost a receiver worker pays per request (the reader drains off the clock)."""
    writer, reader = ring_pair
    payload = trace_payload(spans)

    def setup() -> None:
        while (record := reader.read()) is not None:
            reader.commit(record)

    benchmark.pedantic(lambda: writer.try_write(1, spans, payload), setup=setup, rounds=2000)
    mean = benchmark.stats.stats.mean
    print(f"\nring try_write, {spans} spans ({len(payload)} B): {1 / mean:,.0f} records/s")
