"""Reconcile what clients were told against what the backend received.

Senders record every request they made into a `Ledger`: its id, the item keys it carried (the
recording backend's keys, see `otlp_ingest.loadgen.PayloadFactory.keys`), its signal, which
sender sent it, and the outcome the client saw:

- `ACKED`: OK / HTTP 200. The server promised the items; each must reach the backend.
- `REFUSED`: a retryable refusal with a hint (UNAVAILABLE + RetryInfo / 503 or 429 +
  Retry-After). The server said "not taken": it must not deliver them either, or a client that
  retries (as it should) creates a duplicate.
- `FAILED`: anything else (connection reset by a killed worker, timeout, draining listener).
  The client cannot know; delivering them is allowed (the server may have written the record
  before the connection died), losing them is allowed too.

`reconcile(ledger, backend.records())` counts, in items, and the fault tests assert on it;
`Reconciliation.line(scenario)` is the one line per scenario that the closing note quotes:

    FAULT sigkill-worker: sent=8120 acked=7930 refused=0 delivered=7990 duplicates=0 lost=0
        | requests=812 failed=190 unacked_delivered=60 refused_delivered=0 duplicate_bound=0
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ACKED = "acked"
REFUSED = "refused"
FAILED = "failed"
OUTCOMES = (ACKED, REFUSED, FAILED)


@dataclass(frozen=True)
class Entry:
    """One request as its client saw it. `key_source` is the keys, or a function making them:
    a run of big requests (4000 spans each) would otherwise hold millions of strings."""

    request_id: str
    signal: str
    items: int
    key_source: Sequence[str] | Callable[[], Sequence[str]]
    outcome: str
    sender: str

    def item_keys(self) -> Sequence[str]:
        source = self.key_source
        return source() if callable(source) else source


class Ledger:
    """Thread-safe record of every request the senders made (in completion order)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[Entry] = []
        self._ids: set[str] = set()

    def record(
        self,
        request_id: str,
        keys: Iterable[str] | Callable[[], Sequence[str]],
        outcome: str,
        signal: str = "traces",
        sender: str = "",
        items: int | None = None,
    ) -> None:
        """Record one finished request. Ids must be unique: a retry is a new request (new ids).
        `keys` may be a function (then `items` must say how many it returns)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
        if callable(keys):
            if items is None:
                raise ValueError("items is required when keys is a function")
            source: Sequence[str] | Callable[[], Sequence[str]] = keys
        else:
            source = tuple(keys)
            items = len(source)
        entry = Entry(request_id, signal, items, source, outcome, sender)
        with self._lock:
            if request_id in self._ids:
                raise ValueError(f"request id {request_id!r} recorded twice")
            self._ids.add(request_id)
            self._entries.append(entry)

    def entries(self) -> list[Entry]:
        with self._lock:
            return list(self._entries)

    def count(self, outcome: str | None = None) -> int:
        """Requests with `outcome` (all requests with None)."""
        with self._lock:
            return sum(1 for e in self._entries if outcome is None or e.outcome == outcome)

    def acked_keys(self, sender: str | None = None) -> list[str]:
        """Keys of acked requests in ack order (of one sender, or all)."""
        return [
            k
            for e in self.entries()
            if e.outcome == ACKED and (sender is None or e.sender == sender)
            for k in e.item_keys()
        ]


@dataclass
class Reconciliation:
    """Counts in items (spans, points, log records), except `requests`."""

    requests: int = 0
    sent: int = 0
    acked: int = 0
    refused: int = 0
    failed: int = 0
    delivered: int = 0  # distinct sent items the backend holds
    duplicates: int = 0  # extra deliveries of sent items (count - 1 per item)
    unacked_delivered: int = 0  # FAILED items that arrived anyway: allowed
    refused_delivered: int = 0  # REFUSED items that arrived: the server told a client a lie
    lost: int = 0  # ACKED items that never arrived: must be 0
    unknown: int = 0  # items at the backend no sender ever sent: must be 0
    lost_sample: list[str] = field(default_factory=list)

    def line(self, scenario: str, max_duplicates: int | None = None) -> str:
        """`FAULT <scenario>: sent=.. acked=.. refused=.. delivered=.. duplicates=.. lost=..` and
        the details after it."""
        bound = "" if max_duplicates is None else f" duplicate_bound={max_duplicates}"
        return (
            f"FAULT {scenario}: sent={self.sent} acked={self.acked} refused={self.refused}"
            f" delivered={self.delivered} duplicates={self.duplicates} lost={self.lost}"
            f" | requests={self.requests} failed={self.failed}"
            f" unacked_delivered={self.unacked_delivered} refused_delivered={self.refused_delivered}"
            f"{bound}"
        )

    def check(self, scenario: str, max_duplicates: int = 0) -> None:
        """Print the FAULT line, then assert the promise: nothing acked lost, nothing refused or
        unknown delivered, duplicates within the scenario's bound, and some load got through."""
        print(f"\n{self.line(scenario, max_duplicates)}", flush=True)
        assert self.acked > 0, f"{scenario}: nothing was acknowledged, the test proved nothing"
        assert self.lost == 0, f"{scenario}: {self.lost} acknowledged items lost, e.g. {self.lost_sample}"
        assert self.refused_delivered == 0, f"{scenario}: {self.refused_delivered} refused items delivered"
        assert self.unknown == 0, f"{scenario}: {self.unknown} delivered items nobody sent"
        assert self.duplicates <= max_duplicates, (
            f"{scenario}: {self.duplicates} duplicate items, bound {max_duplicates}"
        )


def _counts(backend_records: Mapping[str, Any], signal: str) -> Mapping[str, int]:
    """`{key: count}` of one signal from `RecordingBackend.records()` (or from one signal's entry)."""
    if "keys" in backend_records:
        return backend_records["keys"]
    return backend_records.get(signal, {}).get("keys", {})


def reconcile(ledger: Ledger, backend_records: Mapping[str, Any]) -> Reconciliation:
    """Compare the ledger with the backend's records (`RecordingBackend.records()`)."""
    r = Reconciliation()
    entries = ledger.entries()
    signals = {e.signal for e in entries} or {"traces"}
    counts = {s: _counts(backend_records, s) for s in signals}
    sent_keys: dict[str, set[str]] = {s: set() for s in signals}
    for e in entries:
        n = e.items
        keys = e.item_keys()
        r.requests += 1
        r.sent += n
        got = counts[e.signal]
        arrived = [k for k in keys if got.get(k, 0) > 0]
        sent_keys[e.signal].update(arrived)
        r.delivered += len(arrived)
        r.duplicates += sum(got[k] - 1 for k in arrived)
        if e.outcome == ACKED:
            r.acked += n
            missing = [k for k in keys if got.get(k, 0) == 0]
            r.lost += len(missing)
            r.lost_sample.extend(missing[: max(0, 5 - len(r.lost_sample))])
        elif e.outcome == REFUSED:
            r.refused += n
            r.refused_delivered += len(arrived)
        else:
            r.failed += n
            r.unacked_delivered += len(arrived)
    r.unknown = sum(1 for s in signals for k in counts[s] if k not in sent_keys[s])
    return r
