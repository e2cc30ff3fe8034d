"""Batch assembly by concatenation, and commit-order bookkeeping."""

from __future__ import annotations

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from otlp_ingest.exporter.batcher import Batcher
from otlp_ingest.exporter.pending import PendingRing
from otlp_ingest.exporter.retry import RetriesExhausted
from otlp_ingest.exporter.sender import SendError, SendResult
from otlp_ingest.exporter.split import count_items, send_batch, split_request
from otlp_ingest.otlp.signals import Signal


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def spans_request(first: int, n: int) -> bytes:
    request = trace_service_pb2.ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    for i in range(first, first + n):
        span = spans.add()
        span.trace_id = i.to_bytes(16, "big")
        span.span_id = i.to_bytes(8, "big")
        span.name = f"span-{i}"
    return request.SerializeToString()


def test_concatenation_is_the_merged_request() -> None:
    batcher: Batcher[int] = Batcher(batch_size=10, max_bytes=1 << 20, timeout=5, clock=Clock())
    assert batcher.add(Signal.TRACES, 4, spans_request(0, 4), 0) == []
    [batch] = batcher.add(Signal.TRACES, 6, spans_request(4, 6), 1)
    merged = trace_service_pb2.ExportTraceServiceRequest.FromString(batch.payload())
    ids = [int.from_bytes(s.span_id, "big") for rs in merged.resource_spans for s in rs.scope_spans[0].spans]
    assert ids == list(range(10))
    assert (batch.items, batch.tokens, len(batcher)) == (10, [0, 1], 0)


def test_record_that_would_overflow_closes_the_open_batch_first() -> None:
    batcher: Batcher[str] = Batcher(batch_size=10, max_bytes=1 << 20, timeout=5, clock=Clock())
    batcher.add(Signal.TRACES, 6, b"a", "a")
    [closed] = batcher.add(Signal.TRACES, 6, b"b", "b")
    assert (closed.tokens, closed.items) == (["a"], 6)
    assert len(batcher) == 1  # "b" opened the next batch


def test_oversized_record_is_sent_alone_never_split() -> None:
    batcher: Batcher[str] = Batcher(batch_size=10, max_bytes=1 << 20, timeout=5, clock=Clock())
    batcher.add(Signal.TRACES, 3, b"a", "a")
    first, second = batcher.add(Signal.TRACES, 50, b"big", "big")
    assert (first.tokens, second.tokens, second.items) == (["a"], ["big"], 50)
    assert len(batcher) == 0


def test_byte_cap_closes_batches() -> None:
    batcher: Batcher[int] = Batcher(batch_size=1000, max_bytes=10, timeout=5, clock=Clock())
    assert batcher.add(Signal.LOGS, 1, b"x" * 6, 0) == []
    [closed] = batcher.add(Signal.LOGS, 1, b"y" * 6, 1)
    assert closed.nbytes == 6
    [full] = batcher.add(Signal.LOGS, 1, b"z" * 4, 2)  # 6 + 4 reaches the cap
    assert full.tokens == [1, 2]


def test_signals_batch_separately_and_time_out_from_first_record() -> None:
    clock = Clock()
    batcher: Batcher[str] = Batcher(batch_size=100, max_bytes=1 << 20, timeout=5, clock=clock)
    batcher.add(Signal.TRACES, 1, b"t", "t")
    clock.now += 3
    batcher.add(Signal.LOGS, 1, b"l", "l")
    assert batcher.next_deadline() == 105.0
    clock.now += 2
    [expired] = batcher.expired()
    assert expired.signal is Signal.TRACES
    assert batcher.expired() == []
    clock.now += 3
    assert [b.signal for b in batcher.expired()] == [Signal.LOGS]
    assert batcher.next_deadline() is None


def test_flush_returns_every_open_batch() -> None:
    batcher: Batcher[str] = Batcher(batch_size=100, max_bytes=1 << 20, timeout=5, clock=Clock())
    for signal in Signal:
        batcher.add(signal, 1, b"x", signal.name)
    assert sorted(b.signal for b in batcher.flush()) == list(Signal)
    assert len(batcher) == 0


def test_pending_commits_only_the_done_prefix_in_order() -> None:
    pending: PendingRing[str] = PendingRing(0)
    a, b, c = (pending.track(x) for x in "abc")
    c.done = True
    assert pending.pop_committable() == []  # "a" is not acknowledged yet
    a.done = True
    assert pending.pop_committable() == ["a"]
    b.done = True
    assert pending.pop_committable() == ["b", "c"]
    assert len(pending) == 0


# -- splitting a batch the backend called too large (exporter/split.py) --------------------------


def span_ids(payload: bytes) -> list[int]:
    request = trace_service_pb2.ExportTraceServiceRequest.FromString(payload)
    return [
        int.from_bytes(s.span_id, "big")
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    ]


