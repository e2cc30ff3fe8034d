"""Commit bookkeeping: which ring records may be committed, in ring order.

Records read from one ring interleave signals and land in different batches that complete out of
order, but `RingReader.commit` must be called in ring order. So each ring keeps an ordered queue of
its uncommitted records with a `done` flag (acknowledged by the backend/sink, or given up); the
longest done prefix is committed. A record is never committed before its batch was acknowledged,
so a crashed exporter's replacement re-reads it (at-least-once).

The caller tracks records without their payload (the batch holds it): commit and mark_acked need
only seq/start/end, and a done record may wait here long after its batch is gone.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

R = TypeVar("R")


class PendingEntry(Generic[R]):
    """One uncommitted record; `done` once its batch was acknowledged or given up."""

    __slots__ = ("done", "record", "ring")

    def __init__(self, ring: int, record: R) -> None:
        self.ring = ring
        self.record = record
        self.done = False


class PendingRing(Generic[R]):
    """The uncommitted records of one ring, in the order they were read."""

    def __init__(self, ring: int) -> None:
        self.ring = ring
        self._entries: deque[PendingEntry[R]] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    def track(self, record: R) -> PendingEntry[R]:
        entry = PendingEntry(self.ring, record)
        self._entries.append(entry)
        return entry

    def pop_committable(self) -> list[R]:
        """Remove and return the records of the leading done prefix, oldest first."""
        out: list[R] = []
        entries = self._entries
        while entries and entries[0].done:
            out.append(entries.popleft().record)
        return out

    def has_done(self) -> bool:
        """True if some record is done but not committable (an older record is still open)."""
        return any(e.done for e in self._entries)

    def done_records(self) -> list[R]:
        """Records acknowledged but not committable yet (an older record is still open)."""
        return [e.record for e in self._entries if e.done]
