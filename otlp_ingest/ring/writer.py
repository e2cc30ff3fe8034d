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
_RESERVE_STEP = 1024 * 1024
_FLAGS = layout.WRITE_FLAGS
_crc = layout.record_crc
# The C record writer, for CRC-32C records (None: the Python lines of `try_write` write them).
_put = layout.native_records.put if layout.native_records and _FLAGS & layout.FLAG_CRC32C else None


class RingWriter:
    """Appends records to one ring. Exactly one process may hold a writer for a ring at a time.

    ``head`` and ``head_seq`` are owned by this object (kept in attributes, published to the
    segment after each record); ``tail``/``tail_seq`` are the reader's and are only re-read when
    the cached values say the ring is full, to keep the reader's cache line quiet.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._mm, static = map_segment(name)
        # For reserving and giving back pages (layout: "Memory follows the load"); see close().
        self._fd = os.open(layout.segment_path(name), os.O_RDWR)
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
        # Stream positions: the free space [head, reserved_to) has its pages reserved, and
        # [reserved_to, released_to) was given back by `trim`; what a previous writer did is
        # unknown, so start by assuming nothing is reserved (reserving again is cheap).
        self._reserved_to = self._head
        self._released_to = self._head
        self._trim_head = self._head
        self._trim_at = 0.0
        self._to_release: list[tuple[int, int]] = []  # stream ranges `trim` still has to give back

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
        new_head = head + skip + size
        if new_head - self._tail > capacity and not self._has_room(new_head):
            return False
        if new_head > self._reserved_to and not self._reserve(new_head):
            return False
        mm = self._mm
        if skip:
            layout.U32.pack_into(mm, _DATA + phys, layout.WRAP_MARKER)
            phys = 0
        off = _DATA + phys
        if _put is not None:  # the same bytes and stores as below, in one call (_records.c)
            _put(mm, off, payload if len(parts) == 1 else parts, signal, _FLAGS, item_count, seq, new_head)
            self._head = new_head
            self._head_seq = seq + 1
            return True
        crc = _crc(_FLAGS, _META.pack(signal, _FLAGS, item_count, seq), payload if len(parts) == 1 else parts)
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

    def has_room_for(self, n: int) -> bool:
        """Whether a record of `n` payload bytes would fit now (optimistic: ignores the skip at
        the wrap and the page reservation; `try_write` decides)."""
        if self._head_seq - self._tail_seq >= self.max_records:
            self._tail_seq = layout.load_u64(self._mm, _OFF_TAIL_SEQ)
            if self._head_seq - self._tail_seq >= self.max_records:
                return False
        return self._has_room(self._head + ((_HDR_SIZE + n + 7) & ~7))

    def _has_room(self, new_head: int) -> bool:
        """True if the ring can hold everything up to stream position ``new_head`` (re-reading
        the reader's tail only when the cached one says no)."""
        if new_head - self._tail <= self.capacity:
            return True
        self._tail = layout.load_u64(self._mm, _OFF_TAIL)
        return new_head - self._tail <= self.capacity

    def _spans(self, start: int, end: int) -> list[tuple[int, int]]:
        """The physical byte ranges of stream range [start, end) (at most a capacity long)."""
        capacity = self.capacity
        lo = start % capacity
        n = end - start
        if lo + n <= capacity:
            return [(lo, lo + n)]
        return [(lo, capacity), (0, n - (capacity - lo))]

    def _reserve(self, new_head: int) -> bool:
        """Reserve the tmpfs pages of the free space up to stream position ``new_head`` (and a
        step beyond, so this is one syscall per RESERVE_STEP written) before writing there.
        False if the tmpfs is full: the caller refuses the write (retryable) instead of the
        process taking a SIGBUS."""
        start = max(self._reserved_to, self._head)
        step_end = max(new_head, min(start + _RESERVE_STEP, self._tail + self.capacity))
        for end in (step_end, new_head) if step_end > new_head else (new_head,):
            if self._fallocate(start, end):
                self._reserved_to = end
                return True
        return False

    def _fallocate(self, start: int, end: int) -> bool:
        try:
            for a, b in self._spans(start, end):
                os.posix_fallocate(self._fd, _DATA + a, b - a)
        except OSError:
            return False
        return True

    def trim(self, now: float) -> int:
        """Give back free pages while writes are slow (layout: "Memory follows the load").

        Call it often (the worker's sweeper does, under the lock that serializes writes): it
        decides at most every TRIM_INTERVAL what to give back, and gives back at most
        TRIM_MAX_RELEASE bytes per call, because `madvise` costs ~0.2 ms per MiB and runs on
        the event loop (releasing a 60 MiB burst at once held requests for ~13 ms). Returns the
        bytes given back."""
        if now - self._trim_at >= layout.TRIM_INTERVAL:
            self._plan_trim(now)
        released = 0
        while self._to_release and released < layout.TRIM_MAX_RELEASE:
            start, end = self._to_release.pop()
            start = max(start, self._reserved_to)  # the writer may have reserved (and written) since
            if start >= end:
                continue
            cut = min(end, start + layout.TRIM_MAX_RELEASE - released)
            if cut < end:  # stop at a page boundary, so the rest is whole pages next time
                cut -= (_DATA + cut % self.capacity) % _PAGE
                if cut <= start:
                    self._to_release.append((start, end))
                    break
                self._to_release.append((cut, end))
            for a, b in self._spans(start, cut):
                first = -(-(_DATA + a) // _PAGE) * _PAGE  # whole pages only
                last = (_DATA + b) // _PAGE * _PAGE
                if last > first:
                    self._mm.madvise(mmap.MADV_REMOVE, first, last - first)
                    released += last - first
        return released

    def _plan_trim(self, now: float) -> None:
        elapsed = now - self._trim_at
        head = self._head
        written = head - self._trim_head
        self._trim_head, self._trim_at = head, now
        if written > layout.TRIM_MAX_RATE * elapsed:
            self._to_release.clear()  # busy: the pages will be written again soon
            return
        self._tail = layout.load_u64(self._mm, _OFF_TAIL)
        # Keep what about two intervals of writes at the recent rate need.
        keep_to = head + max(layout.TRIM_KEEP, int(2 * written * layout.TRIM_INTERVAL / elapsed))
        free_end = self._tail + self.capacity
        if keep_to < self._reserved_to:  # reserved ahead, not needed soon
            self._to_release.append((keep_to, min(self._reserved_to, free_end)))
            self._reserved_to = keep_to
        if max(self._released_to, keep_to) < free_end:  # consumed by the reader since
            self._to_release.append((max(self._released_to, keep_to), free_end))
        self._released_to = max(self._released_to, free_end)

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
