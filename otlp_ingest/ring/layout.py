"""Byte layout of the shared-memory SPSC ring, and the types every ring module shares.

One ring per receiver worker: a plain file in ``/dev/shm`` (tmpfs), ``mmap``-ed by exactly one
writer process (the worker) and exactly one reader process (its exporter). A plain file rather
than ``multiprocessing.shared_memory``: on Python 3.11 attaching a ``SharedMemory`` registers it
with the resource tracker, which unlinks the segment when the *attaching* process exits.

All integers are little-endian. Positions (``head``, ``tail``, ``Record.start``/``end``) are
monotonically increasing 64-bit byte offsets into an infinite stream; the physical offset in the
data area is ``pos % capacity``. They never wrap in practice (2**64 bytes).

Segment header (``HEADER_SIZE`` = 256 bytes; static fields written once by ``create_ring`` before
the file is renamed into place, so an attacher never sees a half-written header)::

    off  size  field          writer      meaning
    0    8     magic          create      b"OTLPRING"
    8    4     version        create      u32, LAYOUT_VERSION (1)
    12   4     header_size    create      u32, 256: the data area starts here
    16   8     capacity       create      u64, data-area bytes, a multiple of 8
    24   8     max_records    create      u64, most records the ring may hold at once
    32   8     owner_pid      create      u64, pid of the supervisor that created it (also in the name)
    40   8     created_ns     create      u64, time.time_ns() at creation (diagnostics)
    48   16    reserved       -           zero
    -- producer cache line: written only by the writer process
    64   8     head           writer      u64, position just past the last published record
    72   8     head_seq       writer      u64, seq of the next record to be written (= records ever written)
    80   8     writer_pid     writer      u64, pid of the attached writer (diagnostics; 0 = never)
    88   40    reserved       -           zero
    -- consumer cache line: written only by the reader process
    128  8     tail           reader      u64, position just past the last committed record
    136  8     tail_seq       reader      u64, seq of the next record to be committed
    144  8     reader_pid     reader      u64, pid of the attached reader (diagnostics; 0 = never)
    152  104   reserved       -           zero
    256  capacity  data area

The producer and consumer counters sit on separate 64-byte cache lines so that the two processes
do not bounce one line between cores on every record. Each 64-bit counter has exactly one writer
process; the other side only reads it.

Record in the data area (every record starts 8-byte aligned, so the u64 fields are aligned)::

    off  size  field          meaning
    0    4     payload_len    u32; WRAP_MARKER (0xFFFFFFFF) instead marks "skip to the next lap"
    4    4     crc32          u32, checksum of bytes [8, 24 + payload_len): the meta fields below
                              and the payload, so a flipped header field is caught as well;
                              CRC-32C when flags has FLAG_CRC32C, else zlib's CRC-32
    8    2     signal         u16 (otlp_ingest.otlp.signals.Signal value; the ring does not care)
    10   2     flags          u16: FLAG_CRC32C (0x1); other bits zero (a reader refuses them)
    12   4     item_count     u32, spans / data points / log records in the payload
    16   8     seq            u64, 0, 1, 2, ... in write order; the reader checks it is the expected one
    24   n     payload        the serialized Export*ServiceRequest
    24+n pad   padding        to the next multiple of 8; contents unspecified

A record occupies ``record_size(n) = align8(24 + n)`` bytes and is never split: if it does not fit
between its physical offset and the end of the data area, the writer stores WRAP_MARKER (4 bytes;
at least 8 are always left because everything is 8-aligned) and places the record at physical 0.
The skipped bytes count as used until the record after them is committed. ``Record.start`` is the
position of the record header (after any skip); ``Record.end`` = start + record_size.

Because a wrapped record needs ``record_size <= max(p, capacity - p)`` room in an otherwise empty
ring, the largest record accepted is ``capacity // 2`` (``max_payload(capacity)`` payload bytes):
that guarantees any accepted size eventually fits once the reader has committed everything.

Memory follows the load. A ring's pages are taken when first written, not when it is created:
``create_ring`` reserves (``posix_fallocate``) the header and the first ``INITIAL_RESERVE`` bytes
only, and the writer reserves the pages a record is about to cover beyond what it reserved so
far, refusing the write (queue full, retryable) if the tmpfs has no room rather than taking a
SIGBUS. While writes are slow (below ``TRIM_MAX_RATE`` over the last ``TRIM_INTERVAL``) the writer
gives back (``madvise(MADV_REMOVE)``) the pages of the free space [head, tail + capacity) beyond
the next ``max(TRIM_KEEP, two intervals of writes at the recent rate)``: only the writer writes free
space and the reader never reads it, so nobody else touches those pages. So a quiet or steady
low-rate ring holds roughly its queued bytes plus that reserve, and a burst's memory is returned
within a lap once the rate drops. At high rates the pages stay: touching a fresh tmpfs page costs
~3.5 us here (a 16 KiB record 15 us instead of 1.8 us), which at 40 MB/s would be ~4% of a core
spent on page faults. The whole capacity is always usable (a backlog may fill all of it).

Ordering (publication protocol). The writer fills the record (header and payload), then stores
``head``, then ``head_seq``. The reader loads ``head`` and only then the record bytes below it; it
verifies the crc and the seq, so a record that is not fully visible fails loudly, never silently.
The reader's ``commit`` stores ``tail_seq``, then ``tail``; the writer only reuses bytes below
``tail``. This relies on x86-64 TSO (stores become visible in program order, loads are not
reordered with other loads) and on aligned 8-byte stores being single instructions: CPython's
struct module packs/unpacks ``<Q`` on little-endian hosts with an 8-byte ``memcpy`` (native fast
path), which compiles to one ``mov``. Stale reads of the other side's counter are always
conservative (less data / less room). On weakly ordered CPUs (arm64) there is no fence available
from Python; a torn view would surface as ``RingCorrupt`` rather than as silent bad data.

Crash recovery. A restarted writer continues at ``head`` and recomputes ``head_seq`` from the
records between ``tail`` and ``head`` (a crash between storing head and head_seq leaves it stale).
A restarted reader starts at ``tail`` and takes ``tail_seq`` from the record header found there (a
crash between storing tail_seq and tail leaves it one ahead), so uncommitted records are re-read
(at-least-once delivery).
"""

