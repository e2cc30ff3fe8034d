"""Realistic OTLP requests of a chosen size, built in protobuf, for tests and benchmarks.

The shapes follow what the OpenTelemetry SDKs send: one resource with a handful of attributes, one
scope, then `n` items with typical attributes; spans carry an event and a link, metric points are
spread over every point kind (with exemplars where the kind has them), logs carry trace context.
"""

from __future__ import annotations

import os

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from otlp_ingest.otlp.signals import Signal

T0 = 1_700_000_000_000_000_000
# Valid ids (16 and 8 bytes) for hand-built items; tests make them invalid by slicing or padding.
TID, SID = bytes(range(1, 17)), bytes(range(1, 9))


def kv(key: str, value: str | int | float | bool) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _resource(target: Message) -> None:
    target.resource.attributes.extend(
        [
            kv("service.name", "checkout"),
            kv("service.version", "1.4.2"),
            kv("host.name", "node-7"),
            kv("telemetry.sdk.language", "python"),
        ]
    )


def _ids(i: int) -> tuple[bytes, bytes]:
    return (i // 4 + 1).to_bytes(16, "big"), (i + 1).to_bytes(8, "big")


def traces(n: int) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    _resource(rs)
    ss = rs.scope_spans.add()
    ss.scope.name = "opentelemetry.instrumentation.flask"
    ss.scope.version = "0.48b0"
    for i in range(n):
        trace_id, span_id = _ids(i)
        span = ss.spans.add(
            trace_id=trace_id,
            span_id=span_id,
            parent_span_id=b"" if i % 4 == 0 else _ids(i - 1)[1],
            name=f"GET /api/items/{i % 50}",
            kind=2,
            start_time_unix_nano=T0 + i * 1000,
            end_time_unix_nano=T0 + i * 1000 + 250_000,
            flags=0x101,
        )
        span.attributes.extend(
            [
                kv("http.request.method", "GET"),
                kv("url.path", f"/api/items/{i % 50}"),
                kv("http.response.status_code", 200),
                kv("server.address", "shop.example.com"),
            ]
        )
        span.events.add(name="cache.miss", time_unix_nano=T0 + i * 1000 + 10)
        link = span.links.add(trace_id=os.urandom(16), span_id=os.urandom(8))
        link.attributes.append(kv("link.kind", "follows"))
        span.status.code = 1
    return req


def metrics(n: int) -> ExportMetricsServiceRequest:
    """`n` data points over five metrics (gauge, sum, histogram, exponential histogram, summary)."""
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    _resource(rm)
    sm = rm.scope_metrics.add()
    sm.scope.name = "opentelemetry.instrumentation.system_metrics"
    kinds = ["gauge", "sum", "histogram", "exponential_histogram", "summary"]
    per_kind = [n // 5 + (1 if k < n % 5 else 0) for k in range(5)]
    for kind, count in zip(kinds, per_kind, strict=True):
        if count == 0:
            continue
        metric = sm.metrics.add(name=f"app.{kind}", unit="ms", description=f"a {kind}")
        data = getattr(metric, kind)
        if kind in ("sum", "histogram", "exponential_histogram"):
            data.aggregation_temporality = 2
        if kind == "sum":
            data.is_monotonic = True
        for i in range(count):
            p = data.data_points.add(start_time_unix_nano=T0, time_unix_nano=T0 + i)
            p.attributes.extend([kv("http.route", f"/r/{i % 20}"), kv("cpu", i % 4)])
            if kind in ("gauge", "sum"):
                p.as_double = i * 1.5
            elif kind == "histogram":
                p.count, p.sum = 10, 123.5
                p.bucket_counts.extend([1, 2, 3, 4])
                p.explicit_bounds.extend([5.0, 10.0, 25.0])
            elif kind == "exponential_histogram":
                p.count, p.sum, p.scale, p.zero_count = 10, 99.0, 3, 1
                p.positive.offset = 2
                p.positive.bucket_counts.extend([1, 2, 3, 3])
            else:
                p.count, p.sum = 5, 50.0
                p.quantile_values.add(quantile=0.5, value=9.0)
                p.quantile_values.add(quantile=0.99, value=20.0)
            if kind != "summary" and i % 2 == 0:
                trace_id, span_id = _ids(i)
                p.exemplars.add(time_unix_nano=T0 + i, as_double=1.0, trace_id=trace_id, span_id=span_id)
    return req


def logs(n: int) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    _resource(rl)
    sl = rl.scope_logs.add()
    sl.scope.name = "app.logger"
    for i in range(n):
        trace_id, span_id = _ids(i) if i % 3 else (b"", b"")
        record = sl.log_records.add(
            time_unix_nano=T0 + i,
            observed_time_unix_nano=T0 + i + 5,
            severity_number=9,
            severity_text="INFO",
            trace_id=trace_id,
            span_id=span_id,
            flags=1 if trace_id else 0,
        )
        record.body.string_value = f"order {i} placed for customer {i * 7 % 1000}"
        record.attributes.extend([kv("code.function", "place_order"), kv("order.total", 19.99 + i)])
    return req


def traces_with(*spans: dict) -> ExportTraceServiceRequest:
    """One resource, one scope, a span per dict: valid ids (TID, SID) unless a dict overrides them."""
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    for fields in spans:
        ss.spans.add(**{"trace_id": TID, "span_id": SID, **fields})
    return req


BUILDERS = {Signal.TRACES: traces, Signal.METRICS: metrics, Signal.LOGS: logs}


def build(signal: Signal, n: int) -> Message:
    return BUILDERS[signal](n)
