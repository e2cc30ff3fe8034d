"""The consumer side of a write-ahead log: one exporter reads durable records and commits them
once the backend acknowledged them; fully committed segments are deleted."""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import os

from otlp_ingest.ring.layout import Record
from otlp_ingest.wal import layout
from otlp_ingest.wal.layout import State, WalUsage
from otlp_ingest.wal.lock import lock, try_lock, unlock
from otlp_ingest.wal.recovery import RecoveryReport, check_record, quarantine, recover_tail

log = logging.getLogger(__name__)

_HDR = layout.RECORD_HEADER_SIZE


class WalReader:
    """Reads records from one log directory, following a writer that may be running in another
    process. Exactly one process may hold a reader for a directory at a time.

    Same shape as ``otlp_ingest.ring.RingReader``: a private read cursor (``read`` may run ahead
    of the committed offset, so several batches can be in flight), ``commit`` (cumulative, in
    order, durable: the committed offset survives a crash, so re-delivery after one is bounded by
    what was read but not committed), ``rewind`` back to the committed offset.

    Only records below the writer's published durable offset are read: an acknowledged request
    is on disk before its exporter ever sends it, and a record still being written is never seen.
    """

    def __init__(self, directory: str, *, lock_timeout: float = 5.0) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self._lock_fd = lock(os.path.join(directory, layout.READER_LOCK), lock_timeout)
        self.recovery_report = RecoveryReport()
        try:
            self._recover_if_writer_gone()
            self._bases = layout.list_segments(directory)
            durable = self._read_durable()
            commit = layout.read_state(os.path.join(directory, layout.COMMIT_FILE))
            if commit is None:
                start = self._bases[0] if self._bases else durable.offset
                commit = State(start, self._first_seq(start, durable))
        except BaseException:
            unlock(self._lock_fd)
            raise
        self._durable = durable
        self._committed = commit.offset
        self._committed_seq = commit.next_seq
        # Records beyond the commit that the backend already acknowledged: skipped by `read`.
        self._acked = [r for r in layout.read_acked(directory) if r[1] >= commit.next_seq]
        self._cursor = self._committed
        self._next_seq = self._committed_seq
        self._seg_base: int | None = None
        self._seg_fd: int | None = None

    @classmethod
    def open(cls, directory: str, **kwargs: float) -> WalReader:
        """Open the log in ``directory`` (created if missing) at its committed offset. If no
        writer is running, repair the tail first (see ``recovery_report``). Always opens unless
        another reader holds the directory (``WalLocked``)."""
        return cls(directory, **kwargs)

    def _recover_if_writer_gone(self) -> None:
        # A live writer repaired the log when it opened and publishes its durable offset. Without
        # one, the durable file may be stale or missing: repair and publish it ourselves, holding
        # the writer lock so a writer starting now waits for us.
        wfd = try_lock(os.path.join(self.directory, layout.WRITER_LOCK))
        if wfd is None:
            return
        try:
            tail, self.recovery_report = recover_tail(self.directory)
            path = os.path.join(self.directory, layout.DURABLE_FILE)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                os.pwrite(fd, layout.encode_state(State(tail.head, tail.next_seq)), 0)
            finally:
                os.close(fd)
        finally:
            unlock(wfd)

    def _read_durable(self) -> State:
        state = layout.read_state(os.path.join(self.directory, layout.DURABLE_FILE))
        if state is None:  # torn read of a rewrite in progress, or no writer yet: keep the old one
            return getattr(self, "_durable", State(0, 0))
        return state

    def _first_seq(self, start: int, durable: State) -> int:
        if not self._bases:
            return durable.next_seq
        fd = os.open(os.path.join(self.directory, layout.segment_name(self._bases[0])), os.O_RDONLY)
        try:
            verdict, _, meta = check_record(fd, start - self._bases[0], 1 << 62)
        finally:
            os.close(fd)
        return meta[3] if verdict == "ok" and meta else durable.next_seq

    # -- reading -------------------------------------------------------------------------------

    def read(self) -> Record | None:
        """The next durable record after the read cursor (advancing it), or None if there is none
        yet. Corrupt data is quarantined and skipped (counted in ``recovery_report``), never
        raised."""
        while True:
            if self._cursor >= self._durable.offset:
                self._durable = self._read_durable()
                if self._cursor >= self._durable.offset:
                    return None
            if not self._locate():
                return None
            base, fd = self._seg_base, self._seg_fd
            assert base is not None and fd is not None
            pos = self._cursor - base
            verdict, end, meta = check_record(fd, pos, self._durable.offset - base)
            if verdict == "ok":
                assert meta is not None
                length, signal, items, seq = meta
                start, self._cursor = self._cursor, base + end
                self._next_seq = seq + 1
                if self._is_acked(seq):
                    continue  # delivered before a crash; a later commit covers it
                payload = os.pread(fd, length, pos + _HDR)
                return Record(seq, signal, items, start, self._cursor, payload)
            size = os.fstat(fd).st_size
            if verdict == "short" and pos >= size:
                # End of this file: the stream continues in the next segment (possibly after a
                # gap left by a quarantine).
                if not self._next_segment_jump(base):
                    return None
                continue
            self._corrupt(base, fd, pos, size)

    def _locate(self) -> bool:
        """Point ``_seg_fd`` at the segment holding the cursor; False if there is none."""
        idx = bisect.bisect_right(self._bases, self._cursor) - 1
        if idx < 0 or (idx == len(self._bases) - 1 and self._cursor > self._bases[idx]):
            self._bases = layout.list_segments(self.directory)
            idx = bisect.bisect_right(self._bases, self._cursor) - 1
        if idx < 0:
            if not self._bases:
                return False
            self._cursor, idx = self._bases[0], 0  # committed offset lies in a deleted gap
        base = self._bases[idx]
        if base != self._seg_base:
            self._close_segment()
            try:
                self._seg_fd = os.open(os.path.join(self.directory, layout.segment_name(base)), os.O_RDWR)
            except FileNotFoundError:
                self._bases = layout.list_segments(self.directory)
                return False
            self._seg_base = base
        return True

    def _next_segment_jump(self, base: int) -> bool:
        later = [b for b in layout.list_segments(self.directory) if b > base]
        self._bases = layout.list_segments(self.directory)
        if not later:
            return False
        self._cursor = max(self._cursor, later[0])
        return True

    def _corrupt(self, base: int, fd: int, pos: int, size: int) -> None:
        """A record that is not valid below the durable offset: quarantine from it to the end of
        a sealed segment (and cut it off), or to the durable offset of the live one and resume
        reading there. Record boundaries after a corrupt length are unknown, but the durable
        offset is one (the end of the last fsynced record), and the live writer keeps appending
        valid records after it: those are acknowledged and must still be read."""
        self._bases = layout.list_segments(self.directory)
        sealed = self._bases[-1] > base
        end = size if sealed else min(size, self._durable.offset - base)
        qpath = quarantine(self.directory, base, fd, pos, end)
        if sealed:
            os.ftruncate(fd, pos)
            os.fsync(fd)
        else:
            self._cursor = base + end
        self.recovery_report.quarantined(qpath, end - pos)
        log.error(
            "write-ahead log %s: corrupt record at offset %d; moved %d bytes to %s",
            self.directory,
            base + pos,
            end - pos,
            qpath or "nowhere (copy failed, dropped)",
        )

    def _is_acked(self, seq: int) -> bool:
        i = bisect.bisect_right(self._acked, (seq, 1 << 64)) - 1
        return i >= 0 and self._acked[i][1] >= seq

    # -- committing ----------------------------------------------------------------------------

    def mark_acked(self, records: list[Record]) -> None:
        """Persist that ``records`` (read, beyond the committed offset, not committable yet because
        an older record is still in flight) were acknowledged, so a restarted reader skips them.
        Durable (fsynced) on return. Costs one small file rewrite per call."""
        seqs = sorted({r.seq for r in records if r.seq >= self._committed_seq})
        if not seqs:
            return
        ranges = [r for r in self._acked if r[1] >= self._committed_seq]
        for seq in seqs:
            ranges.append((seq, seq))
        ranges.sort()
        merged: layout.SeqRanges = []
        for first, last in ranges:
            if merged and first <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], last))
            else:
                merged.append((first, last))
        layout.write_file_atomic(self.directory, layout.ACKED_FILE, layout.encode_acked(merged))
        self._acked = merged

    def commit(self, record: Record) -> None:
        """Mark ``record`` and everything before it delivered: persist the committed offset
        (atomically, fsynced) and delete the segments now wholly below it."""
        if not self._committed < record.end <= self._cursor:
            raise ValueError(
                f"wal {self.directory}: commit of seq {record.seq} (end {record.end}) outside the read "
                f"but uncommitted range ({self._committed}, {self._cursor}]"
            )
        layout.write_state_atomic(self.directory, layout.COMMIT_FILE, State(record.end, record.seq + 1))
        self._committed, self._committed_seq = record.end, record.seq + 1
        self._acked = [r for r in self._acked if r[1] >= self._committed_seq]
        self._delete_committed_segments()

    def _delete_committed_segments(self) -> None:
        bases = layout.list_segments(self.directory)
        for base, successor in itertools.pairwise(bases):
            if successor > self._committed:
                break
            if base == self._seg_base:
                self._close_segment()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.directory, layout.segment_name(base)))
        self._bases = layout.list_segments(self.directory)

    def rewind(self) -> None:
        """Move the read cursor back to the committed offset (re-read everything uncommitted)."""
        self._cursor = self._committed
        self._next_seq = self._committed_seq

    def usage(self) -> WalUsage:
        """Durable records and bytes not yet committed (for the queue gauges)."""
        self._durable = self._read_durable()
        return WalUsage(
            records=max(0, self._durable.next_seq - self._committed_seq),
            used_bytes=max(0, self._durable.offset - self._committed),
        )

    @property
    def committed(self) -> int:
        return self._committed

    @property
    def cursor(self) -> int:
        return self._cursor

    def pending(self) -> bool:
        """True if durable records lie beyond the read cursor."""
        self._durable = self._read_durable()
        return self._durable.offset > self._cursor

    def uncommitted(self) -> bool:
        """True if durable records lie beyond the committed offset."""
        self._durable = self._read_durable()
        return self._durable.offset > self._committed

    def _close_segment(self) -> None:
        if self._seg_fd is not None:
            os.close(self._seg_fd)
        self._seg_fd = self._seg_base = None

    def close(self) -> None:
        """Close files and release the directory. Uncommitted records stay for the next reader."""
        self._close_segment()
        if self._lock_fd >= 0:
            unlock(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> WalReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
