"""Batch assembly by wire-level concatenation: the exporter's per-batch CPU cost.

A ~2048-span batch built from 10-span records (205 records) and from 512-span records (4), through
the real `Batcher` (add + close on batch_size) and the final `b"".join`. For scale, the same batch
merged the naive way (decode every record, MergeFrom, re-serialize) is measured too.
"""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from otlp_ingest.exporter.batcher import Batcher
from otlp_ingest.otlp.signals import Signal

BATCH_SPANS = 2048


def spans_request(first: int, n: int) -> bytes:
    request = trace_service_pb2.ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    attr = resource.resource.attributes.add(key="service.name")
    attr.value.string_value = "bench"
    scope = resource.scope_spans.add()
    for i in range(first, first + n):
        span = scope.spans.add(
            name="GET /api/items", kind=2, start_time_unix_nano=i, end_time_unix_nano=i + 9
        )
        span.trace_id = (i + 1).to_bytes(16, "big")
        span.span_id = (i + 1).to_bytes(8, "big")
        a = span.attributes.add(key="http.status_code")
        a.value.int_value = 200
    return request.SerializeToString()


def records(spans_per_record: int) -> list[bytes]:
    n = -(-BATCH_SPANS // spans_per_record)
    return [spans_request(i * spans_per_record, spans_per_record) for i in range(n)]


def assemble(payloads: list[bytes], spans_per_record: int) -> bytes:
    # batch_size = all the records, so the last add closes exactly one batch.
    batcher: Batcher[int] = Batcher(len(payloads) * spans_per_record, 3 << 20, 5.0, lambda: 0.0)
    for i, payload in enumerate(payloads):
        closed = batcher.add(Signal.TRACES, spans_per_record, payload, i)
    [batch] = closed
    return batch.payload()


@pytest.mark.parametrize("spans_per_record", [10, 512])
def test_concatenate(benchmark, spans_per_record: int) -> None:
    payloads = records(spans_per_record)
    merged = benchmark(assemble, payloads, spans_per_record)
    decoded = trace_service_pb2.ExportTraceServiceRequest.FromString(merged)
    assert sum(len(ss.spans) for rs in decoded.resource_spans for ss in rs.scope_spans) >= BATCH_SPANS


@pytest.mark.parametrize("spans_per_record", [10, 512])
def test_decode_merge_encode_for_comparison(benchmark, spans_per_record: int) -> None:
    payloads = records(spans_per_record)

    def naive() -> bytes:
        merged = trace_service_pb2.ExportTraceServiceRequest()
        for payload in payloads:
            merged.MergeFrom(trace_service_pb2.ExportTraceServiceRequest.FromString(payload))
        return merged.SerializeToString()

    assert benchmark(naive) == b"".join(payloads)
