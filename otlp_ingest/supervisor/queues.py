"""The supervisor's queue lifecycle: create, adopt and keep queues across restarts.

Shared-memory mode. Rings are named ``otlp-ingest-<supervisor pid>-w<i>`` (worker rings) and
``...-a<k>`` (adopted rings). Each supervisor also writes ``otlp-ingest-<pid>-dest``: its
destination (backend endpoint, or the file sink's absolute directory). At exit, rings that still
hold records (acknowledged, not yet delivered: e.g. the backend was down past the shutdown
deadline) are kept. At start, the rings of *dead* supervisors with the same destination are
adopted: renamed to ``otlp-ingest-<our pid>-a<k>`` and drained by an exporter like any ring, then
unlinked once empty. Empty or corrupt stale rings are removed. Non-empty stale rings of another
destination are left in place (and logged) for a server with that destination: deleting them would
lose acknowledged data, and sending them elsewhere would deliver it to the wrong backend.

Durable mode. ``OTLP_QUEUE_DIR`` is locked (``supervisor.lock``, flock: a second server on the same
directory cannot start), one ``worker-<i>`` log per worker is created (existing ones are reused,
never wiped) and logs of an earlier run with more workers are drained too (see otlp_ingest.queue).

Prometheus multiprocess directories of dead supervisors (``otlp-ingest-metrics-<pid>-*`` in the
temp dir) are removed at start as well.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
import tempfile

from otlp_ingest.config import Settings
from otlp_ingest.queue import SUPERVISOR_LOCK, QueueSpec, existing_worker_dirs, worker_dir
from otlp_ingest.ring import RingCorrupt, create_ring, ring_name, ring_usage, unlink_ring
from otlp_ingest.ring.layout import NAME_PREFIX, shm_dir
from otlp_ingest.wal.lock import try_lock, unlock

log = logging.getLogger("otlp_ingest.supervisor")

_RING = re.compile(re.escape(NAME_PREFIX) + r"(\d+)-[wa](\d+)")
_METRICS = re.compile(r"otlp-ingest-metrics-(\d+)-.*")


class QueueDirLocked(Exception):
    """Another live server uses this queue directory."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def destination(settings: Settings) -> str:
    return settings.endpoint or "file:" + os.path.abspath(settings.data_dir)


def _dest_path(pid: int) -> str:
    return os.path.join(shm_dir(), f"{NAME_PREFIX}{pid}-dest")


def write_destination(pid: int, settings: Settings) -> None:
    with open(_dest_path(pid), "w") as f:
        f.write(destination(settings))


def remove_destination(pid: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_dest_path(pid))


def _read_destination(pid: int) -> str | None:
    try:
        with open(_dest_path(pid)) as f:
            return f.read()
    except OSError:
        return None


def adopt_stale_rings(pid: int, settings: Settings) -> list[str]:
    """Rename the non-empty rings of dead supervisors with our destination to ours (``-a<k>``);
    unlink empty or corrupt stale rings. Returns the adopted names (call before
    ``wipe_stale_rings``, which removes what is left of dead supervisors: their dest files)."""
    directory = shm_dir()
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    mine = destination(settings)
    adopted: list[str] = []
    for name in names:
        m = _RING.fullmatch(name)
        if not m or int(m.group(1)) == pid or pid_alive(int(m.group(1))):
            continue
        try:
            records = ring_usage(name).records
        except (OSError, RingCorrupt) as exc:
            log.warning("removing unreadable stale ring %s: %s", name, exc)
            unlink_ring(name)
            continue
        if records == 0:
            unlink_ring(name)
            continue
        if _read_destination(int(m.group(1))) != mine:
            log.warning(
                "stale ring %s holds %d acknowledged record(s) for another destination: left in place",
                name,
                records,
            )
            continue
        new = f"{NAME_PREFIX}{pid}-a{len(adopted)}"
        try:
            os.rename(os.path.join(directory, name), os.path.join(directory, new))
        except FileNotFoundError:  # another starting supervisor took it
            continue
        log.info("adopted ring %s of a dead supervisor as %s: %d record(s) to deliver", name, new, records)
        adopted.append(new)
    return adopted


def create_worker_rings(pid: int, settings: Settings, workers: int) -> list[str]:
    max_records = max(1, settings.queue_size // workers)
    names = []
    for i in range(workers):
        name = ring_name(pid, i)
        create_ring(name, settings.queue_bytes, max_records)
        names.append(name)
    return names


def release_rings(names: list[str]) -> int:
    """At exit: unlink empty rings, keep those holding records. Returns the records kept."""
    kept = 0
    for name in names:
        try:
            records = ring_usage(name).records
        except FileNotFoundError:
            continue
        except (OSError, RingCorrupt):
            records = 0
        if records:
            kept += records
            log.warning(
                "ring %s still holds %d acknowledged record(s): kept for the next start to this destination",
                name,
                records,
            )
        else:
            unlink_ring(name)
    return kept


def ring_drained(name: str) -> bool:
    try:
        return ring_usage(name).records == 0
    except FileNotFoundError:
        return True
    except (OSError, RingCorrupt):
        return False


def lock_queue_dir(queue_dir: str, pid: int) -> int:
    """Take the supervisor lock of ``queue_dir`` (created if missing); QueueDirLocked if held."""
    os.makedirs(queue_dir, exist_ok=True)
    path = os.path.join(queue_dir, SUPERVISOR_LOCK)
    fd = try_lock(path)
    if fd is None:
        try:
            with open(path) as f:
                owner = f.read().strip() or "?"
        except OSError:
            owner = "?"
        raise QueueDirLocked(f"queue dir {queue_dir} is in use by another server (pid {owner})")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{pid}\n".encode(), 0)
    return fd


def unlock_queue_dir(fd: int) -> None:
    unlock(fd)


def durable_queues(queue_dir: str, workers: int) -> tuple[list[QueueSpec], list[QueueSpec]]:
    """(one log per current worker, created if missing; logs of earlier runs beyond them)."""
    mine = []
    for i in range(workers):
        os.makedirs(worker_dir(queue_dir, i), exist_ok=True)
        mine.append(QueueSpec("wal", worker_dir(queue_dir, i)))
    extra = [QueueSpec("wal", d) for k, d in sorted(existing_worker_dirs(queue_dir).items()) if k >= workers]
    return mine, extra


def wipe_stale_metrics_dirs() -> list[str]:
    """Remove ``otlp-ingest-metrics-<pid>-*`` directories of dead supervisors."""
    removed = []
    for path in glob.glob(os.path.join(tempfile.gettempdir(), "otlp-ingest-metrics-*")):
        m = _METRICS.fullmatch(os.path.basename(path))
        if m and not pid_alive(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
