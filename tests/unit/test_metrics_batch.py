"""Batched receiver metrics write what per-request updates would have written."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Histogram

from otlp_ingest.telemetry.metrics import LATENCY_BUCKETS, observe_many

VALUES = [0.0, 0.0001, 0.0005, 0.002, 0.002, 0.05, 0.3, 7.0, 1e9]


def _samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    samples = (s for m in histogram.collect() for s in m.samples if not s.name.endswith("_created"))
    return {(s.name, s.labels.get("le", "")): s.value for s in samples}


def test_observe_many_matches_observe() -> None:
    one = Histogram("one_seconds", "x", ["t"], buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    many = Histogram("many_seconds", "x", ["t"], buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    for v in VALUES:
        one.labels("a").observe(v)
    observe_many(many.labels("a"), VALUES)
    got = {(name.replace("many", "one"), le): v for (name, le), v in _samples(many).items()}
    assert got == _samples(one)


def test_series_counts_reach_the_metrics_once_flushed() -> None:
    from otlp_ingest.otlp.signals import Signal
    from otlp_ingest.receiver.export import _Series

    series = _Series(Signal.TRACES, "unit-test", threading.Lock())
    before = series.accepted._value.get()
    series.count(accepted=5, outcome="ok", duration=0.001)
    series.count(refused=2, outcome="partial", duration=0.002)
    assert series.accepted._value.get() == before  # not yet written
    series.flush()
    assert series.accepted._value.get() == before + 5
    series.flush()  # nothing new: nothing written twice
    assert series.accepted._value.get() == before + 5
