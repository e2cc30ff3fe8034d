"""Logging for every process of the tree: one line per event, on stderr.

Line format (space separated, message last so it may contain spaces)::

    2024-05-01T12:00:00.123Z INFO worker[2] 12345 listening on 0.0.0.0:4317

`configure_logging` is called once per process (supervisor and each child) before it logs
anything. `RateLimitedLogger` keeps hot-path events (queue full, send failures) from flooding the
log: each key is logged at most once per interval, with the number of lines it suppressed.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

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
