"""The supervisor's main loop (design.md section 2; house rules 1-3, 5, 10).

Start-up: install the signal handlers (so a SIGTERM during boot is queued and acted on, not
fatal), claim the ports (bind the admin listener, probe and reserve the OTLP ports: ports.py; a
port someone holds exits 2 with one line naming it and its holder, before anything else happens:
a second `serve` must not join the first one's SO_REUSEPORT group), remove the metrics
directories of dead supervisors, set up the queues (queues.py: in
shared-memory mode adopt the non-empty rings of dead supervisors with our destination, wipe the
other stale ones, create one ring per worker; in durable mode lock OTLP_QUEUE_DIR and use one log
per worker plus the logs of earlier runs with more workers), create the Prometheus multiprocess
directory, start the admin endpoint, start the exporters, wait for them to be ready, then start the
workers (downstream first). Queue k (workers' first, then adopted/extra ones) is drained by
exporter k % exporters. Signal handlers only queue the signal and wake the loop through
`signal.set_wakeup_fd`; the loop does all the work:

- reaps dead children and restarts them with per-slot exponential backoff, counting restarts;
- halts (exit 3, one line naming the child and its exit code) when a child exits with
  `ExitCode.CHILD_BOOT` or dies before becoming ready `MAX_BOOT_FAILURES` times in a row;
- SIGTERM/SIGINT: write the absolute deadline for the children (otlp_ingest.shutdown_deadline),
  mark not ready, SIGTERM the workers and wait for them (they finish in-flight requests; an
  exporter that dies meanwhile is restarted, so its rings still drain), then SIGTERM the exporters
  and wait (they flush what the queues hold and stop before the deadline), all inside
  `shutdown_timeout`; then SIGKILL leftovers (exit 4) or exit 0. Empty rings are unlinked at exit;
  rings still holding acknowledged records are kept for the next start (queues.py).
- SIGHUP: reload the config; if valid, restart workers one at a time, then exporters. A new
  OTLP port is probed and reserved first; a taken one keeps the old port (logged). An invalid
  config is logged and the old one kept. When nothing but the bearer tokens changed (same
  settings, same content in every TLS file: `file_fingerprints`), nothing restarts: the workers
  are told to re-read the tokens (below). A SIGHUP that changes nothing at all still restarts
  every child, as it always did.
- Bearer tokens (settings.auth_tokens_file, otlp_ingest.auth): the supervisor reads and validates
  the tokens file and writes the digests to `<multiprocess dir>/auth-token-digests`, which every
  worker reads (env OTLP_INGEST_AUTH_DIGESTS_FILE). It re-reads the file on SIGHUP and whenever
  its stat signature changes (polled every AUTH_POLL_INTERVAL: Kubernetes swaps a mounted
  Secret's files in place, without any signal). A file that is unreadable, empty or malformed
  keeps the previous tokens and the reason is logged (never a token). When the tokens changed,
  the digest file is rewritten and every ready worker gets SIGUSR1 (a worker started meanwhile
  is signalled once it is ready, so none keeps a stale copy): no connection is closed and no
  request is lost.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import ipaddress
import logging
import os
import selectors
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable

import msgspec
from prometheus_client import multiprocess

from otlp_ingest.auth import DIGESTS_ENV, TokenEntry, TokenFileError, load_tokens_file, write_digest_file
from otlp_ingest.config import Settings
from otlp_ingest.errors import ConfigError, ExitCode
from otlp_ingest.queue import QueueSpec, wal_max_bytes
from otlp_ingest.ring.layout import owner_id
from otlp_ingest.shutdown_deadline import deadline_path, write_deadline
from otlp_ingest.supervisor import ports, queues
from otlp_ingest.supervisor.admin import AdminServer, listen_socket
from otlp_ingest.supervisor.child import ChildSlot
from otlp_ingest.supervisor.status import StatusSampler
from otlp_ingest.telemetry.collect import ProcessInfo, TreeSnapshot
from otlp_ingest.telemetry.logging import configure_logging
from otlp_ingest.telemetry.memory import MemoryLimiter, resolve_limits

log = logging.getLogger("otlp_ingest.supervisor")

MAX_BOOT_FAILURES = 3  # deaths before ready, in a row, before the supervisor halts
BOOT_TIMEOUT = 60.0  # a child that is not ready by then is killed (counts as a boot failure)
TICK = 0.5  # longest sleep of the loop: deadlines are checked at least this often
# Settings that shape the rings or the admin listener: changing them needs a full restart.
STRUCTURAL = (
    "workers",
    "exporters",
    "queue_bytes",
    "queue_size",
    "queue_dir",
    "queue_max_bytes",
    "queue_segment_bytes",
    "bind",
    "admin_port",
    "admin_max_connections",
    "admin_header_timeout",
)
# The OTLP ports the supervisor checks and holds (supervisor/ports.py): (name, field, env).
OTLP_PORTS = (("grpc", "grpc_port", "OTLP_GRPC_PORT"), ("http", "http_port", "OTLP_HTTP_PORT"))
ADOPTED_CHECK_INTERVAL = 1.0  # how often drained adopted rings are looked for
# How often the tokens file's stat signature is checked. A stat costs microseconds; Kubernetes
# takes up to a minute or so to propagate a Secret change anyway.
AUTH_POLL_INTERVAL = 2.0
DIGEST_FILE = "auth-token-digests"  # in the multiprocess dir (mkdtemp: mode 0700, ours alone)
# Files the children read when they start: a change in their content needs a rolling restart.
RELOADED_FILES = (
    "tls_cert_file",
    "tls_key_file",
    "tls_client_ca_file",
    "export_ca_file",
    "export_cert_file",
    "export_key_file",
)


def file_fingerprints(settings: Settings) -> dict[str, str]:
    """SHA-256 of each file in RELOADED_FILES that the settings name ("unreadable" if it cannot
    be read: then a reload restarts, and the children's own boot check names the file)."""
    prints = {}
    for field in RELOADED_FILES:
        path = getattr(settings, field)
        if not path:
            continue
        try:
            with open(path, "rb") as f:
                prints[field] = hashlib.sha256(f.read()).hexdigest()
        except OSError:
            prints[field] = "unreadable"
    return prints


def _stat_signature(path: str) -> tuple[int, ...] | None:
    """What changes when a file is rewritten or replaced (os.stat follows the symlinks a
    Kubernetes Secret mount swaps); None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Supervisor:
    """Runs the process tree until a signal stops it; `run()` returns the exit code."""

    def __init__(self, settings: Settings, reload: Callable[[], Settings] | None = None) -> None:
        self.settings = settings
        self._reload = reload
        self.pid = os.getpid()
        # Names this run's rings, dest file and metrics dir: unique even when the pid repeats.
        self.owner = owner_id(self.pid, time.time_ns())
        self._dest_fd = -1  # holds the flock that tells other supervisors this run is alive
        self.workers: list[ChildSlot] = []
        self.exporters: list[ChildSlot] = []
        self.restarts: dict[str, int] = {"worker": 0, "exporter": 0}
        self.multiproc_dir = ""
        self._env_multiproc: str | None = None
        self.ring_names: list[str] = []  # rings this supervisor created (shared-memory mode)
        self.adopted: list[str] = []  # rings of dead supervisors, drained then unlinked
        self._queue_lock_fd = -1
        self._next_adopted_check = 0.0
        self.admin: AdminServer | None = None
        self._admin_sock: socket.socket | None = None  # bound first, handed to the AdminServer
        self._reserved: dict[str, socket.socket] = {}  # "grpc"/"http" -> reservation (ports.py)
        self.status: StatusSampler | None = None
        self._selector = selectors.DefaultSelector()
        self._signals: collections.deque[int] = collections.deque()
        self._wake_r = self._wake_w = -1
        self._workers_started = False
        self._shutdown_phase: str | None = None  # None | "workers" | "exporters" | "done"
        self._deadline = 0.0
        self._exit_code = ExitCode.OK
        self._roll_queue: list[ChildSlot] = []
        self._rolling: ChildSlot | None = None
        self._started = time.monotonic()
        self._snapshot = TreeSnapshot(supervisor_pid=self.pid, started=self._started, settings=settings)
        self.memory: MemoryLimiter | None = None
        self._fingerprints = file_fingerprints(settings)
        # Bearer tokens in force (None: authentication off), their generation (bumped at every
        # change) and the tokens file's stat signature when last read.
        self._auth_entries: tuple[TokenEntry, ...] | None = None
        self._auth_generation = 0
        self._auth_stat: tuple[int, ...] | None = None
        self._next_auth_poll = 0.0

    # --- public -------------------------------------------------------------------------------

    def snapshot(self) -> TreeSnapshot:
        """The current immutable state, for the admin thread."""
        return self._snapshot

    def run(self) -> int:
        try:
            self._install_signals()  # first: a SIGTERM during boot is queued, not fatal
            code = self._boot()
            if code is not None:
                self._exit_code = ExitCode(code)
                return code
            self._start_exporters()
            while self._shutdown_phase != "done":
                self._tick()
            left = queues.records_in([*self.ring_names, *self.adopted])
            if left and self._exit_code == ExitCode.OK:
                # Every child exited cleanly yet acknowledged data was not delivered: say so.
                log.error("shutdown: %d acknowledged record(s) were not delivered", left)
                self._exit_code = ExitCode.SHUTDOWN_TIMEOUT
            return int(self._exit_code)
        finally:
            self._cleanup()

    # --- start-up -----------------------------------------------------------------------------

    def _boot(self) -> int | None:
        """Ports, queues, metrics dir and admin listener. Returns an exit code if start-up failed."""
        # First: a server already on these ports must be named, before anything of ours exists.
        code = self._claim_ports()
        if code is not None:
            return code
        try:
            # First: from here on other supervisors see this run as alive.
            self._dest_fd = queues.write_destination(self.owner, self.settings)
        except OSError as exc:
            if not self.settings.queue_dir:
                log.error("cannot write %s: %s", queues.dest_path(self.owner), exc)
                return ExitCode.CHILD_BOOT
            # Durable mode needs no shared memory: the pid then tells whether this run is alive.
            log.warning("cannot write %s: %s", queues.dest_path(self.owner), exc)
        stale = queues.wipe_stale_metrics_dirs(self.owner)
        if stale:
            log.info("removed %d metrics dir(s) of dead supervisors", len(stale))
        self.multiproc_dir = tempfile.mkdtemp(prefix=f"{queues.METRICS_PREFIX}{self.owner}-")
        try:
            self._install_tokens(self._read_tokens(self.settings), self.settings.auth_tokens_file)
        except (TokenFileError, OSError) as exc:  # validated at load: changed since, or /tmp full
            log.error("cannot start: bearer tokens: %s", exc)
            return ExitCode.CONFIG
        # Children inherit it; set here too so anything in this process uses the same directory
        # (restored at exit: a supervisor run inside another program must not leave it behind).
        self._env_multiproc = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.multiproc_dir
        workers = self.settings.resolved_workers()
        exporters = self.settings.exporters
        specs = self._setup_queues(workers)
        if specs is None:
            return ExitCode.CHILD_BOOT
        # Before any worker starts: workers attach the limiter's flag file when they boot.
        self.memory = MemoryLimiter(
            self.pid,
            resolve_limits(self.settings.memory_limit_mib, self.settings.memory_spike_limit_mib),
            pids=self._live_pids,
            rings=lambda: [*self.ring_names, *self.adopted],
        )
        self.memory.start()
        # Samples counters, CPU and the children's status files once a second (the status page).
        self.status = StatusSampler(self.multiproc_dir, self.snapshot)
        assert self._admin_sock is not None
        self.admin = AdminServer(
            self._admin_sock,
            self.multiproc_dir,
            self.snapshot,
            self.status.status_json,
            max_connections=self.settings.admin_max_connections,
            header_timeout=self.settings.admin_header_timeout,
        )
        self._admin_sock = None  # the AdminServer closes it
        self.admin.start()
        self.status.start()
        self.exporters = [
            ChildSlot("exporter", j, [str(q) for k, q in enumerate(specs) if k % exporters == j])
            for j in range(exporters)
        ]
        self.workers = [ChildSlot("worker", i, [str(specs[i])]) for i in range(workers)]
        log.info(
            "otlp-ingest supervisor pid %d: %d worker(s), %d exporter(s), grpc :%d http :%d admin :%d, "
            "%s queue, %s",
            self.pid,
            workers,
            exporters,
            self.settings.grpc_port,
            self.settings.http_port,
            self.admin.port,
            f"durable ({self.settings.queue_dir})" if self.settings.queue_dir else "shared-memory",
            f"backend {self.settings.endpoint}"
            if self.settings.endpoint
            else f"file sink {self.settings.data_dir}",
        )
        log.info("%s", serving_line(self.settings))
        self._publish()
        return None

    def _claim_ports(self) -> int | None:
        """Bind the admin listener and reserve the OTLP ports (ports.py), or exit 2 with one line
        naming the port and what holds it: a second `serve` must not share the first one's ports."""
        bind = self.settings.bind
        try:
            try:
                self._admin_sock = listen_socket(bind, self.settings.admin_port)
            except OSError as exc:
                raise ports.PortTaken(
                    ports.message("admin", bind, self.settings.admin_port, exc, "OTLP_ADMIN_PORT")
                ) from None
            for what, field, env in OTLP_PORTS:
                held = ports.reserve(bind, [(what, getattr(self.settings, field), env)])
                if held:  # none for port 0
                    self._reserved[what] = held[0]
        except ports.PortTaken as exc:
            log.error("%s", exc)
            return ExitCode.CONFIG
        return None

    def _setup_queues(self, workers: int) -> list[QueueSpec] | None:
        """Every queue to drain, the workers' first (index = worker); None if start-up failed."""
        queue_dir = self.settings.queue_dir
        if queue_dir:
            try:
                self._queue_lock_fd = queues.lock_queue_dir(queue_dir, self.pid)
                mine, extra = queues.durable_queues(queue_dir, workers)
            except queues.QueueDirLocked as exc:
                log.error("cannot start: %s", exc)
                return None
            except OSError as exc:
                log.error("cannot use queue dir %s: %s", queue_dir, exc)
                return None
            if extra:
                log.info(
                    "draining %d log(s) of an earlier run with more workers: %s",
                    len(extra),
                    ", ".join(q.target for q in extra),
                )
            return [*mine, *extra]
        # Adopt before wiping: wipe_stale removes what adoption left of dead supervisors.
        self.adopted = queues.adopt_stale_rings(self.owner, self.settings)
        wiped = queues.wipe_stale(self.owner)
        if wiped:
            log.info("removed %d stale segment(s) of dead supervisors: %s", len(wiped), ", ".join(wiped))
        try:
            self.ring_names = queues.create_worker_rings(self.owner, self.settings, workers, self.adopted)
        except OSError as exc:
            log.error("cannot create ring of %d bytes: %s", self.settings.queue_bytes, exc)
            return None
        return [QueueSpec("shm", n) for n in [*self.ring_names, *self.adopted]]

    def _forget_drained_adopted(self, now: float) -> None:
        """Unlink adopted rings their exporter has emptied, and stop handing them to restarts."""
        if not self.adopted or now < self._next_adopted_check:
            return
        self._next_adopted_check = now + ADOPTED_CHECK_INTERVAL
        from otlp_ingest.ring import unlink_ring

        for name in [n for n in self.adopted if queues.ring_drained(n)]:
            self.adopted.remove(name)
            unlink_ring(name)
            for slot in self.exporters:
                if str(QueueSpec("shm", name)) in slot.rings:
                    slot.rings.remove(str(QueueSpec("shm", name)))
            log.info("adopted ring %s drained: removed", name)
        self._publish()

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)

        def queue_signal(signum: int, frame: object) -> None:  # house rule 1: only queue
            self._signals.append(signum)

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, queue_signal)

    def _start_exporters(self) -> None:
        for slot in self.exporters:
            self._start(slot)

    def _start(self, slot: ChildSlot) -> None:
        extra_env = {}
        if slot.role == "worker" and self._auth_entries is not None:
            extra_env[DIGESTS_ENV] = self._digest_path()
            slot.auth_generation = self._auth_generation
        try:
            slot.start(self.settings, self.multiproc_dir, extra_env)
        except OSError as exc:
            self._halt(f"cannot start {slot.name}: {exc}")
            return
        assert slot.ready_fd is not None
        self._selector.register(slot.ready_fd, selectors.EVENT_READ, slot)
        self._publish()

    # --- the loop -----------------------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        timeout = TICK
        for slot in self._slots():
            if slot.restart_at is not None:
                timeout = min(timeout, max(0.0, slot.restart_at - now))
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                self._drain_wakeup()
            else:
                self._on_ready_pipe(key.data)
        while self._signals:
            self._on_signal(self._signals.popleft())
        self._reap()
        now = time.monotonic()
        if self._shutdown_phase is None:
            self._start_due(now)
            self._check_boot_timeouts(now)
            self._advance_roll()
            self._poll_tokens(now)
        else:
            if self._shutdown_phase in ("workers", "exporters"):
                self._start_due(now, roles=("exporter",))
            self._advance_shutdown(now)
        self._forget_drained_adopted(now)
        self._publish()

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _on_ready_pipe(self, slot: ChildSlot) -> None:
        was_ready = slot.ready
        if slot.read_ready_pipe():
            self._close_pipe(slot)
        if slot.ready and not was_ready:
            self._on_child_ready(slot)

    def _close_pipe(self, slot: ChildSlot) -> None:
        if slot.ready_fd is not None:
            self._selector.unregister(slot.ready_fd)
            slot.close_ready_pipe()

    def _on_child_ready(self, slot: ChildSlot) -> None:
        if slot.role == "worker" and slot.auth_generation != self._auth_generation:
            # The tokens changed after it was started: it may have read the previous digests.
            self._tell_workers_to_reload_tokens([slot])
        if (
            not self._workers_started
            and self._shutdown_phase is None
            and all(e.ready for e in self.exporters)
        ):
            log.info(
                "all %d exporter(s) ready: starting %d worker(s)", len(self.exporters), len(self.workers)
            )
            self._workers_started = True
            for worker in self.workers:
                self._start(worker)
        if self._workers_started and all(s.ready for s in self._slots()) and self._rolling is None:
            log.info("all children ready")

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            return  # _reap runs every tick
        if signum == signal.SIGHUP:
            self._on_reload()
            return
        name = signal.Signals(signum).name
        if self._shutdown_phase is None:
            log.info("%s received: shutting down (deadline %gs)", name, self.settings.shutdown_timeout)
            self._begin_shutdown(ExitCode.OK)
        elif signum == signal.SIGINT:
            log.warning("second SIGINT: killing every child now")
            self._kill_all()
            self._exit_code = ExitCode.SHUTDOWN_TIMEOUT
        else:
            log.info("%s received: already shutting down", name)

    def _reap(self) -> None:
        for slot in self._slots():
            if slot.proc is None or slot.proc.returncode is not None:
                continue
            code = slot.proc.poll()
            if code is not None:
                self._on_exit(slot, code)

    def _on_exit(self, slot: ChildSlot, code: int) -> None:
        pid = slot.proc.pid if slot.proc else 0
        if slot.ready_fd is not None:  # it may have said "ready" just before dying
            for _ in range(8):  # the write end is closed: data, then EOF
                if slot.read_ready_pipe():
                    break
            self._close_pipe(slot)
        multiprocess.mark_process_dead(pid, self.multiproc_dir)
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        slot.last_exit, slot.last_exit_at = how, time.time()
        became_ready = slot.ready
        slot.ready = False
        if self._shutdown_phase is not None:
            log.info("%s exited (pid %d, %s)", slot.name, pid, how)
            if code == ExitCode.SHUTDOWN_TIMEOUT:
                self._exit_code = ExitCode.SHUTDOWN_TIMEOUT
            if (
                slot.role == "exporter"
                and self._shutdown_phase in ("workers", "exporters")
                and (slot.rolling or not slot.stopping)
            ):
                # Died, or was stopped for a reload just before the shutdown: its queues may hold
                # records acknowledged after it drained, so a replacement must drain them.
                slot.rolling = False
                slot.restart_at = time.monotonic()
                log.warning("%s exited during shutdown: restarting it to drain its queues", slot.name)
            return
        if slot.rolling:
            log.info(
                "%s exited for reload (pid %d, %s): starting it with the new config", slot.name, pid, how
            )
            self._start(slot)
            return
        if code == ExitCode.CHILD_BOOT:
            self._halt(f"{slot.name} (pid {pid}) could not boot: exit code {code}; see its log line above")
            return
        log.warning("%s exited unexpectedly (pid %d, %s)", slot.name, pid, how)
        if not became_ready:
            slot.boot_failures += 1
            if slot.boot_failures >= MAX_BOOT_FAILURES:
                self._halt(
                    f"{slot.name} died before becoming ready {slot.boot_failures} times in a row "
                    f"(last: pid {pid}, {how})"
                )
                return
        now = time.monotonic()
        slot.ready = became_ready  # next_backoff looks at how long it was up
        delay = slot.next_backoff(now)
        slot.ready = False
        slot.restart_at = now + delay
        log.info("%s restarting in %.2fs", slot.name, delay)

    def _start_due(self, now: float, roles: tuple[str, ...] = ("worker", "exporter")) -> None:
        for slot in self._slots():
            if slot.role not in roles:
                continue
            if slot.restart_at is not None and slot.restart_at <= now and not slot.alive:
                if slot.role == "worker" and not self._workers_started:
                    continue
                self.restarts[slot.role] += 1
                slot.restarts += 1
                log.info("%s restarted (restart #%d of %ss)", slot.name, self.restarts[slot.role], slot.role)
                self._start(slot)

    def _check_boot_timeouts(self, now: float) -> None:
        for slot in self._slots():
            if slot.alive and not slot.ready and not slot.stopping and now - slot.started_at > BOOT_TIMEOUT:
                log.error("%s not ready after %gs: killing it", slot.name, BOOT_TIMEOUT)
                slot.stopping = True
                slot.proc.kill()  # type: ignore[union-attr]

    # --- shutdown -----------------------------------------------------------------------------

    def _halt(self, message: str) -> None:
        log.error("halting: %s", message)
        self._begin_shutdown(ExitCode.CHILD_BOOT)

    def _begin_shutdown(self, code: ExitCode) -> None:
        if self._shutdown_phase is not None:
            return
        self._exit_code = code
        self._deadline = time.monotonic() + self.settings.shutdown_timeout
        if self.multiproc_dir:
            try:  # before the first SIGTERM: children read it when they get theirs
                write_deadline(
                    deadline_path(self.multiproc_dir), time.time() + self.settings.shutdown_timeout
                )
            except OSError as exc:
                log.warning("cannot write the shutdown deadline for the children: %s", exc)
        self._roll_queue.clear()
        self._rolling = None
        for slot in self.workers:  # exporters waiting for a restart still get it: queues must drain
            slot.restart_at = None
        log.info("shutdown: draining, stopping %d worker(s)", sum(s.alive for s in self.workers))
        self._shutdown_phase = "workers"
        self._terminate(self.workers)
        self._publish()

    def _terminate(self, slots: list[ChildSlot]) -> None:
        for slot in slots:
            if slot.alive and not slot.stopping:
                slot.stopping = True
                slot.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]

    def _advance_shutdown(self, now: float) -> None:
        if self._shutdown_phase == "workers" and not any(s.alive for s in self.workers):
            log.info(
                "shutdown: workers stopped; stopping %d exporter(s)", sum(s.alive for s in self.exporters)
            )
            self._shutdown_phase = "exporters"
        if self._shutdown_phase == "exporters":
            # A replacement started during this phase is told to drain once it is ready (a SIGTERM
            # before its handlers are installed would kill it outright).
            self._terminate([s for s in self.exporters if s.ready])
        if self._shutdown_phase == "exporters" and not any(
            s.alive or s.restart_at is not None for s in self.exporters
        ):
            log.info("shutdown: exporters stopped")
            self._shutdown_phase = "done"
            return
        if now >= self._deadline:
            left = [f"{s.name} (pid {s.pid})" for s in self._slots() if s.alive]
            log.error(
                "shutdown deadline of %gs passed: killing %s", self.settings.shutdown_timeout, ", ".join(left)
            )
            self._kill_all()
            if self._exit_code == ExitCode.OK:
                self._exit_code = ExitCode.SHUTDOWN_TIMEOUT

    def _kill_all(self) -> None:
        for slot in self._slots():
            if slot.alive:
                slot.proc.kill()  # type: ignore[union-attr]
        for slot in self._slots():
            if slot.proc is not None and slot.proc.returncode is None:
                code = slot.proc.wait()
                self._on_exit(slot, code)
        self._shutdown_phase = "done"

    def _cleanup(self) -> None:
        for slot in self._slots():
            if slot.alive:  # only after an unexpected error in the loop itself
                slot.proc.kill()  # type: ignore[union-attr]
                slot.proc.wait()  # type: ignore[union-attr]
            if slot.ready_fd is not None:
                slot.close_ready_pipe()
        if self.admin is not None:
            self.admin.stop()
        if self._admin_sock is not None:
            self._admin_sock.close()
        for sock in self._reserved.values():
            sock.close()
        self._reserved.clear()
        if self.status is not None:
            self.status.stop()
        if self.memory is not None:
            self.memory.close()
        if self.ring_names or self.adopted:
            kept = queues.release_rings([*self.ring_names, *self.adopted])
            if kept:
                log.warning("%d acknowledged record(s) left in shared memory for the next start", kept)
            else:
                queues.remove_destination(self.owner)
        else:
            queues.remove_destination(self.owner)
        if self._dest_fd >= 0:  # after the unlink: no one may see our dest file unlocked and empty-handed
            os.close(self._dest_fd)
            self._dest_fd = -1
        if self._queue_lock_fd >= 0:
            queues.unlock_queue_dir(self._queue_lock_fd)
            self._queue_lock_fd = -1
        if self._wake_w >= 0:
            signal.set_wakeup_fd(-1)
            os.close(self._wake_r)
            os.close(self._wake_w)
        if self.multiproc_dir:
            shutil.rmtree(self.multiproc_dir, ignore_errors=True)
            if self._env_multiproc is None:
                os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            else:
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = self._env_multiproc
        log.info("supervisor exiting with code %d", int(self._exit_code))

    # --- reload (SIGHUP) ----------------------------------------------------------------------

    def _on_reload(self) -> None:
        if self._reload is None or self._shutdown_phase is not None:
            return
        log.info("SIGHUP received: reloading config")
        try:
            new = self._reload()
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused, keeping the running config: %s", problem)
            return
        kept = {}
        for name in STRUCTURAL:
            old_value, new_value = getattr(self.settings, name), getattr(new, name)
            if old_value != new_value:
                log.warning(
                    "reload: %s %r -> %r needs a full restart; keeping %r",
                    name,
                    old_value,
                    new_value,
                    old_value,
                )
                kept[name] = old_value
        kept.update(self._move_port_reservations(new))
        new = msgspec.structs.replace(new, **kept)
        try:
            entries = self._read_tokens(new)
        except TokenFileError as exc:  # validated by the load just now: it changed since
            log.error("reload refused, keeping the running config and tokens: %s", exc)
            return
        fingerprints = file_fingerprints(new)
        only_tokens = new == self.settings and fingerprints == self._fingerprints
        if entries != self._auth_entries:
            try:
                self._install_tokens(entries, new.auth_tokens_file)
            except OSError as exc:
                log.error("reload refused, keeping the running config and tokens: cannot write %s: %s",
                          self._digest_path(), exc)  # fmt: skip
                return
            if only_tokens:
                log.info("reload: only the bearer tokens changed: no restart")
                return
        self.settings = new
        self._fingerprints = fingerprints
        configure_logging(new.log_level, "supervisor")
        # Workers first (one at a time, so the others keep serving), then exporters.
        self._roll_queue = [*self.workers, *self.exporters]
        log.info(
            "reload: rolling restart of %d worker(s), then %d exporter(s)",
            len(self.workers),
            len(self.exporters),
        )

    def _move_port_reservations(self, new: Settings) -> dict[str, int]:
        """Reserve the OTLP ports a reload changes before the workers move to them; a taken port
        keeps the old one (returned as field -> old value, like STRUCTURAL settings)."""
        kept: dict[str, int] = {}
        for what, field, env in OTLP_PORTS:
            old_port, new_port = getattr(self.settings, field), getattr(new, field)
            if old_port == new_port:
                continue
            try:
                held = ports.reserve(self.settings.bind, [(what, new_port, env)])
            except ports.PortTaken as exc:
                log.error("reload: %s; keeping %s %d", exc, field, old_port)
                kept[field] = old_port
                continue
            previous = self._reserved.pop(what, None)
            if previous is not None:
                previous.close()
            if held:
                self._reserved[what] = held[0]
        return kept

    def _advance_roll(self) -> None:
        if self._rolling is not None:
            slot = self._rolling
            if slot.alive and slot.ready and not slot.rolling:
                log.info("reload: %s restarted with the new config", slot.name)
                self._rolling = None
            else:
                return
        while self._roll_queue:
            slot = self._roll_queue.pop(0)
            if slot.alive and slot.ready:
                log.info("reload: stopping %s (pid %s)", slot.name, slot.pid)
                slot.rolling = True
                slot.stopping = True
                slot.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
                self._rolling = slot
                return
            # Not running (waiting for a restart): it will start with the new settings anyway.

    # --- bearer tokens ------------------------------------------------------------------------

    def _digest_path(self) -> str:
        return os.path.join(self.multiproc_dir, DIGEST_FILE)

    def _read_tokens(self, settings: Settings) -> tuple[TokenEntry, ...] | None:
        """The tokens of `settings` (None: authentication off). Raises TokenFileError."""
        path = settings.auth_tokens_file
        if not path:
            return None
        self._auth_stat = _stat_signature(path)  # before reading: a write after it is seen next poll
        return load_tokens_file(path)

    def _install_tokens(self, entries: tuple[TokenEntry, ...] | None, path: str | None) -> None:
        """Make `entries` the tokens in force: write the workers' digest file and tell the ready
        workers. Raises OSError when the digest file cannot be written (nothing changed then)."""
        if entries is None:
            if self._auth_entries is not None:
                log.info("bearer-token authentication off")
            self._auth_entries = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._digest_path())
            return
        write_digest_file(self._digest_path(), entries)
        first = self._auth_entries is None
        self._auth_entries = entries
        self._auth_generation += 1
        log.info(
            "bearer tokens %s from %s: %d token(s), names: %s",
            "loaded" if first else "changed",
            path,
            len(entries),
            ", ".join(sorted({e.name for e in entries})),
        )
        if not first:
            self._tell_workers_to_reload_tokens(self.workers)

    def _tell_workers_to_reload_tokens(self, slots: list[ChildSlot]) -> None:
        """SIGUSR1 to each ready worker (before ready its handler may not be installed yet:
        `_on_child_ready` catches those up)."""
        for slot in slots:
            if slot.alive and slot.ready and not slot.stopping:
                slot.proc.send_signal(signal.SIGUSR1)  # type: ignore[union-attr]
                slot.auth_generation = self._auth_generation

    def _poll_tokens(self, now: float) -> None:
        """Re-read the tokens file when its stat signature changed (see the module docstring)."""
        path = self.settings.auth_tokens_file
        if not path or now < self._next_auth_poll:
            return
        self._next_auth_poll = now + AUTH_POLL_INTERVAL
        if _stat_signature(path) == self._auth_stat:
            return
        previous = len(self._auth_entries or ())
        try:
            entries = self._read_tokens(self.settings)
        except TokenFileError as exc:
            log.error(
                "tokens file changed but cannot be used, keeping the previous %d token(s): %s", previous, exc
            )
            return
        if entries == self._auth_entries:
            log.debug("tokens file %s rewritten with the same tokens", path)
            return
        try:
            self._install_tokens(entries, path)
        except OSError as exc:
            self._auth_stat = None  # try again at the next poll
            log.error("cannot write %s, keeping the previous tokens: %s", self._digest_path(), exc)

    # --- state --------------------------------------------------------------------------------

    def _live_pids(self) -> list[int]:
        """Pids of the tree, from the published snapshot (the limiter thread calls this)."""
        snap = self._snapshot
        return [snap.supervisor_pid, *(p.pid for p in snap.processes if p.pid is not None)]

    def _slots(self) -> list[ChildSlot]:
        return [*self.exporters, *self.workers]

    def _publish(self) -> None:
        processes = tuple(
            ProcessInfo(
                s.role,
                s.index,
                s.pid if s.alive else None,
                s.alive and s.ready,
                s.ready,
                started=s.started_at if s.alive else 0.0,
                restarts=s.restarts,
                last_exit=s.last_exit,
                last_exit_at=s.last_exit_at,
                queues=tuple(s.rings),
            )
            for s in self._slots()
        )
        self._snapshot = TreeSnapshot(
            supervisor_pid=self.pid,
            processes=processes,
            restarts=dict(self.restarts),
            exporter_rings={s.index: tuple(s.rings) for s in self.exporters},
            wal_capacity_bytes=wal_max_bytes(self.settings) if self.settings.queue_dir else 0,
            wal_records_hint=self.settings.queue_size // max(1, len(self.workers)),
            draining=self._shutdown_phase is not None,
            memory_flag=self.memory.name if self.memory is not None else "",
            started=self._started,
            settings=self.settings,
        )


def serving_line(settings: Settings) -> str:
    """The start-up line that says which interfaces the three ports are served on."""
    bind = settings.bind.strip("[]")
    try:
        address = ipaddress.ip_address(bind)
    except ValueError:  # a host name: loopback only when it is localhost
        loopback, everywhere = bind.lower() == "localhost", False
    else:
        loopback, everywhere = address.is_loopback, address.is_unspecified
    if everywhere:
        line = f"serving on all interfaces ({settings.bind})"
        if settings.auth_tokens_file is None:
            line += ": any host that reaches these ports can send telemetry (see OTLP_AUTH_TOKENS_FILE)"
        return line
    if loopback:
        return f"serving on {settings.bind} only (loopback): set OTLP_BIND=0.0.0.0 to accept other hosts"
    return f"serving on {settings.bind} only (one interface): set OTLP_BIND=0.0.0.0 for every interface"


def run_supervisor(settings: Settings, reload: Callable[[], Settings] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; `reload` re-reads the config on SIGHUP."""
    return Supervisor(settings, reload).run()
