"""Proving that a protobuf `Export*ServiceRequest` is valid as it stands, without decoding it.

    proven_item_count(signal, body) -> int | None

An int is a proof: `body` decodes (upb would accept it), every item in it is valid by
`validate.py`'s rules (span and log record ids, metric exemplar ids), and it holds that many
items (spans, data points, log records) exactly as `validate.count_items` would count them after
decoding. None means "not proven": the caller decodes with upb and validates as before, which
finds and reports whatever the problem is. So this is a shortcut that skips work, never one
that changes an answer, and it is allowed to give up on anything unusual.

Why: for a small request the upb decode, building the Python message object and dropping it
cost more than everything else validation does (docs/performance.md, "Small requests"); one pass
over the wire bytes in C costs well under a microsecond for 10 spans.

The walk is `_wirecheck.c`. Its schema comes from the pinned opentelemetry-proto descriptors at
import, so it follows the proto version exactly: every message type reachable from the three
requests, each field's number, type and label. Rules this module adds on top:

- items: Span, LogRecord and the four data point types;
- id fields (last occurrence counts, absent = empty): Span trace_id 16, span_id 8,
  parent_span_id empty or 8; LogRecord trace_id empty or 16, span_id empty or 8; Exemplar the
  same as LogRecord. An invalid id is "not proven" (the slow path drops the item and says why);
- once: a oneof member, or a singular message field, that occurs twice is "not proven". Parsers
  keep the last oneof member and merge repeated singular messages; both change what the
  decoded request holds (e.g. the data points of a Metric), so the count would not be exact.

Without the C extension (no compiler at install), `COMPILED` is False and every answer is None.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from otlp_ingest.otlp.signals import SIGNALS, Signal

try:
    from otlp_ingest.otlp import _wirecheck
except ImportError:  # pragma: no cover - built without a C compiler
    _wirecheck = None  # type: ignore[assignment]

__all__ = ["COMPILED", "item_counter", "proven_item_count"]

# _wirecheck.c's kinds
_VARINT, _I64, _I32, _BYTES, _STRING, _MESSAGE = 1, 2, 3, 4, 5, 6
_KINDS = {
    FieldDescriptor.TYPE_INT64: _VARINT,
    FieldDescriptor.TYPE_UINT64: _VARINT,
    FieldDescriptor.TYPE_INT32: _VARINT,
    FieldDescriptor.TYPE_UINT32: _VARINT,
    FieldDescriptor.TYPE_SINT32: _VARINT,
    FieldDescriptor.TYPE_SINT64: _VARINT,
    FieldDescriptor.TYPE_BOOL: _VARINT,
    FieldDescriptor.TYPE_ENUM: _VARINT,
    FieldDescriptor.TYPE_DOUBLE: _I64,
    FieldDescriptor.TYPE_FIXED64: _I64,
    FieldDescriptor.TYPE_SFIXED64: _I64,
    FieldDescriptor.TYPE_FLOAT: _I32,
    FieldDescriptor.TYPE_FIXED32: _I32,
    FieldDescriptor.TYPE_SFIXED32: _I32,
    FieldDescriptor.TYPE_BYTES: _BYTES,
    FieldDescriptor.TYPE_STRING: _STRING,
    FieldDescriptor.TYPE_MESSAGE: _MESSAGE,
}
_MAX_FIELD = 64  # _wirecheck.c's MAX_FIELD

_ITEMS = {
    "opentelemetry.proto.trace.v1.Span",
    "opentelemetry.proto.logs.v1.LogRecord",
    "opentelemetry.proto.metrics.v1.NumberDataPoint",
    "opentelemetry.proto.metrics.v1.HistogramDataPoint",
    "opentelemetry.proto.metrics.v1.ExponentialHistogramDataPoint",
    "opentelemetry.proto.metrics.v1.SummaryDataPoint",
}
# message -> id field -> (length, may be empty); the same rules as validate.py
_OPTIONAL_IDS = {"trace_id": (16, True), "span_id": (8, True)}
_IDS = {
    "opentelemetry.proto.trace.v1.Span": {
        "trace_id": (16, False),
        "span_id": (8, False),
        "parent_span_id": (8, True),
    },
    "opentelemetry.proto.logs.v1.LogRecord": _OPTIONAL_IDS,
    "opentelemetry.proto.metrics.v1.Exemplar": _OPTIONAL_IDS,
}

Schema = list[tuple[bool, list[tuple[int, int, int, int, int, int, int]]]]


def build_schema(roots: list[Descriptor]) -> tuple[Schema, list[int]]:
    """The `_wirecheck.configure` table for every message type reachable from `roots`, and the
    index of each root in it. ValueError for a schema the walk cannot check (e.g. a field
    number of MAX_FIELD or more, a group)."""
    index: dict[str, int] = {}
    order: list[Descriptor] = []

    def visit(descriptor: Descriptor) -> int:
        if descriptor.full_name not in index:
            index[descriptor.full_name] = len(order)
            order.append(descriptor)
            for field in descriptor.fields:
                if field.message_type is not None:
                    visit(field.message_type)
        return index[descriptor.full_name]

    root_indexes = [visit(root) for root in roots]
    schema: Schema = []
    for descriptor in order:
        ids = _IDS.get(descriptor.full_name, {})
        oneof_bits = {oneof.name: bit for bit, oneof in enumerate(descriptor.oneofs)}
        next_bit = len(oneof_bits)
        fields = []
        for field in descriptor.fields:
            kind = _KINDS.get(field.type)
            if kind is None or field.number >= _MAX_FIELD:
                raise ValueError(f"{descriptor.full_name}.{field.name}: not checkable on the wire")
            repeated = field.is_repeated
            once = -1
            if field.containing_oneof is not None:
                once = oneof_bits[field.containing_oneof.name]
            elif kind == _MESSAGE and not repeated:
                once, next_bit = next_bit, next_bit + 1
            if once > 63:
                raise ValueError(f"{descriptor.full_name}: too many once-only fields")
            length, may_be_empty = ids.get(field.name, (0, False))
            child = index[field.message_type.full_name] if kind == _MESSAGE else -1
            fields.append((field.number, kind, int(repeated), child, length, int(may_be_empty), once))
        schema.append((descriptor.full_name in _ITEMS, fields))
    return schema, root_indexes


def _configure() -> dict[Signal, int]:
    signals = list(SIGNALS)
    schema, roots = build_schema([SIGNALS[signal].request_type.DESCRIPTOR for signal in signals])
    _wirecheck.configure(schema)
    return dict(zip(signals, roots, strict=True))


_ROOTS = _configure() if _wirecheck is not None else {}
COMPILED = _wirecheck is not None
_item_count = _wirecheck.item_count if _wirecheck is not None else None


def item_counter(signal: Signal) -> Callable[[bytes | memoryview], int]:
    """`proven_item_count` for one signal as a single C call (the hot path's form): -1 for not
    proven (always, without the extension)."""
    if _wirecheck is None:
        return lambda body: -1
    return partial(_wirecheck.item_count, _ROOTS[signal])


def proven_item_count(signal: Signal, body: bytes | memoryview) -> int | None:
    """The number of items in `body` when it is proven valid as it stands, else None (see the
    module docstring)."""
    if _item_count is None:
        return None
    count = _item_count(_ROOTS[signal], body)
    return count if count >= 0 else None
