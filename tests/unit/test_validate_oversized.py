"""Items too large to ever be sent (`max_item_bytes` = batch_max_bytes): dropped with
partial_success, sized exactly with their resource/scope/metric envelope."""

from __future__ import annotations

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otlp_ingest.otlp.signals import Signal
from otlp_ingest.otlp.validate import validate_message, validate_protobuf
from tests.golden.samples import traces_with

# --- items too large to ever be sent (max_item_bytes = batch_max_bytes) ----------------------------


def _alone_size(signal: Signal, message, path: tuple[int, ...]) -> int:
    """Serialized size of a request holding only the item at `path`, built the slow, obvious way."""
    one = type(message)()
    one.CopyFrom(message)
    resources = {Signal.TRACES: "resource_spans", Signal.LOGS: "resource_logs"}.get(
        signal, "resource_metrics"
    )
    rs_list = getattr(one, resources)
    keep = rs_list[path[0]]
    del rs_list[path[0] + 1 :]
    del rs_list[: path[0]]
    scopes = {Signal.TRACES: "scope_spans", Signal.LOGS: "scope_logs"}.get(signal, "scope_metrics")
    ss_list = getattr(keep, scopes)
    del ss_list[path[1] + 1 :]
    del ss_list[: path[1]]
    scope = ss_list[0]
    if signal == Signal.METRICS:
        del scope.metrics[path[2] + 1 :]
        del scope.metrics[: path[2]]
        metric = scope.metrics[0]
        points = getattr(metric, metric.WhichOneof("data")).data_points
        i = path[3]
    else:
        points = scope.spans if signal == Signal.TRACES else scope.log_records
        i = path[2]
    del points[i + 1 :]
    del points[:i]
    return one.ByteSize()


def test_oversized_span_dropped_with_partial_success_and_exact_size_boundary() -> None:
    req = traces_with(
        {"name": "small"},
        {"name": "big", "attributes": [{"key": "k", "value": {"string_value": "x" * 5000}}]},
    )
    rs = req.resource_spans[0]
    rs.resource.attributes.add(key="service.name").value.string_value = "svc" * 50
    rs.scope_spans[0].scope.name = "lib"
    body = req.SerializeToString()
    exact = _alone_size(Signal.TRACES, req, (0, 0, 1))
    # One byte under the big span's exact single-item size: dropped, the small span is kept.
    result = validate_protobuf(Signal.TRACES, body, max_item_bytes=exact - 1)
    assert (result.accepted, result.rejected) == (1, 1)
    assert result.error_message == f"1 span rejected: larger than the batch limit of {exact - 1} bytes"
    kept = ExportTraceServiceRequest.FromString(result.payload)
    assert [s.name for s in kept.resource_spans[0].scope_spans[0].spans] == ["small"]
    assert kept.resource_spans[0].resource == rs.resource  # the envelope stays
    # At exactly its size it fits; and a body under the limit is never inspected (original bytes).
    assert validate_protobuf(Signal.TRACES, body, max_item_bytes=exact).rejected == 0
    assert validate_protobuf(Signal.TRACES, body, max_item_bytes=len(body)).payload is body


def test_oversized_log_and_data_point_exact_sizes() -> None:
    logs = ExportLogsServiceRequest()
    sl = logs.resource_logs.add().scope_logs.add()
    sl.log_records.add().body.string_value = "a"
    sl.log_records.add().body.string_value = "b" * 3000
    exact = _alone_size(Signal.LOGS, logs, (0, 0, 1))
    result = validate_protobuf(Signal.LOGS, logs.SerializeToString(), max_item_bytes=exact - 1)
    assert (result.accepted, result.rejected) == (1, 1)
    assert validate_protobuf(Signal.LOGS, logs.SerializeToString(), max_item_bytes=exact).rejected == 0

    metrics = ExportMetricsServiceRequest()
    sm = metrics.resource_metrics.add().scope_metrics.add()
    small = sm.metrics.add(name="small", unit="1")
    small.sum.aggregation_temporality = 2
    small.sum.data_points.add(as_int=1)
    big = sm.metrics.add(name="big", description="d" * 100)
    big.histogram.aggregation_temporality = 1
    big.histogram.data_points.add(count=1, bucket_counts=list(range(2000)))
    exact = _alone_size(Signal.METRICS, metrics, (0, 0, 1, 0))
    result = validate_protobuf(Signal.METRICS, metrics.SerializeToString(), max_item_bytes=exact - 1)
    assert (result.accepted, result.rejected) == (1, 1)
    kept = ExportMetricsServiceRequest.FromString(result.payload)
    assert [m.name for m in kept.resource_metrics[0].scope_metrics[0].metrics] == [
        "small"
    ]  # emptied metric gone
    assert validate_protobuf(Signal.METRICS, metrics.SerializeToString(), max_item_bytes=exact).rejected == 0


def test_oversized_item_on_the_json_path_and_with_invalid_items() -> None:
    req = traces_with({"name": "x" * 4000}, {"trace_id": b"short"}, {"name": "ok"})
    result = validate_message(Signal.TRACES, req, max_item_bytes=1000)
    assert (result.accepted, result.rejected) == (1, 2)
    assert "1 larger than the batch limit of 1000 bytes" in result.error_message
    assert "1 trace_id must be 16 bytes" in result.error_message
