"""The consumer side of a ring: one exporter reads records and commits them once delivered."""

from __future__ import annotations

import os

from otlp_ingest.ring import layout
from otlp_ingest.ring.layout import Record, RingCorrupt
from otlp_ingest.ring.scan import header_at
from otlp_ingest.ring.segment import map_segment

_DATA = layout.HEADER_SIZE
_HDR_SIZE = layout.RECORD_HEADER_SIZE
_META_START = layout.META_OFFSET
_OFF_HEAD = layout.OFF_HEAD
_OFF_TAIL = layout.OFF_TAIL
_OFF_TAIL_SEQ = layout.OFF_TAIL_SEQ
_KNOWN_FLAGS = layout.KNOWN_FLAGS
_crc = layout.record_crc
_new_record = tuple.__new__  # Record from the C reader's tuple (what Record._make does)
_read = layout.native_records.read if layout.native_records is not None else None


class RingReader:
    """Reads records from one ring. Exactly one process may hold a reader for a ring at a time.

    Two cursors: the *read cursor* (private: how far ``read`` has got) and the committed ``tail``
    (shared: what the writer may overwrite). Reading ahead of the tail is how an exporter keeps
    several batches in flight; ``rewind`` goes back to the tail to re-send after a failure.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._mm, static = map_segment(name)
        self.capacity = static.capacity
        self.max_records = static.max_records
        mm = self._mm
        try:
            self._tail = layout.load_u64(mm, _OFF_TAIL)
            self._head = layout.load_u64(mm, _OFF_HEAD)
            if not 0 <= self._head - self._tail <= self.capacity:
                raise RingCorrupt(f"ring {name}: head {self._head} and tail {self._tail} are inconsistent")
            self._tail_seq = layout.load_u64(mm, _OFF_TAIL_SEQ)
            if self._head != self._tail:
                # The record at tail is authoritative: a reader that died between storing
                # tail_seq and tail left tail_seq one ahead of it.
                self._tail_seq = header_at(mm, self.capacity, self._tail, self._head, name).seq
                layout.store_u64(mm, _OFF_TAIL_SEQ, self._tail_seq)
        except BaseException:
            mm.close()
            raise
        layout.store_u64(mm, layout.OFF_READER_PID, os.getpid())
        self._cursor = self._tail
        self._next_seq = self._tail_seq
        self._max_payload = layout.max_payload(self.capacity)

    @classmethod
    def attach(cls, name: str) -> RingReader:
        """Attach to existing ring ``name``; the read cursor starts at the committed tail, so
        records a previous reader read but did not commit are read again.

        FileNotFoundError if it does not exist; RingCorrupt if it is damaged.
        """
        return cls(name)

    def read(self) -> Record | None:
        """The next published record after the read cursor (advancing it), or None if there is
        none yet. RingCorrupt on any bounds, seq or checksum failure; the cursor does not move."""
        cursor = self._cursor
        if cursor == self._head:
            head = layout.load_u64(self._mm, _OFF_HEAD)
            if head == cursor:
                return None
            if not 0 < head - cursor <= self.capacity:
                raise RingCorrupt(f"ring {self.name}: head {head} is out of range of cursor {cursor}")
            self._head = head
        mm = self._mm
        if _read is not None:  # the lines below in one call, for a sound CRC-32C record
            found = _read(mm, self.capacity, cursor, self._head, self._max_payload, self._next_seq)
            if found is not None:
                record = _new_record(Record, found)
                self._cursor = record.end
                self._next_seq = record.seq + 1
                return record
        # Anything else (a damaged record, a zlib-CRC record of an old ring): the precise answer.
        hdr = header_at(mm, self.capacity, cursor, self._head, self.name)
        if hdr.seq != self._next_seq:
            raise RingCorrupt(
                f"ring {self.name}: record at {hdr.start} has seq {hdr.seq}, expected {self._next_seq}"
            )
        off = _DATA + hdr.start % self.capacity
        payload = mm[off + _HDR_SIZE : off + _HDR_SIZE + hdr.payload_len]
        # The crc covers the meta fields and the payload copy we hand out.
        if hdr.flags & ~_KNOWN_FLAGS:
            raise RingCorrupt(f"ring {self.name}: unknown flags {hdr.flags:#x} in record seq {hdr.seq}")
        if _crc(hdr.flags, mm[off + _META_START : off + _HDR_SIZE], payload) != hdr.crc:
            raise RingCorrupt(f"ring {self.name}: checksum mismatch in record seq {hdr.seq} at {hdr.start}")
        self._cursor = hdr.end
        self._next_seq = hdr.seq + 1
        return Record(hdr.seq, hdr.signal, hdr.item_count, hdr.start, hdr.end, payload)

    def commit(self, record: Record) -> None:
        """Release ``record`` and every record before it to the writer: tail := record.end.

        Commit only once the data is safe downstream, in order. Committing a record that was
        already committed or that has not been read yet is a bug: ValueError.
        """
        if not self._tail_seq <= record.seq < self._next_seq or not self._tail < record.end <= self._cursor:
            raise ValueError(
                f"ring {self.name}: commit of seq {record.seq} (end {record.end}) outside the read "
                f"but uncommitted range seq [{self._tail_seq}, {self._next_seq})"
            )
        # tail_seq before tail: a writer that sees the new tail also sees the new tail_seq.
        layout.store_u64(self._mm, _OFF_TAIL_SEQ, record.seq + 1)
        layout.store_u64(self._mm, _OFF_TAIL, record.end)
        self._tail_seq = record.seq + 1
        self._tail = record.end

    def rewind(self) -> None:
        """Move the read cursor back to the committed tail (re-read everything uncommitted)."""
        self._cursor = self._tail
        self._next_seq = self._tail_seq

    @property
    def tail(self) -> int:
        return self._tail

    @property
    def cursor(self) -> int:
        return self._cursor

    def pending(self) -> bool:
        """True if records are published beyond the read cursor (re-reads ``head``)."""
        self._head = layout.load_u64(self._mm, _OFF_HEAD)
        return self._head != self._cursor

    def uncommitted(self) -> bool:
        """True if anything (read or not) is published beyond the committed tail."""
        self._head = layout.load_u64(self._mm, _OFF_HEAD)
        return self._head != self._tail

    def close(self) -> None:
        """Unmap the segment. Uncommitted records stay in the ring for the next reader."""
        if not self._mm.closed:
            self._mm.close()

    def __enter__(self) -> RingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
