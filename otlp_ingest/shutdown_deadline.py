"""The supervisor's shutdown deadline, shared with its children through a small file.

The supervisor SIGKILLs whatever still runs at its deadline. Exporters are stopped last, so
their own ``shutdown_timeout`` counted from their SIGTERM would end after that kill: they would
be killed mid-drain instead of stopping cleanly and reporting what was left. So before it sends
the first SIGTERM the supervisor writes its absolute deadline (wall clock, seconds since the epoch,
as text) to ``$OTLP_INGEST_DEADLINE_FILE``; a child that gets SIGTERM reads it and stops before it.
"""

from __future__ import annotations

import contextlib
import os
import time

DEADLINE_ENV = "OTLP_INGEST_DEADLINE_FILE"
# Time a child keeps for itself before the supervisor's kill: stop, log, close files, exit.
EXIT_MARGIN_MAX = 1.0


def deadline_path(run_dir: str) -> str:
    """Where the supervisor with run directory ``run_dir`` writes its deadline."""
    return os.path.join(run_dir, "shutdown-deadline")


def write_deadline(path: str, wall_deadline: float) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(repr(wall_deadline))
    os.replace(tmp, path)


def child_deadline(own_timeout: float) -> float:
    """A ``time.monotonic()`` deadline for a child that just got SIGTERM: its own timeout, or
    earlier if the supervisor's deadline (minus an exit margin) comes first."""
    now_mono, now_wall = time.monotonic(), time.time()
    deadline = now_mono + own_timeout
    path = os.environ.get(DEADLINE_ENV)
    if not path:
        return deadline
    with contextlib.suppress(OSError, ValueError):
        with open(path) as f:
            wall = float(f.read())
        margin = min(EXIT_MARGIN_MAX, max(0.0, (wall - now_wall) * 0.1))
        deadline = min(deadline, now_mono + (wall - now_wall) - margin)
    return deadline
