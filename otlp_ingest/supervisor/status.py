"""The admin status page's data: `/status.json`, built in the supervisor from what it already has.

Sources, none of them on the request path of a worker:

- item counters: the children's prometheus_client multiprocess files (`counter_<pid>.db` in the
  run directory, the same files `/metrics` sums), read by `CounterReader`;
- queue fill: the ring headers or log directories (`otlp_ingest.queue.queue_usage`);
- process table, restarts, last exits: the supervisor's `TreeSnapshot`;
- CPU and memory of every process: psutil;
- memory limiter: its shared state file (`telemetry.memory.read_status`);
- exporter state and every child's recent warnings: the children's status files
  (`telemetry.child_status`); the supervisor's own warnings from its `RECENT_WARNINGS`.

`StatusSampler` runs a thread that samples counters, CPU and the status files once per
`SAMPLE_INTERVAL` and keeps the last `HISTORY` samples; rates and the last minute's per-second
throughput are differences of those samples. A `/status.json` request only assembles the latest
sample with the cheap reads above (at most once per `CACHE_FOR`, however many pages poll).

The JSON document (every time is wall clock, seconds since the epoch; every rate is items per
second; null where nothing is known yet) is described field by field in docs/operations.md,
"Status page"; `build_status` is the one place that writes it.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import json
import logging
import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psutil
from prometheus_client.mmap_dict import MmapedDict

from otlp_ingest import __version__
from otlp_ingest.otlp.signals import SIGNALS
from otlp_ingest.supervisor.admin import readiness
from otlp_ingest.supervisor.queues import pid_alive
from otlp_ingest.telemetry import child_status
from otlp_ingest.telemetry.collect import ProcessInfo, TreeSnapshot
from otlp_ingest.telemetry.logging import RECENT_WARNINGS, WarningBuffer
from otlp_ingest.telemetry.memory import read_status

log = logging.getLogger(__name__)

SAMPLE_INTERVAL = 1.0  # seconds between samples
HISTORY = 61  # samples kept: 60 one-second intervals, the page's "last minute"
RATE_WINDOW = 5.0  # seconds the displayed rates are averaged over (1 s alone is jumpy)
CACHE_FOR = 0.5  # seconds a built document is served again (several pages polling at once)
# CPU% is averaged over this long: the kernel counts CPU time in 10 ms ticks, so over one second
# an idle process reads 0% or 1%, nothing between.
CPU_WINDOW = 5.0
MAX_WARNINGS = 50  # warnings in the document, newest first
RETIRED_WARNINGS = 50  # warnings of exited children kept after their status file is removed

# Counter families per signal, as the multiprocess files name their samples -> document key.
KINDS = ("accepted", "refused", "exported", "dropped", "rejected")
_COUNTERS: dict[str, tuple[str, str]] = {}
for _info in SIGNALS.values():
    _noun = _info.item_noun
    _COUNTERS[f"otlp_receiver_accepted_{_noun}_total"] = ("accepted", _info.name)
    _COUNTERS[f"otlp_receiver_refused_{_noun}_total"] = ("refused", _info.name)
    _COUNTERS[f"otlp_exporter_sent_{_noun}_total"] = ("exported", _info.name)
    _COUNTERS[f"otlp_exporter_send_failed_{_noun}_total"] = ("dropped", _info.name)
    _COUNTERS[f"otlp_exporter_backend_rejected_{_noun}_total"] = ("rejected", _info.name)

# Processor families (labels processor, signal) -> document key; their totals are keyed
# ("processor_<key>", "<processor> <signal>"): a space, since no processor name holds one.
_PROCESSOR_COUNTERS = {
    "otlp_processor_incoming_items_total": "incoming",
    "otlp_processor_outgoing_items_total": "outgoing",
    "otlp_processor_dropped_items_total": "dropped",
    "otlp_processor_errors_total": "errors",
    "otlp_processor_duration_seconds_total": "seconds",
}

Totals = dict[tuple[str, str], float]  # (kind, signal name) -> items


class CounterReader:
    """Sums the item counters of every process (live and exited) from the multiprocess files.

    Reads only `counter_*.db` (not histograms) and parses each distinct key once."""

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._keys: dict[str, tuple[str, str] | None] = {}

    def read(self) -> tuple[Totals, dict[int, Totals]]:
        """(tree totals, totals per pid)."""
        totals: Totals = {}
        per_pid: dict[int, Totals] = {}
        for path in glob.glob(os.path.join(self._directory, "counter_*.db")):
            try:
                pid = int(os.path.basename(path)[len("counter_") : -len(".db")])
                values = list(MmapedDict.read_all_values_from_file(path))
            except (OSError, ValueError, RuntimeError):  # a file being created or renamed
                continue
            mine = per_pid.setdefault(pid, {})
            for key, value, _timestamp, _pos in values:
                what = self._keys.get(key, ())
                if what == ():
                    what = _counter_key(key)
                    self._keys[key] = what
                if what is None:
                    continue
                totals[what] = totals.get(what, 0.0) + value
                mine[what] = mine.get(what, 0.0) + value
        return totals, per_pid


def _counter_key(key: str) -> tuple[str, str] | None:
    """A multiprocess file's sample key -> the Totals key it adds to, or None to skip it."""
    try:  # (metric name, sample name, {label: value}, help), as prometheus_client writes it
        _metric, sample, labels, *_help = json.loads(key)
        if sample in _PROCESSOR_COUNTERS:
            return f"processor_{_PROCESSOR_COUNTERS[sample]}", f"{labels['processor']} {labels['signal']}"
        return _COUNTERS.get(sample)
    except (ValueError, TypeError, KeyError):
        return None


