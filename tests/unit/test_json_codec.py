"""OTLP/JSON codec: golden files, OTLP/JSON specifics, error paths, and interop with the
OpenTelemetry SDK's own OTLP/JSON encoder and with protobuf's json_format (as a reference)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from otlp_ingest.errors import InvalidArgument
from otlp_ingest.otlp.json_codec import MAX_DEPTH, decode_json, encode_json, encode_json_from_wire
from otlp_ingest.otlp.signals import SIGNALS, Signal
from otlp_ingest.otlp.validate import count_items, validate_message, validate_protobuf
from tests.golden import samples

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
EXPECTED = json.loads((GOLDEN / "expected.json").read_text())
ID_KEYS = {"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"}


def golden(signal: Signal) -> bytes:
    return (GOLDEN / f"{SIGNALS[signal].name}.json").read_bytes()


def span_json(**fields: Any) -> bytes:
    span = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "s"}
    span.update(fields)
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()


def one_span(body: bytes):
    return decode_json(Signal.TRACES, body).resource_spans[0].scope_spans[0].spans[0]


# ------------------------------------------------------------------------------------ reference codec
# json_format plus a blunt rewrite of every id key (in OTLP those names only ever hold ids).


def _rewrite_ids(node: Any, convert) -> Any:
    if isinstance(node, dict):
        return {k: convert(v) if k in ID_KEYS and v else _rewrite_ids(v, convert) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite_ids(v, convert) for v in node]
    return node


def reference_decode(signal: Signal, body: bytes):
    doc = _rewrite_ids(json.loads(body), lambda h: base64.b64encode(bytes.fromhex(h)).decode())
    return json_format.ParseDict(doc, SIGNALS[signal].request_type(), ignore_unknown_fields=True)


def reference_encode(message) -> dict:
    doc = json_format.MessageToDict(message, use_integers_for_enums=True)
    return _rewrite_ids(doc, lambda b: base64.b64decode(b).hex())


# ---------------------------------------------------------------------------------------------- golden


@pytest.mark.parametrize("signal", list(Signal), ids=lambda s: s.name.lower())
def test_golden_decodes_counts_and_round_trips(signal: Signal) -> None:
    expected = EXPECTED[SIGNALS[signal].name]
    message = decode_json(signal, golden(signal))
    assert count_items(signal, message) == expected["items"]
    assert validate_message(signal, message).rejected == 0
    # JSON -> proto -> JSON -> proto is stable, and the JSON we write is one line.
    line = encode_json(signal, message)
    assert b"\n" not in line
    again = decode_json(signal, line)
    assert again == message
    assert encode_json(signal, again) == line
    assert encode_json_from_wire(signal, message.SerializeToString()) == line


@pytest.mark.parametrize("signal", list(Signal), ids=lambda s: s.name.lower())
def test_golden_matches_json_format_reference(signal: Signal) -> None:
    message = decode_json(signal, golden(signal))
    assert message == reference_decode(signal, golden(signal))
    assert json.loads(encode_json(signal, message)) == reference_encode(message)


def _ids_in(signal: Signal, message) -> list[tuple[bytes, bytes]]:
    if signal == Signal.TRACES:
        spans = [s for rs in message.resource_spans for ss in rs.scope_spans for s in ss.spans]
        links = [link for s in spans for link in s.links]
        return [(s.trace_id, s.span_id) for s in spans + links]
    if signal == Signal.LOGS:
        return [
            (r.trace_id, r.span_id)
            for rl in message.resource_logs
            for sl in rl.scope_logs
            for r in sl.log_records
            if r.trace_id
        ]
    out = []
    for rm in message.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                for point in getattr(metric, kind).data_points:
                    out += [(e.trace_id, e.span_id) for e in getattr(point, "exemplars", ())]
    return out


@pytest.mark.parametrize("signal", list(Signal), ids=lambda s: s.name.lower())
def test_golden_ids_are_16_and_8_bytes(signal: Signal) -> None:
    ids = _ids_in(signal, decode_json(signal, golden(signal)))
    assert ids
    assert all(len(t) == 16 and len(s) == 8 for t, s in ids)
    assert {t.hex() for t, _ in ids} == set(EXPECTED[SIGNALS[signal].name]["trace_ids"])


def test_golden_details() -> None:
    span = decode_json(Signal.TRACES, golden(Signal.TRACES)).resource_spans[0].scope_spans[0].spans[0]
    assert span.parent_span_id == b""
    assert span.start_time_unix_nano == 1544712660000000000
    assert span.links[0].span_id == bytes.fromhex("b7ad6b7169203331")
    blob = next(a for a in span.attributes if a.key == "blob")
    assert blob.value.bytes_value == b"hello"  # other bytes fields stay base64
    logs = decode_json(Signal.LOGS, golden(Signal.LOGS)).resource_logs[0].scope_logs[0].log_records
    assert logs[1].trace_id == b"" and logs[1].span_id == b""
    assert logs[2].observed_time_unix_nano == 1544712660500000000


@pytest.mark.parametrize("signal", list(Signal), ids=lambda s: s.name.lower())
@pytest.mark.parametrize("n", [0, 1, 37])
def test_generated_requests_match_reference(signal: Signal, n: int) -> None:
    message = samples.build(signal, n)
    line = encode_json(signal, message)
    assert json.loads(line) == reference_encode(message)
    assert decode_json(signal, line) == message
    assert reference_decode(signal, line) == message


# ----------------------------------------------------------------------------------- OTLP/JSON rules


def test_hex_ids_are_case_insensitive_and_empty_is_empty() -> None:
    upper = one_span(span_json(traceId="5B8EFFF798038103D269B633813FC60C", parentSpanId=""))
    lower = one_span(span_json(parentSpanId=""))
    assert upper == lower
    assert upper.trace_id == bytes.fromhex("5b8efff798038103d269b633813fc60c")
    assert upper.parent_span_id == b""


def test_snake_case_keys_enum_names_and_int64_forms() -> None:
    body = json.dumps(
        {
            "resource_spans": [
                {
                    "scope_spans": [
                        {
                            "spans": [
                                {
                                    "trace_id": "5b8efff798038103d269b633813fc60c",
                                    "span_id": "eee19b7ec3c1b174",
                                    "parent_span_id": "eee19b7ec3c1b175",
                                    "kind": "SPAN_KIND_CLIENT",
                                    "start_time_unix_nano": 1544712660000000000,
                                    "endTimeUnixNano": "1544712661000000000",
                                    "status": {"code": "STATUS_CODE_ERROR"},
                                    "dropped_attributes_count": 2,
                                }
                            ]
                        }
                    ]
                }
            ]
        }
    ).encode()
    span = one_span(body)
    assert span.parent_span_id == bytes.fromhex("eee19b7ec3c1b175")
    assert span.kind == 3 and span.status.code == 2
    assert span.start_time_unix_nano == 1544712660000000000
    assert span.end_time_unix_nano == 1544712661000000000
    assert span.dropped_attributes_count == 2


def test_unknown_fields_and_nulls_are_ignored() -> None:
    span = one_span(span_json(newField={"a": [1, 2]}, attributes=None, kind=None, name=None))
    assert span.name == "" and span.kind == 0 and len(span.attributes) == 0


def test_special_doubles_and_empty_message_presence() -> None:
    body = span_json(
        attributes=[
            {"key": "nan", "value": {"doubleValue": "NaN"}},
            {"key": "inf", "value": {"doubleValue": "-Infinity"}},
            {"key": "str", "value": {"doubleValue": "1.5"}},
            {"key": "empty", "value": {}},
            {"key": "emptystr", "value": {"stringValue": ""}},
        ]
    )
    span = one_span(body)
    values = {a.key: a.value for a in span.attributes}
    assert values["nan"].double_value != values["nan"].double_value
    assert values["inf"].double_value == float("-inf")
    assert values["str"].double_value == 1.5
    assert values["emptystr"].WhichOneof("value") == "string_value"
    line = json.loads(encode_json(Signal.TRACES, decode_json(Signal.TRACES, body)))
    written = {
        a["key"]: a["value"] for a in line["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"]
    }
    assert written == {
        "nan": {"doubleValue": "NaN"},
        "inf": {"doubleValue": "-Infinity"},
        "str": {"doubleValue": 1.5},
        "empty": {},
        "emptystr": {"stringValue": ""},
    }


def test_wrong_length_hex_decodes_and_validation_rejects_the_item() -> None:
    # 24 hex digits = 12 bytes: well-formed JSON, invalid item -> partial success, not a 400.
    message = decode_json(Signal.TRACES, span_json(traceId="5b8efff798038103d269b633"))
    assert len(message.resource_spans[0].scope_spans[0].spans[0].trace_id) == 12
    result = validate_message(Signal.TRACES, message)
    assert (result.accepted, result.rejected) == (0, 1)
    assert "trace_id must be 16 bytes" in result.error_message


# ----------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("fields", "where", "why"),
    [
        # A base64 trace id (what json_format would write) is not hex: malformed, whole request.
        ({"traceId": "W47/95gDgQPSabYzgT/GDA=="}, "spans[0].traceId", "not hex"),
        ({"spanId": "eee19b7ec3c1b17"}, "spans[0].spanId", "not hex"),  # odd length
        ({"spanId": "eee19b7e c3c1b174"}, "spans[0].spanId", "not hex"),  # whitespace
        ({"parentSpanId": "zz"}, "spans[0].parentSpanId", "not hex"),
        ({"traceId": 12}, "spans[0].traceId", "expected a hex string"),
        ({"links": [{"spanId": "xyz1"}]}, "spans[0].links[0].spanId", "not hex"),
        ({"kind": "SPAN_KIND_NOPE"}, "spans[0].kind", "unknown enum value"),
        ({"startTimeUnixNano": "soon"}, "spans[0].startTimeUnixNano", "not an integer"),
        ({"startTimeUnixNano": 1.5}, "spans[0].startTimeUnixNano", "expected an integer"),
        ({"droppedAttributesCount": 2**40}, "spans[0].droppedAttributesCount", ""),
        ({"name": 5}, "spans[0].name", "expected a string"),
        ({"attributes": {"key": "x"}}, "spans[0].attributes", "expected an array"),
        ({"attributes": ["x"]}, "spans[0].attributes[0]", "expected an object"),
        ({"status": []}, "spans[0].status", "expected an object"),
        ({"attributes": [{"key": "b", "value": {"bytesValue": "!!"}}]}, "value.bytesValue", "not base64"),
        (
            {"attributes": [{"key": "d", "value": {"doubleValue": "inf"}}]},
            "value.doubleValue",
            "not a number",
        ),
        ({"trace_id": "5b8efff798038103d269b633813fc60c"}, "spans[0].trace_id", "also given as 'traceId'"),
    ],
)
def test_malformed_fields_name_the_path(fields: dict, where: str, why: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        decode_json(Signal.TRACES, span_json(**fields))
    assert f"{where}: {why}" in info.value.message
    assert "resourceSpans[0].scopeSpans[0]." in info.value.message


def test_error_path_in_metric_exemplar() -> None:
    body = json.dumps(
        {
            "resourceMetrics": [
                {
                    "scopeMetrics": [
                        {
                            "metrics": [
                                {"name": "m", "gauge": {"dataPoints": [{"asInt": "1"}]}},
                                {
                                    "name": "h",
                                    "histogram": {"dataPoints": [{"exemplars": [{"traceId": "A0=="}]}]},
                                },
                            ]
                        }
                    ]
                }
            ]
        }
    ).encode()
    with pytest.raises(
        InvalidArgument, match=r"metrics\[1\]\.histogram\.dataPoints\[0\]\.exemplars\[0\]\.traceId: not hex"
    ):
        decode_json(Signal.METRICS, body)


@pytest.mark.parametrize(
    "body",
    [b"", b"[]", b"null", b'"x"', b"{", b'{"resourceSpans": [}', b"\xff\xfe{}", b'{"resourceSpans": "x"}'],
)
def test_malformed_documents(body: bytes) -> None:
    with pytest.raises(InvalidArgument):
        decode_json(Signal.TRACES, body)


def test_empty_object_is_an_empty_request() -> None:
    for signal in Signal:
        message = decode_json(signal, b"{}")
        assert count_items(signal, message) == 0
        assert encode_json(signal, message) == b"{}"


def _nested_value(levels: int) -> dict:
    value: dict = {"stringValue": "leaf"}
    for _ in range(levels):
        value = {"kvlistValue": {"values": [{"key": "k", "value": value}]}}
    return value


def test_depth_limit_matches_what_upb_can_parse() -> None:
    # Request(1) > ResourceLogs(2) > ScopeLogs(3) > LogRecord(4) > AnyValue(5), then each level of
    # kvlist nesting adds KeyValueList, KeyValue, AnyValue (3 messages).
    def body(levels: int) -> bytes:
        record = {"body": _nested_value(levels)}
        return json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [record]}]}]}).encode()

    deepest = (MAX_DEPTH - 5) // 3
    message = decode_json(Signal.LOGS, body(deepest))
    # What we accept from JSON must be readable as protobuf by the exporter and backend.
    assert validate_protobuf(Signal.LOGS, message.SerializeToString()).accepted == 1
    with pytest.raises(InvalidArgument, match="nested more than"):
        decode_json(Signal.LOGS, body(deepest + 1))


def test_encode_json_from_wire_rejects_garbage() -> None:
    with pytest.raises(InvalidArgument, match="malformed protobuf"):
        encode_json_from_wire(Signal.TRACES, b"\x0a\xff\xff")


def test_concatenated_wire_batch_encodes_as_one_request() -> None:
    a, b = samples.traces(2), samples.traces(3)
    line = encode_json_from_wire(Signal.TRACES, a.SerializeToString() + b.SerializeToString())
    assert count_items(Signal.TRACES, decode_json(Signal.TRACES, line)) == 5


# ------------------------------------------------------------------------- the OpenTelemetry SDK client


def _sdk_spans():
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "interop", "pid": 7}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("interop.tests", "1.0")
    with tracer.start_as_current_span("parent", kind=SpanKind.SERVER) as parent:
        parent.set_attribute("http.method", "GET")
        parent.set_attribute("ratio", 0.5)
        parent.set_attribute("tags", ["a", "b"])
        parent.add_event("evt", {"n": 3})
        with tracer.start_as_current_span("child", links=[Link(parent.get_span_context(), {"l": True})]) as c:
            c.set_status(Status(StatusCode.ERROR, "boom"))
    provider.shutdown()
    return exporter.get_finished_spans()


def test_sdk_json_exporter_payload_decodes_like_sdk_protobuf_payload() -> None:
    from opentelemetry.exporter.otlp.json.common.trace_encoder import encode_spans as encode_json_spans
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as encode_pb_spans

    spans = _sdk_spans()
    sdk_json = encode_json_spans(spans).to_json().encode()
    sdk_pb = encode_pb_spans(spans)
    assert decode_json(Signal.TRACES, sdk_json) == sdk_pb
    assert validate_protobuf(Signal.TRACES, sdk_pb.SerializeToString()).accepted == 2


def test_sdk_json_decoder_reads_what_we_write() -> None:
    from opentelemetry.exporter.otlp.json.common.trace_encoder import encode_spans as encode_json_spans
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as encode_pb_spans
    from opentelemetry.proto_json.collector.trace.v1.trace_service import ExportTraceServiceRequest

    spans = _sdk_spans()
    ours = encode_json(Signal.TRACES, encode_pb_spans(spans))
    theirs = ExportTraceServiceRequest.from_json(ours)
    assert theirs.to_dict() == encode_json_spans(spans).to_dict()
