"""One child slot of the supervisor: how a worker or exporter is started and how it reports ready.

Children are started with fork+exec (`subprocess.Popen([sys.executable, "-m", "otlp_ingest",
"_child", ...])`), never a bare fork, so no gRPC or thread state crosses into them. Each child gets:

- its Settings as JSON in env `OTLP_INGEST_SETTINGS_JSON`,
- `PROMETHEUS_MULTIPROC_DIR` so its metrics land in per-process files the admin endpoint sums,
- `OTLP_INGEST_SUPERVISOR_PID`: the supervisor's pid, so a child can tell that its parent died
  before its death signal was armed (comparing `getppid()` with 1 fails when the supervisor *is*
  PID 1, as in a container),
- for workers with bearer-token authentication on, `OTLP_INGEST_AUTH_DIGESTS_FILE`: the
  supervisor's validated copy of the tokens (otlp_ingest.auth; passed as `extra_env`),
- `OTLP_INGEST_DEADLINE_FILE`: where the supervisor writes its shutdown deadline
  (otlp_ingest.shutdown_deadline), so an exporter stops cleanly before the supervisor's kill,
- `OTLP_INGEST_STATUS_DIR`: the run directory where it writes `status-<pid>.json` for the status
  page (otlp_ingest.telemetry.child_status),
- on the command line its role, index, queue spec(s) (`--queue shm:NAME` or `--queue wal:DIR`,
  see otlp_ingest.queue) and `--ready-fd N`: the write end of a pipe
  on which it writes one line `ready\\n` once it serves. EOF on the pipe before that line means
  the child died (or closed it) without becoming ready.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from otlp_ingest.config import Settings, settings_to_json
from otlp_ingest.shutdown_deadline import DEADLINE_ENV, deadline_path
from otlp_ingest.telemetry.child_status import STATUS_DIR_ENV

log = logging.getLogger(__name__)

SETTINGS_ENV = "OTLP_INGEST_SETTINGS_JSON"
SUPERVISOR_PID_ENV = "OTLP_INGEST_SUPERVISOR_PID"

# Restart backoff per slot: doubles on each quick death, reset once a child stayed up a while.
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 10.0
STABLE_AFTER = 30.0  # seconds up (ready) after which the next death starts from BACKOFF_INITIAL


@dataclass(eq=False)
class ChildSlot:
    """A worker or exporter position: the current process (if any) and its restart history."""

    role: str  # "worker" | "exporter"
    index: int
    rings: list[str]  # queue specs (otlp_ingest.queue): "shm:<ring>" or "wal:<dir>"
    proc: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None  # read end of the readiness pipe while it is open
    ready: bool = False
    ever_ready: bool = False  # since the last successful boot of this slot
    started_at: float = 0.0
    ready_at: float = 0.0
    restart_at: float | None = None  # monotonic time of a scheduled (re)start
    backoff: float = BACKOFF_INITIAL
    boot_failures: int = 0  # deaths before becoming ready, in a row
    restarts: int = 0  # restarts after an unexpected exit (not reloads), for the status page
    last_exit: str = ""  # "exit code 1" / "signal SIGKILL" of the previous process, "" if none
    last_exit_at: float = 0.0  # wall clock of that exit
    stopping: bool = False  # we sent SIGTERM (shutdown or rolling restart)
    rolling: bool = False  # restart immediately after it exits (SIGHUP reload)
    # The supervisor's token generation this worker has been told about (started with, or sent
    # SIGUSR1 for): behind the current one once ready -> it is told to re-read the tokens.
    auth_generation: int = 0
    _buffer: bytes = field(default=b"", repr=False)

    @property
    def name(self) -> str:
        return f"{self.role}[{self.index}]"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def start(
        self, settings: Settings, multiproc_dir: str, extra_env: Mapping[str, str] | None = None
    ) -> None:
        """Fork+exec the child; the caller registers `ready_fd` with its selector."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        cmd = [sys.executable, "-m", "otlp_ingest", "_child", self.role, "--index", str(self.index)]
        for spec in self.rings:
            cmd += ["--queue", spec]
        cmd += ["--ready-fd", str(write_fd)]
        env = dict(os.environ)
        env[SETTINGS_ENV] = settings_to_json(settings)
        env[SUPERVISOR_PID_ENV] = str(os.getpid())
        env["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
        env[DEADLINE_ENV] = deadline_path(multiproc_dir)
        env[STATUS_DIR_ENV] = multiproc_dir
        env.update(extra_env or {})
        try:
            # Own process group: a Ctrl-C or `kill -- -pgid` aimed at the supervisor must not reach
            # the children directly, or exporters would drain while workers still accept data.
            self.proc = subprocess.Popen(cmd, env=env, pass_fds=(write_fd,), close_fds=True, process_group=0)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)  # only the child holds the write end: EOF tells us it is gone
        self.ready_fd = read_fd
        self.ready = False
        self.stopping = False
        self.rolling = False
        self.restart_at = None
        self.started_at = time.monotonic()
        self._buffer = b""
        log.info("%s started (pid %d)", self.name, self.proc.pid)

    def read_ready_pipe(self) -> bool:
        """Consume what the child wrote. Returns True if the pipe hit EOF (caller unregisters)."""
        assert self.ready_fd is not None
        try:
            data = os.read(self.ready_fd, 256)
        except BlockingIOError:
            return False
        if not data:
            return True
        self._buffer += data
        if b"ready\n" in self._buffer and not self.ready:
            self.ready = True
            self.ever_ready = True
            self.ready_at = time.monotonic()
            self.boot_failures = 0
            log.info(
                "%s ready (pid %s, %.2fs after start)", self.name, self.pid, self.ready_at - self.started_at
            )
        return False

    def close_ready_pipe(self) -> None:
        if self.ready_fd is not None:
            os.close(self.ready_fd)
            self.ready_fd = None

    def next_backoff(self, now: float) -> float:
        """Delay before restarting after a crash; doubles for children that die quickly."""
        if self.ready and now - self.ready_at >= STABLE_AFTER:
            self.backoff = BACKOFF_INITIAL
        delay = self.backoff
        self.backoff = min(BACKOFF_MAX, self.backoff * 2)
        return delay