@dataclass(frozen=True, slots=True)
class Sample:
    mono: float
    wall: float
    totals: Totals


@dataclass(frozen=True, slots=True)
class ProcStat:
    cpu_percent: float | None  # of one core, over the last CPU_WINDOW seconds
    rss_bytes: int
    cpu_seconds: float


@dataclass(frozen=True, slots=True)
class SamplerView:
    """What the sampler thread publishes (swapped whole, read by the admin threads)."""

    history: tuple[Sample, ...] = ()
    per_pid: dict[int, Totals] = field(default_factory=dict)
    procs: dict[int, ProcStat] = field(default_factory=dict)
    children: dict[int, dict[str, Any]] = field(default_factory=dict)  # pid -> its status file
    retired_warnings: tuple[dict[str, Any], ...] = ()


class StatusSampler:
    """The sampling thread and the `/status.json` builder (see the module docstring)."""

    def __init__(
        self,
        run_dir: str,
        snapshot: Callable[[], TreeSnapshot],
        warnings: WarningBuffer = RECENT_WARNINGS,
        interval: float = SAMPLE_INTERVAL,
    ) -> None:
        self._run_dir = run_dir
        self._snapshot = snapshot
        self._warnings = warnings
        self._interval = interval
        self._counters = CounterReader(run_dir)
        self._history: deque[Sample] = deque(maxlen=HISTORY)
        self._psutil: dict[int, psutil.Process] = {}
        self._procs: dict[int, ProcStat] = {}
        self._cpu_history: dict[int, deque[tuple[float, float]]] = {}  # pid -> (mono, cpu seconds)
        self._children: dict[int, dict[str, Any]] = {}
        self._mtimes: dict[int, int] = {}
        self._retired: deque[dict[str, Any]] = deque(maxlen=RETIRED_WARNINGS)
        self._view = SamplerView()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cache: tuple[float, bytes] = (float("-inf"), b"")
        self._cache_lock = threading.Lock()
        self.host = socket.gethostname()

    # --- sampling (its own thread) ----------------------------------------------------------

    def start(self) -> None:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="status-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sample()
            except Exception:  # a sampling bug must not stop the page from updating for good
                log.exception("status sampler failed")

    def sample(self) -> None:
        """Take one sample and publish a new view."""
        snap = self._snapshot()
        mono, wall = time.monotonic(), time.time()
        totals, per_pid = self._counters.read()
        self._history.append(Sample(mono, wall, totals))
        live = {snap.supervisor_pid, *(p.pid for p in snap.processes if p.pid is not None)}
        self._sample_procs(live, mono)
        self._read_child_files(live)
        self._view = SamplerView(
            tuple(self._history), per_pid, dict(self._procs), dict(self._children), tuple(self._retired)
        )

    def _sample_procs(self, pids: set[int], mono: float) -> None:
        for pid in list(self._psutil):
            if pid not in pids:
                del self._psutil[pid]
                self._cpu_history.pop(pid, None)
        procs: dict[int, ProcStat] = {}
        for pid in pids:
            try:
                proc = self._psutil.get(pid) or self._psutil.setdefault(pid, psutil.Process(pid))
                with proc.oneshot():
                    times = proc.cpu_times()
                    rss = proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                self._psutil.pop(pid, None)
                continue
            cpu = times.user + times.system
            seen = self._cpu_history.setdefault(pid, deque())
            seen.append((mono, cpu))
            while len(seen) > 2 and mono - seen[1][0] >= CPU_WINDOW:
                seen.popleft()
            first = seen[0]
            percent = None
            if mono > first[0]:
                percent = max(0.0, (cpu - first[1]) / (mono - first[0]) * 100.0)
            procs[pid] = ProcStat(percent, rss, cpu)
        self._procs = procs

    def _read_child_files(self, live: set[int]) -> None:
        try:
            names = os.listdir(self._run_dir)
        except OSError:
            return
        seen = set()
        for name in names:
            pid = child_status.pid_of(name)
            if pid is None:
                continue
            seen.add(pid)
            path = os.path.join(self._run_dir, name)
            try:
                mtime = os.stat(path).st_mtime_ns
            except OSError:
                continue
            if self._mtimes.get(pid) != mtime:
                doc = child_status.read_status_file(path)
                if doc is not None:
                    self._children[pid] = doc
                    self._mtimes[pid] = mtime
            if pid not in live and not pid_alive(pid):
                # Exited: its last write is read above; keep its warnings, drop the file.
                doc = self._children.pop(pid, None)
                self._mtimes.pop(pid, None)
                if doc is not None:
                    who = f"{doc.get('role')}[{doc.get('index')}]"
                    for w in doc.get("warnings", []):
                        self._retired.append({**w, "process": who, "pid": pid})
                with contextlib.suppress(OSError):
                    os.unlink(path)
        for pid in list(self._children):
            if pid not in seen:
                self._children.pop(pid)
                self._mtimes.pop(pid, None)

    # --- the document -------------------------------------------------------------------------

    def status_json(self) -> bytes:
        """`/status.json`'s body; built at most once per CACHE_FOR."""
        with self._cache_lock:
            built_at, body = self._cache
            now = time.monotonic()
            if now - built_at < CACHE_FOR and body:
                return body
            doc = build_status(self._snapshot(), self._view, self._warnings.entries(), self.host)
            body = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
            self._cache = (now, body)
            return body


