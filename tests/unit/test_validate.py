"""Item validation and counting: which items are dropped, what the client is told, and that the
original bytes pass through untouched when nothing is dropped."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otlp_ingest.errors import InvalidArgument
from otlp_ingest.otlp.item_count import count_items_unread
from otlp_ingest.otlp.signals import Signal
from otlp_ingest.otlp.validate import ValidatedPayload, count_items, validate_message, validate_protobuf
from tests.golden import samples
from tests.golden.samples import SID, TID, traces_with


@pytest.mark.parametrize("signal", list(Signal), ids=lambda s: s.name.lower())
@pytest.mark.parametrize("n", [1, 10, 512])
def test_valid_request_returns_original_bytes(signal: Signal, n: int) -> None:
    body = samples.build(signal, n).SerializeToString()
    result = validate_protobuf(signal, body)
    assert result == ValidatedPayload(body, n, 0, "")
    assert result.payload is body  # no re-serialization on the hot path


@pytest.mark.parametrize("signal", list(Signal), ids=lambda s: s.name.lower())
def test_empty_request_is_valid(signal: Signal) -> None:
    assert validate_protobuf(signal, b"") == ValidatedPayload(b"", 0, 0, "")
    # Containers without items are not items either.
    body = samples.build(signal, 0).SerializeToString()
    assert validate_protobuf(signal, body).accepted == 0


@pytest.mark.parametrize("signal", list(Signal), ids=lambda s: s.name.lower())
@pytest.mark.parametrize("body", [b"\x0a\x05abc", b"\xff\xff\xff", b"\x0a\x80"])
def test_malformed_protobuf(signal: Signal, body: bytes) -> None:
    with pytest.raises(InvalidArgument, match=r"^malformed protobuf: "):
        validate_protobuf(signal, body)


def test_invalid_utf8_in_a_string_is_malformed() -> None:
    req = traces_with({"name": "ok"})
    body = req.SerializeToString().replace(b"ok", b"\xff\xfe")
    with pytest.raises(InvalidArgument, match="malformed protobuf"):
        validate_protobuf(Signal.TRACES, body)


def test_invalid_spans_are_dropped_and_explained() -> None:
    req = traces_with(
        {"name": "good"},
        {"name": "short-trace", "trace_id": TID[:12]},
        {"name": "no-trace", "trace_id": b""},
        {"name": "long-span", "span_id": SID + b"x"},
        {"name": "bad-parent", "parent_span_id": b"\x01"},
        {"name": "child", "parent_span_id": SID},
    )
    body = req.SerializeToString()
    result = validate_protobuf(Signal.TRACES, body)
    assert (result.accepted, result.rejected) == (2, 4)
    assert result.error_message == (
        "4 spans rejected: 2 trace_id must be 16 bytes; 1 span_id must be 8 bytes; "
        "1 parent_span_id must be empty or 8 bytes"
    )
    kept = ExportTraceServiceRequest.FromString(result.payload)
    assert [s.name for s in kept.resource_spans[0].scope_spans[0].spans] == ["good", "child"]
    # The output validates cleanly and is passed through as is.
    assert validate_protobuf(Signal.TRACES, result.payload).payload is result.payload


def test_single_reason_message() -> None:
    req = traces_with({"trace_id": b"x" * 12}, {"trace_id": b"y" * 24}, {})
    result = validate_protobuf(Signal.TRACES, req.SerializeToString())
    assert result.error_message == "2 spans rejected: trace_id must be 16 bytes"
    one = validate_protobuf(Signal.TRACES, traces_with({"span_id": b""}).SerializeToString())
    assert one.error_message == "1 span rejected: span_id must be 8 bytes"
    assert (one.accepted, one.rejected) == (0, 1)


def test_spans_across_resources_and_scopes() -> None:
    req = ExportTraceServiceRequest()
    for r in range(3):
        rs = req.resource_spans.add()
        for s in range(2):
            ss = rs.scope_spans.add()
            ss.spans.add(trace_id=TID, span_id=SID, name=f"{r}{s}")
            ss.spans.add(trace_id=TID, span_id=b"", name="bad")
    assert count_items(Signal.TRACES, req) == 12
    result = validate_message(Signal.TRACES, req)
    assert (result.accepted, result.rejected) == (6, 6)
    assert count_items(Signal.TRACES, ExportTraceServiceRequest.FromString(result.payload)) == 6


def test_logs_ids_may_be_empty_but_not_wrong_length() -> None:
    req = ExportLogsServiceRequest()
    sl = req.resource_logs.add().scope_logs.add()
    sl.log_records.add(trace_id=TID, span_id=SID)
    sl.log_records.add()  # no trace context: valid
    sl.log_records.add(trace_id=TID)  # trace without span: lengths are fine
    sl.log_records.add(trace_id=TID[:8])
    sl.log_records.add(span_id=SID * 2)
    result = validate_protobuf(Signal.LOGS, req.SerializeToString())
    assert (result.accepted, result.rejected) == (3, 2)
    assert "trace_id must be empty or 16 bytes" in result.error_message
    assert "span_id must be empty or 8 bytes" in result.error_message
    assert result.error_message.startswith("2 log records rejected: ")


def test_metric_points_with_bad_exemplar_ids_are_dropped() -> None:
    req = ExportMetricsServiceRequest()
    sm = req.resource_metrics.add().scope_metrics.add()
    gauge = sm.metrics.add(name="g").gauge
    gauge.data_points.add(as_int=1).exemplars.add(trace_id=TID, span_id=SID)
    gauge.data_points.add(as_int=2).exemplars.add(trace_id=TID[:5])
    gauge.data_points.add(as_int=3).exemplars.add()  # exemplar without ids: valid
    hist = sm.metrics.add(name="h").histogram
    hist.data_points.add(count=1).exemplars.add(span_id=b"123")
    exp = sm.metrics.add(name="e").exponential_histogram
    exp.data_points.add(count=1)
    sm.metrics.add(name="s").summary.data_points.add(count=1)
    sm.metrics.add(name="sum").sum.data_points.add(as_double=1.0)
    sm.metrics.add(name="empty")  # no data: 0 items, not invalid
    assert count_items(Signal.METRICS, req) == 7
    result = validate_protobuf(Signal.METRICS, req.SerializeToString())
    assert (result.accepted, result.rejected) == (5, 2)
    assert result.error_message.startswith("2 metric points rejected: ")
    assert "exemplar trace_id must be empty or 16 bytes" in result.error_message
    kept = ExportMetricsServiceRequest.FromString(result.payload)
    metrics = kept.resource_metrics[0].scope_metrics[0].metrics
    # The histogram lost its only point, so the metric goes too; the others stay in order.
    assert [m.name for m in metrics] == ["g", "e", "s", "sum", "empty"]
    assert [p.as_int for p in metrics[0].gauge.data_points] == [1, 3]


@pytest.mark.parametrize("signal", list(Signal), ids=lambda s: s.name.lower())
def test_count_items_matches_builder(signal: Signal) -> None:
    for n in (0, 1, 7, 100):
        assert count_items(signal, samples.build(signal, n)) == n


@pytest.mark.parametrize("signal", list(Signal), ids=lambda s: s.name.lower())
def test_count_items_unread_agrees_with_the_decoded_count(signal: Signal) -> None:
    for n in (0, 1, 7, 100):
        message = samples.build(signal, n)
        assert count_items_unread(signal, message.SerializeToString()) == count_items(signal, message) == n
    assert count_items_unread(signal, b"\xff\xff") == 0  # does not parse: nothing to count


def test_validate_message_always_serializes() -> None:
    req = samples.traces(3)
    result = validate_message(Signal.TRACES, req)
    assert result == ValidatedPayload(req.SerializeToString(), 3, 0, "")


def test_concatenated_payloads_validate_as_one_request() -> None:
    # Wire-level batching relies on this: joined Export*ServiceRequests are one request.
    body = b"".join(samples.logs(n).SerializeToString() for n in (1, 2, 3))
    assert validate_protobuf(Signal.LOGS, body).accepted == 6
