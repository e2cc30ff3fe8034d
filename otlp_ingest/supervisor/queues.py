"""The supervisor's queue lifecycle: create, adopt and keep queues across restarts.

Shared-memory mode. Each supervisor run has an owner id ``<pid>.<run>`` (``ring.layout.owner_id``;
the pid alone repeats: in a container every supervisor is PID 1 and /dev/shm may outlive the
container). Rings are named ``otlp-ingest-<owner>-w<i>`` (worker rings) and ``...-a<k>`` (adopted
rings). Each run also writes ``otlp-ingest-<owner>-dest``: its destination (backend endpoint, or
the file sink's absolute directory), and holds an exclusive ``flock`` on it for its lifetime: that
lock is how another supervisor tells a live run from a dead one, across PID namespaces and
recycled pids (the kernel drops it when the process dies, even by SIGKILL). Owners without a run
id (names written by older versions) are judged by their pid; one equal to ours is dead.

At exit, rings that still hold records (acknowledged, not yet delivered: e.g. the backend was down
past the shutdown deadline) are kept, with the dest file. At start, the rings of *dead* runs with
the same destination are adopted: renamed to ``otlp-ingest-<our owner>-a<k>`` and drained by an
exporter like any ring, then unlinked once empty. Empty or corrupt stale rings are removed, and so
is everything else of dead runs except the non-empty rings of another destination and their dest
file: those are left in place (and logged) for a server with that destination: deleting them would
lose acknowledged data, and sending them elsewhere would deliver it to the wrong backend.
``create_ring`` refuses to replace a ring holding records; should a worker ring's name ever be
taken by one, it is adopted as well.

Durable mode. ``OTLP_QUEUE_DIR`` is locked (``supervisor.lock``, flock: a second server on the same
directory cannot start), one ``worker-<i>`` log per worker is created (existing ones are reused,
never wiped) and logs of an earlier run with more workers are drained too (see otlp_ingest.queue).

Prometheus multiprocess directories of dead runs (``otlp-ingest-metrics-<owner>-*`` in the temp
dir) are removed at start as well.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import logging
import os
import re
import shutil
import tempfile

from otlp_ingest.config import Settings
from otlp_ingest.queue import SUPERVISOR_LOCK, QueueSpec, existing_worker_dirs, worker_dir
from otlp_ingest.ring import RingCorrupt, create_ring, ring_name, ring_usage, unlink_ring, wipe_stale_rings
from otlp_ingest.ring.layout import NAME_PREFIX, shm_dir
from otlp_ingest.ring.segment import RingNotEmpty
from otlp_ingest.wal.lock import try_lock, unlock

log = logging.getLogger("otlp_ingest.supervisor")

_OWNER = r"((\d+)(?:\.(\d+))?)"  # groups: owner id, pid, run (absent in older names)
_RING = re.compile(re.escape(NAME_PREFIX) + _OWNER + r"-[wa](\d+)")
_ANY = re.compile(re.escape(NAME_PREFIX) + _OWNER + r"-.*")
_METRICS = re.compile(r"otlp-ingest-metrics-" + _OWNER + r"-.*")
METRICS_PREFIX = "otlp-ingest-metrics-"  # + owner id + "-": the supervisor's multiprocess dir


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


def dest_path(owner: str) -> str:
    return os.path.join(shm_dir(), f"{NAME_PREFIX}{owner}-dest")


def owner_alive(owner: str, current: str) -> bool:
    """Is supervisor run ``owner`` (``<pid>[.<run>]``) still running? ``current`` is ours."""
    if owner == current:
        return True
    pid_text, _, run = owner.partition(".")
    if run:
        try:
            fd = os.open(dest_path(owner), os.O_RDONLY)
        except FileNotFoundError:
            fd = -1
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True  # its run holds the lock
            finally:
                os.close(fd)
            return False
    # No dest file (a run that was starting or is long gone) or an older name: the pid decides,
    # but a pid equal to ours is a previous run of this container, never a live one.
    pid = int(pid_text)
    return pid != int(current.partition(".")[0]) and pid_alive(pid)


def write_destination(owner: str, settings: Settings) -> int:
    """Write ``otlp-ingest-<owner>-dest`` and return the fd holding its lock (keep it open for
    the run's lifetime). Built under a hidden name and renamed, so no one sees it unlocked."""
    path = dest_path(owner)
    tmp = os.path.join(shm_dir(), f".{NAME_PREFIX}{owner}-dest.tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, destination(settings).encode())
        os.rename(tmp, path)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return fd


def remove_destination(owner: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(dest_path(owner))


def _read_destination(owner: str) -> str | None:
    try:
        with open(dest_path(owner)) as f:
            return f.read()
    except OSError:
        return None


def adopt_stale_rings(owner: str, settings: Settings) -> list[str]:
    """Rename the non-empty rings of dead runs with our destination to ours (``-a<k>``); unlink
    empty or corrupt stale rings. Returns the adopted names (then call ``wipe_stale``)."""
    directory = shm_dir()
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    mine = destination(settings)
    adopted: list[str] = []
    for name in names:
        m = _RING.fullmatch(name)
        if not m or owner_alive(m.group(1), owner):
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
        if _read_destination(m.group(1)) != mine:
            log.warning(
                "stale ring %s holds %d acknowledged record(s) for another destination: left in place",
                name,
                records,
            )
            continue
        new = _adopt(name, owner, adopted)
        if new is not None:
            log.info(
                "adopted ring %s of a dead supervisor as %s: %d record(s) to deliver", name, new, records
            )
    return adopted


def _adopt(name: str, owner: str, adopted: list[str]) -> str | None:
    """Rename ring ``name`` to our next free ``-a<k>`` name and append it to ``adopted``."""
    directory = shm_dir()
    k = len(adopted)
    while os.path.exists(os.path.join(directory, f"{NAME_PREFIX}{owner}-a{k}")):
        k += 1
    new = f"{NAME_PREFIX}{owner}-a{k}"
    try:
        os.rename(os.path.join(directory, name), os.path.join(directory, new))
    except FileNotFoundError:  # another starting supervisor took it
        return None
    adopted.append(new)
    return new


def wipe_stale(owner: str) -> list[str]:
    """After ``adopt_stale_rings``: unlink what is left of dead runs (dest files, memory flags,
    temporary files) except non-empty rings, and the dest files of owners that still have one."""
    directory = shm_dir()
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    held = {m.group(1) for n in names if (m := _RING.fullmatch(n)) and not _ring_empty(n)}

    def keep(name: str) -> bool:
        m = _ANY.fullmatch(name)
        if m is None or m.group(1) in held:
            return True
        if m.group(3) is None and m.group(2) == owner.partition(".")[0]:
            # An older name with our pid (e.g. the memory flag, which is named by pid): ours to
            # replace, not to delete from under a running limiter.
            return not name.endswith("-dest")
        return owner_alive(m.group(1), owner)

    return wipe_stale_rings(keep=keep)


def _ring_empty(name: str) -> bool:
    try:
        return ring_usage(name).records == 0
    except (OSError, RingCorrupt):
        return True


def create_worker_rings(owner: str, settings: Settings, workers: int, adopted: list[str]) -> list[str]:
    """One ring per worker. A ring of that name holding records (never expected: names are unique
    per run) is adopted into ``adopted`` rather than replaced."""
    max_records = max(1, settings.queue_size // workers)
    names = []
    for i in range(workers):
        name = ring_name(owner, i)
        try:
            create_ring(name, settings.queue_bytes, max_records)
        except RingNotEmpty as exc:
            new = _adopt(name, owner, adopted)
            log.warning("%s: adopted as %s", exc, new)
            create_ring(name, settings.queue_bytes, max_records)
        names.append(name)
    return names


def records_in(names: list[str]) -> int:
    """Acknowledged records still queued in the rings `names` (missing or unreadable count 0)."""
    total = 0
    for name in names:
        try:
            total += ring_usage(name).records
        except (OSError, RingCorrupt):
            continue
    return total


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


def wipe_stale_metrics_dirs(owner: str) -> list[str]:
    """Remove ``otlp-ingest-metrics-<owner>-*`` directories of dead runs."""
    removed = []
    for path in glob.glob(os.path.join(tempfile.gettempdir(), METRICS_PREFIX + "*")):
        m = _METRICS.fullmatch(os.path.basename(path))
        if m and not owner_alive(m.group(1), owner):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
