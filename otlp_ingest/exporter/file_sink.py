"""File sink: OTLP JSON Lines, one file per signal, rotated by size.

Layout in settings.data_dir:

- `traces.jsonl`, `metrics.jsonl`, `logs.jsonl`: the current files. Each line is one
  `Export*ServiceRequest` in OTLP/JSON (`json_codec.encode_json_from_wire` of the whole
  concatenated batch), the format the Collector's file exporter writes and its `otlpjsonfile`
  receiver reads.
- `traces-<UTC YYYYmmddTHHMMSSZ>-<n>.jsonl`: rotated files; `n` (0, 1, ...) makes names unique
  when several rotate within one second.
- `.traces.lock` etc.: empty lock files.

Several exporter processes may append to the same file, so size check + rotation + write happen
under `fcntl.flock` on the signal's lock file (not on the data file, which rotation renames away),
and each line is written with a single `os.write` on an O_APPEND descriptor. After a rotation by
another process our cached descriptor points at the renamed file, so it is reopened whenever its
inode no longer matches the path. A line counts as acknowledged once written (no fsync). A short
or failed write (ENOSPC) is truncated back to the size before it, still under the lock, so the
retry never appends a whole line after a fragment.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time

from otlp_ingest.config import Settings
from otlp_ingest.errors import OtlpError
from otlp_ingest.exporter.sender import SendError, SendResult
from otlp_ingest.otlp.json_codec import encode_json_from_wire
from otlp_ingest.otlp.signals import SIGNALS, Signal


class _SignalFile:
    """The current file of one signal, its lock file and this process's descriptor for it."""

    def __init__(self, directory: str, name: str, rotate_bytes: int) -> None:
        self.directory = directory
        self.name = name
        self.path = os.path.join(directory, f"{name}.jsonl")
        self.rotate_bytes = rotate_bytes
        self.lock_fd = os.open(os.path.join(directory, f".{name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        self.fd: int | None = None
        self.thread_lock = threading.Lock()  # flock does not order threads sharing one descriptor

    def _current_fd(self) -> tuple[int, int]:
        """(descriptor of the current file, its size), reopening it if it was rotated away."""
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            on_disk = None
        if self.fd is not None:
            mine = os.fstat(self.fd)
            if on_disk is not None and (mine.st_ino, mine.st_dev) == (on_disk.st_ino, on_disk.st_dev):
                return self.fd, mine.st_size
            os.close(self.fd)
            self.fd = None
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self.fd, os.fstat(self.fd).st_size

    def _rotate(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        n = 0
        while os.path.exists(target := os.path.join(self.directory, f"{self.name}-{stamp}-{n}.jsonl")):
            n += 1
        os.rename(self.path, target)

    def append(self, line: bytes) -> None:
        with self.thread_lock:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
            try:
                fd, size = self._current_fd()
                if size > 0 and size + len(line) > self.rotate_bytes:
                    self._rotate()
                    fd, size = self._current_fd()
                try:
                    written = os.write(fd, line)
                    if written != len(line):  # regular files only write short on ENOSPC and similar
                        raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
                except OSError:
                    # Cut the fragment off while we still hold the lock (nobody appended after it):
                    # the retry appends the whole line, and a fragment before it would corrupt both.
                    # If even this fails, the original error is the one to report.
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, size)
                    raise
            finally:
                fcntl.flock(self.lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self.thread_lock:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            os.close(self.lock_fd)


class FileSink:
    """A `Sender` that appends each batch as one OTLP/JSON line to the signal's file."""

    def __init__(self, settings: Settings) -> None:
        os.makedirs(settings.data_dir, exist_ok=True)
        self._files = {
            signal: _SignalFile(settings.data_dir, info.name, settings.file_rotate_bytes)
            for signal, info in SIGNALS.items()
        }

    def send(self, signal: Signal, payload: bytes) -> SendResult:
        try:
            line = encode_json_from_wire(signal, payload) + b"\n"
        except OtlpError as error:  # undecodable payload: it will never encode, drop it
            raise SendError(f"cannot encode as OTLP/JSON: {error.message}", retryable=False) from None
        try:
            self._files[signal].append(line)
        except OSError as error:  # disk full, permissions: may clear up, so back off and retry
            raise SendError(f"file sink: {error}", retryable=True) from None
        return SendResult()

    def close(self) -> None:
        for f in self._files.values():
            f.close()
