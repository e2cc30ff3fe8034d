"""OTLP/JSON <-> protobuf `Export*ServiceRequest`.

OTLP/JSON (opentelemetry-proto `docs/specification.md`, "JSON Protobuf Encoding") is proto3 JSON
with these differences, which this module handles:

- `traceId`, `spanId`, `parentSpanId` (spans and span links), `traceId`/`spanId` of log records and
  of metric exemplars are **hex** strings (case-insensitive; `""` = empty bytes), not base64.
  Every other `bytes` field (e.g. `AnyValue.bytesValue`) stays base64 (standard or URL-safe,
  padding optional, as proto3 JSON allows).
- Enums are integers. Decoding also accepts enum *names* (`"SPAN_KIND_SERVER"`) as proto3 JSON and
  the Collector do: it costs nothing and never changes the meaning. An unknown enum *name* is
  malformed; an unknown enum *number* is kept (proto3 enums are open).
- Keys are lowerCamelCase; the original snake_case proto field names are accepted too (both
  spellings of one field in one object is malformed). Unknown fields are ignored. `null` means
  "not set".
- 64-bit integers may be JSON strings or numbers; doubles may be numbers or strings, including
  `"NaN"`, `"Infinity"`, `"-Infinity"`.

Decisions about bad ids (the spec leaves them open):

- An id that is not a string of hex digits (e.g. a base64 id such as `"W47/95gDgQPSabYzgT/GDA=="`,
  an odd number of digits, whitespace) makes the whole request malformed: `InvalidArgument` naming
  the field, e.g. `resourceSpans[0].scopeSpans[0].spans[3].traceId: not hex`.
- Valid hex of the wrong length (e.g. 24 hex digits = 12 bytes) decodes; `validate` then rejects
  the item with `partial_success`, exactly as for protobuf requests carrying such an id.

Encoding writes lowerCamelCase keys, integer enums, hex ids, 64-bit integers as strings and
omits default values, exactly like `json_format.MessageToDict(use_integers_for_enums=True)` plus
hex ids (the form the Collector's file exporter writes), with no newlines: one request is one
JSON Lines line.

Why not `google.protobuf.json_format`: it base64-decodes ids (silent 12- and 24-byte ids) and is
slow (generic pure-Python reflection per field). Here each message type gets a conversion plan,
built once from its descriptor, so the per-field work is one dict lookup and one setattr/convert;
this measured about 4x faster than `json_format` both ways. JSON itself is parsed and written by
msgspec.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable
from typing import Any

import msgspec
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.internal.type_checkers import ToShortestFloat
from google.protobuf.message import DecodeError, Message

from otlp_ingest.errors import InvalidArgument
from otlp_ingest.otlp.signals import SIGNALS, Signal

__all__ = ["MAX_DEPTH", "decode_json", "encode_json", "encode_json_from_wire"]

_json_decode = msgspec.json.Decoder().decode
_json_encode = msgspec.json.Encoder().encode

# Messages whose `trace_id`/`span_id`/`parent_span_id` bytes fields are hex in OTLP/JSON.
_HEX_ID_MESSAGES = frozenset(
    {
        "opentelemetry.proto.trace.v1.Span",
        "opentelemetry.proto.trace.v1.Span.Link",
        "opentelemetry.proto.logs.v1.LogRecord",
        "opentelemetry.proto.metrics.v1.Exemplar",
    }
)
_HEX_ID_FIELDS = frozenset({"trace_id", "span_id", "parent_span_id"})

# Message nesting the decoder accepts (the top-level request is depth 1): exactly what upb parses,
# the top-level message plus 100 nested ones (upb_DecodeOptions_MaxDepth). Deeper JSON would turn
# into a payload no exporter or backend can read; a shallower limit made protobuf requests upb
# accepted (then acknowledged and written by the file sink) unreadable as OTLP/JSON (found by
# fuzzing mixed array/kvlist nesting; tests/fuzz pins the two limits together).
MAX_DEPTH = 101

_F = FieldDescriptor
_INT64_TYPES = frozenset({_F.TYPE_INT64, _F.TYPE_UINT64, _F.TYPE_SINT64, _F.TYPE_FIXED64, _F.TYPE_SFIXED64})
_INT32_TYPES = frozenset({_F.TYPE_INT32, _F.TYPE_UINT32, _F.TYPE_SINT32, _F.TYPE_FIXED32, _F.TYPE_SFIXED32})
_FLOAT_TYPES = frozenset({_F.TYPE_DOUBLE, _F.TYPE_FLOAT})


def _is_hex_id(field: FieldDescriptor) -> bool:
    return field.name in _HEX_ID_FIELDS and field.containing_type.full_name in _HEX_ID_MESSAGES


def _check_no_map(field: FieldDescriptor) -> None:
    # OTLP has no map fields; proto3 JSON writes maps as objects, which these plans do not do.
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        raise NotImplementedError(f"map field {field.full_name} is not supported")


# --------------------------------------------------------------------------------------------- decode


class _Bad(Exception):
    """A decode error; `path` collects field names innermost first while it unwinds."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []

    def where(self) -> str:
        out = ""
        for part in reversed(self.path):
            out += part if part.startswith("[") or not out else "." + part
        return out


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number"
    )


