"""The producer side of a write-ahead log: one receiver worker appends; a background thread fsyncs
(group commit) and tells waiting requests when their record is on disk."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable

from otlp_ingest.wal import layout
from otlp_ingest.wal.layout import DiskFull, State
from otlp_ingest.wal.lock import lock, unlock
from otlp_ingest.wal.recovery import recover_tail

log = logging.getLogger(__name__)

_HDR = layout.RECORD_HEADER_SIZE
_IDLE_WAKE = 1.0  # the sync thread re-checks at least this often even without appends


def _disk_error(e: OSError) -> bool:
    return e.errno in layout.DISK_ERRNOS


class WalWriter:
    """Appends records to one log directory. Exactly one process may hold a writer for a directory.

    ``append`` writes the record into the page cache (one ``pwritev``) and returns its ticket, the
    stream offset just past it. It is *not* durable yet: the fsync thread covers every record
    appended before it started an fsync with that one fsync (group commit), then advances
    ``durable_offset`` and wakes ``wait_durable`` callers and durable callbacks. A request must be
    acknowledged only after that.

    Thread-safe: appends from many threads are serialized by one lock (held only for the write).
    """

    def __init__(
        self, directory: str, segment_bytes: int, max_bytes: int, *, lock_timeout: float = 5.0
    ) -> None:
        if segment_bytes < 1 or max_bytes < _HDR + 1:
            raise ValueError(f"segment_bytes {segment_bytes} / max_bytes {max_bytes} too small")
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self.max_payload = min(max_bytes - _HDR, layout.MAX_PAYLOAD)
        os.makedirs(directory, exist_ok=True)
        self._lock_fd = lock(os.path.join(directory, layout.WRITER_LOCK), lock_timeout)
        try:
            tail, self.recovery_report = recover_tail(directory)
            self._head = tail.head
            self._next_seq = tail.next_seq
            self._seg_base = tail.head if tail.segment_base is None else tail.segment_base
            self._seg_size = tail.segment_size
            self._fd = os.open(
                os.path.join(directory, layout.segment_name(self._seg_base)), os.O_RDWR | os.O_CREAT, 0o600
            )
            os.fsync(self._fd)
            layout.fsync_dir(directory)
            commit = layout.read_state(os.path.join(directory, layout.COMMIT_FILE))
            self._committed = commit.offset if commit else layout.list_segments(directory)[0]
            self._durable_fd = os.open(
                os.path.join(directory, layout.DURABLE_FILE), os.O_RDWR | os.O_CREAT, 0o600
            )
        except BaseException:
            unlock(self._lock_fd)
            raise
        self._durable = self._head
        self._durable_seq = self._next_seq
        os.pwrite(self._durable_fd, layout.encode_state(State(self._head, self._next_seq)), 0)

        self._mutex = threading.Lock()  # head, segment, pending fds
        self._cond = threading.Condition(threading.Lock())  # durable offset, failures, callbacks
        self._dirty = threading.Event()
        self._pending_fds: list[int] = []  # sealed segments not yet fsynced (the sync thread closes them)
        self._dir_dirty = False
        self._roll_next = False  # after an fsync failure: new records go to a fresh file
        self._closing = False
        self._closed = False
        self._failed: list[tuple[int, int]] = []  # [lo, hi) ticket ranges whose fsync failed
        self._callbacks: list[tuple[int, int, Callable[[bool], None]]] = []  # heap by ticket
        self._tiebreak = itertools.count()
        self.fsync_count = 0
        self.sync_errors = 0
        self._last_error_log = 0.0
        self._thread = threading.Thread(target=self._sync_loop, name="wal-fsync", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, directory: str, segment_bytes: int, max_bytes: int, **kwargs: float) -> WalWriter:
        """Open (creating if needed) the log in ``directory`` and recover it: a torn tail of the
        last segment is cut, a corrupt remainder quarantined (see ``recovery_report``). Always
        opens unless another writer holds the directory (``WalLocked``) or the directory itself
        cannot be written (OSError)."""
        return cls(directory, segment_bytes, max_bytes, **kwargs)

    # -- appending ---------------------------------------------------------------------------

    def append(self, signal: int, item_count: int, payload: bytes | memoryview) -> int | None:
        """Write one record; returns its ticket (the stream offset just past it), or None when
        the log would exceed ``max_bytes`` of uncommitted data or the payload exceeds
        ``max_payload`` (refuse with a retryable QueueFull). DiskFull if the disk refuses the
        write (nothing is appended; the writer stays usable)."""
        n = len(payload)
        if n > self.max_payload:
            return None
        size = _HDR + n
        with self._mutex:
            if self._closing:
                raise ValueError("write-ahead log writer is closed")
            if self._head + size - self._committed > self.max_bytes:
                self._committed = self._read_committed()
                if self._head + size - self._committed > self.max_bytes:
                    return None
            if self._seg_size and (self._roll_next or self._seg_size + size > self.segment_bytes):
                self._roll()
            header = layout.encode_header(signal, item_count, self._next_seq, payload)
            try:
                written = os.pwritev(self._fd, [header, payload], self._seg_size)
            except OSError as e:
                self._undo_partial()
                if _disk_error(e):
                    raise DiskFull(f"write-ahead log: {e.strerror}") from e
                raise
            if written != size:  # a short write is what a filling disk does first
                self._undo_partial()
                raise DiskFull("write-ahead log: short write (disk full?)")
            self._seg_size += size
            self._head += size
            self._next_seq += 1
            ticket = self._head
        self._dirty.set()
        return ticket

    def _undo_partial(self) -> None:
        """Cut whatever part of a failed record reached the file (a reader never trusts it
        anyway: it lies beyond the durable offset, and its crc would not match)."""
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self._seg_size)

    def _roll(self) -> None:
        path = os.path.join(self.directory, layout.segment_name(self._head))
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as e:
            if _disk_error(e):
                raise DiskFull(f"write-ahead log: cannot start a segment: {e.strerror}") from e
            raise
        self._pending_fds.append(self._fd)
        self._fd, self._seg_base, self._seg_size = fd, self._head, 0
        self._dir_dirty = True
        self._roll_next = False

    def _read_committed(self) -> int:
        commit = layout.read_state(os.path.join(self.directory, layout.COMMIT_FILE))
        return commit.offset if commit else self._committed

    # -- durability ----------------------------------------------------------------------------

    def _failed_ticket(self, ticket: int) -> bool:
        return any(lo < ticket <= hi for lo, hi in self._failed)

    def wait_durable(self, ticket: int, timeout: float | None = None) -> bool:
        """Block until an fsync covers ``ticket``: True, or False on timeout, on an fsync failure
        covering it, or if the writer closed before it was durable."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._durable >= ticket or self._failed_ticket(ticket) or self._closed, timeout
            )
            return bool(ok) and self._durable >= ticket and not self._failed_ticket(ticket)

    def add_durable_callback(self, ticket: int, fn: Callable[[bool], None]) -> None:
        """Call ``fn(ok)`` once ``ticket`` is durable (ok=True) or its fsync failed / the writer
        closed (ok=False). Runs on the fsync thread (or right here if already decided): keep
        ``fn`` short and non-blocking, e.g. ``loop.call_soon_threadsafe``."""
        with self._cond:
            decided = self._durable >= ticket or self._failed_ticket(ticket) or self._closed
            ok = self._durable >= ticket and not self._failed_ticket(ticket)
            if not decided:
                heapq.heappush(self._callbacks, (ticket, next(self._tiebreak), fn))
                return
        fn(ok)

    def durable_future(self, ticket: int, loop: asyncio.AbstractEventLoop) -> asyncio.Future[bool]:
        """An asyncio future on ``loop`` resolving to the ``add_durable_callback`` verdict, so an
        event loop can await durability without blocking its other requests."""
        future: asyncio.Future[bool] = loop.create_future()

        def resolve(ok: bool) -> None:
            if not future.done():
                future.set_result(ok)

        self.add_durable_callback(ticket, lambda ok: loop.call_soon_threadsafe(resolve, ok))
        return future

    def _sync_loop(self) -> None:
        while True:
            self._dirty.wait(_IDLE_WAKE)
            with self._mutex:
                self._dirty.clear()
                target, seq = self._head, self._next_seq
                fds, self._pending_fds = self._pending_fds, []
                fd, dir_dirty, self._dir_dirty = self._fd, self._dir_dirty, False
                closing = self._closing
            if target > self._durable or fds or dir_dirty:
                try:
                    for old in fds:
                        os.fsync(old)
                    os.fsync(fd)
                    if dir_dirty:
                        layout.fsync_dir(self.directory)
                except OSError as e:
                    self._sync_failed(e, target, fds, dir_dirty)
                else:
                    for old in fds:
                        # Data is already fsynced; a failing close (EIO on some filesystems)
                        # must not kill this thread, or nothing would become durable again.
                        with contextlib.suppress(OSError):
                            os.close(old)
                    self._synced(target, seq)
            if closing:
                return

    def _synced(self, target: int, seq: int) -> None:
        self.fsync_count += 1
        with contextlib.suppress(OSError):  # a hint for readers; a full disk must not stop acks
            os.pwrite(self._durable_fd, layout.encode_state(State(target, seq)), 0)
        ready = []
        with self._cond:
            self._durable, self._durable_seq = target, seq
            while self._callbacks and self._callbacks[0][0] <= target:
                ready.append(heapq.heappop(self._callbacks)[2])
            self._cond.notify_all()
        # None of these is in a failed range: those callbacks were failed when the fsync failed,
        # and later ones for such tickets are decided at once in add_durable_callback.
        for fn in ready:
            self._call(fn, True)

    def _sync_failed(self, e: OSError, target: int, fds: list[int], dir_dirty: bool) -> None:
        """An fsync failed: the records since the last good fsync may not be on disk, whatever a
        later fsync says (Linux drops the dirty pages). Fail their waiters (clients retry), put
        new records into a fresh segment, keep the sealed fds for another try."""
        self.sync_errors += 1
        now = time.monotonic()
        if now - self._last_error_log > 10.0:
            self._last_error_log = now
            log.error("write-ahead log %s: fsync failed: %s", self.directory, e)
        with self._mutex:
            self._pending_fds[:0] = fds
            self._dir_dirty = self._dir_dirty or dir_dirty
            self._roll_next = True
        failed = []
        with self._cond:
            # Never forget a failed range (a late waiter must still get False). Failures while
            # the durable offset stands still share its start: one growing range, so the list
            # grows only by one per failure episode, not per failed fsync.
            if self._failed and self._failed[-1][0] == self._durable:
                self._failed[-1] = (self._durable, max(self._failed[-1][1], target))
            else:
                self._failed.append((self._durable, target))
            keep = []
            for item in self._callbacks:
                (failed if item[0] <= target else keep).append(item)
            self._callbacks = keep
            heapq.heapify(self._callbacks)
            self._cond.notify_all()
        for item in failed:
            self._call(item[2], False)
        threading.Event().wait(0.05)  # do not spin on a broken disk; appends keep being refused

    @staticmethod
    def _call(fn: Callable[[bool], None], ok: bool) -> None:
        try:
            fn(ok)
        except Exception:
            log.exception("write-ahead log durable callback failed")

    # -- state ---------------------------------------------------------------------------------

    @property
    def head(self) -> int:
        """Stream offset just past the last appended record."""
        return self._head

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def durable_offset(self) -> int:
        """Every record ending at or below this offset is fsynced."""
        return self._durable

    def close(self) -> None:
        """Final fsync, stop the fsync thread, close files, release the directory. Waiters still
        pending afterwards (their fsync failed) get False."""
        with self._mutex:
            if self._closing:
                return
            self._closing = True
        self._dirty.set()
        self._thread.join()
        leftover = []
        with self._cond:
            self._closed = True
            leftover, self._callbacks = self._callbacks, []
            self._cond.notify_all()
        for item in leftover:
            self._call(item[2], False)
        for fd in [*self._pending_fds, self._fd, self._durable_fd]:
            with contextlib.suppress(OSError):
                os.close(fd)
        unlock(self._lock_fd)

    def __enter__(self) -> WalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
