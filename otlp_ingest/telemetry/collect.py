"""Scrape-time metrics for the admin endpoint: every process's counters plus tree-wide gauges.

Children write their counters and histograms to per-process files in `PROMETHEUS_MULTIPROC_DIR`
(prometheus_client multiprocess mode); `MultiProcessCollector` sums them. What no single child can
know is computed here, by the supervisor, at scrape time:

- `process_cpu_seconds_total`: user+system CPU of the supervisor, every live child, and every
  child already reaped (the kernel's `children_user/children_system` of a waiting parent), so the
  counter never goes down when a child restarts.
- `process_resident_memory_bytes`: RSS of the supervisor and every live child.
- `otlp_exporter_queue_size{exporter}` / `otlp_exporter_queue_capacity{exporter}`: queued records
  and record capacity summed over the queues each exporter drains (`otlp_ingest.queue.queue_usage`).
  A write-ahead log (durable mode) bounds bytes, not records: its record capacity is estimated as
  its byte bound divided by the mean size of the records it holds (or, empty, its share of
  OTLP_QUEUE_SIZE), so size/capacity still reads as a fill ratio.
  `otlp_exporter_queue_bytes{exporter}` / `otlp_exporter_queue_capacity_bytes{exporter}` give the
  bytes exactly, in both modes.
- `otlp_process_up{role,index}` (1/0) and `otlp_process_restarts_total{role}`.
- `otlp_memory_limit_bytes`, `otlp_memory_soft_limit_bytes` (0: no limit), `otlp_memory_usage_bytes`
  (what the limiter counts: anonymous RSS of the tree + ring bytes once), `otlp_memory_refusing`
  (1 while workers refuse new data) and `otlp_memory_limit_trips_total`, read from the limiter's
  shared file (`telemetry.memory`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from otlp_ingest.telemetry.memory import read_status

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One child slot as the supervisor sees it."""

    role: str  # "worker" | "exporter"
    index: int
    pid: int | None  # None while the slot waits for a (re)start
    up: bool  # running and reported ready
    ready: bool = False
    started: float = 0.0  # time.monotonic() of the current process's start (0: none)
    restarts: int = 0  # restarts of this slot after unexpected exits
    last_exit: str = ""  # how the previous process of this slot ended ("" if none did)
    last_exit_at: float = 0.0  # wall clock of that exit
    queues: tuple[str, ...] = ()  # queue specs: the one a worker writes, the ones an exporter reads


@dataclass(frozen=True, slots=True)
class TreeSnapshot:
    """What the supervisor publishes for scrapes and the status page (immutable, swapped whole)."""

    supervisor_pid: int
    processes: tuple[ProcessInfo, ...] = ()
    restarts: dict[str, int] = field(default_factory=dict)  # role -> restarts so far
    exporter_rings: dict[int, tuple[str, ...]] = field(default_factory=dict)  # exporter -> queue specs
    wal_capacity_bytes: int = 0  # durable mode: byte bound of one log (otlp_ingest.queue)
    wal_records_hint: int = 0  # durable mode: record capacity reported for an empty log
    draining: bool = False
    memory_flag: str = ""  # the memory limiter's shared file (telemetry.memory), "" before boot
    started: float = 0.0  # time.monotonic() when the supervisor started
    settings: Any = None  # the Settings in force (replaced on reload), for the status page


@dataclass(frozen=True, slots=True)
class QueueUsage:
    records: int
    max_records: int
    used_bytes: int
    capacity_bytes: int


