"""The wire proof (otlp/wire_check.py) never proves a body upb would refuse or validation would
change, and proves the requests real clients send, with the exact item count."""

from __future__ import annotations

import random
import shutil

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otlp_ingest.loadgen import PayloadFactory, token_for
from otlp_ingest.otlp import wire_check
from otlp_ingest.otlp.signals import SIGNALS, Signal
from otlp_ingest.otlp.validate import count_items, validate_message
from otlp_ingest.otlp.wire_check import proven_item_count
from tests.support.protowire import ld, varint

pytestmark = pytest.mark.skipif(not wire_check.COMPILED, reason="the _wirecheck extension was not built")
NAMES = {Signal.TRACES: "traces", Signal.METRICS: "metrics", Signal.LOGS: "logs"}


def test_the_extension_is_built_where_a_compiler_is() -> None:
    if shutil.which("cc") or shutil.which("gcc"):
        assert wire_check.COMPILED


def _sound(signal: Signal, body: bytes) -> None:
    """The property: a proof means upb decodes the body and validation keeps every item."""
    proven = proven_item_count(signal, body)
    if proven is None:
        return
    try:
        message = SIGNALS[signal].request_type.FromString(body)
    except DecodeError:
        pytest.fail(f"proved a body upb refuses: {body!r}")
    assert count_items(signal, message) == proven
    validated = validate_message(signal, message)
    assert (validated.accepted, validated.rejected) == (proven, 0)


def _body(signal: Signal, items: int, index: int = 1) -> bytes:
    return PayloadFactory(NAMES[signal], items).build(token_for(b"wirechk!", index))


@pytest.mark.parametrize("signal", list(Signal))
@pytest.mark.parametrize("items", [0, 1, 10, 512])
def test_loadgen_payloads_are_proven(signal: Signal, items: int) -> None:
    body = _body(signal, items) if items else b""
    assert proven_item_count(signal, body) == items


