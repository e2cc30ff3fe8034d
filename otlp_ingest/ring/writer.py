"""The producer side of a ring: one receiver worker appends records, never blocking."""

from __future__ import annotations

import os
import zlib

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


class RingWriter:
    """Appends records to one ring. Exactly one process may hold a writer for a ring at a time.

    ``head`` and ``head_seq`` are owned by this object (kept in attributes, published to the
    segment after each record); ``tail``/``tail_seq`` are the reader's and are only re-read when
    the cached values say the ring is full, to keep the reader's cache line quiet.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._mm, static = map_segment(name)
        self.capacity = static.capacity
        self.max_records = static.max_records
        self.max_payload = layout.max_payload(self.capacity)
        self._max_record = layout.max_record_size(self.capacity)
        mm = self._mm
        self._head = layout.load_u64(mm, _OFF_HEAD)
        self._tail = layout.load_u64(mm, _OFF_TAIL)
        self._tail_seq = layout.load_u64(mm, _OFF_TAIL_SEQ)
        if not 0 <= self._head - self._tail <= self.capacity:
            mm.close()
            raise RingCorrupt(f"ring {name}: head {self._head} and tail {self._tail} are inconsistent")
        try:
            self._head_seq = self._recover_head_seq()
        except BaseException:
            mm.close()
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

    def try_write(self, signal: int, item_count: int, payload: bytes | memoryview) -> bool:
        """Append one record and publish it. Returns False, writing nothing, when the ring lacks
        the bytes or the record slots for it, or the payload exceeds ``max_payload`` (such a
        record can never fit). Never blocks.
        """
        if type(payload) is not bytes:
            payload = memoryview(payload).cast("B")
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
        new_head = head + skip + size
        if new_head - self._tail > capacity:
            self._tail = layout.load_u64(self._mm, _OFF_TAIL)
            if new_head - self._tail > capacity:
                return False
        mm = self._mm
        if skip:
            layout.U32.pack_into(mm, _DATA + phys, layout.WRAP_MARKER)
            phys = 0
        off = _DATA + phys
        crc = zlib.crc32(payload, zlib.crc32(_META.pack(signal, 0, item_count, seq)))
        _HEADER.pack_into(mm, off, n, crc, signal, 0, item_count, seq)
        mm[off + _HDR_SIZE : off + _HDR_SIZE + n] = payload
        # Publish: the record bytes above are stored before head (x86 TSO keeps store order).
        layout.store_u64(mm, _OFF_HEAD, new_head)
        layout.store_u64(mm, _OFF_HEAD_SEQ, seq + 1)
        self._head = new_head
        self._head_seq = seq + 1
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

    def __enter__(self) -> RingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
