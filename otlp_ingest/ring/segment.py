"""Ring segment lifecycle: create, attach (map and validate), inspect, unlink, wipe stale ones.

The supervisor creates and unlinks segments; workers and exporters only attach. See
``otlp_ingest.ring.layout`` for the byte layout.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from otlp_ingest.ring import layout
from otlp_ingest.ring.layout import RingCorrupt, RingUsage

T = TypeVar("T")
log = logging.getLogger(__name__)


class RingNotEmpty(Exception):
    """``create_ring`` found a segment of that name still holding records: replacing it would
    lose them (they may have been acknowledged to clients). Adopt it under another name instead."""


def create_ring(name: str, capacity_bytes: int, max_records: int) -> None:
    """Create (or replace) segment ``name`` with a data area of ``capacity_bytes`` (rounded down
    to a multiple of 8) holding at most ``max_records`` records. An existing segment of that name
    is replaced only if it is empty or not a readable ring; one holding records raises
    ``RingNotEmpty``.

    The file is built under a temporary name and renamed into place, so an attacher sees either
    the old segment or a complete new one. Only its first pages are reserved (``posix_fallocate``;
    layout: "Memory follows the load"); a tmpfs with less free space than the whole ring is logged
    as a warning (Docker's default /dev/shm is 64 MiB): the writer then refuses writes, retryably,
    when the tmpfs is full.
    """
    capacity = capacity_bytes & ~(layout.ALIGN - 1)
    if capacity < layout.MIN_CAPACITY:
        raise ValueError(f"ring capacity {capacity_bytes} bytes is below {layout.MIN_CAPACITY}")
    if max_records < 1:
        raise ValueError(f"ring max_records {max_records} must be at least 1")
    size = layout.HEADER_SIZE + capacity
    try:
        records = ring_usage(name).records
    except (FileNotFoundError, RingCorrupt):
        records = 0
    if records:
        raise RingNotEmpty(f"ring {name} still holds {records} record(s)")

    def fill(fd: int) -> None:
        os.ftruncate(fd, size)
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, min(size, layout.HEADER_SIZE + layout.INITIAL_RESERVE))
        free = os.fstatvfs(fd)
        if free.f_bavail * free.f_frsize < capacity:
            log.warning(
                "ring %s: %d bytes but the tmpfs has %d free: writes will be refused once it is full",
                name,
                capacity,
                free.f_bavail * free.f_frsize,
            )
        header = layout.STATIC_HEADER.pack(
            layout.MAGIC,
            layout.LAYOUT_VERSION,
            layout.HEADER_SIZE,
            capacity,
            max_records,
            os.getpid(),
            time.time_ns(),
        )
        # The rest of the header (counters, pids) is already zero from ftruncate.
        os.pwrite(fd, header, 0)

    create_complete(layout.segment_path(name), fill)


def create_complete(path: str, fill: Callable[[int], T]) -> T:
    """Create (or replace) the file at ``path`` so that others see it complete or not at all.

    ``fill(fd)`` builds the file under a temporary name (``<path>.tmp-<pid>``, mode 0600, opened
    read-write) and may return something that outlives the descriptor, e.g. an mmap of it; the
    file is then renamed into place and ``fill``'s result returned. If anything fails, the
    temporary file is removed and the error raised. The descriptor is closed either way.
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        result = fill(fd)
        os.rename(tmp, path)
        return result
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)


