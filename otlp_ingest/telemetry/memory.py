"""The memory limiter: the supervisor measures the process tree, workers refuse while it is too big.

Like the OpenTelemetry Collector's `memory_limiter`: a hard limit (`OTLP_MEMORY_LIMIT_MIB`, or 80%
of the cgroup memory limit, or none without one) and a soft limit = hard - spike
(`OTLP_MEMORY_SPIKE_LIMIT_MIB`, or 20% of the hard limit). At or above the soft limit every worker
refuses new data with a retryable `MemoryLimited` (UNAVAILABLE + RetryInfo / 503 + Retry-After);
it accepts again once usage is back below the resume level (soft - 5% of hard: hysteresis, so
the state does not flap every sample), or once it has stayed below the soft limit for `BAND_HOLD`
seconds: freed memory that CPython and glibc keep for reuse can hold the tree in the band between
the two levels with nothing in flight, and refusing forever then protects nothing.
While refusing, every worker runs `gc.collect()` and glibc
`malloc_trim(0)` twice a second in a small thread: CPython and glibc rarely give freed memory back
to the OS by themselves (large buffers, > 128 KiB, are mmap'ed and do return at once), and without
the trim a burst can leave the tree above the resume level for good. Above the hard limit workers
stop even decoding refused requests to count their items.

What is counted (`tree_usage`): the anonymous resident memory of the supervisor and every live
child (psutil `rss - shared`: private heap, stacks, grpc and upb buffers) plus the tmpfs bytes
of the shared-memory rings, once (`st_blocks` of each ring file: the pages actually reserved,
which follow the load; ring/layout.py "Memory follows the load"). Plain
RSS summed over processes would count each ring page twice (writer and reader both map it) and
grow as pages are touched although nothing new is allocated; that is not what the cgroup
charges. Shared library code (file-backed, reclaimable) is not counted.

One writer, many readers: the supervisor's `MemoryLimiter` thread samples every `INTERVAL` seconds
and publishes the state in a tiny shared-memory file; workers attach it with `MemoryGate` and read
one byte per request. The file is `<shm dir>/otlp-ingest-<supervisor pid>-memory` (the rings'
name prefix, so `wipe_stale_rings` removes one left by a killed supervisor). Byte layout, 64 bytes,
little-endian, every field an aligned u64 written with one 8-byte store:

    offset  size  field
    0       8     magic b"OTLPMEM1"
    8       8     state: 0 accept, 1 refuse (>= soft), 2 refuse, above the hard limit; readers
                  look at byte 8 only
    16      8     hard limit in bytes (0: no limit, the limiter is off)
    24      8     soft limit in bytes
    32      8     usage in bytes at the last sample
    40      8     times the state went from accept to refuse
    48      16    reserved (zero)
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

from otlp_ingest.ring.layout import NAME_PREFIX, load_u64, segment_path, store_u64
from otlp_ingest.ring.segment import create_complete

log = logging.getLogger(__name__)

MiB = 1024 * 1024
INTERVAL = 0.2  # seconds between samples: a 4 MiB request every ms is 800 MiB/s, so be quick
BAND_HOLD = 2.0  # seconds below the soft limit after which refusing stops even above `resume`
RECLAIM_EVERY = 0.5  # seconds between gc.collect/malloc_trim in a process while refusing
# cgroup v1 reports "no limit" as a huge page-rounded number (2^63 - 4096 on x86-64).
_NO_LIMIT_ABOVE = 1 << 60

MAGIC = b"OTLPMEM1"
SIZE = 64
OFF_STATE = 8
OFF_HARD = 16
OFF_SOFT = 24
OFF_USAGE = 32
OFF_TRIPS = 40

ACCEPT, REFUSE, RECLAIM = 0, 1, 2


@dataclass(frozen=True, slots=True)
class MemoryLimits:
    """Limits in bytes; `resume` is where refusing stops (hysteresis below `soft`)."""

    hard: int
    soft: int

    @property
    def resume(self) -> int:
        return max(0, self.soft - self.hard // 20)


def cgroup_memory_limit(root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> int | None:
    """This process's cgroup memory limit in bytes, or None when there is none.

    cgroup v2: `memory.max` of our group (path from `/proc/self/cgroup` line `0::/path`), else of
    `root` (inside a container the namespace root is our group); "max" is no limit. cgroup v1:
    `memory/<path>/memory.limit_in_bytes`, else `memory/memory.limit_in_bytes`; a value above
    2^60 is no limit. `root` and `proc_cgroup` are parameters for tests.
    """
    v2_path = v1_path = ""
    with contextlib.suppress(OSError), open(proc_cgroup) as f:
        for line in f:
            parts = line.strip().split(":", 2)
            if len(parts) != 3:
                continue
            if parts[0] == "0" and parts[1] == "":
                v2_path = parts[2].lstrip("/")
            elif "memory" in parts[1].split(","):
                v1_path = parts[2].lstrip("/")
    candidates = [
        os.path.join(root, v2_path, "memory.max"),
        os.path.join(root, "memory.max"),
        os.path.join(root, "memory", v1_path, "memory.limit_in_bytes"),
        os.path.join(root, "memory", "memory.limit_in_bytes"),
    ]
    for path in candidates:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        return None if value <= 0 or value >= _NO_LIMIT_ABOVE else value
    return None


def resolve_limits(
    limit_mib: int, spike_mib: int, cgroup_limit: Callable[[], int | None] = cgroup_memory_limit
) -> MemoryLimits | None:
    """The limits for the settings `memory_limit_mib` / `memory_spike_limit_mib` (0 = derive), or
    None when there is no limit (0 and no cgroup limit). A spike at or above the limit leaves no
    room to accept anything, so it is capped at half the limit (and logged)."""
    if limit_mib > 0:
        hard = limit_mib * MiB
    else:
        group = cgroup_limit()
        if group is None:
            return None
        hard = group * 8 // 10
    spike = spike_mib * MiB if spike_mib > 0 else hard // 5
    if spike >= hard:
        log.warning(
            "memory spike limit %d MiB is not below the memory limit %d MiB: using %d MiB",
            spike // MiB,
            hard // MiB,
            hard // 2 // MiB,
        )
        spike = hard // 2
    return MemoryLimits(hard=hard, soft=hard - spike)


def flag_name(supervisor_pid: int) -> str:
    return f"{NAME_PREFIX}{supervisor_pid}-memory"


def tree_usage(pids: Iterable[int], ring_names: Iterable[str]) -> int:
    """Bytes counted against the limit (see the module docstring): anonymous RSS of `pids` plus
    the tmpfs bytes of the rings, each counted once. Vanished processes and rings count 0."""
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            info = psutil.Process(pid).memory_info()
            total += max(0, info.rss - info.shared)
    for name in ring_names:
        with contextlib.suppress(OSError, ValueError):
            total += os.stat(segment_path(name)).st_blocks * 512
    return total


@dataclass(frozen=True, slots=True)
class MemoryStatus:
    """A reader's copy of the flag file (for the metrics)."""

    state: int
    hard: int
    soft: int
    usage: int
    trips: int


