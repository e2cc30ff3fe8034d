"""Entry point of a child process: `python -m otlp_ingest _child worker|exporter ...`.

Runs in a fresh interpreter (fork+exec). Reads its Settings from `OTLP_INGEST_SETTINGS_JSON`,
configures logging, starts its status file writer (telemetry.child_status: recent warnings and,
for an exporter, its sending state, for the admin status page), asks the kernel to SIGTERM it if
the supervisor dies, and hands over to
`run_worker` or `run_exporter` (imported only here, so the supervisor never loads grpc servers).
A child that cannot boot (bad environment, missing module, port in use) exits with
`ExitCode.CHILD_BOOT`, which makes the supervisor halt instead of restarting it in a loop.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys

from otlp_ingest.config import settings_from_json
from otlp_ingest.errors import ExitCode
from otlp_ingest.supervisor.child import SETTINGS_ENV, SUPERVISOR_PID_ENV
from otlp_ingest.telemetry.child_status import start_child_status, stop_child_status
from otlp_ingest.telemetry.logging import configure_logging

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the supervisor dies, so a SIGKILLed supervisor leaves no orphans
    holding the ports. Best effort (no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    # The supervisor died before prctl took effect: we were re-parented. Compare with the pid it
    # told us, not with 1: in a container the supervisor itself is PID 1.
    expected = os.environ.get(SUPERVISOR_PID_ENV, "")
    orphaned = os.getppid() != int(expected) if expected.isdigit() else os.getppid() == 1
    if orphaned:
        os.kill(os.getpid(), signal.SIGTERM)


def _ready_notifier(fd: int | None):
    """notify_ready(): write "ready\\n" once to the supervisor's pipe, then close it."""
    done = False

    def notify_ready() -> None:
        nonlocal done
        if done or fd is None:
            return
        done = True
        try:
            os.write(fd, b"ready\n")
            os.close(fd)
        except OSError as exc:  # supervisor gone: nothing to tell
            log.warning("could not report ready: %s", exc)

    return notify_ready


def child_main(argv: list[str]) -> int:
    """`_child worker --index I --queue SPEC --ready-fd N` or
    `_child exporter --index J --queue SPEC [--queue SPEC...] --ready-fd N`. SPEC is
    `shm:<ring>` or `wal:<dir>` (otlp_ingest.queue); `--ring NAME` means `--queue shm:NAME`."""
    parser = argparse.ArgumentParser(prog="otlp_ingest _child")
    parser.add_argument("role", choices=("worker", "exporter"))
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--queue", action="append", default=[])
    parser.add_argument("--ring", action="append", default=[])  # older form: a ring name
    parser.add_argument("--ready-fd", type=int, default=None)
    args = parser.parse_args(argv)
    queues = [*(f"shm:{name}" for name in args.ring), *args.queue]

    _die_with_parent()
    try:
        settings = settings_from_json(os.environ[SETTINGS_ENV])
    except (KeyError, ValueError) as exc:
        configure_logging("info", args.role, args.index)
        log.error("cannot read settings from %s: %s", SETTINGS_ENV, exc)
        return ExitCode.CHILD_BOOT
    configure_logging(settings.log_level, args.role, args.index)
    notify_ready = _ready_notifier(args.ready_fd)
    # Here, not in run_worker/run_exporter: every child gets it, the receiver needs no code for it.
    start_child_status(args.role, args.index)
    try:
        if args.role == "worker":
            if len(queues) != 1:
                log.error("a worker needs exactly one --queue, got %d", len(queues))
                return ExitCode.CHILD_BOOT
            from otlp_ingest.receiver.worker import run_worker

            return int(run_worker(settings, args.index, queues[0], notify_ready))
        from otlp_ingest.exporter.main import run_exporter

        return int(run_exporter(settings, args.index, queues, notify_ready))
    except ImportError as exc:
        log.error("cannot start %s: %s", args.role, exc)
        return ExitCode.CHILD_BOOT
    except KeyboardInterrupt:
        return ExitCode.OK
    except Exception:
        log.exception("%s[%d] crashed", args.role, args.index)
        return ExitCode.FAILURE
    finally:
        stop_child_status()  # the final write carries the last warnings (a crash's too)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(child_main(sys.argv[1:]))
