"""Backend trouble: an outage the queue absorbs (then clients are refused with growing hints, and
everything acked is delivered oldest first when the backend returns), and a flapping backend.

Merged from tests/integration/test_backend_trouble.py; the non-fault checks (permanent
rejections, splitting, partial_success, byte caps) stay there.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.conftest import ServerProcess
from tests.faults.conftest import SOAK, settle
from tests.faults.load import Load
from tests.support.backend import RecordingBackend
from tests.support.reconcile import Ledger

OUTAGE_S = 150.0 if SOAK else 3.0
FAILED_FAMILIES = (
    "otlp_exporter_send_failed_spans_total",
    "otlp_exporter_send_failed_metric_points_total",
    "otlp_exporter_send_failed_log_records_total",
)


def test_outage_absorbed_refused_with_growing_hints_then_delivered_in_order(
    server_factory: Callable[..., ServerProcess], backend_factory: Callable[..., RecordingBackend]
) -> None:
    backend = backend_factory(fail_first=10**9, fail_code="unavailable", retry_after_s=0.2)
    server = server_factory(
        env={
            "OTLP_ENDPOINT": backend.grpc_endpoint,
            "OTLP_QUEUE_SIZE": "40",  # 20 records per worker ring: full within a second
            "OTLP_BATCH_SIZE": "50",
            "OTLP_EXPORT_CONCURRENCY": "1",  # one batch in flight: delivery order = ring order
            "OTLP_RETRY_MAX_ELAPSED": "1h",  # the outage may last minutes (soak)
        }
    )
    ledger = Ledger()
    # Closed loop, 5-span requests, one at a time per connection: a client that keeps trying.
    load = Load(server, ledger, mix=(("grpc", "traces"), ("http", "traces")), items=5, rate=None, pause=0.02)
    with load:
        time.sleep(OUTAGE_S)  # the scenario's length: the load runs meanwhile (not a correctness wait)
        during = backend.records()["traces"]["items"]
        acked_during = load.acked()
        for name, stats in load.stats.items():
            assert stats.hints, f"{name}: never refused with a tiny queue and the backend down"
        # The hint grows while the queue stays full (1 s at first, ~2 s after a second full).
        hints = load.hints()
        assert min(hints) >= 1 and max(hints) >= 2, hints
        backend.control(fail_next=0)  # the backend returns
        load.wait_acked(40)
    assert during == 0, "the backend was down, yet something was delivered"
    assert acked_during > 0, "the queue absorbed nothing"
    result = settle(backend, ledger, server)
    result.check("backend-outage", max_duplicates=0)
    records = backend.records()["traces"]
    for name in load.stats:  # oldest first: each connection's spans arrive in the order acked
        mine = ledger.acked_keys(name)
        mine_set = set(mine)
        assert [k for k in records["order"] if k in mine_set] == mine, f"{name}: out of order"
    metrics = server.metrics()
    assert metrics.value("otlp_exporter_sent_spans_total") == records["items"]
    assert all(metrics.value(f) == 0 for f in FAILED_FAMILIES)
    assert not load.errors(), load.errors()  # refused with a hint, never a bare error


def test_flapping_backend_loses_nothing(
    server_factory: Callable[..., ServerProcess], backend_factory: Callable[..., RecordingBackend]
) -> None:
    backend = backend_factory(fail_every=2, fail_code="http_503", retry_after_s=0.05)
    server = server_factory(
        env={
            "OTLP_ENDPOINT": backend.http_endpoint,
            "OTLP_EXPORT_PROTOCOL": "http/protobuf",
            "OTLP_BATCH_SIZE": "20",
            "OTLP_BATCH_TIMEOUT": "20ms",
        }
    )
    ledger = Ledger()
    with Load(server, ledger) as load:  # both transports, all three signals
        load.wait_acked(1500 if SOAK else 150, timeout=600 if SOAK else 20)
        if SOAK:  # the failure pattern changes under load: every 3rd, then every other again
            backend.control(fail_every=3)
            load.wait_acked(1500, timeout=600)
            backend.control(fail_every=2)
            load.wait_acked(1500, timeout=600)
    result = settle(backend, ledger, server)
    result.check("backend-flapping", max_duplicates=0)
    records = backend.records()
    assert sum(records[s]["failed"] for s in records) >= 1
    metrics = server.metrics()
    assert all(metrics.value(f) == 0 for f in FAILED_FAMILIES)
