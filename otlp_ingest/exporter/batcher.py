"""Per-signal batch assembly by wire-level concatenation.

A serialized `Export*ServiceRequest` holds only `repeated` field 1 (resource_spans /
resource_metrics / resource_logs), so the concatenation of several serialized requests *is* the
serialized merged request: a batch is a list of ring payloads joined once when sent. Nothing is
decoded or re-encoded.

A batch closes when it reaches `batch_size` items or `max_bytes` bytes, or `timeout` seconds after
its first record. A record that would push a non-empty batch over either limit closes that batch
first and starts the next one; a record bigger than a limit on its own is sent alone (the batcher
never splits records; only a backend's "too large" answer does, see `split.py`). `max_bytes`
(OTLP_BATCH_MAX_BYTES, default 3 MiB) keeps batches below the common 4 MiB gRPC receive limit.
The batcher is a plain data structure: the caller owns the clock and the threads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from otlp_ingest.otlp.signals import Signal

T = TypeVar("T")


@dataclass(slots=True)
class Batch(Generic[T]):
    """Records of one signal to send together. `tokens` are the caller's handles (to ack later)."""

    signal: Signal
    opened_at: float
    payloads: list[bytes] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)  # items per payload (to split the batch)
    tokens: list[T] = field(default_factory=list)
    items: int = 0
    nbytes: int = 0

    def payload(self) -> bytes:
        """The merged Export*ServiceRequest."""
        return self.payloads[0] if len(self.payloads) == 1 else b"".join(self.payloads)

    def parts(self) -> list[tuple[bytes, int]]:
        """(payload, item count) per record, oldest first: the units a too-large batch splits into."""
        return list(zip(self.payloads, self.counts, strict=True))


class Batcher(Generic[T]):
    """Open batches, one per signal; `add`, `expired` and `flush` return batches ready to send."""

    def __init__(self, batch_size: int, max_bytes: int, timeout: float, clock: Callable[[], float]) -> None:
        self.batch_size = max(1, batch_size)
        self.max_bytes = max(1, max_bytes)
        self.timeout = timeout
        self._clock = clock
        self._open: dict[Signal, Batch[T]] = {}

    def __len__(self) -> int:
        """Number of open (not yet closed) batches."""
        return len(self._open)

    def add(self, signal: Signal, item_count: int, payload: bytes, token: T) -> list[Batch[T]]:
        """Add one record; returns the batches this closed (zero, one or two)."""
        closed: list[Batch[T]] = []
        batch = self._open.get(signal)
        if batch is not None and (
            batch.items + item_count > self.batch_size or batch.nbytes + len(payload) > self.max_bytes
        ):
            closed.append(self._open.pop(signal))
            batch = None
        if batch is None:
            batch = self._open[signal] = Batch(signal, self._clock())
        batch.payloads.append(payload)
        batch.counts.append(item_count)
        batch.tokens.append(token)
        batch.items += item_count
        batch.nbytes += len(payload)
        if batch.items >= self.batch_size or batch.nbytes >= self.max_bytes:
            closed.append(self._open.pop(signal))
        return closed

    def expired(self, now: float | None = None) -> list[Batch[T]]:
        """Close and return the batches whose first record is at least `timeout` old."""
        now = self._clock() if now is None else now
        done = [s for s, b in self._open.items() if now - b.opened_at >= self.timeout]
        return [self._open.pop(s) for s in done]

    def next_deadline(self) -> float | None:
        """When the oldest open batch times out (clock units), or None if nothing is open."""
        if not self._open:
            return None
        return min(b.opened_at for b in self._open.values()) + self.timeout

    def flush(self) -> list[Batch[T]]:
        """Close and return every open batch (shutdown drain)."""
        batches = list(self._open.values())
        self._open.clear()
        return batches