from __future__ import annotations

import functools
import mmap
import os
import struct
import zlib
from dataclasses import dataclass
from typing import NamedTuple

import google_crc32c

try:  # one record written or read in one call (_records.c); optional like every extension
    from otlp_ingest.ring import _records as native_records
except ImportError:  # pragma: no cover - built without a C compiler
    native_records = None  # type: ignore[assignment]

MAGIC = b"OTLPRING"
LAYOUT_VERSION = 1
HEADER_SIZE = 256
ALIGN = 8
MIN_CAPACITY = 64  # bytes of data area; tiny rings are only useful in tests
PAGE = mmap.PAGESIZE
# "Memory follows the load": what create_ring reserves, and the writer's trimming policy.
INITIAL_RESERVE = 1024 * 1024
TRIM_INTERVAL = 1.0  # seconds between trims (the worker calls `trim` from its sweeper)
TRIM_MAX_RATE = 4 * 1024 * 1024  # bytes/s: faster than this, pages stay (faults would cost more)
TRIM_KEEP = 1024 * 1024  # free bytes ahead of the writer that always stay reserved
TRIM_MAX_RELEASE = 4 * 1024 * 1024  # bytes given back per call (madvise runs on the event loop)

# Header field offsets.
OFF_MAGIC = 0
OFF_VERSION = 8
OFF_HEADER_SIZE = 12
OFF_CAPACITY = 16
OFF_MAX_RECORDS = 24
OFF_OWNER_PID = 32
OFF_CREATED_NS = 40
OFF_HEAD = 64
OFF_HEAD_SEQ = 72
OFF_WRITER_PID = 80
OFF_TAIL = 128
OFF_TAIL_SEQ = 136
OFF_READER_PID = 144

# magic, version, header_size, capacity, max_records, owner_pid, created_ns
STATIC_HEADER = struct.Struct("<8sIIQQQQ")
U64 = struct.Struct("<Q")  # only for private copies (header snapshots), never for live counters
U32 = struct.Struct("<I")


def load_u64(mm: mmap.mmap, offset: int) -> int:
    """Read a shared 64-bit counter with one 8-byte load.

    Never use ``struct.unpack_from``/``pack_into`` for a counter another process reads or writes
    concurrently: ``pack_into`` zeroes its target before writing (CPython ``s_pack_internal``
    does a memset), so a reader can see 0 for a moment, and standard-size ('<') codes move one
    byte at a time. A slice of an mmap is one ``memcpy`` of 8 aligned bytes, which is a single
    load or store on x86-64 (tests/unit/test_ring.py checks this with two processes).
    """
    return int.from_bytes(mm[offset : offset + 8], "little")


def store_u64(mm: mmap.mmap, offset: int, value: int) -> None:
    """Publish a shared 64-bit counter with one 8-byte store (see `load_u64`)."""
    mm[offset : offset + 8] = value.to_bytes(8, "little")


