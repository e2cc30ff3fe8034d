"""Logging for every process of the tree: one line per event, on stderr.

Line format (space separated, message last so it may contain spaces)::

    2024-05-01T12:00:00.123Z INFO worker[2] 12345 listening on 0.0.0.0:4317

`configure_logging` is called once per process (supervisor and each child) before it logs
anything. `RateLimitedLogger` keeps hot-path events (queue full, send failures) from flooding the
log: each key is logged at most once per interval, with the number of lines it suppressed.

Every process also keeps its last warnings and errors in memory (`RECENT_WARNINGS`, a
`WarningBuffer` fed by a handler that `configure_logging` installs) for the admin status page:
the supervisor reads its own, the children publish theirs in their status file
(`telemetry.child_status`). The buffer is rate-limited too, so a warning logged in a loop takes
one slot with a count, not the whole buffer.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _LineFormatter(logging.Formatter):
    """`ts level role[index] pid message`, UTC timestamps with milliseconds, one physical line."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        message = record.getMessage()
        if record.exc_info:
            # Keep one event on one line: tracebacks are folded with " | ".
            message = f"{message} | {self.formatException(record.exc_info)}"
        message = message.replace("\n", " | ")
        return f"{ts}.{int(record.msecs):03d}Z {record.levelname} {self.role} {record.process} {message}"


def configure_logging(level: str, role: str, index: int | None = None) -> None:
    """Send this process's logs to stderr as `ts level role[index] pid message`.

    `role` is "supervisor", "worker" or "exporter"; `index` the child's slot number. Replaces the
    handler an earlier call installed, so calling it again (after a config reload) is safe.
    """
    name = role if index is None else f"{role}[{index}]"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LineFormatter(name))
    handler._otlp_ingest = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_otlp_ingest", False):  # leave handlers others installed (pytest's)
            root.removeHandler(old)
    root.addHandler(handler)
    warnings = WarningBufferHandler(RECENT_WARNINGS)
    warnings._otlp_ingest = True  # type: ignore[attr-defined]
    root.addHandler(warnings)
    root.setLevel(_LEVELS.get(level.lower(), logging.INFO))
    # Libraries that log per request would drown the one-line-per-event log.
    for noisy in ("grpc._server", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class RateLimitedLogger:
    """Log each `key` at most once per `interval` seconds, then report how many were suppressed.

    Thread-safe. `clock` is injectable for tests.

    >>> limited = RateLimitedLogger(logging.getLogger(__name__), interval=10.0)
    >>> limited.warning("queue_full", "ring %s full: refusing request", "w0")  # doctest: +SKIP
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0, clock=time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._next_at: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, key: str, level: int, msg: str, *args: object) -> bool:
        """Log now if `key` is due (returns True), else count it as suppressed (returns False)."""
        now = self._clock()
        with self._lock:
            if now < self._next_at.get(key, float("-inf")):
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._next_at[key] = now + self.interval
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            msg = f"{msg} ({suppressed} similar suppressed in the last {self.interval:g}s)"
        self.logger.log(level, msg, *args)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(key, logging.WARNING, msg, *args)

    def error(self, key: str, msg: str, *args: object) -> bool:
        return self.log(key, logging.ERROR, msg, *args)

    def info(self, key: str, msg: str, *args: object) -> bool:
        return self.log(key, logging.INFO, msg, *args)


@dataclass(slots=True, eq=False)  # eq=False: `in` the deque means this very entry
class WarningEntry:
    """One remembered warning: first and last time (wall clock, seconds since the epoch), level
    name, logger, the latest message text and how many times it was logged in its window."""

    time: float
    last: float
    level: str
    logger: str
    message: str
    count: int = 1

    def to_dict(self) -> dict[str, object]:
        return {
            "time": round(self.time, 3),
            "last": round(self.last, 3),
            "level": self.level,
            "logger": self.logger,
            "message": self.message,
            "count": self.count,
        }


class WarningBuffer:
    """The last `capacity` warnings and errors of this process, rate-limited per message.

    A message (same logger, level and format string) logged again within `interval` seconds of
    its entry's first time does not take a new slot: it bumps that entry's count and last time
    and replaces its text. So a warning logged on every request costs one slot and a lock per
    call, and the buffer still shows the other, rarer warnings. Thread-safe; `generation` grows
    with every change so a reader can tell cheaply whether anything is new.
    """

    MAX_MESSAGE = 500  # characters kept of one message: enough for an error and its cause

    def __init__(self, capacity: int = 20, interval: float = 10.0, clock=time.time) -> None:
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: deque[WarningEntry] = deque(maxlen=capacity)
        self._open: dict[tuple[str, int, str], WarningEntry] = {}  # key -> entry still in its window
        self.generation = 0

    def add(self, logger: str, levelno: int, template: str, message: str) -> None:
        now = self._clock()
        if len(message) > self.MAX_MESSAGE:
            message = message[: self.MAX_MESSAGE - 3] + "..."
        key = (logger, levelno, template)
        with self._lock:
            entry = self._open.get(key)
            if entry is not None and now - entry.time < self.interval and entry in self._entries:
                entry.count += 1
                entry.last = now
                entry.message = message
            else:
                entry = WarningEntry(now, now, logging.getLevelName(levelno), logger, message)
                self._entries.append(entry)
                self._open[key] = entry
                if len(self._open) > 4 * (self._entries.maxlen or 1):  # forget closed windows
                    self._open = {k: e for k, e in self._open.items() if now - e.time < self.interval}
            self.generation += 1

    def entries(self) -> list[dict[str, object]]:
        """Oldest first, as plain dicts (the status file's `warnings`)."""
        with self._lock:
            return [e.to_dict() for e in self._entries]


class WarningBufferHandler(logging.Handler):
    """Feeds WARNING and above into a WarningBuffer. Formats only records at that level, which
    the hot paths already rate-limit (RateLimitedLogger), so it adds nothing to a normal request."""

    def __init__(self, buffer: WarningBuffer) -> None:
        super().__init__(logging.WARNING)
        self.buffer = buffer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                message = f"{message} | {record.exc_info[1]!r}"
            self.buffer.add(record.name, record.levelno, str(record.msg), message.replace("\n", " | "))
        except Exception:  # never let the status page's buffer break logging
            self.handleError(record)


# This process's buffer: one per process, kept across configure_logging calls (a reload).
RECENT_WARNINGS = WarningBuffer()
