"""OTLP/JSON <-> protobuf `Export*ServiceRequest`.

OTLP/JSON (opentelemetry-proto `docs/specification.md`, "JSON Protobuf Encoding") is proto3 JSON
with these differences, which this module handles:

- `traceId`, `spanId`, `parentSpanId` (spans and span links), `traceId`/`spanId` of log records and
  of metric exemplars are **hex** strings (case-insensitive; `""` = empty bytes), not base64.
  Plain `json_format` would base64-decode them and silently produce 12- or 24-byte ids, so the
  decoder converts exactly these paths before handing the dict to protobuf. Every other `bytes`
  field (e.g. `AnyValue.bytesValue`) stays base64.
- Enums are integers. Decoding also accepts enum *names* (`"SPAN_KIND_SERVER"`), as protobuf JSON
  and the Collector do: being lenient costs nothing and never changes the meaning.
- Keys are lowerCamelCase; the original snake_case proto field names are accepted too.
- 64-bit integers may be JSON strings or numbers; unknown fields are ignored.

Decisions about bad ids (documented because the spec leaves them open):

- An id that is not a string of hex digits (e.g. a base64 id such as `"W47/95gDgQPSabYzgT/GDA=="`,
  an odd number of digits, whitespace) makes the whole request malformed: `InvalidArgument` naming
  the field path, e.g. `resourceSpans[0].scopeSpans[0].spans[3].traceId: not hex`.
- Valid hex of the wrong length (e.g. 24 hex digits = 12 bytes) decodes; `validate` then rejects
  the item with `partial_success`, exactly as for protobuf requests carrying such an id.

Encoding writes lowerCamelCase keys, integer enums, hex ids, 64-bit integers as strings (proto3 JSON,
which the Collector's file exporter also writes) and no newlines: one request is one JSON Lines line.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

import msgspec
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from otlp_ingest.errors import InvalidArgument
from otlp_ingest.otlp.signals import SIGNALS, Signal

__all__ = ["decode_json", "encode_json", "encode_json_from_wire"]

_json_decode = msgspec.json.Decoder().decode
_json_encode = msgspec.json.Encoder().encode

# Each id-bearing JSON object kind -> its id fields, as (camelCase, snake_case) key pairs.
_SPAN_IDS = (("traceId", "trace_id"), ("spanId", "span_id"), ("parentSpanId", "parent_span_id"))
_LINK_IDS = (("traceId", "trace_id"), ("spanId", "span_id"))
_LOG_IDS = _LINK_IDS
_EXEMPLAR_IDS = _LINK_IDS
# Metric data kinds whose points may carry exemplars (summary points have none).
_EXEMPLAR_KINDS = (
    ("gauge", "gauge"),
    ("sum", "sum"),
    ("histogram", "histogram"),
    ("exponentialHistogram", "exponential_histogram"),
)


# --------------------------------------------------------------------------------------------- decode


def decode_json(signal: Signal, body: bytes) -> Message:
    """Decode an OTLP/JSON body into the signal's `Export*ServiceRequest`.

    Raises `InvalidArgument` for anything that is not a valid OTLP/JSON request: invalid JSON or
    UTF-8, a top level that is not an object, ids that are not hex, values of the wrong type.
    Wrong-length (but hex) ids decode; `validate_message` rejects those items.
    """
    try:
        doc = _json_decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidArgument(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise InvalidArgument("malformed JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"malformed OTLP/JSON: top level must be an object, not {_kind(doc)}")
    _HEX_TO_B64[signal](doc)
    message = SIGNALS[signal].request_type()
    try:
        json_format.ParseDict(doc, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise InvalidArgument(f"malformed OTLP/JSON: {exc}") from None
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError) as exc:
        # json_format lets a few shape errors escape as builtin exceptions.
        raise InvalidArgument(f"malformed OTLP/JSON: {type(exc).__name__}: {exc}") from None
    except RecursionError:
        raise InvalidArgument("malformed OTLP/JSON: nested too deeply") from None
    return message


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number"
    )


def _get(obj: dict, keys: tuple[str, str]) -> tuple[str, Any]:
    """The value under the camelCase or the snake_case key (camelCase wins for the path name)."""
    camel, snake = keys
    if camel in obj:
        return camel, obj[camel]
    return snake, obj.get(snake)


def _objects(parent: dict, keys: tuple[str, str], path: str) -> list[tuple[str, dict]]:
    """The objects of the array `parent[key]` with their paths; [] when absent or null."""
    name, value = _get(parent, keys)
    if value is None:
        return []
    where = f"{path}.{name}" if path else name
    if not isinstance(value, list):
        raise InvalidArgument(f"{where}: expected an array, got {_kind(value)}")
    out = []
    for i, item in enumerate(value):
        if item is None:
            continue  # json_format reports null array elements itself
        if not isinstance(item, dict):
            raise InvalidArgument(f"{where}[{i}]: expected an object, got {_kind(item)}")
        out.append((f"{where}[{i}]", item))
    return out


def _object(parent: dict, keys: tuple[str, str], path: str) -> tuple[str, dict] | None:
    name, value = _get(parent, keys)
    if value is None:
        return None
    where = f"{path}.{name}"
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: expected an object, got {_kind(value)}")
    return where, value


def _convert_ids(obj: dict, fields: tuple[tuple[str, str], ...], path: str) -> None:
    """Rewrite the hex id fields of `obj` in place as base64, the form json_format expects."""
    for camel, snake in fields:
        for key in (camel, snake):
            value = obj.get(key)
            if value is None:
                continue
            if not isinstance(value, str):
                raise InvalidArgument(f"{path}.{key}: expected a hex string, got {_kind(value)}")
            if not value:
                continue  # "" = empty id, valid as is
            try:
                # unhexlify is strict (no whitespace, even length); bytes.fromhex is not.
                raw = binascii.unhexlify(value)
            except (binascii.Error, ValueError):
                raise InvalidArgument(f"{path}.{key}: not hex") from None
            obj[key] = base64.b64encode(raw).decode("ascii")


def _traces_hex_to_b64(doc: dict) -> None:
    for rpath, rs in _objects(doc, ("resourceSpans", "resource_spans"), ""):
        for spath, ss in _objects(rs, ("scopeSpans", "scope_spans"), rpath):
            for path, span in _objects(ss, ("spans", "spans"), spath):
                _convert_ids(span, _SPAN_IDS, path)
                for lpath, link in _objects(span, ("links", "links"), path):
                    _convert_ids(link, _LINK_IDS, lpath)


def _logs_hex_to_b64(doc: dict) -> None:
    for rpath, rl in _objects(doc, ("resourceLogs", "resource_logs"), ""):
        for spath, sl in _objects(rl, ("scopeLogs", "scope_logs"), rpath):
            for path, record in _objects(sl, ("logRecords", "log_records"), spath):
                _convert_ids(record, _LOG_IDS, path)


def _metrics_hex_to_b64(doc: dict) -> None:
    for rpath, rm in _objects(doc, ("resourceMetrics", "resource_metrics"), ""):
        for spath, sm in _objects(rm, ("scopeMetrics", "scope_metrics"), rpath):
            for mpath, metric in _objects(sm, ("metrics", "metrics"), spath):
                for kind in _EXEMPLAR_KINDS:
                    data = _object(metric, kind, mpath)
                    if data is None:
                        continue
                    dpath, body = data
                    for ppath, point in _objects(body, ("dataPoints", "data_points"), dpath):
                        for epath, ex in _objects(point, ("exemplars", "exemplars"), ppath):
                            _convert_ids(ex, _EXEMPLAR_IDS, epath)


_HEX_TO_B64: dict[Signal, Callable[[dict], None]] = {
    Signal.TRACES: _traces_hex_to_b64,
    Signal.METRICS: _metrics_hex_to_b64,
    Signal.LOGS: _logs_hex_to_b64,
}


# --------------------------------------------------------------------------------------------- encode


def encode_json(signal: Signal, message: Message) -> bytes:
    """Encode an `Export*ServiceRequest` as one line of OTLP/JSON (no trailing newline)."""
    doc = json_format.MessageToDict(message, preserving_proto_field_name=False, use_integers_for_enums=True)
    _B64_TO_HEX[signal](doc)
    return _json_encode(doc)


def encode_json_from_wire(signal: Signal, payload: bytes) -> bytes:
    """Encode a serialized `Export*ServiceRequest` (e.g. a concatenated batch) as OTLP/JSON."""
    try:
        message = SIGNALS[signal].request_type.FromString(payload)
    except DecodeError as exc:
        raise InvalidArgument(f"malformed protobuf: {exc}") from None
    return encode_json(signal, message)


def _to_hex(obj: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = obj.get(key)
        if value:
            obj[key] = base64.b64decode(value).hex()


def _traces_b64_to_hex(doc: dict) -> None:
    for rs in doc.get("resourceSpans", ()):
        for ss in rs.get("scopeSpans", ()):
            for span in ss.get("spans", ()):
                _to_hex(span, ("traceId", "spanId", "parentSpanId"))
                for link in span.get("links", ()):
                    _to_hex(link, ("traceId", "spanId"))


def _logs_b64_to_hex(doc: dict) -> None:
    for rl in doc.get("resourceLogs", ()):
        for sl in rl.get("scopeLogs", ()):
            for record in sl.get("logRecords", ()):
                _to_hex(record, ("traceId", "spanId"))


def _metrics_b64_to_hex(doc: dict) -> None:
    for rm in doc.get("resourceMetrics", ()):
        for sm in rm.get("scopeMetrics", ()):
            for metric in sm.get("metrics", ()):
                for kind, _ in _EXEMPLAR_KINDS:
                    for point in metric.get(kind, {}).get("dataPoints", ()):
                        for ex in point.get("exemplars", ()):
                            _to_hex(ex, ("traceId", "spanId"))


_B64_TO_HEX: dict[Signal, Callable[[dict], None]] = {
    Signal.TRACES: _traces_b64_to_hex,
    Signal.METRICS: _metrics_b64_to_hex,
    Signal.LOGS: _logs_b64_to_hex,
}
