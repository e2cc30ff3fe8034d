"""Durable mode (OTLP_QUEUE_DIR) faults: kill -9 of the whole tree under load then a restart on the
same queue directory, and a full disk.

Both run only against a server that supports durable mode: a server started with OTLP_QUEUE_DIR
must have put its logs (or its lock) into the directory; one that ignores the setting makes the
test skip with that reason. tests/integration/test_durable.py checks the durable details
(quarantine, locking, one gRPC client); these reconcile mixed gRPC+HTTP load of every signal.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
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
    """Skip unless this server build honours OTLP_QUEUE_DIR (it creates its logs at start)."""
    if not queue_dir.is_dir() or not any(queue_dir.iterdir()):
        pytest.skip("this server ignores OTLP_QUEUE_DIR: durable mode is not wired in yet")


def kill_tree(server: ServerProcess) -> None:
    """SIGKILL every child, then the supervisor: children first, since a dying supervisor would
    have them stopped cleanly (PDEATHSIG -> SIGTERM), which is not a crash."""
    assert server.proc is not None
    victims = psutil.Process(server.pid).children(recursive=True)
    for p in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    server.proc.kill()
    server.returncode = server.proc.wait(10)
    psutil.wait_procs(victims, timeout=10)


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
            kill_tree(server)  # under load: the senders see failures from here on
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


def _fill(path: Path) -> None:
    """Write zeros to `path` until the file system is full."""
    with open(path, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()


def test_disk_full_refuses_retryably_keeps_running_and_recovers(
    server_factory: Callable[..., ServerProcess], backend: RecordingBackend, small_tmpfs: Path
) -> None:
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
            _fill(junk)
            refused = sum(len(s.hints) for s in load.stats.values())
            wait_until(
                lambda refused=refused: sum(len(s.hints) for s in load.stats.values()) >= refused + 10,
                20,
                0.05,
                "retryable refusals on a full disk",
            )
            assert server.ready(), "the server must keep running on a full disk"
            junk.unlink()  # space returns
            load.wait_acked(40)
    assert not load.errors(), load.errors()  # refused with a hint, never a bare error
    assert {(c.role, c.index): c.process.pid for c in server.children()} == pids, "a child died"
    settle(backend, ledger, server).check(f"durable-disk-full (x{rounds})", max_duplicates=0)
