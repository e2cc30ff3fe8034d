"""File layout of the durable write-ahead log (durable mode), and the types every WAL module shares.

One log per receiver worker: a directory written by exactly one ``WalWriter`` process (the worker)
and read by exactly one ``WalReader`` process (its exporter), at the same time. All integers are
little-endian. Offsets (``Record.start``/``end``, tickets, the committed and durable offsets) are
positions in one infinite byte stream; they only grow and never wrap.

Directory::

    <dir>/<first offset, 20 digits>.wal   segments: append-only, records back to back, no header
    <dir>/durable                         DURABLE_STATE, rewritten in place by the writer's fsync thread
    <dir>/commit                          COMMIT_STATE, replaced atomically by the reader on commit
    <dir>/acked                           ACKED_STATE, replaced atomically by the reader (see below)
    <dir>/writer.lock  <dir>/reader.lock  flock()ed by the one writer / the one reader (crash-safe:
                                          the kernel drops the lock with the process)
    <dir>/quarantine/                     bytes cut out of segments by recovery, kept for forensics

A segment named ``N`` holds the stream bytes ``[N, N + file size)``: the offset of a record is its
segment's name plus its position in the file. The writer starts a new segment, named by the
current end offset, when the next record would take the current one past ``segment_bytes`` (a
record bigger than that gets a segment of its own). Segments are contiguous except after a
quarantine, which truncates a segment and so leaves a gap before the next one; readers move to the
next existing segment when they reach the end of a sealed one.

Record (``RECORD_HEADER_SIZE`` = 28 bytes of header, then the payload, no padding)::

    off  size  field          meaning
    0    4     magic          b"OWAL": a record starts here (a zero-filled tail fails this)
    4    4     payload_len    u32, payload bytes that follow the header
    8    2     signal         u16 (otlp_ingest.otlp.signals.Signal value; the log does not care)
    10   2     flags          u16, zero (reserved)
    12   4     item_count     u32, spans / data points / log records in the payload
    16   8     seq            u64, 0, 1, 2, ... in append order (gaps only after a quarantine)
    24   4     crc32          u32, zlib.crc32 of header bytes [0, 24) followed by the payload
    28   n     payload        the serialized Export*ServiceRequest

DURABLE_STATE (24 bytes, written with one ``pwrite`` after every fsync; not itself fsynced: it is
a hint for a reader in another process, and a restarted writer recomputes it from the segments;
after a power loss it may be stale)::

    0    8     offset         u64, every byte of the stream below this is fsynced
    8    8     next_seq       u64, seq of the first record at or after ``offset``
    16   4     crc32          u32, zlib.crc32 of bytes [0, 16): a torn read is detected, not used
    20   4     zero

COMMIT_STATE (same 24-byte shape; written to ``commit.tmp``, fsynced, renamed over ``commit``,
directory fsynced, so a crash leaves either the old or the new state)::

    0    8     offset         u64, end of the last committed record: everything below is delivered
    8    8     next_seq       u64, seq of the first record not committed
    16   4     crc32          u32 over bytes [0, 16)
    20   4     zero

ACKED_STATE (replaced like ``commit``): records beyond the committed offset that the backend
already acknowledged. Batches of different signals complete out of order while the commit only
moves over a done prefix, so without this file a crash would re-send every acknowledged record
after the oldest open batch; with it, a restarted reader skips them and re-delivery is bounded by
the batches in flight at the crash::

    0    8     magic          b"OWALACK1"
    8    4     count          u32, number of ranges
    12   16*n  ranges         n x (u64 first_seq, u64 last_seq), inclusive, ascending, disjoint
    ..   4     crc32          u32 over every byte before it

Recovery of ``next_seq`` (``recovery.recover_tail``): one past the largest of the last valid
record's seq in the newest segment that has one (earlier segments are scanned when a power loss
left the newest ones empty or zero-filled), the commit and durable ``next_seq`` and the last seq
in ``acked``. Seqs never repeat: a reused seq listed in ``acked`` would make the reader skip a new
record.

Validity. A record is valid when its magic matches, it lies wholly inside its file and below the
offset the reader trusts, and its crc matches. What is *not* valid is "not yet written" if it lies
at or beyond the published durable offset of a live writer (the reader simply waits), a torn tail
if it runs past the end of the file (recovery truncates it), and corruption otherwise (recovery
moves the rest of that segment to ``quarantine/`` and counts it; in the live segment a reader
quarantines only up to the durable offset, a record boundary, and resumes reading there). The
copy into ``quarantine/`` is best effort: if it fails (disk full, EIO) the bytes are still cut or
skipped, and the failure is logged and counted (``RecoveryReport.quarantine_failures``).
"""

from __future__ import annotations

import errno
import os
import struct
import zlib
from dataclasses import dataclass

from otlp_ingest.errors import QueueFull
from otlp_ingest.ring.layout import Record

MAGIC = b"OWAL"
SEGMENT_SUFFIX = ".wal"
DURABLE_FILE = "durable"
ACKED_FILE = "acked"
ACKED_MAGIC = b"OWALACK1"
COMMIT_FILE = "commit"
WRITER_LOCK = "writer.lock"
READER_LOCK = "reader.lock"
QUARANTINE_DIR = "quarantine"

