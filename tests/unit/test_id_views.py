"""The id proof of the views (otlp/id_views.py) agrees with the item-by-item check, and never
proves an invalid request valid."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otlp_ingest.loadgen import PayloadFactory, token_for
from otlp_ingest.otlp.id_views import proven_by_views
from otlp_ingest.otlp.signals import Signal
from otlp_ingest.otlp.validate import validate_message
from tests.support.protowire import ld, varint

ID_LENGTHS = st.sampled_from([0, 1, 7, 8, 9, 15, 16, 17, 24, 32])

IMPLEMENTATIONS = [pytest.param(proven_by_views, id="views")]


@pytest.mark.parametrize(("signal", "name"), [(Signal.TRACES, "traces"), (Signal.LOGS, "logs")])
@pytest.mark.parametrize("items", [1, 10, 512])
@pytest.mark.parametrize("proven", IMPLEMENTATIONS)
def test_loadgen_payloads_are_proven(proven, signal: Signal, name: str, items: int) -> None:
    assert proven(signal, PayloadFactory(name, items).build(token_for(b"idviews!", 1))) == items


@pytest.mark.parametrize("proven", IMPLEMENTATIONS)
def test_metrics_are_never_proven(proven) -> None:
    assert proven(Signal.METRICS, PayloadFactory("metrics", 3).build(token_for(b"idviews!", 1))) is None


def _spans(shapes: list[list[tuple[int, int, int]]]) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for scope_shapes in shapes:
        scope = request.resource_spans.add().scope_spans.add()
        for i, (trace, span, parent) in enumerate(scope_shapes):
            s = scope.spans.add(name=f"s{i}", trace_id=b"\xab" * trace, span_id=b"\x12" * span)
            s.parent_span_id = b"\x22" * parent
            s.attributes.add(key="k").value.string_value = "\x12\x1c\x0a\x10" * 8  # looks like a span
    return request


@pytest.mark.parametrize("prove", IMPLEMENTATIONS)
@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(ID_LENGTHS, ID_LENGTHS, ID_LENGTHS), max_size=6), min_size=1, max_size=3))
def test_span_proof_agrees_with_the_item_check(prove, shapes: list[list[tuple[int, int, int]]]) -> None:
    request = _spans(shapes)
    body = request.SerializeToString()
    checked = validate_message(Signal.TRACES, request)
    proven = prove(Signal.TRACES, body)
    if checked.rejected:
        assert proven is None  # never proves an invalid request valid
    else:
        assert proven == checked.accepted


@pytest.mark.parametrize("prove", IMPLEMENTATIONS)
@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(ID_LENGTHS, ID_LENGTHS), max_size=6), min_size=1, max_size=3))
def test_log_proof_agrees_with_the_item_check(prove, shapes: list[list[tuple[int, int]]]) -> None:
    request = ExportLogsServiceRequest()
    for scope_shapes in shapes:
        scope = request.resource_logs.add().scope_logs.add()
        for i, (trace, span) in enumerate(scope_shapes):
            scope.log_records.add(
                trace_id=b"\x4a" * trace, span_id=b"\x52" * span
            ).body.string_value = f"l{i}"
    body = request.SerializeToString()
    checked = validate_message(Signal.LOGS, request)
    proven = prove(Signal.LOGS, body)
    if checked.rejected:
        assert proven is None
    else:
        assert proven == checked.accepted


@pytest.mark.parametrize("prove", IMPLEMENTATIONS)
@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_prove_what_the_item_check_rejects(prove, body: bytes) -> None:
    try:
        request = ExportTraceServiceRequest.FromString(body)
    except Exception:
        return  # malformed: the full parse refuses it before any proof is asked for
    checked = validate_message(Signal.TRACES, request)
    proven = prove(Signal.TRACES, body)
    if checked.rejected:
        assert proven is None
    elif proven is not None:
        assert proven == checked.accepted


def _request_of(span_bodies: list[bytes], extra_resource: bytes = b"", extra_scope: bytes = b"") -> bytes:
    """Raw ExportTraceServiceRequest bytes: one resource, one scope, these spans."""
    scope = extra_scope + b"".join(ld(2, span) for span in span_bodies)
    resource = extra_resource + ld(2, scope)
    return ld(1, resource)


TRACE, SPAN, PARENT = b"\xab" * 16, b"\x12" * 8, b"\x22" * 8
VALID_SPAN = ld(1, TRACE) + ld(2, SPAN) + ld(5, b"name")


def _verdicts(body: bytes, prove) -> tuple[int, int | None]:
    """(rejected by the item check, what the proof says) for a body upb parses."""
    request = ExportTraceServiceRequest.FromString(body)
    return validate_message(Signal.TRACES, request).rejected, prove(Signal.TRACES, body)


@pytest.mark.parametrize("prove", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    ("span", "valid"),
    [
        (VALID_SPAN, True),
        (VALID_SPAN + ld(4, PARENT), True),
        (VALID_SPAN + ld(4, b""), True),  # an explicitly empty parent
        (ld(1, TRACE) + ld(5, b"n"), False),  # no span_id
        (ld(1, b"\xab" * 8) + ld(1, TRACE) + ld(2, SPAN), True),  # last wins
        (VALID_SPAN + ld(1, b"\xab" * 8), False),  # last wins: the short one
        (VALID_SPAN + ld(4, b"\x22" * 16), False),
        (varint(1 << 3 | 0) + b"\x05" + ld(2, SPAN), False),  # trace_id as a varint: absent
        # unknown fields of every wire type around valid ids
        (VALID_SPAN + varint(99 << 3 | 0) + b"\x96\x01" + varint(98 << 3 | 1) + b"\x00" * 8
         + varint(97 << 3 | 5) + b"\x00" * 4, True),
    ],
)  # fmt: skip
def test_wire_shapes(prove, span: bytes, valid: bool) -> None:
    rejected, proven = _verdicts(_request_of([span, VALID_SPAN]), prove)
    assert bool(rejected) != valid
    if not valid:
        assert proven is None  # the views prove only the usual valid shapes


@pytest.mark.parametrize("prove", IMPLEMENTATIONS)
def test_unknown_fields_at_the_container_levels(prove) -> None:
    body = _request_of([VALID_SPAN], extra_resource=ld(1, b"\x0a\x00"), extra_scope=ld(3, b"x"))
    assert _verdicts(body, prove) == (0, 1)
