"""Advisory ``flock`` locks that enforce one writer and one reader per log directory.

The kernel releases a ``flock`` when its process dies (even by SIGKILL), so a crashed owner never
leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time


class WalLocked(Exception):
    """Another live process holds the lock (a second writer or reader for the same log)."""


def try_lock(path: str) -> int | None:
    """Take the exclusive lock on ``path`` without waiting: its fd, or None if it is held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock(path: str, timeout: float) -> int:
    """Take the exclusive lock on ``path``, waiting up to ``timeout`` s (a reader holds the
    writer lock for a moment while it repairs a log whose writer is gone). WalLocked after."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()  # never set: an interruptible, bounded pause between attempts
    while True:
        fd = try_lock(path)
        if fd is not None:
            return fd
        if time.monotonic() >= deadline:
            raise WalLocked(f"{path} is held by another process")
        pause.wait(0.01)


def unlock(fd: int) -> None:
    """Release a lock taken by `lock`/`try_lock` (closing the fd drops the flock)."""
    os.close(fd)