# magic, payload_len, signal, flags, item_count, seq | crc32
RECORD_PREFIX = struct.Struct("<4sIHHIQ")
CRC = struct.Struct("<I")
RECORD_HEADER_SIZE = RECORD_PREFIX.size + CRC.size  # 28
STATE = struct.Struct("<QQII")  # offset, next_seq, crc32, zero
MAX_PAYLOAD = 0xFFFFFFFF - 1
MAX_ITEM_COUNT = 0xFFFFFFFF

# Errors that mean "the disk cannot take this now" rather than a bug: refuse, keep running, retry.
DISK_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}
)

assert RECORD_HEADER_SIZE == 28 and STATE.size == 24

__all__ = ["Record"]  # re-exported: the WAL hands out the ring's Record type


class DiskFull(QueueFull):
    """The log could not be written (ENOSPC, EIO, EROFS, ...). Retryable: the writer stays usable
    and appends succeed again once the disk takes writes."""


@dataclass(frozen=True, slots=True)
class State:
    """A (offset, next_seq) pair as stored in the ``durable`` and ``commit`` files."""

    offset: int
    next_seq: int


def segment_name(base: int) -> str:
    return f"{base:020d}{SEGMENT_SUFFIX}"


def list_segments(directory: str) -> list[int]:
    """Bases (first offsets) of the segments in ``directory``, ascending."""
    bases = []
    for name in os.listdir(directory):
        stem = name[: -len(SEGMENT_SUFFIX)]
        if name.endswith(SEGMENT_SUFFIX) and len(stem) == 20 and stem.isdigit():
            bases.append(int(stem))
    bases.sort()
    return bases


def encode_header(signal: int, item_count: int, seq: int, payload: bytes | memoryview) -> bytes:
    prefix = RECORD_PREFIX.pack(MAGIC, len(payload), signal, 0, item_count, seq)
    return prefix + CRC.pack(zlib.crc32(payload, zlib.crc32(prefix)))


def encode_state(state: State) -> bytes:
    head = struct.pack("<QQ", state.offset, state.next_seq)
    return STATE.pack(state.offset, state.next_seq, zlib.crc32(head), 0)


def decode_state(data: bytes) -> State | None:
    """The state in ``data``, or None if it is short or its crc does not match (torn, damaged)."""
    if len(data) < STATE.size:
        return None
    offset, next_seq, crc, _ = STATE.unpack_from(data)
    if zlib.crc32(data[:16]) != crc:
        return None
    return State(offset, next_seq)


def read_state(path: str) -> State | None:
    """The state stored at ``path``; None if missing or invalid."""
    try:
        with open(path, "rb") as f:
            return decode_state(f.read(STATE.size))
    except FileNotFoundError:
        return None


def fsync_dir(directory: str) -> None:
    """Make renames/creations/unlinks in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_state_atomic(directory: str, name: str, state: State) -> None:
    """Replace ``<directory>/<name>`` with ``state``: write a temp file, fsync, rename, fsync dir."""
    write_file_atomic(directory, name, encode_state(state))


SeqRanges = list[tuple[int, int]]


def encode_acked(ranges: SeqRanges) -> bytes:
    body = ACKED_MAGIC + struct.pack("<I", len(ranges))
    body += b"".join(struct.pack("<QQ", first, last) for first, last in ranges)
    return body + struct.pack("<I", zlib.crc32(body))


def read_acked(directory: str) -> SeqRanges:
    """The acknowledged ranges stored in ``<directory>/acked``; empty if missing or invalid
    (invalid only costs re-delivery of those records, never loss)."""
    try:
        with open(os.path.join(directory, ACKED_FILE), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    if len(data) < 16 or data[:8] != ACKED_MAGIC:
        return []
    (count,) = struct.unpack_from("<I", data, 8)
    if (
        len(data) != 16 + 16 * count
        or zlib.crc32(data[:-4]) != struct.unpack_from("<I", data, len(data) - 4)[0]
    ):
        return []
    return [struct.unpack_from("<QQ", data, 12 + 16 * i) for i in range(count)]


def write_file_atomic(directory: str, name: str, data: bytes) -> None:
    """Replace ``<directory>/<name>`` with ``data``: write a temp file, fsync, rename, fsync dir."""
    tmp = os.path.join(directory, name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, os.path.join(directory, name))
    fsync_dir(directory)


@dataclass(frozen=True, slots=True)
class WalUsage:
    """A snapshot of a log's fill level from its state files (``records`` and ``used_bytes``
    cover what is durable and not yet committed)."""

    records: int
    used_bytes: int


def wal_usage(directory: str) -> WalUsage:
    """Fill level of the log in ``directory``, readable from any process (two small reads; no
    lock). Zero for a log that does not exist yet."""
    durable = read_state(os.path.join(directory, DURABLE_FILE)) or State(0, 0)
    commit = read_state(os.path.join(directory, COMMIT_FILE))
    if commit is None:
        bases = list_segments(directory) if os.path.isdir(directory) else []
        commit = State(bases[0] if bases else durable.offset, 0 if bases else durable.next_seq)
    return WalUsage(
        records=max(0, durable.next_seq - commit.next_seq),
        used_bytes=max(0, durable.offset - commit.offset),
    )