def exporter_queue_usage(snapshot: TreeSnapshot) -> dict[int, QueueUsage]:
    """Queued records per exporter, summed over its queues; queues that cannot be read count 0."""
    from otlp_ingest.queue import parse_queue, queue_usage

    usage: dict[int, QueueUsage] = {}
    for exporter, names in snapshot.exporter_rings.items():
        records = max_records = used = capacity = 0
        for name in names:
            try:
                u = queue_usage(parse_queue(name), snapshot.wal_capacity_bytes)
            except Exception as exc:  # a ring being recreated; a scrape must not fail for it
                log.debug("queue_usage(%s) failed: %s", name, exc)
                continue
            records += u.records
            used += u.used_bytes
            capacity += u.capacity_bytes
            if u.max_records:
                max_records += u.max_records
            elif u.records:  # a log: records that fit at the current mean record size
                max_records += max(u.records, u.capacity_bytes * u.records // max(1, u.used_bytes))
            else:
                max_records += snapshot.wal_records_hint
        usage[exporter] = QueueUsage(records, max_records, used, capacity)
    return usage


class TreeCollector:
    """A prometheus_client collector for the tree-wide families (see module docstring)."""

    def __init__(self, snapshot: Callable[[], TreeSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        cpu, rss = _tree_cpu_and_rss(snap)
        cpu_family = CounterMetricFamily(
            "process_cpu_seconds", "User and system CPU of the whole process tree (incl. exited children)."
        )
        cpu_family.add_metric([], cpu)
        yield cpu_family
        rss_family = GaugeMetricFamily(
            "process_resident_memory_bytes", "Resident memory of the supervisor and every live child."
        )
        rss_family.add_metric([], rss)
        yield rss_family

        size = GaugeMetricFamily(
            "otlp_exporter_queue_size",
            "Records queued in the rings this exporter drains.",
            labels=["exporter"],
        )
        capacity = GaugeMetricFamily(
            "otlp_exporter_queue_capacity",
            "Record capacity of the rings this exporter drains.",
            labels=["exporter"],
        )
        size_bytes = GaugeMetricFamily(
            "otlp_exporter_queue_bytes",
            "Bytes queued in the queues this exporter drains.",
            labels=["exporter"],
        )
        capacity_bytes = GaugeMetricFamily(
            "otlp_exporter_queue_capacity_bytes",
            "Byte capacity of the queues this exporter drains (a log's OTLP_QUEUE_MAX_BYTES share).",
            labels=["exporter"],
        )
        for exporter, usage in sorted(exporter_queue_usage(snap).items()):
            size.add_metric([str(exporter)], usage.records)
            capacity.add_metric([str(exporter)], usage.max_records)
            size_bytes.add_metric([str(exporter)], usage.used_bytes)
            capacity_bytes.add_metric([str(exporter)], usage.capacity_bytes)
        yield size
        yield capacity
        yield size_bytes
        yield capacity_bytes

        up = GaugeMetricFamily(
            "otlp_process_up",
            "1 if the child process is running and ready, else 0.",
            labels=["role", "index"],
        )
        for proc in snap.processes:
            up.add_metric([proc.role, str(proc.index)], 1.0 if proc.up else 0.0)
        yield up
        restarts = CounterMetricFamily(
            "otlp_process_restarts", "Child processes restarted after they died.", labels=["role"]
        )
        for role in ("worker", "exporter"):
            restarts.add_metric([role], snap.restarts.get(role, 0))
        yield restarts
        yield from _memory_families(snap)


def _memory_families(snap: TreeSnapshot) -> Iterator[Metric]:
    status = read_status(snap.memory_flag) if snap.memory_flag else None
    if status is None:
        return
    gauges = (
        ("otlp_memory_limit_bytes", "Hard memory limit of the process tree (0: no limit).", status.hard),
        ("otlp_memory_soft_limit_bytes", "Above this, new data is refused (0: no limit).", status.soft),
        (
            "otlp_memory_usage_bytes",
            "Memory the limiter counts: anonymous RSS of every process plus ring bytes, once.",
            status.usage,
        ),
        (
            "otlp_memory_refusing",
            "1 while receivers refuse new data for memory, else 0.",
            1 if status.state else 0,
        ),
    )
    for name, doc, value in gauges:
        family = GaugeMetricFamily(name, doc)
        family.add_metric([], value)
        yield family
    trips = CounterMetricFamily("otlp_memory_limit_trips", "Times the soft memory limit was crossed.")
    trips.add_metric([], status.trips)
    yield trips


def _tree_cpu_and_rss(snap: TreeSnapshot) -> tuple[float, float]:
    cpu = rss = 0.0
    pids = [snap.supervisor_pid] + [p.pid for p in snap.processes if p.pid is not None]
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                times = proc.cpu_times()
                rss += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        # children_* holds the CPU of children this process already reaped: that is how the CPU of
        # restarted children stays in the total.
        cpu += times.user + times.system + times.children_user + times.children_system
    return cpu, rss


def render_metrics(multiproc_dir: str, snapshot: Callable[[], TreeSnapshot]) -> bytes:
    """The Prometheus text exposition for `/metrics`: a fresh registry per scrape, so files of
    children that started since the last scrape are included."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=multiproc_dir)
    registry.register(TreeCollector(snapshot))
    return generate_latest(registry)