def _rich_traces() -> ExportTraceServiceRequest:
    """Every kind of field a span carries: attributes of each value type, events, links, status."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add(schema_url="https://opentelemetry.io/schemas/1.21.0")
    rs.resource.attributes.add(key="service.name").value.string_value = "checkout ✓"
    scope = rs.scope_spans.add()
    scope.scope.name, scope.scope.version = "lib", "1.0"
    for i in range(3):
        span = scope.spans.add(
            trace_id=bytes(range(16)), span_id=bytes(range(8)), name=f"GET /ß/{i}", kind=2, flags=257
        )
        span.start_time_unix_nano, span.end_time_unix_nano = 1, 2**63
        span.attributes.add(key="b").value.bool_value = True
        span.attributes.add(key="i").value.int_value = -5
        span.attributes.add(key="d").value.double_value = 1.5
        span.attributes.add(key="y").value.bytes_value = b"\xff\x00"
        array = span.attributes.add(key="a").value.array_value
        array.values.add().string_value = "x"
        array.values.add().kvlist_value.values.add(key="deep").value.string_value = "😀"
        span.events.add(time_unix_nano=3, name="ev").attributes.add(key="k").value.int_value = 1
        span.links.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, trace_state="a=b")
        span.status.code, span.status.message = 2, "boom"
        if i:
            span.parent_span_id = b"\x03" * 8
    return request


def _rich_metrics() -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    scope = request.resource_metrics.add().scope_metrics.add()
    gauge = scope.metrics.add(name="g", unit="1").gauge
    gauge.data_points.add(as_double=1.0).exemplars.add(span_id=b"\x01" * 8, trace_id=b"\x02" * 16)
    gauge.data_points.add(as_int=2)
    scope.metrics.add(name="s").sum.data_points.add(as_int=3)
    hist = scope.metrics.add(name="h").histogram.data_points.add(count=2, sum=3.0, min=1.0, max=2.0)
    hist.bucket_counts.extend([1, 1])
    hist.explicit_bounds.extend([1.5])
    exp = scope.metrics.add(name="e").exponential_histogram.data_points.add(scale=1, zero_count=1)
    exp.positive.bucket_counts.extend([1, 2, 3])
    summary = scope.metrics.add(name="q").summary.data_points.add(count=1, sum=1.0)
    summary.quantile_values.add(quantile=0.5, value=1.0)
    scope.metrics.add(name="empty")  # no data at all: a metric without items
    return request


@pytest.mark.parametrize(
    ("signal", "message"), [(Signal.TRACES, _rich_traces()), (Signal.METRICS, _rich_metrics())]
)
def test_every_field_kind_is_proven_with_the_decoded_count(signal: Signal, message) -> None:
    body = message.SerializeToString()
    assert proven_item_count(signal, body) == count_items(signal, message) > 0
    _sound(signal, body)


def _span_request(span_fields: bytes) -> bytes:
    return ld(1, ld(2, ld(2, span_fields)))


GOOD_IDS = ld(1, b"t" * 16) + ld(2, b"s" * 8)


@pytest.mark.parametrize(
    ("why", "body"),
    [
        ("truncated", _span_request(GOOD_IDS)[:-1]),
        ("invalid UTF-8 in a name", _span_request(GOOD_IDS + ld(5, b"\xc3\x28"))),
        ("a surrogate in a name", _span_request(GOOD_IDS + ld(5, b"\xed\xa0\x80"))),
        ("an overlong encoding", _span_request(GOOD_IDS + ld(5, b"\xc0\xaf"))),
        ("trace_id too short", _span_request(ld(1, b"t" * 15) + ld(2, b"s" * 8))),
        ("span_id missing", _span_request(ld(1, b"t" * 16))),
        ("parent_span_id of 4 bytes", _span_request(GOOD_IDS + ld(4, b"p" * 4))),
        ("last trace_id wins and is bad", _span_request(GOOD_IDS + ld(1, b"t" * 3))),
        ("a group", _span_request(GOOD_IDS + varint(99 << 3 | 3) + varint(99 << 3 | 4))),
        ("wire type 7", _span_request(GOOD_IDS + varint(99 << 3 | 7))),
        ("field number 0", _span_request(GOOD_IDS + b"\x00\x00")),
        ("a string field as a varint", _span_request(GOOD_IDS + varint(5 << 3) + b"\x01")),
        ("a singular fixed64 packed", _span_request(GOOD_IDS + ld(7, b"\x00" * 8))),
        ("a varint of 11 bytes", _span_request(GOOD_IDS + varint(6 << 3) + b"\xff" * 10 + b"\x01")),
        ("status twice (merged by parsers)", _span_request(GOOD_IDS + ld(15, b"") + ld(15, b""))),
    ],
)
def test_unusual_or_invalid_bodies_are_not_proven(why: str, body: bytes) -> None:
    assert proven_item_count(Signal.TRACES, body) is None, why


def test_two_data_kinds_in_one_metric_are_not_proven() -> None:
    """A parser keeps only the last: counting both would be wrong."""
    metric = ld(5, ld(1, b"")) + ld(7, ld(1, b"") + ld(1, b""))
    body = ld(1, ld(2, ld(2, metric)))
    assert proven_item_count(Signal.METRICS, body) is None
    message = ExportMetricsServiceRequest.FromString(body)
    assert count_items(Signal.METRICS, message) == 2


def test_unknown_fields_are_skipped_as_parsers_keep_them() -> None:
    body = _span_request(GOOD_IDS + ld(60, b"future") + varint(61 << 3) + b"\x05") + ld(9, b"x")
    assert proven_item_count(Signal.TRACES, body) == 1
    _sound(Signal.TRACES, body)


def test_nesting_beyond_the_walks_depth_is_left_to_the_decoder() -> None:
    value = b""
    for _ in range(40):  # AnyValue { array_value { values { ... } } }
        value = ld(5, ld(1, value))
    body = _span_request(GOOD_IDS + ld(9, ld(1, b"k") + ld(2, value)))
    assert proven_item_count(Signal.TRACES, body) is None


def _mutate(body: bytes, rng: random.Random) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        at = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif op == 1:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 3)))
        elif op == 2:
            del data[at : at + rng.randint(1, 8)]
        else:
            data = data[:at]
    return bytes(data)


@pytest.mark.parametrize("signal", list(Signal))
def test_mutated_bodies_are_never_proven_wrongly(signal: Signal) -> None:
    """Random byte edits of real requests (seeded): most stay decodable, many become invalid."""
    rng = random.Random(f"wirecheck-{signal}")
    seeds = [_body(signal, n, i) for i, n in enumerate((1, 3, 10))]
    seeds.append((_rich_traces() if signal == Signal.TRACES else _rich_metrics()).SerializeToString())
    proven = 0
    for i in range(6000):
        body = _mutate(seeds[i % len(seeds)], rng)
        _sound(signal, body)
        proven += proven_item_count(signal, body) is not None
    assert proven > 100  # the edits do not all break the body: the property was really tested


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_are_never_proven_wrongly(data: bytes) -> None:
    for signal in Signal:
        _sound(signal, data)
        _sound(signal, _span_request(data))


def test_the_walk_never_reads_past_the_body() -> None:
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

    def walk_at_the_edge(data: bytes, signal: Signal) -> None:
        area[size - len(data) : size] = data
        view = memoryview(area)[size - len(data) : size]
        proven_item_count(signal, view)
        view.release()

    short = PayloadFactory("traces", 2).build(token_for(b"wirechk!", 3))
    for cut in range(len(short) + 1):
        walk_at_the_edge(short[:cut], Signal.TRACES)
    rnd = random.Random(5)
    seeds = [
        PayloadFactory(name, n).build(token_for(b"wirechk!", 4))
        for name in ("traces", "metrics", "logs")
        for n in (1, 10)
    ]
    for _ in range(5000):
        body = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 4)):
            at = rnd.randrange(len(body))
            body[at] = rnd.randrange(256)
        cut = rnd.randrange(1, len(body) + 1)
        walk_at_the_edge(bytes(body[:cut]), rnd.choice(list(Signal)))
