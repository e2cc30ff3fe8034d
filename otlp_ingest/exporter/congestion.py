"""`SendWindow`: how many send attempts an exporter lets run at once (slow start after trouble).

The window starts at 1, doubles with every acknowledged attempt up to `limit`
(settings.export_concurrency) and falls back to 1 on every retryable failure (backend down,
overloaded, timing out). So while the backend is failing only one attempt is on the wire at a
time, and when it comes back the queued backlog is resent 1, 2, 4, ... batches at once instead of
every sending thread firing together (no thundering herd against a backend that just recovered).
Permanent and "too large" failures say nothing about the backend's health and leave it alone.

Sending threads call `acquire` before an attempt and `release` after it. `close` (the shutdown
deadline) wakes every waiter at once; they raise `RetryAborted`.
"""

from __future__ import annotations

import threading

from otlp_ingest.exporter.retry import RetryAborted

OK = "ok"
RETRY = "retry"
OTHER = "other"


class SendWindow:
    """A semaphore whose size follows the backend's health (see the module docstring)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.window = 1
        self.active = 0
        self._closed = False
        self._cond = threading.Condition()

    def acquire(self) -> None:
        """Wait for a free slot; raises RetryAborted once `close` was called."""
        with self._cond:
            while not self._closed and self.active >= self.window:
                # close() notifies; the timeout is only a safety net.
                self._cond.wait(1.0)
            if self._closed:
                raise RetryAborted()
            self.active += 1

    def release(self, outcome: str) -> None:
        """Free the slot; `outcome` is OK (double), RETRY (back to 1) or OTHER (unchanged)."""
        with self._cond:
            self.active -= 1
            if outcome == OK:
                self.window = min(self.limit, self.window * 2)
            elif outcome == RETRY:
                self.window = 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
