"""Walking a decoded `Export*ServiceRequest`: the attribute lists, resources and items processors
act on, and pruning the containers a filter or sampler emptied.

Kept in one place so every processor agrees on what "the attributes of a signal" are:

- traces: each span's attributes and each span event's attributes (not links: the Collector's
  `attributes` processor does not touch them either);
- logs: each log record's attributes;
- metrics: each data point's attributes, in all five point kinds (gauge, sum, histogram,
  exponential histogram, summary).

Functions take a full `Export*ServiceRequest` or a view (views.py: same field names) and return
lists, not generators: the callers' loops stay tight.
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import Message

from otlp_ingest.otlp.item_count import count_items, metric_points, point_kind
from otlp_ingest.otlp.signals import CONTAINERS, Signal

__all__ = ["count_items", "item_attribute_lists", "keep_items", "resource_list", "scopes", "value_text"]


def resource_list(signal: Signal, request: Message) -> Message:
    """The repeated field of the request's resources (ResourceSpans, ...)."""
    return getattr(request, CONTAINERS[signal][0])


def scopes(signal: Signal, resource: Message) -> Message:
    """The repeated scope field of one resource entry."""
    return getattr(resource, CONTAINERS[signal][1])


def item_attribute_lists(signal: Signal, request: Message) -> list[Message]:
    """Every repeated `attributes` field of the request's items (see the module docstring)."""
    out: list[Message] = []
    append = out.append
    if signal == Signal.TRACES:
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    append(span.attributes)
                    for event in span.events:
                        append(event.attributes)
    elif signal == Signal.LOGS:
        for rl in request.resource_logs:
            for sl in rl.scope_logs:
                for record in sl.log_records:
                    append(record.attributes)
    else:
        for point in data_points(request):
            append(point.attributes)
    return out


def data_points(request: Message) -> list[Message]:
    """Every data point of a metrics request, whatever its kind."""
    out: list[Message] = []
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = point_kind(metric)
                if kind is not None:
                    out.extend(getattr(metric, kind).data_points)
    return out


def keep_items(signal: Signal, request: Message, keep: Callable[[Message, Message, Message], bool]) -> int:
    """Delete every item for which `keep(resource, scope, item)` is false, then the scopes and
    resources this left empty; returns how many items (spans, log records, data points) went.

    For metrics the unit `keep` judges is a whole Metric (the Collector's filter drops metrics by
    name), counted by its data points. Deleting in place keeps everything else as it was.
    """
    dropped = 0
    resource_entries = resource_list(signal, request)
    for r in range(len(resource_entries) - 1, -1, -1):
        resource = resource_entries[r]
        scope_entries = scopes(signal, resource)
        emptied_scope = False
        for s in range(len(scope_entries) - 1, -1, -1):
            scope = scope_entries[s]
            items = _items(signal, scope)
            doomed = [i for i, item in enumerate(items) if not keep(resource, scope, item)]
            for i in reversed(doomed):
                dropped += metric_points(items[i]) if signal == Signal.METRICS else 1
                del items[i]
            if doomed and not len(items):
                del scope_entries[s]
                emptied_scope = True
        if emptied_scope and not len(scope_entries):
            del resource_entries[r]
    return dropped


def _items(signal: Signal, scope: Message) -> Message:
    return getattr(scope, CONTAINERS[signal][2])


def value_text(value: Message) -> str:
    """An AnyValue's string form for matching: strings as they are, numbers in decimal, bools as
    true/false; bytes, arrays, maps and the empty value as ""."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind in ("int_value", "double_value"):
        return str(getattr(value, kind))
    return ""
