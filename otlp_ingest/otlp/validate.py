"""Item validation and counting for `Export*ServiceRequest` messages.

This runs on every request (the hot path), so it decodes once with upb, touches as few Python
objects as it can, and returns the *original* bytes when every item is valid; it re-serializes
only when it had to drop items.

Items are spans, metric data points (every point kind: gauge, sum, histogram, exponential
histogram, summary) and log records. An item is invalid, and dropped with `partial_success`, when:

- span: `trace_id` is not 16 bytes, `span_id` is not 8 bytes, or `parent_span_id` is not 0 or 8;
- log record: `trace_id` is not 0 or 16 bytes, or `span_id` is not 0 or 8;
- metric data point: one of its exemplars has a `trace_id` that is not 0 or 16 bytes or a
  `span_id` that is not 0 or 8. A metric left with no points after that is dropped as well.

A request with no items at all is valid (0 accepted). A body that does not decode (truncated,
wrong wire types, invalid UTF-8 in a string, nesting too deep) is `InvalidArgument`.

With `max_item_bytes` (the receiver passes `batch_max_bytes`), an item is also dropped when a
request holding it alone, with its resource and scope (and for a data point its metric) envelope,
serializes to more than `max_item_bytes`: the exporter could never send it in a batch under the
cap, and a backend at its usual 4 MiB limit would refuse it, so acknowledging it would be a lie.
**Choice: partial_success, not 413 for the whole request.** The rest of the request is
deliverable; a 413 would make the client drop it too (413 is not retryable), while
`partial_success` tells the client exactly how many items were refused and why. Only bodies
larger than the limit are inspected (no single item can be larger than its whole request), so
the hot path pays one length comparison.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import DecodeError, Message

from otlp_ingest.errors import InvalidArgument
from otlp_ingest.otlp.id_views import proven_item_count
from otlp_ingest.otlp.item_count import count_items
from otlp_ingest.otlp.signals import CONTAINERS, SIGNALS, Signal
from otlp_ingest.otlp.wire_check import COMPILED as WIRE_PROOF
from otlp_ingest.otlp.wire_check import proven_item_count as proven_on_the_wire

__all__ = ["ValidatedPayload", "count_items", "validate_message", "validate_protobuf"]


@dataclass(slots=True)
class ValidatedPayload:
    """What the receiver writes to the ring and tells the client.

    `payload` is the serialized request holding only the valid items (the original bytes when
    nothing was dropped); `accepted`/`rejected` count items; `error_message` is for
    `partial_success.error_message` ("" when nothing was rejected).
    """

    payload: bytes
    accepted: int
    rejected: int
    error_message: str


# Without the C extensions (wire_check.COMPILED), bodies from this size on have their item ids
# proven valid by the views (id_views.py) before the Python check: measured, 10 spans (1.7 KB)
# 7.4 us without vs 9.0 us with it, 100 spans (16 KB) 51 vs 42 us, 512 spans (84 KB) 256 vs 207
# us. With them, a body the wire proof refused almost always has an invalid item, which the views
# would not prove either: the item check runs at once.
PROOF_MIN_BYTES = 4096

# Reasons, in the order they are reported.
_SPAN_TRACE = "trace_id must be 16 bytes"
_SPAN_SPAN = "span_id must be 8 bytes"
_SPAN_PARENT = "parent_span_id must be empty or 8 bytes"
_LOG_TRACE = "trace_id must be empty or 16 bytes"
_LOG_SPAN = "span_id must be empty or 8 bytes"
_EXEMPLAR_TRACE = "exemplar trace_id must be empty or 16 bytes"
_EXEMPLAR_SPAN = "exemplar span_id must be empty or 8 bytes"


def validate_protobuf(signal: Signal, body: bytes, max_item_bytes: int = 0) -> ValidatedPayload:
    """Decode a protobuf `Export*ServiceRequest`, drop invalid items, count the rest.

    `max_item_bytes` > 0 also drops items too large to ever be sent alone (module docstring).
    Raises `InvalidArgument("malformed protobuf: ...")` if `body` does not decode.
    """
    if not max_item_bytes or len(body) <= max_item_bytes:
        # Most requests are valid as they stand: proven in one pass over the bytes (wire_check),
        # without building the decoded message only to drop it.
        count = proven_on_the_wire(signal, body)
        if count is not None:
            return ValidatedPayload(body, count, 0, "")
    try:
        message = SIGNALS[signal].request_type.FromString(body)
    except DecodeError as exc:
        raise InvalidArgument(f"malformed protobuf: {exc}") from None
    except RecursionError:  # pragma: no cover - upb reports depth as DecodeError
        raise InvalidArgument("malformed protobuf: nested too deeply") from None
    # Without the wire proof, the views prove the ids of big bodies (PROOF_MIN_BYTES); their fixed
    # cost (a second parse, ~4 us) only pays off beyond a couple of dozen items.
    big = not WIRE_PROOF and len(body) >= PROOF_MIN_BYTES
    proven = proven_item_count(signal, body) if big else None
    return _validate(signal, message, body, max_item_bytes, proven)


def validate_message(signal: Signal, message: Message, max_item_bytes: int = 0) -> ValidatedPayload:
    """Same as `validate_protobuf` for an already decoded request (the OTLP/JSON path).

    Drops invalid items from `message` in place; `payload` is always freshly serialized.
    """
    return _validate(signal, message, None, max_item_bytes)


# ----------------------------------------------------------------------------------- implementation


def _validate(
    signal: Signal,
    message: Message,
    body: bytes | None,
    max_item_bytes: int = 0,
    proven_count: int | None = None,
) -> ValidatedPayload:
    reasons: dict[str, int] = {}
    if proven_count is not None:
        accepted = proven_count
    elif signal == Signal.TRACES:
        accepted = _check_spans(message, reasons)
    elif signal == Signal.LOGS:
        accepted = _check_logs(message, reasons)
    else:
        accepted = _check_metrics(message, reasons)
    payload = body if body is not None and not reasons else message.SerializeToString()
    if max_item_bytes > 0 and len(payload) > max_item_bytes:  # rare: only then look at item sizes
        oversized = _drop_oversized(signal, message, max_item_bytes)
        if oversized:
            reasons[f"larger than the batch limit of {max_item_bytes} bytes"] = oversized
            accepted -= oversized
            payload = message.SerializeToString()
    if not reasons:
        return ValidatedPayload(payload, accepted, 0, "")
    rejected = sum(reasons.values())
    return ValidatedPayload(payload, accepted, rejected, _describe(signal, rejected, reasons))


def _describe(signal: Signal, rejected: int, reasons: dict[str, int]) -> str:
    """E.g. "2 spans rejected: trace_id must be 16 bytes" (counts per reason when several)."""
    noun = SIGNALS[signal].item_noun.replace("_", " ")
    if rejected == 1:
        noun = noun[:-1]  # "spans" -> "span", "metric points" -> "metric point"
    if len(reasons) == 1:
        detail = next(iter(reasons))
    else:
        detail = "; ".join(f"{n} {reason}" for reason, n in reasons.items())
    return f"{rejected} {noun} rejected: {detail}"


def _span_problem(span: Message) -> str:
    if len(span.trace_id) != 16:
        return _SPAN_TRACE
    if len(span.span_id) != 8:
        return _SPAN_SPAN
    return _SPAN_PARENT


def _check_spans(message: Message, reasons: dict[str, int]) -> int:
    accepted = 0
    for rs in message.resource_spans:
        for ss in rs.scope_spans:
            spans = ss.spans
            bad: list[int] = []
            # One pass of C-level length checks; the reason is only worked out for bad spans.
            for i, span in enumerate(spans):
                if (
                    len(span.trace_id) != 16
                    or len(span.span_id) != 8
                    or len(span.parent_span_id) not in (0, 8)
                ):
                    bad.append(i)
            if bad:
                for i in bad:
                    reason = _span_problem(spans[i])
                    reasons[reason] = reasons.get(reason, 0) + 1
                for i in reversed(bad):
                    del spans[i]
            accepted += len(spans)
    return accepted


def _log_problem(record: Message) -> str:
    return _LOG_TRACE if len(record.trace_id) not in (0, 16) else _LOG_SPAN


def _check_logs(message: Message, reasons: dict[str, int]) -> int:
    accepted = 0
    for rl in message.resource_logs:
        for sl in rl.scope_logs:
            records = sl.log_records
            bad = [
                i
                for i, r in enumerate(records)
                if len(r.trace_id) not in (0, 16) or len(r.span_id) not in (0, 8)
            ]
            for i in bad:
                reason = _log_problem(records[i])
                reasons[reason] = reasons.get(reason, 0) + 1
            for i in reversed(bad):
                del records[i]
            accepted += len(records)
    return accepted


def _point_problem(point: Message) -> str | None:
    for ex in point.exemplars:
        if len(ex.trace_id) not in (0, 16):
            return _EXEMPLAR_TRACE
        if len(ex.span_id) not in (0, 8):
            return _EXEMPLAR_SPAN
    return None


def _check_metrics(message: Message, reasons: dict[str, int]) -> int:
    accepted = 0
    for rm in message.resource_metrics:
        for sm in rm.scope_metrics:
            metrics = sm.metrics
            empty: list[int] = []
            for m_index, metric in enumerate(metrics):
                kind = metric.WhichOneof("data")
                if kind is None:
                    continue
                points = getattr(metric, kind).data_points
                if kind != "summary":  # summary points have no exemplars
                    bad = [i for i, p in enumerate(points) if p.exemplars and _point_problem(p)]
                    if bad:
                        for i in bad:
                            reason = _point_problem(points[i])
                            reasons[reason] = reasons.get(reason, 0) + 1
                        for i in reversed(bad):
                            del points[i]
                        if not points:
                            empty.append(m_index)
                accepted += len(points)
            for m_index in reversed(empty):
                del metrics[m_index]
    return accepted


# --------------------------------------------------------------------------------- oversized items


def _field(size: int) -> int:
    """Bytes of a length-delimited field with a one-byte tag (every field number involved is
    below 16) holding a `size`-byte submessage: tag + varint length + body."""
    length, rest = 1, size >> 7
    while rest:
        rest >>= 7
        length += 1
    return 1 + length + size


def _envelope(node: Message, children: list[Message]) -> int:
    """Serialized size of `node` without `children` (its repeated child field): exact, as
    ByteSize() minus each child's field."""
    return node.ByteSize() - sum(_field(child.ByteSize()) for child in children)