def unlink_ring(name: str) -> None:
    """Remove segment ``name``; processes that still map it keep their mapping. No error if it
    does not exist."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(layout.segment_path(name))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def wipe_stale_rings(
    prefix: str = layout.NAME_PREFIX, keep: Callable[[str], bool] | None = None
) -> list[str]:
    """Unlink segments named ``<prefix><pid>[.<run>]-...`` whose owner ``pid`` is no longer
    running (left behind by a supervisor that was killed). Returns the names removed, sorted.

    ``keep(name)``, when given, decides instead of the pid check (the supervisor knows more: run
    ids, whose pid may be its own, and rings it must leave in place). By pid alone a recycled pid
    keeps its stale segment alive; that cannot lose data because run ids make names unique and
    ``create_ring`` refuses to replace a segment that holds records.
    """
    directory = layout.shm_dir()
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        if not name.startswith(prefix):
            continue
        pid_text = name[len(prefix) :].split("-", 1)[0].split(".", 1)[0]
        if not pid_text.isdigit() or int(pid_text) <= 0:
            continue
        if keep(name) if keep is not None else _pid_alive(int(pid_text)):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))
            removed.append(name)
    return sorted(removed)


@dataclass(frozen=True, slots=True)
class StaticHeader:
    capacity: int
    max_records: int
    owner_pid: int


def parse_static_header(header: bytes, file_size: int, name: str) -> StaticHeader:
    """Validate the static header fields against the file size; RingCorrupt if anything is off."""
    if len(header) < layout.HEADER_SIZE or file_size < layout.HEADER_SIZE:
        raise RingCorrupt(f"ring {name}: file is {file_size} bytes, smaller than the header")
    magic, version, header_size, capacity, max_records, owner_pid, _created = (
        layout.STATIC_HEADER.unpack_from(header, 0)
    )
    if magic != layout.MAGIC:
        raise RingCorrupt(f"ring {name}: bad magic {magic!r}")
    if version != layout.LAYOUT_VERSION:
        raise RingCorrupt(f"ring {name}: layout version {version}, expected {layout.LAYOUT_VERSION}")
    if header_size != layout.HEADER_SIZE:
        raise RingCorrupt(f"ring {name}: header size {header_size}, expected {layout.HEADER_SIZE}")
    if capacity < layout.MIN_CAPACITY or capacity % layout.ALIGN or capacity + header_size != file_size:
        raise RingCorrupt(f"ring {name}: capacity {capacity} does not match file size {file_size}")
    if max_records < 1:
        raise RingCorrupt(f"ring {name}: max_records {max_records}")
    return StaticHeader(capacity, max_records, owner_pid)


def map_segment(name: str) -> tuple[mmap.mmap, StaticHeader]:
    """Map segment ``name`` read-write and validate its static header.

    FileNotFoundError if it does not exist; RingCorrupt if it is not a ring of this layout.
    """
    fd = os.open(layout.segment_path(name), os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size < layout.HEADER_SIZE:
            raise RingCorrupt(f"ring {name}: file is {size} bytes, smaller than the header")
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)  # the mapping keeps the file alive
    try:
        static = parse_static_header(mm[: layout.HEADER_SIZE], size, name)
    except BaseException:
        mm.close()
        raise
    return mm, static


def ring_usage(name: str) -> RingUsage:
    """A snapshot of ring ``name``'s fill level, read with one ``pread`` (no mapping, no writes).

    FileNotFoundError if it does not exist; RingCorrupt if it is not a ring of this layout.
    """
    fd = os.open(layout.segment_path(name), os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        header = os.pread(fd, layout.HEADER_SIZE, 0)
    finally:
        os.close(fd)
    static = parse_static_header(header, size, name)
    head = layout.U64.unpack_from(header, layout.OFF_HEAD)[0]
    head_seq = layout.U64.unpack_from(header, layout.OFF_HEAD_SEQ)[0]
    tail = layout.U64.unpack_from(header, layout.OFF_TAIL)[0]
    tail_seq = layout.U64.unpack_from(header, layout.OFF_TAIL_SEQ)[0]
    # The two sides are read at slightly different moments: clamp to what is possible.
    return RingUsage(
        records=min(max(0, head_seq - tail_seq), static.max_records),
        used_bytes=min(max(0, head - tail), static.capacity),
        capacity_bytes=static.capacity,
        max_records=static.max_records,
    )