def _to_int(value: Any) -> int:
    kind = type(value)
    if kind is int:
        return value
    if kind is str:
        try:
            return int(value)
        except ValueError:
            pass
        try:
            number = float(value)  # "1e3" is a valid JSON integer written as a string
        except ValueError:
            raise _Bad("not an integer") from None
        value, kind = number, float
    if kind is float and value.is_integer():
        return int(value)
    raise _Bad(f"expected an integer, got {_kind(value)}")


def _to_float(value: Any) -> float:
    kind = type(value)
    if kind is float:
        return value
    if kind is int:
        return float(value)
    if kind is str:
        try:
            number = float(value)
        except ValueError:
            raise _Bad("not a number") from None
        if (math.isnan(number) and value != "NaN") or (math.isinf(number) and value not in _INF_NAMES):
            raise _Bad("not a number")  # float() also takes "nan", "inf", "infinity", ...
        return number
    raise _Bad(f"expected a number, got {_kind(value)}")


_INF_NAMES = frozenset({"Infinity", "-Infinity"})


def _to_bool(value: Any) -> bool:
    if type(value) is bool:
        return value
    raise _Bad(f"expected a boolean, got {_kind(value)}")


def _to_str(value: Any) -> str:
    if type(value) is str:
        return value
    raise _Bad(f"expected a string, got {_kind(value)}")


_URLSAFE = str.maketrans("-_", "+/")


def _to_bytes(value: Any) -> bytes:
    if type(value) is not str:
        raise _Bad(f"expected a base64 string, got {_kind(value)}")
    text = value.translate(_URLSAFE)
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _Bad("not base64") from None


def _to_id(value: Any) -> bytes:
    if type(value) is not str:
        raise _Bad(f"expected a hex string, got {_kind(value)}")
    try:
        # unhexlify is strict (no whitespace, even length); bytes.fromhex is not.
        return binascii.unhexlify(value)
    except (binascii.Error, ValueError):
        raise _Bad("not hex") from None


def _enum_converter(field: FieldDescriptor) -> Callable[[Any], int]:
    by_name = {v.name: v.number for v in field.enum_type.values}

    def convert(value: Any) -> int:
        if type(value) is str:
            number = by_name.get(value)
            if number is None:
                raise _Bad(f"unknown enum value {value!r}")
            return number
        return _to_int(value)

    return convert


def _scalar_converter(field: FieldDescriptor) -> Callable[[Any], Any]:
    kind = field.type
    if kind == _F.TYPE_BYTES:
        return _to_id if _is_hex_id(field) else _to_bytes
    if kind == _F.TYPE_STRING:
        return _to_str
    if kind in _INT64_TYPES or kind in _INT32_TYPES:
        return _to_int
    if kind in _FLOAT_TYPES:
        return _to_float
    if kind == _F.TYPE_BOOL:
        return _to_bool
    if kind == _F.TYPE_ENUM:
        return _enum_converter(field)
    raise NotImplementedError(f"field type {kind} of {field.full_name}")


