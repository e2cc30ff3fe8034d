"""Faults under load: kill an exporter, kill a worker, SIGTERM the server.

The promise checked: every request the server acknowledged reaches the backend (at least once;
duplicates are allowed after a crash and are counted). The load is the built-in loadgen in a
thread with `on_response`, so the test knows exactly which request tokens were acked and, from
them, every span key the backend must hold.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from otlp_ingest.loadgen import OK, LoadgenOptions, LoadgenResult, PayloadFactory, run_loadgen
from otlp_ingest.otlp.signals import Signal
from tests.conftest import ServerProcess, wait_until

SPANS_PER_REQUEST = 10
RATE = 150.0  # requests/s: steady load without starving a 2-core machine


@dataclass
class Load:
    """Loadgen running in a background thread, remembering which request tokens were acked."""

    server: ServerProcess
    protocol: str = "grpc"
    acked: set[bytes] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)
    result: LoadgenResult | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _on_response(self, index: int, token: bytes, outcome: str, accepted: int) -> None:
        if outcome == OK:
            with self.lock:
                self.acked.add(token)

    def start(self) -> Load:
        endpoint = self.server.grpc_endpoint if self.protocol == "grpc" else self.server.http_endpoint
        options = LoadgenOptions(
            signal="traces",
            protocol=self.protocol,
            endpoint=endpoint,
            items_per_request=SPANS_PER_REQUEST,
            concurrency=3,
            rate=RATE,
            duration=None,
            stop_event=self.stop,
            on_response=self._on_response,
        )
        self.thread = threading.Thread(target=self._run, args=(options,), daemon=True)
        self.thread.start()
        return self

    def _run(self, options: LoadgenOptions) -> None:
        self.result = run_loadgen(options)

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)

    def wait_acked(self, more_than: int, timeout: float = 15.0) -> None:
        wait_until(lambda: self.acked_count() > more_than, timeout, 0.02, f"more than {more_than} acks")

    def finish(self) -> LoadgenResult:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "loadgen did not stop"
        assert self.result is not None
        return self.result

    def expected_keys(self) -> set[str]:
        factory = PayloadFactory(Signal.TRACES, SPANS_PER_REQUEST)  # span keys depend on the token only
        with self.lock:
            tokens = list(self.acked)
        return {key for token in tokens for key in factory.keys(token)}


def assert_acked_delivered(backend: object, load: Load, timeout: float = 30.0) -> int:
    """Every acked span is at the backend; returns how many duplicate deliveries there were."""
    expected = load.expected_keys()
    assert expected, "nothing was acknowledged: the load never got through"

    def missing() -> set[str]:
        return expected - set(backend.records()["traces"]["keys"])

    try:
        wait_until(lambda: not missing(), timeout, 0.2, "every acked span at the backend")
    except AssertionError:
        lost = missing()
        raise AssertionError(f"{len(lost)} of {len(expected)} acknowledged spans never arrived") from None
    counts = backend.records()["traces"]["keys"]
    return sum(counts[k] - 1 for k in expected if counts[k] > 1)


def restarted(server: ServerProcess, role: str, index: int, old_pid: int) -> int:
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
        20.0,
        0.05,
        f"a restarted {role} {index}",
    )
    wait_until(server.ready, 20.0, 0.05, "/ready after the restart")
    return child.process.pid


@pytest.fixture
def loaded_server(server_factory, backend) -> Iterator[tuple[ServerProcess, object]]:
    server = server_factory(env={"OTLP_ENDPOINT": backend.grpc_endpoint})
    yield server, backend


@pytest.mark.parametrize("role", ["exporter", "worker"])
def test_sigkill_child_under_load_loses_no_acked_item(loaded_server, role: str) -> None:
    server, backend = loaded_server
    if role == "exporter":
        backend.control(delay_ms=80)  # slow acks: the kill likely lands with a batch in flight
    load = Load(server).start()
    try:
        backend.wait_for_items("traces", 1, 15.0)  # data flows end to end before the crash
        load.wait_acked(50)
        victim = server.child(role, 0)
        os.kill(victim.process.pid, signal.SIGKILL)
        restarted(server, role, 0, victim.process.pid)
        load.wait_acked(load.acked_count() + 50)  # and keeps flowing after it
    finally:
        result = load.finish()
    duplicates = assert_acked_delivered(backend, load)
    metrics = server.metrics()
    assert metrics.value("otlp_process_restarts_total", role=role) >= 1
    print(
        f"\n{role} SIGKILL: {len(load.acked)} acked requests, {result.requests_refused} refused,"
        f" {result.requests_failed} failed, {duplicates} duplicate spans at the backend"
    )


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_sigterm_under_load_exits_0_and_delivers_everything_acked(loaded_server, protocol: str) -> None:
    server, backend = loaded_server
    load = Load(server, protocol=protocol).start()
    try:
        backend.wait_for_items("traces", 1, 15.0)
        load.wait_acked(50)
        code = server.stop(timeout=40.0)  # SIGTERM while the load keeps coming
    finally:
        result = load.finish()
    assert code == 0, f"exit code {code}; log:\n{server.log_tail()}"
    duplicates = assert_acked_delivered(backend, load, timeout=5.0)
    assert duplicates == 0, f"{duplicates} duplicates without any crash"
    print(f"\nSIGTERM: {len(load.acked)} acked requests, {result.requests_refused} refused while draining")