def read_status(name: str) -> MemoryStatus | None:
    """The published state, read with one pread; None if the file is missing or not ours."""
    try:
        fd = os.open(segment_path(name), os.O_RDONLY)
    except (OSError, ValueError):
        return None
    try:
        data = os.pread(fd, SIZE, 0)
    finally:
        os.close(fd)
    if len(data) < SIZE or data[:8] != MAGIC:
        return None

    def u64(offset: int) -> int:
        return int.from_bytes(data[offset : offset + 8], "little")

    return MemoryStatus(u64(OFF_STATE), u64(OFF_HARD), u64(OFF_SOFT), u64(OFF_USAGE), u64(OFF_TRIPS))


class MemoryLimiter:
    """The supervisor side: owns the flag file and, with limits, a sampling thread.

    `pids()` and `rings()` are asked on every sample (children restart with new pids)."""

    def __init__(
        self,
        supervisor_pid: int,
        limits: MemoryLimits | None,
        pids: Callable[[], Iterable[int]],
        rings: Callable[[], Iterable[str]],
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = flag_name(supervisor_pid)
        self.limits = limits
        self._pids = pids
        self._rings = rings
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = ACCEPT
        self._band_since: float | None = None  # when usage last fell below soft while refusing
        self._clock = clock
        self._trips = 0

        def fill(fd: int) -> mmap.mmap:
            os.ftruncate(fd, SIZE)
            os.pwrite(fd, MAGIC, 0)
            return mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

        # Attachers see a complete file or none.
        self._mm = create_complete(segment_path(self.name), fill)
        if limits is not None:
            store_u64(self._mm, OFF_HARD, limits.hard)
            store_u64(self._mm, OFF_SOFT, limits.soft)

    def start(self) -> None:
        if self.limits is None or self._thread is not None:
            return
        first = self.sample()
        log.info(
            "memory limiter: hard %d MiB, soft %d MiB (resume below %d MiB), now %d MiB",
            self.limits.hard // MiB,
            self.limits.soft // MiB,
            self.limits.resume // MiB,
            first // MiB,
        )
        if first >= self.limits.soft:
            log.warning(
                "memory limiter: usage at start (%d MiB) is already above the soft limit (%d MiB): "
                "every request will be refused; raise OTLP_MEMORY_LIMIT_MIB or lower OTLP_QUEUE_BYTES",
                first // MiB,
                self.limits.soft // MiB,
            )
        self._thread = threading.Thread(target=self._run, name="memory-limiter", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sample()
            except Exception:  # a sampling bug must not kill the thread and freeze the state
                log.exception("memory limiter: sample failed")

    def sample(self) -> int:
        """Measure once, update and publish the state; returns the usage in bytes."""
        assert self.limits is not None
        usage = tree_usage(self._pids(), self._rings())
        limits = self.limits
        if usage >= limits.hard:
            state = RECLAIM
        elif usage >= limits.soft:
            state = REFUSE
        elif usage < limits.resume:
            state = ACCEPT
        elif self._state == ACCEPT:
            state = ACCEPT  # between resume and soft, coming from below: keep accepting
        else:  # between resume and soft while refusing: hold for BAND_HOLD, then accept
            now = self._clock()
            if self._band_since is None:
                self._band_since = now
            state = ACCEPT if now - self._band_since >= BAND_HOLD else REFUSE
        if state != REFUSE or usage >= limits.soft:
            self._band_since = None
        if state != ACCEPT and self._state == ACCEPT:
            self._trips += 1
            store_u64(self._mm, OFF_TRIPS, self._trips)
            log.warning(
                "memory limiter: %d MiB >= soft limit %d MiB: refusing new data",
                usage // MiB,
                limits.soft // MiB,
            )
        elif state == ACCEPT and self._state != ACCEPT:
            log.info(
                "memory limiter: %d MiB, below %d MiB: accepting again", usage // MiB, limits.resume // MiB
            )
        self._state = state
        store_u64(self._mm, OFF_USAGE, usage)
        store_u64(self._mm, OFF_STATE, state)
        return usage

    def close(self) -> None:
        """Stop the thread and remove the file (workers keep their mapping until they exit)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        with contextlib.suppress(ValueError):
            self._mm.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(segment_path(self.name))


def malloc_trimmer() -> Callable[[], None]:
    """`malloc_trim(0)` (glibc: give freed heap back to the OS); a no-op elsewhere."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return lambda: None
    return lambda: trim(0)


class MemoryGate:
    """The worker side: `state()` is one byte read from the shared flag, the whole per-request
    cost. A small daemon thread gives memory back while the flag is up (see `_reclaim_loop`)."""

    def __init__(self, mm: mmap.mmap) -> None:
        self._mm = mm
        self._trim = malloc_trimmer()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def attach(cls, supervisor_pid: int | None = None) -> MemoryGate | None:
        """The gate for the supervisor's flag file (default: our parent's, i.e. the supervisor
        that started this process), or None when it has no limit (or no file). Starts the
        reclaim thread."""
        pid = os.getppid() if supervisor_pid is None else supervisor_pid
        try:
            fd = os.open(segment_path(flag_name(pid)), os.O_RDONLY)
        except (OSError, ValueError):
            return None
        try:
            mm = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ)
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)
        if mm[:8] != MAGIC or load_u64(mm, OFF_HARD) == 0:
            mm.close()
            return None
        gate = cls(mm)
        gate._thread = threading.Thread(target=gate._reclaim_loop, name="memory-reclaim", daemon=True)
        gate._thread.start()
        return gate

    def state(self) -> int:
        return self._mm[OFF_STATE]

    def _reclaim_loop(self) -> None:
        """While refusing, every RECLAIM_EVERY seconds: gc.collect() and malloc_trim(0). Measured:
        after a burst of 2 MiB requests glibc keeps tens of MiB of freed heap per process, enough
        to hold the tree above the resume level with no traffic at all, i.e. to refuse forever.
        A thread, not the request path, so an idle process gives its memory back too."""
        while not self._stop.wait(RECLAIM_EVERY):
            if self._mm[OFF_STATE] != ACCEPT:
                gc.collect()
                self._trim()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)  # at most one gc.collect: then the map can go
        with contextlib.suppress(ValueError, BufferError):
            self._mm.close()
