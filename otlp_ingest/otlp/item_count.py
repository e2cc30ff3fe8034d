"""Counting the items of a protobuf request without decoding them, for requests refused unread.

A request refused because the queue is full is never validated (`receiver/export.py` checks for
room first: decoding a body only to refuse it was, with the queue full under a 512-span load,
about a fifth of the tree's CPU). The refused-items counters must still say how many spans,
metric points or log records were turned away (the alerts and the status page read them), so
this parses the body into a view that declares only the containers down to the items and takes
each item as an opaque length-delimited `bytes` value: upb walks the envelope and never descends
into a span, a data point or a log record.

Data points sit in one of five point kinds of a `Metric` (gauge 5, sum 7, histogram 9,
exponential_histogram 10, summary 11), each with its points in field 1. A body that does not
parse counts 0: it was malformed and refused anyway.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError, Message

from otlp_ingest.otlp.id_views import ViewSchema, build_views
from otlp_ingest.otlp.signals import Signal

POINT_KINDS = (("gauge", 5), ("sum", 7), ("histogram", 9), ("exponential_histogram", 10), ("summary", 11))

_SCHEMA: ViewSchema = {
    "ScopeSpans": [("spans", 2, "*bytes")],
    "ResourceSpans": [("scope_spans", 2, "ScopeSpans")],
    "TracesRequest": [("resource_spans", 1, "ResourceSpans")],
    "ScopeLogs": [("log_records", 2, "*bytes")],
    "ResourceLogs": [("scope_logs", 2, "ScopeLogs")],
    "LogsRequest": [("resource_logs", 1, "ResourceLogs")],
    "Points": [("data_points", 1, "*bytes")],
    "Metric": [(kind, number, "?Points") for kind, number in POINT_KINDS],
    "ScopeMetrics": [("metrics", 2, "Metric")],
    "ResourceMetrics": [("scope_metrics", 2, "ScopeMetrics")],
    "MetricsRequest": [("resource_metrics", 1, "ResourceMetrics")],
}
_VIEWS = build_views(_SCHEMA, "otlp_ingest.itemcount")
_REQUEST = {
    Signal.TRACES: _VIEWS["TracesRequest"],
    Signal.LOGS: _VIEWS["LogsRequest"],
    Signal.METRICS: _VIEWS["MetricsRequest"],
}


def count_items_unread(signal: Signal, body: bytes) -> int:
    """Items (spans, metric data points, log records) in a protobuf `Export*ServiceRequest`
    body, without decoding the items; 0 when the body does not parse."""
    try:
        request = _REQUEST[signal].FromString(body)
    except DecodeError:
        return 0
    return count_items(signal, request)


def count_items(signal: Signal, request: Message) -> int:
    """Items (spans, metric data points, log records) of a decoded request: the generated message,
    a view of it (the point kinds are found by presence, so views without the oneof work too)."""
    if signal == Signal.TRACES:
        return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    if signal == Signal.LOGS:
        return sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
    scopes = [sm for rm in request.resource_metrics for sm in rm.scope_metrics]
    return sum(metric_points(metric) for sm in scopes for metric in sm.metrics)


def point_kind(metric: Message) -> str | None:
    """Which of the five point kinds a metric holds, or None."""
    for kind, _number in POINT_KINDS:
        if metric.HasField(kind):
            return kind
    return None


def metric_points(metric: Message) -> int:
    """Number of data points of one metric."""
    kind = point_kind(metric)
    return 0 if kind is None else len(getattr(metric, kind).data_points)