def _drop_oversized(signal: Signal, message: Message, limit: int) -> int:
    """Delete every item whose single-item request (same resource, scope and, for a data point,
    metric envelope) serializes to more than `limit` bytes; return how many. A container whose
    whole single-container request fits is skipped without looking inside (at most one ByteSize
    per level for the common case). Metrics left without points are deleted, as in validation."""
    dropped = 0
    for resource in _resources(signal, message):
        scopes = list(_scopes(signal, resource))
        if _field(resource.ByteSize()) <= limit:
            continue
        resource_env = _envelope(resource, scopes)
        for scope in scopes:
            if _field(resource_env + _field(scope.ByteSize())) <= limit:
                continue
            if signal == Signal.METRICS:
                dropped += _drop_oversized_points(scope, limit, resource_env)
                continue
            items = scope.spans if signal == Signal.TRACES else scope.log_records
            scope_env = _envelope(scope, list(items))
            big = [
                i
                for i, item in enumerate(items)
                if _field(resource_env + _field(scope_env + _field(item.ByteSize()))) > limit
            ]
            for i in reversed(big):
                del items[i]
            dropped += len(big)
    return dropped


def _drop_oversized_points(scope: Message, limit: int, resource_env: int) -> int:
    metrics = scope.metrics
    scope_env = _envelope(scope, list(metrics))
    dropped = 0
    empty: list[int] = []
    for m_index, metric in enumerate(metrics):
        kind = metric.WhichOneof("data")
        if kind is None:
            continue
        data = getattr(metric, kind)
        points = data.data_points
        data_env = _envelope(data, list(points))
        metric_env = metric.ByteSize() - _field(data.ByteSize())  # name, unit, ... without data
        big = [
            i
            for i, point in enumerate(points)
            if _field(
                resource_env
                + _field(scope_env + _field(metric_env + _field(data_env + _field(point.ByteSize()))))
            )
            > limit
        ]
        for i in reversed(big):
            del points[i]
        dropped += len(big)
        if big and not points:
            empty.append(m_index)
    for m_index in reversed(empty):
        del metrics[m_index]
    return dropped


def _resources(signal: Signal, message: Message) -> Iterable[Message]:
    return getattr(message, CONTAINERS[signal][0])


def _scopes(signal: Signal, resource: Message) -> Iterable[Message]:
    return getattr(resource, CONTAINERS[signal][1])