# --- building the document ------------------------------------------------------------------


def _rate(history: tuple[Sample, ...], key: tuple[str, str], window: float = RATE_WINDOW) -> float | None:
    """Items per second over about the last `window` seconds; None with fewer than two samples."""
    if len(history) < 2:
        return None
    last = history[-1]
    ref = history[0]
    for sample in reversed(history[:-1]):
        ref = sample
        if last.mono - sample.mono >= window:
            break
    elapsed = last.mono - ref.mono
    if elapsed <= 0:
        return None
    return max(0.0, last.totals.get(key, 0.0) - ref.totals.get(key, 0.0)) / elapsed


def _per_second(history: tuple[Sample, ...], key: tuple[str, str]) -> list[float]:
    """Rate between consecutive samples, oldest first (the page's last-minute sparkline)."""
    out = []
    for a, b in itertools.pairwise(history):
        dt = b.mono - a.mono
        items = max(0.0, b.totals.get(key, 0.0) - a.totals.get(key, 0.0))
        out.append(round(items / dt, 2) if dt > 0 else 0.0)
    return out


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _signals(history: tuple[Sample, ...]) -> dict[str, Any]:
    last = history[-1].totals if history else {}
    out: dict[str, Any] = {}
    for info in SIGNALS.values():
        entry: dict[str, Any] = {"items": info.item_noun.replace("_", " ")}
        for kind in KINDS:
            key = (kind, info.name)
            entry[kind] = {"total": int(last.get(key, 0.0)), "rate": _round(_rate(history, key))}
        entry["history"] = {k: _per_second(history, (k, info.name)) for k in ("accepted", "exported")}
        out[info.name] = entry
    return out


