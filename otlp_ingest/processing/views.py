"""The built-in processors' view of a request: attributes as protobuf maps, the rest untouched.

Walking attributes through the protobuf Python API costs about 0.6 us per attribute read (a
Python object per KeyValue and per key): with seven attributes a span, finding the one to hash
cost more than the whole receive path. So the built-in processors parse requests into view types
(a private descriptor pool) that declare only what they read, with every `attributes` field
declared as `map<string, AnyValue>`: on the wire a map entry *is* a `KeyValue` (key = 1,
value = 2), so the same bytes parse into a C hash table, and `key in attrs`, `attrs[key]` and
`del attrs[key]` are C lookups. Every field not declared is kept as an unknown field and written
back as it came (after the declared ones: protobuf allows any field order).

What the maps change, and why that is allowed: attribute order (OTLP attributes are a map; the
specification requires unique keys), and a list that broke that rule keeps only its last value
of a repeated key (the Collector's pdata keeps one too).

Declared, with their OTLP field numbers: for traces a span's trace_id (1), name (5), kind (6),
attributes (9) and events (11, with their attributes, 3); for logs a record's severity_number
(2), severity_text (3), body (5), attributes (6) and trace_id (9); for metrics a metric's name
(1), its five point kinds (5, 7, 9, 10, 11) and their points' attributes (7, 7, 9, 1, 7); for all,
resource attributes (1) and the scope's name and version (1, 2). AnyValue is OTLP's own message.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from opentelemetry.proto.common.v1 import common_pb2

from otlp_ingest.otlp.signals import Signal

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "otlp_ingest.procview"
_ANY = ".opentelemetry.proto.common.v1.AnyValue"
_SCALARS = {"string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES, "int32": _F.TYPE_INT32}

# message -> [(field, number, kind)]: kind is a scalar name, "map" (attributes), "AnyValue",
# "Name" (optional message) or "*Name" (repeated message).
_SCHEMA: dict[str, list[tuple[str, int, str]]] = {
    "Resource": [("attributes", 1, "map")],
    "Scope": [("name", 1, "string"), ("version", 2, "string")],
    "Event": [("attributes", 3, "map")],
    "Span": [
        ("trace_id", 1, "bytes"),
        ("name", 5, "string"),
        ("kind", 6, "int32"),
        ("attributes", 9, "map"),
        ("events", 11, "*Event"),
    ],
    "ScopeSpans": [("scope", 1, "Scope"), ("spans", 2, "*Span")],
    "ResourceSpans": [("resource", 1, "Resource"), ("scope_spans", 2, "*ScopeSpans")],
    "TracesRequest": [("resource_spans", 1, "*ResourceSpans")],
    "LogRecord": [
        ("severity_number", 2, "int32"),
        ("severity_text", 3, "string"),
        ("body", 5, "AnyValue"),
        ("attributes", 6, "map"),
        ("trace_id", 9, "bytes"),
    ],
    "ScopeLogs": [("scope", 1, "Scope"), ("log_records", 2, "*LogRecord")],
    "ResourceLogs": [("resource", 1, "Resource"), ("scope_logs", 2, "*ScopeLogs")],
    "LogsRequest": [("resource_logs", 1, "*ResourceLogs")],
    "Point7": [("attributes", 7, "map")],  # NumberDataPoint, SummaryDataPoint
    "Point9": [("attributes", 9, "map")],  # HistogramDataPoint
    "Point1": [("attributes", 1, "map")],  # ExponentialHistogramDataPoint
    "Points7": [("data_points", 1, "*Point7")],
    "Points9": [("data_points", 1, "*Point9")],
    "Points1": [("data_points", 1, "*Point1")],
    "Metric": [
        ("name", 1, "string"),
        ("gauge", 5, "Points7"),
        ("sum", 7, "Points7"),
        ("histogram", 9, "Points9"),
        ("exponential_histogram", 10, "Points1"),
        ("summary", 11, "Points7"),
    ],
    "ScopeMetrics": [("scope", 1, "Scope"), ("metrics", 2, "*Metric")],
    "ResourceMetrics": [("resource", 1, "Resource"), ("scope_metrics", 2, "*ScopeMetrics")],
    "MetricsRequest": [("resource_metrics", 1, "*ResourceMetrics")],
}


def _build() -> dict[str, type[Message]]:
    pool = descriptor_pool.DescriptorPool()
    common = descriptor_pb2.FileDescriptorProto()
    common_pb2.DESCRIPTOR.CopyToProto(common)
    pool.Add(common)
    file = descriptor_pb2.FileDescriptorProto(
        name="otlp_ingest/procview.proto", package=_PACKAGE, syntax="proto3", dependency=[common.name]
    )
    for name, fields in _SCHEMA.items():
        message = file.message_type.add(name=name)
        for field_name, number, kind in fields:
            field = message.field.add(name=field_name, number=number, label=_F.LABEL_OPTIONAL)
            if kind in _SCALARS:
                field.type = _SCALARS[kind]
            elif kind == "map":
                entry = message.nested_type.add(name="AttributesEntry")
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
                entry.field.add(
                    name="value", number=2, type=_F.TYPE_MESSAGE, label=_F.LABEL_OPTIONAL, type_name=_ANY
                )
                field.type, field.label = _F.TYPE_MESSAGE, _F.LABEL_REPEATED
                field.type_name = f".{_PACKAGE}.{name}.AttributesEntry"
            elif kind == "AnyValue":
                field.type, field.type_name = _F.TYPE_MESSAGE, _ANY
            else:
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".{_PACKAGE}.{kind.lstrip('*')}"
                if kind.startswith("*"):
                    field.label = _F.LABEL_REPEATED
    pool.Add(file)
    names = [*_SCHEMA, "AnyValue"]
    return {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(_ANY[1:] if name == "AnyValue" else f"{_PACKAGE}.{name}")
        )
        for name in names
    }


_VIEWS = _build()
REQUEST_VIEW: dict[Signal, type[Message]] = {
    Signal.TRACES: _VIEWS["TracesRequest"],
    Signal.LOGS: _VIEWS["LogsRequest"],
    Signal.METRICS: _VIEWS["MetricsRequest"],
}
AnyValueView: type[Message] = _VIEWS["AnyValue"]