# Field modes of a decode plan.
_SCALAR, _REPEATED_SCALAR, _MESSAGE, _REPEATED_MESSAGE = range(4)


class _DecodePlan:
    """For one message type: JSON key (camelCase and snake_case) -> how to set the field."""

    __slots__ = ("fields",)

    def __init__(self) -> None:
        # key -> (attribute name, mode, scalar converter or sub-plan, other spelling or None)
        self.fields: dict[str, tuple[str, int, Any, str | None]] = {}


_decode_plans: dict[str, _DecodePlan] = {}


def _decode_plan(descriptor: Descriptor) -> _DecodePlan:
    plan = _decode_plans.get(descriptor.full_name)
    if plan is not None:
        return plan
    plan = _decode_plans[descriptor.full_name] = _DecodePlan()  # registered first: types recurse
    for field in descriptor.fields:
        _check_no_map(field)
        if field.type == _F.TYPE_MESSAGE:
            mode = _REPEATED_MESSAGE if field.is_repeated else _MESSAGE
            how: Any = _decode_plan(field.message_type)
        else:
            mode = _REPEATED_SCALAR if field.is_repeated else _SCALAR
            how = _scalar_converter(field)
        if field.json_name == field.name:
            plan.fields[field.name] = (field.name, mode, how, None)
        else:
            plan.fields[field.json_name] = (field.name, mode, how, None)
            plan.fields[field.name] = (field.name, mode, how, field.json_name)
    return plan


def _fill(plan: _DecodePlan, message: Message, obj: dict, depth: int) -> None:
    """Set the fields of `message` from the JSON object `obj` (raises `_Bad`)."""
    if depth > MAX_DEPTH:
        raise _Bad(f"nested more than {MAX_DEPTH} messages deep")
    fields = plan.fields
    for key, value in obj.items():
        spec = fields.get(key)
        if spec is None or value is None:
            continue  # unknown field, or null = not set
        name, mode, how, other = spec
        try:
            if other is not None and other in obj:
                raise _Bad(f"also given as {other!r}")
            if mode == _SCALAR:
                setattr(message, name, how(value))
            elif mode == _REPEATED_MESSAGE:
                if type(value) is not list:
                    raise _Bad(f"expected an array, got {_kind(value)}")
                container = getattr(message, name)
                for i, item in enumerate(value):
                    try:
                        if type(item) is not dict:
                            raise _Bad(f"expected an object, got {_kind(item)}")
                        _fill(how, container.add(), item, depth + 1)
                    except _Bad as exc:
                        exc.path.append(f"[{i}]")
                        raise
            elif mode == _MESSAGE:
                if type(value) is not dict:
                    raise _Bad(f"expected an object, got {_kind(value)}")
                sub = getattr(message, name)
                sub.SetInParent()  # `{}` still sets the field (and selects a oneof member)
                _fill(how, sub, value, depth + 1)
            else:
                if type(value) is not list:
                    raise _Bad(f"expected an array, got {_kind(value)}")
                getattr(message, name).extend([how(item) for item in value])
        except _Bad as exc:
            exc.path.append(key)
            raise
        except (TypeError, ValueError, OverflowError) as exc:  # protobuf range checks (int32 overflow)
            bad = _Bad(str(exc))
            bad.path.append(key)
            raise bad from None


