"""Helpers shared by the fault scenarios: settle-then-reconcile, waiting for a restarted child.

`OTLP_SOAK=1` (`make soak`) turns every scenario into its long form: longer load, more kills,
a minutes-long outage.
"""

from __future__ import annotations

import os

from tests.conftest import ServerProcess, wait_until
from tests.support.backend import RecordingBackend
from tests.support.reconcile import Ledger, Reconciliation, reconcile

SOAK = os.environ.get("OTLP_SOAK") == "1"


def settle(
    backend: RecordingBackend, ledger: Ledger, server: ServerProcess | None = None, timeout: float = 30.0
) -> Reconciliation:
    """Reconcile once every acked item arrived and (with a running `server`) its queues are empty,
    so late deliveries (duplicates, unacked writes) are counted too. On timeout, the reconciliation
    with what is missing (the caller's `check` then fails with the figures)."""

    def done() -> Reconciliation | None:
        result = reconcile(ledger, backend.records())
        if result.lost:
            return None
        if server is not None and server.returncode is None and server.proc and server.proc.poll() is None:
            try:
                if server.metrics().value("otlp_exporter_queue_size") > 0:
                    return None
            except AssertionError:  # one scrape failed on a busy machine: poll again
                return None
        return result

    try:
        return wait_until(done, timeout, 0.2, "every acked item delivered and the queues empty")  # type: ignore[return-value]
    except AssertionError:
        return reconcile(ledger, backend.records())


def restarted(server: ServerProcess, role: str, index: int, old_pid: int, timeout: float = 20.0) -> int:
    """Wait for the supervisor to replace `role index` (a new pid) and the server to be ready."""
    child = wait_until(
        lambda: next(
            (
                c
                for c in server.children()
                if c.role == role and c.index == index and c.process.pid != old_pid
            ),
            None,
        ),
        timeout,
        0.05,
        f"a restarted {role} {index}",
    )
    wait_until(server.ready, timeout, 0.05, "/ready after the restart")
    return child.process.pid  # type: ignore[attr-defined]
