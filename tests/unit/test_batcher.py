"""Batch assembly by concatenation, and commit-order bookkeeping."""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from otlp_ingest.exporter.batcher import Batcher
from otlp_ingest.exporter.pending import PendingRing
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
