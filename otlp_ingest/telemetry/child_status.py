"""Per-child status files: how a worker or exporter tells the supervisor what metrics cannot.

The admin status page shows things only a child knows: an exporter's state (retrying, its
backoff, the last error, backend latency) and every process's recent warnings. Each child writes
them to a small JSON file in the supervisor's run directory, from a timer thread, at most once
per `INTERVAL`; nothing on the request path touches it (warnings reach the buffer through a
logging handler, and the hot paths already rate-limit their warnings). The supervisor reads the
files from its status sampler (`supervisor.status`), only when their mtime changed, and removes
the file of a child that has exited once it has read its last warnings.

File: ``$OTLP_INGEST_STATUS_DIR/status-<pid>.json`` (the supervisor's run directory, the same as
``PROMETHEUS_MULTIPROC_DIR``). Written to ``.status-<pid>.json.tmp`` and renamed over, so a
reader sees a whole file or the previous one. UTF-8 JSON, one object::

    {
      "format": 1,                  # this layout; readers ignore files of another format
      "role": "exporter",           # "worker" | "exporter"
      "index": 0,                   # the child's slot
      "pid": 4242,
      "started": 1732700000.512,    # wall clock (s since the epoch) when the writer started
      "written": 1732700010.530,    # wall clock of this write
      "warnings": [                 # last warnings/errors of the process, oldest first
        {"time": 1732700009.1, "last": 1732700010.2, "level": "WARNING",
         "logger": "otlp_ingest.exporter.main", "message": "...", "count": 3}
      ],
      "exporter": {...}             # sections added with add_section (exporter: exporter/state.py)
    }

When: once at start (so the supervisor sees the pid at once), then on a 1 s timer only when the
content (all but "written") changed, and once more when the child exits normally. An idle child
therefore writes nothing; a child killed with SIGKILL loses at most its last second.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from otlp_ingest.telemetry.logging import RECENT_WARNINGS, WarningBuffer

log = logging.getLogger(__name__)

STATUS_DIR_ENV = "OTLP_INGEST_STATUS_DIR"
FORMAT = 1
INTERVAL = 1.0  # seconds between checks: the page refreshes every 1-2 s
PREFIX = "status-"
SUFFIX = ".json"


def status_path(directory: str, pid: int) -> str:
    """The status file of child `pid` in the supervisor's run directory."""
    return os.path.join(directory, f"{PREFIX}{pid}{SUFFIX}")


def pid_of(filename: str) -> int | None:
    """The pid in a status file's name, or None if the name is not one."""
    if not (filename.startswith(PREFIX) and filename.endswith(SUFFIX)):
        return None
    digits = filename[len(PREFIX) : -len(SUFFIX)]
    return int(digits) if digits.isdigit() else None


def read_status_file(path: str) -> dict[str, Any] | None:
    """A child's status as written, or None when missing, unreadable, or not this format."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("pid"), int):
        return None
    if not isinstance(doc.get("warnings"), list):
        doc["warnings"] = []
    return doc


class ChildStatusWriter:
    """Owns one child's status file and the timer thread that writes it (module docstring).

    `add_section(name, provider)`: `provider()` is called from the timer thread and must return
    a JSON-serialisable dict quickly, without blocking (it reads a few fields under a lock)."""

    def __init__(
        self,
        directory: str,
        role: str,
        index: int,
        *,
        pid: int | None = None,
        interval: float = INTERVAL,
        warnings: WarningBuffer = RECENT_WARNINGS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.path = status_path(directory, self.pid)
        self._tmp = os.path.join(directory, f".{PREFIX}{self.pid}{SUFFIX}.tmp")
        self.role = role
        self.index = index
        self._interval = interval
        self._warnings = warnings
        self._clock = clock
        self.started = clock()
        self._sections: dict[str, Callable[[], dict[str, Any]]] = {}
        self._last: bytes = b""
        self._failed_sections: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # the timer and close() may both write

    def add_section(self, name: str, provider: Callable[[], dict[str, Any]]) -> None:
        self._sections[name] = provider

    def start(self) -> None:
        self.write_if_changed()
        self._thread = threading.Thread(target=self._run, name="child-status", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.write_if_changed()

    def document(self) -> dict[str, Any]:
        """The status as it would be written now, without "written"."""
        doc: dict[str, Any] = {
            "format": FORMAT,
            "role": self.role,
            "index": self.index,
            "pid": self.pid,
            "started": round(self.started, 3),
            "warnings": self._warnings.entries(),
        }
        for name, provider in list(self._sections.items()):
            try:
                doc[name] = provider()
            except Exception:  # a provider bug must not stop the warnings from reaching the page
                if name not in self._failed_sections:
                    self._failed_sections.add(name)
                    log.exception("status section %s failed", name)
        return doc

    def write_if_changed(self) -> bool:
        """Write the file if its content changed since the last write; True if it wrote."""
        with self._lock:
            doc = self.document()
            body = json.dumps(doc, separators=(",", ":")).encode()
            if body == self._last:
                return False
            doc["written"] = round(self._clock(), 3)
            try:
                with open(self._tmp, "wb") as f:
                    f.write(json.dumps(doc, separators=(",", ":")).encode())
                os.replace(self._tmp, self.path)
            except OSError as exc:  # run dir gone (supervisor exiting): nothing to tell
                log.debug("cannot write %s: %s", self.path, exc)
                return False
            self._last = body
            return True

    def close(self) -> None:
        """Stop the timer and write the final state (the last warnings before a normal exit)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self.write_if_changed()


_current: ChildStatusWriter | None = None


def start_child_status(role: str, index: int) -> ChildStatusWriter | None:
    """Start this process's writer if the supervisor named a directory (`STATUS_DIR_ENV`);
    `current()` returns it afterwards. None outside a supervised child."""
    global _current
    directory = os.environ.get(STATUS_DIR_ENV)
    if not directory or not os.path.isdir(directory):
        return None
    _current = ChildStatusWriter(directory, role, index)
    _current.start()
    return _current


def current() -> ChildStatusWriter | None:
    """This process's writer (started by child_main), for code that adds a section."""
    return _current


def stop_child_status() -> None:
    global _current
    if _current is not None:
        with contextlib.suppress(Exception):
            _current.close()
        _current = None
