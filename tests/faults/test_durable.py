"""Durable mode (OTLP_QUEUE_DIR) faults: kill -9 of the whole tree under load then a restart on the
same queue directory, and a full disk.

tests/integration/test_durable.py checks the durable details (quarantine, locking, the kept shm
ring); these reconcile mixed gRPC+HTTP load of every signal.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, wait_until
from tests.faults.conftest import SOAK, settle
from tests.faults.load import Load
from tests.support.backend import RecordingBackend
from tests.support.reconcile import Ledger

BATCH = 100
ITEMS = 10
EXPORTERS = 2
CRASHES = 5 if SOAK else 1


def durable_env(queue_dir: Path, endpoint: str, **extra: str) -> dict[str, str]:
    return {
        "OTLP_QUEUE_DIR": str(queue_dir),
        "OTLP_ENDPOINT": endpoint,
        "OTLP_EXPORTERS": str(EXPORTERS),
        "OTLP_BATCH_SIZE": str(BATCH),
        "OTLP_EXPORT_CONCURRENCY": "1",  # the crash bound below is one batch per exporter
        **extra,
    }


def require_durable(server: ServerProcess, queue_dir: Path) -> None:
    """The server honours OTLP_QUEUE_DIR: its logs are there from the start (were they not, the
    scenario would test the shared-memory rings and prove nothing about durable mode)."""
    assert queue_dir.is_dir() and any(queue_dir.iterdir()), (
        f"the server ignored OTLP_QUEUE_DIR {queue_dir}; log:\n{server.log_tail()}"
    )


def test_kill_9_everything_then_restart_delivers_every_acked_item(
    server_factory: Callable[..., ServerProcess],
    backend_factory: Callable[..., RecordingBackend],
    tmp_path: Path,
) -> None:
    backend = backend_factory(delay_ms=50)  # batches in flight when the tree dies
    queue_dir = tmp_path / "queue"
    env = durable_env(queue_dir, backend.grpc_endpoint)
    ledger = Ledger()
    server = server_factory(env=env)
    require_durable(server, queue_dir)
    for crash in range(CRASHES):
        with Load(server, ledger, items=ITEMS, name=f"run{crash}-") as load:
            load.wait_acked(600 if SOAK else 100)
            server.kill()  # kill -9 of the whole tree under load: the senders see failures from here on
        server = server_factory(env=env)  # same queue dir, new ports: recovers and re-sends
    with Load(server, ledger, items=ITEMS, name="after-") as load:
        load.wait_acked(20)  # and new traffic flows next to the recovery
    # A crash can re-deliver what was sent but not yet committed: one batch per exporter
    # (concurrency 1), a batch overshooting its size by at most one request.
    bound = CRASHES * EXPORTERS * (BATCH + ITEMS)
    settle(backend, ledger, server, timeout=60).check(f"durable-kill-9 (x{CRASHES})", max_duplicates=bound)
    assert server.metrics().value("otlp_queue_quarantined_bytes_total") == 0


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 8 MiB tmpfs to fill up (root only)."""
    if os.geteuid() != 0:
        pytest.skip("the disk-full scenario needs root to mount a small tmpfs")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


class Filler:
    """Keeps a file system full: appends to `path` whenever space appears (as another process
    eating the disk would), so the server also meets ENOSPC after it freed a segment."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.full = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        chunk = b"\0" * 4096
        with open(self.path, "ab", buffering=0) as f:
            while not self._stop.is_set():
                try:
                    f.write(chunk)
                except OSError:
                    self.full.set()
                    self._stop.wait(0.005)

    def __enter__(self) -> Filler:
        self._thread.start()
        assert self.full.wait(20), "the tmpfs never filled up"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.path.unlink()  # space returns


def refusals(load: Load) -> int:
    return sum(len(s.hints) for s in load.stats.values())


def delivered(backend: RecordingBackend) -> int:
    return sum(r["items"] for r in backend.records().values())


def test_disk_full_refuses_retryably_keeps_running_and_recovers(
    server_factory: Callable[..., ServerProcess],
    backend_factory: Callable[..., RecordingBackend],
    small_tmpfs: Path,
) -> None:
    # Slow acks: batches are in flight when the disk fills, so exporters commit on a full disk.
    backend = backend_factory(delay_ms=300)
    queue_dir = small_tmpfs / "queue"
    env = durable_env(queue_dir, backend.grpc_endpoint, OTLP_QUEUE_SEGMENT_BYTES="64KiB")
    server = server_factory(env=env)
    require_durable(server, queue_dir)
    pids = {(c.role, c.index): c.process.pid for c in server.children()}
    ledger = Ledger()
    junk = small_tmpfs / "junk"
    with Load(server, ledger, items=ITEMS) as load:
        load.wait_acked(40)
        rounds = 5 if SOAK else 1
        for _ in range(rounds):
            refused = refusals(load)
            with Filler(junk):
                sent = delivered(backend)
                wait_until(lambda n=refused: refusals(load) >= n + 10, 20, 0.05, "refusals on a full disk")
                # Batches acked while the disk is full: the exporters commit on a full disk too.
                wait_until(lambda n=sent: delivered(backend) > n, 20, 0.05, "deliveries on a full disk")
                assert server.ready(), "the server must keep running on a full disk"
            load.wait_acked(40)
    assert not load.errors(), load.errors()  # refused with a hint, never a bare error
    assert {(c.role, c.index): c.process.pid for c in server.children()} == pids, "a child died"
    settle(backend, ledger, server).check(f"durable-disk-full (x{rounds})", max_duplicates=0)