# Record header: payload_len, crc32, signal, flags, item_count, seq.
RECORD_HEADER = struct.Struct("<IIHHIQ")
RECORD_META = struct.Struct("<HHIQ")  # bytes [8, 24) of the record header: covered by the crc
RECORD_HEADER_SIZE = RECORD_HEADER.size  # 24
META_OFFSET = 8
WRAP_MARKER = 0xFFFFFFFF
# Record flag: the crc is CRC-32C (hardware-accelerated via google-crc32c: 0.9 us per 16 KiB here
# against 5.9 us for zlib.crc32, paid by the writer and again by the reader). Records of rings
# written before the flag existed (flags 0) keep zlib's CRC-32, so adopted rings still read.
FLAG_CRC32C = 0x1
KNOWN_FLAGS = FLAG_CRC32C
MAX_ITEM_COUNT = 0xFFFFFFFF
MAX_SIGNAL = 0xFFFF

NAME_PREFIX = "otlp-ingest-"

assert RECORD_HEADER_SIZE == 24 and RECORD_META.size == 16 and STATIC_HEADER.size == 48


class RingCorrupt(Exception):
    """The segment does not hold what the layout promises: bad magic/version/size, a length or
    position out of bounds, an unexpected seq, or a checksum mismatch. Never retry blindly."""


class Record(NamedTuple):
    """One record as read from a ring. ``payload`` is a private copy of the payload bytes.

    A NamedTuple rather than a frozen dataclass: the exporter builds two per record read, and a
    frozen dataclass costs ~2.2 us to construct here against ~0.9 us."""

    seq: int
    signal: int
    item_count: int
    start: int  # position of the record header (after any wrap skip)
    end: int  # position just past the record (and its padding): the tail after commit
    payload: bytes


@dataclass(frozen=True, slots=True)
class RingUsage:
    """A read-only snapshot of a ring's fill level (the two sides' counters read non-atomically,
    so the figures may be off by one in-flight record)."""

    records: int
    used_bytes: int
    capacity_bytes: int
    max_records: int


def record_crc(flags: int, meta: bytes, payload: bytes | memoryview | list[bytes]) -> int:
    """The checksum of a record's meta bytes [8, 24) and payload (or the concatenation of a list
    of parts), by the algorithm its flags name."""
    if flags & FLAG_CRC32C and type(payload) is bytes:  # every record a reader checks: one call less
        return google_crc32c.extend(google_crc32c.value(meta), payload)
    parts = payload if type(payload) is list else [payload]
    if flags & FLAG_CRC32C:
        crc = google_crc32c.value(meta)
        for part in parts:
            # google_crc32c takes read-only buffers only: copy the (rare) memoryview payloads.
            crc = google_crc32c.extend(crc, part if type(part) is bytes else bytes(part))
        return crc
    crc = zlib.crc32(meta)
    for part in parts:
        crc = zlib.crc32(part, crc)
    return crc


# The flags a writer sets: CRC-32C only with the C implementation (the package's pure-Python
# fallback is far slower than zlib's CRC-32; readers verify either).
WRITE_FLAGS = FLAG_CRC32C if google_crc32c.implementation == "c" else 0


def align8(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def record_size(payload_len: int) -> int:
    """Bytes a record with ``payload_len`` payload bytes occupies in the data area."""
    return (RECORD_HEADER_SIZE + payload_len + ALIGN - 1) & ~(ALIGN - 1)


def max_record_size(capacity: int) -> int:
    """Largest record (header + payload + padding) a ring of ``capacity`` bytes accepts."""
    return (capacity // 2) & ~(ALIGN - 1)


@functools.cache  # checked for every record read: a cached answer is ~0.1 us instead of ~0.8
def max_payload(capacity: int) -> int:
    """Largest payload a ring of ``capacity`` data bytes accepts (see the wrap rule above)."""
    return min(max_record_size(capacity) - RECORD_HEADER_SIZE, WRAP_MARKER - 1)


def owner_id(pid: int, run: int) -> str:
    """``<pid>.<run>``: the name component of one supervisor run (``run``: e.g. its start time in
    ns). The pid alone is not unique: in a container every supervisor is PID 1, and a restarted
    container's /dev/shm (a pod emptyDir) still holds the rings of the previous one. Parsers take
    the pid as the digits before the first ``.`` or ``-``."""
    return f"{pid}.{run}"


def ring_name(owner: int | str, worker_index: int) -> str:
    """The segment name of worker ``worker_index``'s ring under supervisor ``owner``: an
    ``owner_id`` (``otlp-ingest-<pid>.<run>-w<i>``) or, in older names and tests, a bare pid."""
    return f"{NAME_PREFIX}{owner}-w{worker_index}"


def shm_dir() -> str:
    """Directory holding ring segments: ``$OTLP_INGEST_SHM_DIR`` or ``/dev/shm`` (tmpfs)."""
    return os.environ.get("OTLP_INGEST_SHM_DIR", "/dev/shm")


def segment_path(name: str) -> str:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"invalid ring name {name!r}: a plain file name is required")
    return os.path.join(shm_dir(), name)
