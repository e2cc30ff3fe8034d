"""The id proof (otlp/id_views.py) agrees with the item-by-item check, and never proves an invalid
request valid: both implementations, the C extension `_idscan` and the views."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otlp_ingest.loadgen import PayloadFactory, token_for
from otlp_ingest.otlp import id_views
from otlp_ingest.otlp.id_views import proven_by_scan, proven_by_views
from otlp_ingest.otlp.signals import Signal
from otlp_ingest.otlp.validate import validate_message
from tests.support.protowire import ld, varint

ID_LENGTHS = st.sampled_from([0, 1, 7, 8, 9, 15, 16, 17, 24, 32])

# The C extension is built by `pip install -e .` wherever there is a C compiler (CI has one);
# without it only the views run, and these tests say so rather than pass silently.
requires_scan = pytest.mark.skipif(not id_views.COMPILED, reason="the _idscan extension was not built")
IMPLEMENTATIONS = [
    pytest.param(proven_by_scan, marks=requires_scan, id="scan"),
    pytest.param(proven_by_views, id="views"),
]


def test_the_extension_is_built_where_a_compiler_is() -> None:
    """CI builds it: a silent fallback to the slow proof would go unnoticed in the figures."""
    import shutil

    if shutil.which("cc") or shutil.which("gcc"):
        assert id_views.COMPILED


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
        assert proven is None
    elif prove is proven_by_scan:
        assert proven == 2  # the scan proves every valid shape; the views only the usual ones


@pytest.mark.parametrize("prove", IMPLEMENTATIONS)
def test_unknown_fields_at_the_container_levels(prove) -> None:
    body = _request_of([VALID_SPAN], extra_resource=ld(1, b"\x0a\x00"), extra_scope=ld(3, b"x"))
    assert _verdicts(body, prove) == (0, 1)


@requires_scan
@pytest.mark.parametrize(
    "body",
    [
        b"\x0a",  # truncated length
        b"\x0a\x05\x12",  # length beyond the body
        b"\x0b\x00",  # a group start at the top level
        b"\x00\x00",  # field number 0
        b"\x0a\x80",  # truncated varint
        varint(1 << 3 | 0) + b"\x01",  # resource_spans as a varint
    ],
)
def test_the_scan_gives_up_on_malformed_envelopes(body: bytes) -> None:
    assert proven_by_scan(Signal.TRACES, body) is None


_LOADGEN_BODY = PayloadFactory("traces", 10).build(token_for(b"idviews!", 2))


@requires_scan
@settings(max_examples=1500, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, len(_LOADGEN_BODY) - 1), st.integers(0, 255), st.sampled_from("sid")),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_requests_never_prove_what_the_item_check_rejects(edits: list[tuple[int, int, str]]) -> None:
    """A real request with bytes set, inserted or deleted: where upb still parses it, the scan
    proves it only when the item check finds nothing to reject, with the same count."""
    body = bytearray(_LOADGEN_BODY)
    for position, value, kind in edits:
        position = min(position, len(body) - 1)
        if kind == "s":
            body[position] = value
        elif kind == "i":
            body.insert(position, value)
        else:
            del body[position]
    try:
        request = ExportTraceServiceRequest.FromString(bytes(body))
    except Exception:
        return
    checked = validate_message(Signal.TRACES, request)
    proven = proven_by_scan(Signal.TRACES, bytes(body))
    if checked.rejected:
        assert proven is None
    elif proven is not None:
        assert proven == checked.accepted


@requires_scan
def test_the_scan_never_reads_past_the_body() -> None:
    """Each body ends exactly where a PROT_NONE page begins, so a read one byte past its end
    kills the process: truncated and mutated real requests, every cut of a short one."""
    import ctypes
    import mmap
    import random

    page = mmap.PAGESIZE
    size = 32 * page
    area = mmap.mmap(-1, size + page)
    address = ctypes.addressof(ctypes.c_char.from_buffer(area))
    assert ctypes.CDLL(None).mprotect(ctypes.c_void_p(address + size), page, 0) == 0

    def scan_at_the_edge(data: bytes, signal: Signal) -> None:
        area[size - len(data) : size] = data
        view = memoryview(area)[size - len(data) : size]
        proven_by_scan(signal, view)  # type: ignore[arg-type]
        view.release()

    short = PayloadFactory("traces", 2).build(token_for(b"idviews!", 3))
    for cut in range(len(short) + 1):
        scan_at_the_edge(short[:cut], Signal.TRACES)
    rnd = random.Random(5)
    seeds = [
        PayloadFactory(name, n).build(token_for(b"idviews!", 4))
        for name in ("traces", "logs")
        for n in (1, 10)
    ]
    for _ in range(5000):
        body = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 4)):
            at = rnd.randrange(len(body))
            body[at] = rnd.randrange(256)
        cut = rnd.randrange(1, len(body) + 1)
        scan_at_the_edge(bytes(body[:cut]), rnd.choice((Signal.TRACES, Signal.LOGS)))
