"""The C-level id proof (otlp/id_views.py) agrees with the item-by-item check, and never proves
an invalid request valid."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otlp_ingest.loadgen import PayloadFactory, token_for
from otlp_ingest.otlp.id_views import proven_item_count
from otlp_ingest.otlp.signals import Signal
from otlp_ingest.otlp.validate import validate_message

ID_LENGTHS = st.sampled_from([0, 1, 7, 8, 9, 15, 16, 17, 24, 32])


@pytest.mark.parametrize(("signal", "name"), [(Signal.TRACES, "traces"), (Signal.LOGS, "logs")])
@pytest.mark.parametrize("items", [1, 10, 512])
def test_loadgen_payloads_are_proven(signal: Signal, name: str, items: int) -> None:
    assert proven_item_count(signal, PayloadFactory(name, items).build(token_for(b"idviews!", 1))) == items


def test_metrics_are_never_proven() -> None:
    assert (
        proven_item_count(Signal.METRICS, PayloadFactory("metrics", 3).build(token_for(b"idviews!", 1)))
        is None
    )


def _spans(shapes: list[list[tuple[int, int, int]]]) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for scope_shapes in shapes:
        scope = request.resource_spans.add().scope_spans.add()
        for i, (trace, span, parent) in enumerate(scope_shapes):
            s = scope.spans.add(name=f"s{i}", trace_id=b"\xab" * trace, span_id=b"\x12" * span)
            s.parent_span_id = b"\x22" * parent
            s.attributes.add(key="k").value.string_value = "\x12\x1c\x0a\x10" * 8  # looks like a span
    return request


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(ID_LENGTHS, ID_LENGTHS, ID_LENGTHS), max_size=6), min_size=1, max_size=3))
def test_span_proof_agrees_with_the_item_check(shapes: list[list[tuple[int, int, int]]]) -> None:
    request = _spans(shapes)
    body = request.SerializeToString()
    checked = validate_message(Signal.TRACES, request)
    proven = proven_item_count(Signal.TRACES, body)
    if checked.rejected:
        assert proven is None  # never proves an invalid request valid
    else:
        assert proven == checked.accepted


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(ID_LENGTHS, ID_LENGTHS), max_size=6), min_size=1, max_size=3))
def test_log_proof_agrees_with_the_item_check(shapes: list[list[tuple[int, int]]]) -> None:
    request = ExportLogsServiceRequest()
    for scope_shapes in shapes:
        scope = request.resource_logs.add().scope_logs.add()
        for i, (trace, span) in enumerate(scope_shapes):
            scope.log_records.add(
                trace_id=b"\x4a" * trace, span_id=b"\x52" * span
            ).body.string_value = f"l{i}"
    body = request.SerializeToString()
    checked = validate_message(Signal.LOGS, request)
    proven = proven_item_count(Signal.LOGS, body)
    if checked.rejected:
        assert proven is None
    else:
        assert proven == checked.accepted


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_prove_what_the_item_check_rejects(body: bytes) -> None:
    try:
        request = ExportTraceServiceRequest.FromString(body)
    except Exception:
        return  # malformed: the full parse refuses it before any proof is asked for
    checked = validate_message(Signal.TRACES, request)
    proven = proven_item_count(Signal.TRACES, body)
    if checked.rejected:
        assert proven is None
    elif proven is not None:
        assert proven == checked.accepted