def decode_json(signal: Signal, body: bytes) -> Message:
    """Decode an OTLP/JSON body into the signal's `Export*ServiceRequest`.

    Raises `InvalidArgument` for anything that is not a valid OTLP/JSON request: invalid JSON or
    UTF-8, a top level that is not an object, ids that are not hex, values of the wrong type,
    nesting deeper than `MAX_DEPTH`. Wrong-length (but hex) ids decode; `validate_message`
    rejects those items.
    """
    try:
        doc = _json_decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # bad UTF-8 in a key is the latter
        raise InvalidArgument(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise InvalidArgument("malformed JSON: nested too deeply") from None
    if type(doc) is not dict:
        raise InvalidArgument(f"malformed OTLP/JSON: top level must be an object, not {_kind(doc)}")
    request_type = SIGNALS[signal].request_type
    message = request_type()
    try:
        _fill(_decode_plan(request_type.DESCRIPTOR), message, doc, 1)
    except _Bad as exc:
        raise InvalidArgument(f"malformed OTLP/JSON: {exc.where()}: {exc.reason}") from None
    except RecursionError:  # only reachable with a tiny interpreter recursion limit
        raise InvalidArgument("malformed OTLP/JSON: nested too deeply") from None
    return message


# --------------------------------------------------------------------------------------------- encode


def _from_float(value: float) -> float | str:
    if value - value == 0:  # finite (inf - inf and nan - nan are nan)
        return value
    if value != value:
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _from_float32(value: float) -> float | str:
    return _from_float(ToShortestFloat(value)) if value - value == 0 else _from_float(value)


def _from_bytes(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _from_id(value: bytes) -> str:
    return value.hex()


def _scalar_encoder(field: FieldDescriptor) -> Callable[[Any], Any] | None:
    """How to write one value of `field`; None = as is (str, int32, bool, enum number)."""
    kind = field.type
    if kind == _F.TYPE_BYTES:
        return _from_id if _is_hex_id(field) else _from_bytes
    if kind in _INT64_TYPES:
        return str  # proto3 JSON: 64-bit integers as decimal strings
    if kind == _F.TYPE_DOUBLE:
        return _from_float
    if kind == _F.TYPE_FLOAT:
        return _from_float32
    return None


_encoders: dict[str, Callable[[Message], dict]] = {}


def _encoder(descriptor: Descriptor) -> Callable[[Message], dict]:
    """A function message -> JSON-ready dict for one message type (set fields only)."""
    found = _encoders.get(descriptor.full_name)
    if found is not None:
        return found
    plan: dict[FieldDescriptor, tuple[str, Callable[[Any], Any] | None]] = {}

    def encode(message: Message) -> dict:
        # ListFields is one C call returning only the fields that are set: no default values,
        # the one set member of each oneof.
        out = {}
        for field, value in message.ListFields():
            key, convert = plan[field]
            out[key] = value if convert is None else convert(value)
        return out

    _encoders[descriptor.full_name] = encode  # registered first: types recurse
    for field in descriptor.fields:
        _check_no_map(field)
        if field.type == _F.TYPE_MESSAGE:
            sub = _encoder(field.message_type)
            convert = _each(sub) if field.is_repeated else sub
        else:
            scalar = _scalar_encoder(field)
            convert = scalar
            if field.is_repeated:
                convert = list if scalar is None else _each(scalar)
        plan[field] = (field.json_name, convert)
    return encode


def _each(convert: Callable[[Any], Any]) -> Callable[[Any], list]:
    return lambda values: [convert(v) for v in values]


def encode_json(signal: Signal, message: Message) -> bytes:
    """Encode an `Export*ServiceRequest` as one line of OTLP/JSON (no trailing newline)."""
    return _json_encode(_encoder(SIGNALS[signal].request_type.DESCRIPTOR)(message))


def encode_json_from_wire(signal: Signal, payload: bytes) -> bytes:
    """Encode a serialized `Export*ServiceRequest` (e.g. a concatenated batch) as OTLP/JSON.

    Raises `InvalidArgument("malformed protobuf: ...")` if `payload` does not decode.
    """
    try:
        message = SIGNALS[signal].request_type.FromString(payload)
    except DecodeError as exc:
        raise InvalidArgument(f"malformed protobuf: {exc}") from None
    return encode_json(signal, message)