def _processors(settings: Any, history: tuple[Sample, ...]) -> list[dict[str, Any]]:
    """The processors in force, per signal in pipeline order, with their counts so far."""
    if settings is None:
        return []
    last = history[-1].totals if history else {}
    rows = []
    for signal, names in settings.pipelines.items():
        for position, name in enumerate(names):
            row: dict[str, Any] = {"signal": signal, "position": position, "name": name}
            for kind in _PROCESSOR_COUNTERS.values():
                key = (f"processor_{kind}", f"{name} {signal}")
                row[kind] = round(last.get(key, 0.0), 3) if kind == "seconds" else int(last.get(key, 0.0))
            row["incoming_rate"] = _round(_rate(history, ("processor_incoming", f"{name} {signal}")))
            rows.append(row)
    return rows


def _queues(snap: TreeSnapshot) -> list[dict[str, Any]]:
    from otlp_ingest.queue import parse_queue, queue_usage

    writers = {q: p.index for p in snap.processes if p.role == "worker" for q in p.queues}
    rows = []
    for exporter, specs in sorted(snap.exporter_rings.items()):
        for text in specs:
            spec = parse_queue(text)
            row: dict[str, Any] = {
                "queue": spec.target,
                "kind": spec.kind,
                "worker": writers.get(text),  # None: left by an earlier run, drained only
                "exporter": exporter,
                "records": None,
                "max_records": None,
                "bytes": None,
                "capacity_bytes": None,
                "fill": None,
            }
            try:
                usage = queue_usage(spec, snap.wal_capacity_bytes)
            except Exception as exc:  # a ring being recreated; the page must not fail for it
                row["error"] = str(exc)
                rows.append(row)
                continue
            fills = []
            if usage.max_records:
                fills.append(usage.records / usage.max_records)
            if usage.capacity_bytes:
                fills.append(usage.used_bytes / usage.capacity_bytes)
            row.update(
                records=usage.records,
                max_records=usage.max_records or None,
                bytes=usage.used_bytes,
                capacity_bytes=usage.capacity_bytes or None,
                fill=round(max(fills), 4) if fills else None,
            )
            rows.append(row)
    return rows


def _process_row(
    p: ProcessInfo | None, snap: TreeSnapshot, view: SamplerView, now_mono: float
) -> dict[str, Any]:
    if p is None:  # the supervisor itself
        pid = snap.supervisor_pid
        row: dict[str, Any] = {
            "name": "supervisor",
            "role": "supervisor",
            "index": None,
            "pid": pid,
            "state": "draining" if snap.draining else "running",
            "uptime_s": _round(now_mono - snap.started, 1) if snap.started else None,
            "restarts": None,
            "last_exit": None,
        }
    else:
        pid = p.pid
        state = "down" if pid is None else ("ready" if p.up else "starting")
        row = {
            "name": f"{p.role}[{p.index}]",
            "role": p.role,
            "index": p.index,
            "pid": pid,
            "state": state,
            "uptime_s": _round(now_mono - p.started, 1) if pid is not None and p.started else None,
            "restarts": p.restarts,
            "last_exit": {"how": p.last_exit, "time": round(p.last_exit_at, 3)} if p.last_exit else None,
        }
    stat = view.procs.get(pid) if pid is not None else None
    row["cpu_percent"] = _round(stat.cpu_percent, 1) if stat else None
    row["cpu_seconds"] = _round(stat.cpu_seconds, 2) if stat else None
    row["rss_bytes"] = stat.rss_bytes if stat else None
    return row


def _exporter_row(p: ProcessInfo, view: SamplerView) -> dict[str, Any]:
    doc = view.children.get(p.pid) if p.pid is not None else None
    section = doc.get("exporter") if doc else None
    row: dict[str, Any] = {"name": f"exporter[{p.index}]", "index": p.index, "pid": p.pid}
    if p.pid is None:
        row["state"] = "down"
    elif not isinstance(section, dict):
        row["state"] = "starting"  # no status file yet (booting), or an exporter of an older build
    else:
        row.update(section)
    return row


