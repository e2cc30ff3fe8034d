"""The supervisor as PID 1, as a container runs it: `unshare --pid --fork --mount-proc ... serve`.

- it starts and becomes ready (children must not mistake their PID-1 parent for init);
- a restarted "container" (a new supervisor that is PID 1 again, same /dev/shm) adopts and delivers
  the ring the previous PID 1 left holding acknowledged records, instead of overwriting it.

Needs `unshare` and the right to create PID namespaces (root in CI); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid

import psutil
import pytest

from otlp_ingest.loadgen import OK, GrpcSender, PayloadFactory
from otlp_ingest.otlp.signals import Signal
from otlp_ingest.ring.layout import NAME_PREFIX, shm_dir
from tests.conftest import ServerProcess, free_port, port_was_taken, wait_until


def _unshare_unavailable() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    try:
        result = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    if result.returncode != 0:
        return f"cannot create a PID namespace: {result.stderr.decode(errors='replace').strip()}"
    return None


UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
pytestmark = pytest.mark.skipif(_unshare_unavailable() is not None, reason=str(_unshare_unavailable()))


class Pid1Server(ServerProcess):
    """`serve` as PID 1 of a new PID namespace. `self.proc` is unshare; the supervisor is its
    only child (host pid `pid`). --kill-child: if unshare dies, the namespace dies with it."""

    def start(self, ready_timeout: float = 30.0) -> Pid1Server:
        for _attempt in range(3):
            self.grpc_port, self.http_port, self.admin_port = free_port(), free_port(), free_port()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [*UNSHARE, sys.executable, "-m", "otlp_ingest", "serve", *self.args],
                    cwd=self.workdir,
                    env=self._env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                self.wait_ready(ready_timeout)
                return self
            except AssertionError:
                if port_was_taken(self.proc.poll(), self.log_tail()) and "in use" in self.log_tail():
                    continue  # a picked port was taken meanwhile
                self.kill()
                raise
        raise AssertionError(f"server could not start on free ports; log:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        children = psutil.Process(self.proc.pid).children()
        assert len(children) == 1, children
        return children[0].pid

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the supervisor itself (unshare does not forward it); unshare exits with its code."""
        if self.returncode is not None:
            return self.returncode
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"server did not exit {timeout}s after SIGTERM; log:\n{self.log_tail()}"
            ) from None
        return self.returncode


def _inodes() -> dict[str, int]:
    """Name -> inode in the shm dir: an older server's ring of the same name is another inode."""
    found = {}
    for entry in os.scandir(shm_dir()):
        with contextlib.suppress(FileNotFoundError):
            found[entry.name] = entry.inode()
    return found


@pytest.fixture
def pid1_factory(tmp_path, backend_factory):
    servers: list[Pid1Server] = []

    def make(env: dict[str, str] | None = None) -> Pid1Server:
        server = Pid1Server(tmp_path / f"pid1-{len(servers)}", env)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        if server.proc is not None and server.returncode is None:
            server.kill()


def test_supervisor_as_pid1_starts_and_serves(pid1_factory) -> None:
    server = pid1_factory({"OTLP_WORKERS": "1"})
    assert "supervisor pid 1:" in server.log_tail()
    sender = GrpcSender(server.grpc_endpoint, Signal.TRACES, False)
    try:
        assert sender.send(PayloadFactory(Signal.TRACES, 2).build(uuid.uuid4().bytes))[0] == OK
    finally:
        sender.close()
    assert server.stop() == 0, server.log_tail()
    assert "restarting" not in server.log_tail()


def test_restarted_pid1_adopts_the_previous_pid1s_ring(pid1_factory, backend_factory) -> None:
    """Two supervisor runs, both PID 1, one /dev/shm: the second must deliver what the first kept."""
    backend = backend_factory(fail_first=10**9)  # down: the records stay in the ring
    env = {"OTLP_ENDPOINT": backend.grpc_endpoint, "OTLP_SHUTDOWN_TIMEOUT": "2s", "OTLP_WORKERS": "1"}
    factory = PayloadFactory(Signal.TRACES, 5)
    before = _inodes()
    first = pid1_factory(env)
    sender = GrpcSender(first.grpc_endpoint, Signal.TRACES, False)
    tokens = [uuid.uuid4().bytes for _ in range(10)]
    try:
        assert all(sender.send(factory.build(t))[0] == OK for t in tokens)
    finally:
        sender.close()
    assert first.stop() == 4  # the deadline passed with records undelivered: kept in shared memory
    ring = re.compile(re.escape(NAME_PREFIX) + r"1(\.\d+)?-w\d+")  # PID 1's worker ring, old or new name
    kept = [n for n, ino in _inodes().items() if ring.fullmatch(n) and before.get(n) != ino]
    assert kept, "the ring holding acknowledged records was unlinked"

    backend.control(fail_next=0)
    backend.reset()
    second = pid1_factory(env)
    expected = {k for t in tokens for k in factory.keys(t)}
    wait_until(lambda: expected <= set(backend.records()["traces"]["keys"]), 20, 0.1, "the kept records")
    assert "adopted ring" in second.log_tail()
    assert second.stop() == 0, second.log_tail()
    assert not set(kept) & set(os.listdir(shm_dir()))
