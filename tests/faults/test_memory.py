"""Overload past the memory limit (otlp_ingest/telemetry/memory.py): big requests from many gRPC
and HTTP clients at once against a slow backend.

The server's limit is chosen relative to its idle usage, measured first on a server without a
limit, so the test means the same on any machine. Clients get UNAVAILABLE + RetryInfo / 503 +
Retry-After, the sampled usage never reaches the hard limit, the server accepts again once the
load stops, and every acknowledged item reaches the backend. Moved from
tests/integration/test_memory_limit.py (which keeps the limit-derivation tests).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psutil

from otlp_ingest.telemetry.memory import MiB
from tests.conftest import ServerProcess, wait_until
from tests.faults.conftest import SOAK, settle
from tests.faults.load import Load
from tests.support.backend import RecordingBackend
from tests.support.reconcile import Ledger

LOAD_SECONDS = 30.0 if SOAK else 4.0
SPANS = 4000  # ~0.9 MiB per request: big, but far below the 4 MiB gRPC / ring record limits
CLIENTS = 6  # per transport
HEADROOM_MIB = 130  # hard limit above idle usage; soft = hard - SPIKE_MIB
SPIKE_MIB = 80


def _usage(server: ServerProcess) -> float:
    return server.metrics().value("otlp_memory_usage_bytes")


def _anon_by_process(server: ServerProcess) -> str:
    """Diagnostics: anonymous RSS of each process of the tree, in MiB."""
    parts = [f"usage {_usage(server) / MiB:.0f} MiB"]
    for child in [None, *server.children()]:
        pid = server.pid if child is None else child.process.pid
        info = psutil.Process(pid).memory_info()
        parts.append(f"{'supervisor' if child is None else child.role}: {(info.rss - info.shared) / MiB:.0f}")
    return ", ".join(parts)


def test_overload_past_the_memory_limit(
    server_factory: Callable[..., ServerProcess], backend_factory: Callable[..., RecordingBackend]
) -> None:
    backend = backend_factory(delay_ms=40)  # slower than the clients: the rings fill, memory rises
    env = {"OTLP_ENDPOINT": backend.grpc_endpoint, "OTLP_EXPORT_INSECURE": "true"}

    # Idle usage of this tree on this machine, measured with a limit far above it.
    probe = server_factory(env={**env, "OTLP_MEMORY_LIMIT_MIB": "100000"})
    probe_wait = threading.Event()  # never set: paces the samples
    wait_until(lambda: _usage(probe) > 0, timeout=10)
    idle = 0.0
    for _ in range(5):  # over a second of the limiter's 200 ms samples, not one sample 5 times
        idle = max(idle, _usage(probe))
        probe_wait.wait(0.25)
    assert probe.stop() == 0

    hard_mib = int(idle / MiB) + HEADROOM_MIB
    server = server_factory(
        env={**env, "OTLP_MEMORY_LIMIT_MIB": str(hard_mib), "OTLP_MEMORY_SPIKE_LIMIT_MIB": str(SPIKE_MIB)}
    )
    m = server.metrics()
    assert m.value("otlp_memory_limit_bytes") == hard_mib * MiB
    assert m.value("otlp_memory_soft_limit_bytes") == (hard_mib - SPIKE_MIB) * MiB
    assert m.value("otlp_memory_refusing") == 0

    ledger = Ledger()
    peak = 0.0
    refusing_seen = False
    mix = (("grpc", "traces"),) * CLIENTS + (("http", "traces"),) * CLIENTS
    load = Load(server, ledger, mix=mix, items=SPANS, rate=None, pause=0.02)
    with load:
        deadline = time.monotonic() + LOAD_SECONDS
        while time.monotonic() < deadline:  # sample the limiter's own figure, as often as it does
            m = server.metrics()
            peak = max(peak, m.value("otlp_memory_usage_bytes"))
            refusing_seen = refusing_seen or m.value("otlp_memory_refusing") == 1
            load.stop_event.wait(0.1)
    refused = {
        transport: sum(len(s.hints) for name, s in load.stats.items() if name.startswith(transport))
        for transport in ("grpc", "http")
    }
    print(
        f"\nidle {idle / MiB:.0f} MiB, hard {hard_mib} MiB, soft {hard_mib - SPIKE_MIB} MiB, "
        f"peak {peak / MiB:.0f} MiB, refused requests {refused}"
    )
    assert not load.errors(), load.errors()  # refused with a hint, never a bare error
    assert refusing_seen
    assert refused["grpc"] > 0 and refused["http"] > 0
    assert peak < hard_mib * MiB, f"usage {peak / MiB:.0f} MiB reached the hard limit {hard_mib} MiB"
    m = server.metrics()
    assert m.value("otlp_memory_limit_trips_total") >= 1
    assert m.value("otlp_receiver_requests_total", transport="grpc", signal="traces", outcome="refused") > 0
    assert m.value("otlp_receiver_requests_total", transport="http", signal="traces", outcome="refused") > 0

    # Load gone: the exporters drain, the workers give memory back, the flag drops.
    def accepting() -> bool:
        try:
            return server.metrics().value("otlp_memory_refusing") == 0
        except AssertionError:  # one scrape failed on the busy 2-core machine: poll again
            return False

    try:
        wait_until(accepting, timeout=20)
    except AssertionError:
        raise AssertionError(f"still refusing: {_anon_by_process(server)}") from None
    with Load(server, ledger, mix=(("http", "traces"),), items=SPANS, name="after-") as after:
        after.wait_acked(1)

    settle(backend, ledger, server, timeout=60).check(
        f"memory-overload (peak {peak / MiB:.0f} MiB < hard {hard_mib} MiB)", max_duplicates=0
    )
