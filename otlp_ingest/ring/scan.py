"""Locating and bounds-checking one record header: shared by the reader and by writer recovery."""

from __future__ import annotations

import mmap
from typing import NamedTuple

from otlp_ingest.ring import layout
from otlp_ingest.ring.layout import RingCorrupt

_HEADER = layout.RECORD_HEADER
_U32 = layout.U32
_DATA = layout.HEADER_SIZE
_HDR_SIZE = layout.RECORD_HEADER_SIZE
_PAD = layout.ALIGN - 1


class RecordHeader(NamedTuple):
    start: int  # position of the header (after any wrap skip)
    end: int  # position just past the record
    payload_len: int
    crc: int
    signal: int
    flags: int
    item_count: int
    seq: int


def header_at(mm: mmap.mmap, capacity: int, pos: int, head: int, name: str) -> RecordHeader:
    """The header of the record at stream position ``pos`` (following a wrap marker if there is
    one), checked to lie entirely below the published ``head``. RingCorrupt otherwise."""
    if pos % layout.ALIGN:
        raise RingCorrupt(f"ring {name}: record position {pos} is not 8-byte aligned")
    phys = pos % capacity
    length = _U32.unpack_from(mm, _DATA + phys)[0]
    if length == layout.WRAP_MARKER:
        pos += capacity - phys  # skip to the start of the next lap
        phys = 0
        if pos >= head:
            raise RingCorrupt(f"ring {name}: wrap marker with no record after it (head {head})")
    if capacity - phys < _HDR_SIZE:
        raise RingCorrupt(f"ring {name}: record header at {pos} would cross the end of the ring")
    length, crc, signal, flags, item_count, seq = _HEADER.unpack_from(mm, _DATA + phys)
    end = pos + ((_HDR_SIZE + length + _PAD) & ~_PAD)  # layout.record_size, inline: per record read
    if length > layout.max_payload(capacity) or end - pos > capacity - phys or end > head:
        raise RingCorrupt(
            f"ring {name}: record at {pos} has payload length {length}, beyond the ring or head {head}"
        )
    return RecordHeader(pos, end, length, crc, signal, flags, item_count, seq)