def _warnings(snap: TreeSnapshot, view: SamplerView, own: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged = [{**w, "process": "supervisor", "pid": snap.supervisor_pid} for w in own]
    for pid, doc in view.children.items():
        who = f"{doc.get('role')}[{doc.get('index')}]"
        warnings = [w for w in doc.get("warnings", []) if isinstance(w, dict)]
        merged.extend({**w, "process": who, "pid": pid} for w in warnings)
    merged.extend(view.retired_warnings)
    merged.sort(key=lambda w: w.get("last") or w.get("time") or 0, reverse=True)
    return merged[:MAX_WARNINGS]


def _memory(snap: TreeSnapshot) -> dict[str, Any]:
    status = read_status(snap.memory_flag) if snap.memory_flag else None
    if status is None or status.hard == 0:
        return {"enabled": False, "state": "off"}
    return {
        "enabled": True,
        "state": ("accepting", "refusing", "refusing_hard")[min(status.state, 2)],
        "usage_bytes": status.usage,
        "soft_limit_bytes": status.soft,
        "hard_limit_bytes": status.hard,
        "trips": status.trips,
    }


def build_status(
    snap: TreeSnapshot,
    view: SamplerView,
    own_warnings: list[dict[str, Any]],
    host: str = "",
    now_wall: float | None = None,
    now_mono: float | None = None,
) -> dict[str, Any]:
    """The `/status.json` document (docs/operations.md, "Status page")."""
    now_wall = time.time() if now_wall is None else now_wall
    now_mono = time.monotonic() if now_mono is None else now_mono
    ready, reason = readiness(snap)
    settings = snap.settings
    if settings is None:
        mode = destination = None
    else:
        mode = "durable" if settings.queue_dir else "shared-memory"
        if settings.endpoint:
            destination = {
                "kind": "backend",
                "endpoint": redact_url(settings.endpoint),
                "protocol": settings.export_protocol,
            }
        else:
            destination = {"kind": "file", "directory": settings.data_dir}
    return {
        "format": 1,
        "version": __version__,
        "host": host,
        "time": round(now_wall, 3),
        "ready": ready,
        "ready_reason": reason,
        "draining": snap.draining,
        "mode": mode,
        "destination": destination,
        "restarts": dict(snap.restarts),
        "sample_interval_s": SAMPLE_INTERVAL,
        "rate_window_s": RATE_WINDOW,
        "signals": _signals(view.history),
        "processors": _processors(settings, view.history),
        "queues": _queues(snap),
        "exporters": [_exporter_row(p, view) for p in snap.processes if p.role == "exporter"],
        "processes": [
            _process_row(None, snap, view, now_mono),
            *(_process_row(p, snap, view, now_mono) for p in snap.processes),
        ],
        "memory": _memory(snap),
        "settings": redact_settings(settings) if settings is not None else {},
        "warnings": _warnings(snap, view, own_warnings),
    }


# --- redaction ------------------------------------------------------------------------------

REDACTED = "<redacted>"
# Setting names (and URL query keys) whose values are credentials. File and directory settings
# name paths (a key *file*, not a key), which are safe to show and useful when one is wrong.
SECRET_NAME = re.compile(r"token|secret|passw|credential|key|auth|bearer|cookie|signature|session", re.I)


def redact_url(url: str) -> str:
    """`url` with a password in its userinfo and credential-like query values replaced."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{REDACTED}@{host}" if ":" in userinfo else f"{REDACTED}@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, REDACTED if SECRET_NAME.search(k) else v) for k, v in pairs], safe="<>")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return REDACTED  # unparseable: it may hold anything


def redact_settings(settings: Any) -> dict[str, Any]:
    """Every setting as shown on the status page: export_headers' values (auth tokens, API keys,
    tenant ids) and any credential-like setting replaced by "<redacted>"; paths kept."""
    out: dict[str, Any] = {}
    for name in settings.__struct_fields__:
        value = getattr(settings, name)
        if name in ("processors", "pipelines"):
            continue  # shown as the processors section (values such as `upsert` may be secrets)
        if name == "export_headers":
            value = dict.fromkeys(sorted(value), REDACTED)
        elif name.endswith(("_file", "_dir")):
            pass
        elif name == "endpoint" and value:
            value = redact_url(str(value))
        elif SECRET_NAME.search(name) and value not in (None, "", 0, False):
            value = REDACTED
        out[name] = value
    return out
