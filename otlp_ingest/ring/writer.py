"""The producer side of a ring: one receiver worker appends records, never blocking."""

from __future__ import annotations

import mmap
import os

from otlp_ingest.ring import layout
from otlp_ingest.ring.layout import RingCorrupt
from otlp_ingest.ring.scan import header_at
from otlp_ingest.ring.segment import map_segment

_HEADER = layout.RECORD_HEADER
_META = layout.RECORD_META
_DATA = layout.HEADER_SIZE
_HDR_SIZE = layout.RECORD_HEADER_SIZE
_OFF_HEAD = layout.OFF_HEAD
_OFF_HEAD_SEQ = layout.OFF_HEAD_SEQ
_OFF_TAIL = layout.OFF_TAIL
_OFF_TAIL_SEQ = layout.OFF_TAIL_SEQ
_PAGE = layout.PAGE
_FLAGS = layout.WRITE_FLAGS
_crc = layout.record_crc


class RingWriter:
    """Appends records to one ring. Exactly one process may hold a writer for a ring at a time.

    ``head`` and ``head_seq`` are owned by this object (kept in attributes, published to the
    segment after each record); ``tail``/``tail_seq`` are the reader's and are only re-read when
    the cached values say the ring is full, to keep the reader's cache line quiet.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._mm, static = map_segment(name)
        # For reserving pages beyond the working set (layout: "Working set"); closed in close().
        self._fd = os.open(layout.segment_path(name), os.O_RDWR)
        self._working_set = static.working_set
        self.capacity = static.capacity
        self.max_records = static.max_records
        self.max_payload = layout.max_payload(self.capacity)
        self._max_record = layout.max_record_size(self.capacity)
        mm = self._mm
        self._head = layout.load_u64(mm, _OFF_HEAD)
        self._tail = layout.load_u64(mm, _OFF_TAIL)
        self._tail_seq = layout.load_u64(mm, _OFF_TAIL_SEQ)
        if not 0 <= self._head - self._tail <= self.capacity:
            self.close()
            raise RingCorrupt(f"ring {name}: head {self._head} and tail {self._tail} are inconsistent")
        try:
            self._head_seq = self._recover_head_seq()
        except BaseException:
            self.close()
            raise
        layout.store_u64(mm, _OFF_HEAD_SEQ, self._head_seq)
        layout.store_u64(mm, layout.OFF_WRITER_PID, os.getpid())

    @classmethod
    def attach(cls, name: str) -> RingWriter:
        """Attach to existing ring ``name``, continuing at its published ``head``.

        FileNotFoundError if it does not exist; RingCorrupt if it is damaged.
        """
        return cls(name)

    def _recover_head_seq(self) -> int:
        """The seq of the next record, from the records themselves: the stored head_seq is stale
        if a previous writer died between publishing head and head_seq."""
        if self._head == self._tail:
            return self._tail_seq  # empty: the reader stored tail_seq before tail
        pos, seq = self._tail, None
        while pos < self._head:
            hdr = header_at(self._mm, self.capacity, pos, self._head, self.name)
            if seq is not None and hdr.seq != seq + 1:
                raise RingCorrupt(f"ring {self.name}: seq {hdr.seq} follows {seq} at {hdr.start}")
            seq, pos = hdr.seq, hdr.end
        return seq + 1

    def try_write(self, signal: int, item_count: int, payload: bytes | memoryview | list[bytes]) -> bool:
        """Append one record and publish it. Returns False, writing nothing, when the ring lacks
        the bytes or the record slots for it, or the payload exceeds ``max_payload`` (such a
        record can never fit). Never blocks. A list of byte strings is written as their
        concatenation (without joining them first).
        """
        if type(payload) is list:
            parts: list[bytes] = payload
            n = sum(map(len, parts))
        else:
            if type(payload) is not bytes:
                payload = memoryview(payload).cast("B")
            parts = [payload]  # type: ignore[list-item]
            n = len(payload)
        size = (_HDR_SIZE + n + 7) & ~7
        if size > self._max_record:
            return False
        seq = self._head_seq
        if seq - self._tail_seq >= self.max_records:
            self._tail_seq = layout.load_u64(self._mm, _OFF_TAIL_SEQ)
            if seq - self._tail_seq >= self.max_records:
                return False
        head = self._head
        capacity = self.capacity
        phys = head % capacity
        room_to_end = capacity - phys
        skip = 0 if size <= room_to_end else room_to_end
        working_set = self._working_set
        if not skip and phys >= working_set and self._has_room(head + room_to_end + size):
            skip = room_to_end  # back to the start of the working set: the reader freed it
            self._release_free_pages(head)
        new_head = head + skip + size
        if new_head - self._tail > capacity and not self._has_room(new_head):
            return False
        if (skip or phys + size > working_set) and not self._reserve(phys, skip, size):
            return False
        mm = self._mm
        if skip:
            layout.U32.pack_into(mm, _DATA + phys, layout.WRAP_MARKER)
            phys = 0
        off = _DATA + phys
        crc = _crc(_FLAGS, _META.pack(signal, _FLAGS, item_count, seq), parts)
        _HEADER.pack_into(mm, off, n, crc, signal, _FLAGS, item_count, seq)
        pos = off + _HDR_SIZE
        for part in parts:
            end = pos + len(part)
            mm[pos:end] = part
            pos = end
        # Publish: the record bytes above are stored before head (x86 TSO keeps store order).
        layout.store_u64(mm, _OFF_HEAD, new_head)
        layout.store_u64(mm, _OFF_HEAD_SEQ, seq + 1)
        self._head = new_head
        self._head_seq = seq + 1
        return True

    def _has_room(self, new_head: int) -> bool:
        """True if the ring can hold everything up to stream position ``new_head`` (re-reading
        the reader's tail only when the cached one says no)."""
        if new_head - self._tail <= self.capacity:
            return True
        self._tail = layout.load_u64(self._mm, _OFF_TAIL)
        return new_head - self._tail <= self.capacity

    def _release_free_pages(self, head: int) -> None:
        """Give back the tmpfs pages beyond the working set that hold no record: those wholly
        inside the free space [head, tail + capacity). Called when the writer returns to the
        working set (at most once per working-set lap), so pages a backlog used are freed once
        the reader has committed past them. Only this process writes free space and the reader
        never reads it, so no one else touches these pages meanwhile."""
        capacity = self.capacity
        free = self._tail + capacity - head
        lo = head % capacity
        spans = [(lo, lo + free)] if lo + free <= capacity else [(lo, capacity), (0, free - (capacity - lo))]
        for a, b in spans:
            first = -(-(_DATA + max(a, self._working_set)) // _PAGE) * _PAGE  # whole pages only
            last = (_DATA + b) // _PAGE * _PAGE
            if last > first:
                self._mm.madvise(mmap.MADV_REMOVE, first, last - first)

    def _reserve(self, phys: int, skip: int, size: int) -> bool:
        """Reserve the tmpfs pages beyond the working set that this write touches (the wrap
        marker at ``phys`` when ``skip``, then the record). False if the tmpfs is full: the
        caller refuses the write (retryable) instead of the process taking a SIGBUS."""
        working_set = self._working_set
        start, end = (0, size) if skip else (phys, phys + size)
        ranges = [(start, end)]
        if skip:
            ranges.append((phys, phys + 4))
        for lo, hi in ranges:
            if hi <= working_set:
                continue
            lo = max(lo, working_set)
            try:
                os.posix_fallocate(self._fd, _DATA + lo, hi - lo)
            except OSError:
                return False
        return True

    @property
    def head(self) -> int:
        return self._head

    @property
    def head_seq(self) -> int:
        return self._head_seq

    def close(self) -> None:
        """Unmap the segment. Published records stay in the ring."""
        if not self._mm.closed:
            self._mm.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