class MaxItemsBackend:
    """The Sender seam: 'too large' above `max_items` spans, else records the span ids."""

    def __init__(self, max_items: int, fail: SendError | None = None, rejected: int = 0) -> None:
        self.max_items = max_items
        self.fail = fail
        self.rejected = rejected
        self.received: list[int] = []
        self.calls = 0

    def __call__(self, payload: bytes) -> SendResult:
        self.calls += 1
        ids = span_ids(payload)
        if len(ids) > self.max_items:
            raise SendError("HTTP 413", retryable=False, too_large=True)
        if self.fail is not None:
            raise self.fail
        self.received.extend(ids)
        return SendResult(self.rejected, "some rejected" if self.rejected else "")


def test_split_request_at_resource_then_scope_then_items() -> None:
    request = trace_service_pb2.ExportTraceServiceRequest()
    for r in range(3):
        request.resource_spans.add().scope_spans.add().spans.add(span_id=r.to_bytes(8, "big"))
    halves = split_request(Signal.TRACES, request.SerializeToString())
    assert halves is not None
    assert [span_ids(p) for p, _ in halves] == [[0], [1, 2]]
    assert [n for _, n in halves] == [1, 2]
    # One resource, two scopes: the resource (attributes) is copied into both halves.
    request = trace_service_pb2.ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "svc"
    for s in range(2):
        rs.scope_spans.add().spans.add(span_id=s.to_bytes(8, "big"))
    halves = split_request(Signal.TRACES, request.SerializeToString())
    assert halves is not None
    for payload, _ in halves:
        part = trace_service_pb2.ExportTraceServiceRequest.FromString(payload)
        assert part.resource_spans[0].resource.attributes[0].value.string_value == "svc"
    # One scope: the spans split; one span: nothing to split.
    assert [span_ids(p) for p, _ in split_request(Signal.TRACES, spans_request(0, 5)) or ()] == [
        [0, 1],
        [2, 3, 4],
    ]
    assert split_request(Signal.TRACES, spans_request(0, 1)) is None


def test_split_a_single_metric_by_data_points() -> None:
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    metric = request.resource_metrics.add().scope_metrics.add().metrics.add(name="m")
    for i in range(4):
        metric.sum.data_points.add(as_int=i)
    halves = split_request(Signal.METRICS, request.SerializeToString())
    assert halves is not None
    parts = [metrics_service_pb2.ExportMetricsServiceRequest.FromString(p) for p, _ in halves]
    assert [
        [p.as_int for p in r.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points] for r in parts
    ] == [
        [0, 1],
        [2, 3],
    ]
    assert all(r.resource_metrics[0].scope_metrics[0].metrics[0].name == "m" for r in parts)
    assert count_items(Signal.METRICS, request) == 4


def test_too_large_batch_splits_at_records_then_items_in_order() -> None:
    # Four records of 3 spans; the backend takes at most 2 spans per request.
    parts = [(spans_request(i * 3, 3), 3) for i in range(4)]
    backend = MaxItemsBackend(max_items=2)
    report = send_batch(Signal.TRACES, parts, backend)
    assert backend.received == list(range(12))  # everything, exactly once, oldest first
    assert report.sent == 12 and report.failed == {} and report.splits > 0


def test_a_single_item_too_large_is_given_up_as_too_large() -> None:
    parts = [(spans_request(0, 3), 3)]
    backend = MaxItemsBackend(max_items=0)
    report = send_batch(Signal.TRACES, parts, backend)
    assert report.sent == 0
    assert report.failed == {"too_large": 3}


def test_permanent_and_exhausted_failures_are_reported_by_reason() -> None:
    parts = [(spans_request(0, 3), 3), (spans_request(3, 2), 2)]
    report = send_batch(Signal.TRACES, parts, MaxItemsBackend(10, SendError("HTTP 400", retryable=False)))
    assert report.failed == {"permanent": 5}
    report = send_batch(Signal.TRACES, parts, MaxItemsBackend(10, RetriesExhausted("gave up")))
    assert report.failed == {"retries_exhausted": 5}


def test_partial_success_is_summed_over_parts() -> None:
    parts = [(spans_request(i * 2, 2), 2) for i in range(3)]
    report = send_batch(Signal.TRACES, parts, MaxItemsBackend(max_items=2, rejected=1))
    assert report.sent == 6
    assert report.rejected == 3  # three requests, one rejected each


def test_batches_are_capped_by_bytes_below_the_limit() -> None:
    one = spans_request(0, 1)
    batcher: Batcher[int] = Batcher(10_000, 5 * len(one), 1.0, Clock())
    closed = []
    for i in range(23):
        closed += batcher.add(Signal.TRACES, 1, spans_request(i, 1), i)
    closed += batcher.flush()
    assert all(b.nbytes <= 5 * len(one) for b in closed)
    assert sum(b.items for b in closed) == 23
    assert [t for b in closed for t in b.tokens] == list(range(23))
    assert all(b.parts() == list(zip(b.payloads, [1] * len(b.payloads), strict=True)) for b in closed)
