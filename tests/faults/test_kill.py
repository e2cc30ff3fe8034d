"""Process faults under load: SIGKILL of every worker and of every exporter, SIGTERM of the server.

Replaces tests/e2e/test_faults.py. The load is both transports and all three signals; every
request is in the ledger, and the backend must hold every acknowledged item afterwards.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from tests.conftest import ServerProcess
from tests.faults.conftest import SOAK, restarted, settle
from tests.faults.load import Load
from tests.support.backend import RecordingBackend
from tests.support.reconcile import Ledger

WORKERS = 2
EXPORTERS = 2
ROUNDS = 5 if SOAK else 1  # kills of every index
ACKS_BETWEEN = 200 if SOAK else 30  # requests acked between kills: the load flows before and after


def _kill_each(server: ServerProcess, load: Load, role: str, count: int) -> int:
    """SIGKILL `role` 0..count-1 in turn, ROUNDS times, each time under flowing load; returns kills."""
    kills = 0
    for _round in range(ROUNDS):
        for index in range(count):
            load.wait_acked(ACKS_BETWEEN)
            victim = server.child(role, index)
            os.kill(victim.process.pid, signal.SIGKILL)
            kills += 1
            restarted(server, role, index, victim.process.pid)
    load.wait_acked(ACKS_BETWEEN)  # and it keeps flowing after the last one
    return kills


def test_sigkill_each_worker_under_load(
    server_factory: Callable[..., ServerProcess], backend: RecordingBackend
) -> None:
    server = server_factory(env={"OTLP_ENDPOINT": backend.grpc_endpoint, "OTLP_WORKERS": str(WORKERS)})
    ledger = Ledger()
    with Load(server, ledger) as load:
        kills = _kill_each(server, load, "worker", WORKERS)
    # A dead worker's ring is read by the exporter as before: nothing is sent twice.
    settle(backend, ledger, server).check(f"sigkill-worker (x{kills})", max_duplicates=0)
    assert server.metrics().value("otlp_process_restarts_total", role="worker") >= kills


def test_sigkill_each_exporter_under_load(
    server_factory: Callable[..., ServerProcess], backend_factory: Callable[..., RecordingBackend]
) -> None:
    backend = backend_factory(delay_ms=200)  # slow acks: a kill lands with batches in flight
    batch, concurrency, items = 100, 4, 10
    server = server_factory(
        env={
            "OTLP_ENDPOINT": backend.grpc_endpoint,
            "OTLP_WORKERS": str(WORKERS),
            "OTLP_EXPORTERS": str(EXPORTERS),
            "OTLP_BATCH_SIZE": str(batch),
            "OTLP_EXPORT_CONCURRENCY": str(concurrency),
        }
    )
    ledger = Ledger()
    with Load(server, ledger, items=items) as load:
        kills = _kill_each(server, load, "exporter", EXPORTERS)
    # At-least-once: the replacement re-sends what was read but not committed. That is the batches
    # in flight plus the ones acked behind an older unacked one, at most the send window, and one
    # open batch per signal (3); a batch may overshoot its size by one request.
    bound = kills * (concurrency + 3) * (batch + items)
    settle(backend, ledger, server).check(f"sigkill-exporter (x{kills})", max_duplicates=bound)
    assert server.metrics().value("otlp_process_restarts_total", role="exporter") >= kills


def test_sigterm_under_load_exits_0_and_delivers_everything_acked(
    server_factory: Callable[..., ServerProcess], backend: RecordingBackend
) -> None:
    server = server_factory(env={"OTLP_ENDPOINT": backend.grpc_endpoint})
    ledger = Ledger()
    with Load(server, ledger, rate=80.0) as load:
        load.wait_acked(2000 if SOAK else 60, timeout=600 if SOAK else 20)
        code = server.stop(timeout=40.0)  # SIGTERM while the load keeps coming
    assert code == 0, f"exit code {code}; log:\n{server.log_tail()}"
    # The server drained before it exited: everything is at the backend already.
    settle(backend, ledger, timeout=5.0).check("sigterm", max_duplicates=0)
