"""Queue specs: which queue a receiver worker writes and an exporter reads, as one string.

The supervisor decides the queues and hands each child its specs on the command line
(``--queue SPEC``); the children open them with ``open_writer`` / ``open_reader``::

    shm:<ring name>     a shared-memory ring in /dev/shm (otlp_ingest.ring), the default mode
    wal:<directory>     a write-ahead log directory (otlp_ingest.wal), durable mode (OTLP_QUEUE_DIR)

A bare name without a prefix is a ring name (the older ``--ring NAME`` form).

Durable mode on disk (``OTLP_QUEUE_DIR``)::

    <queue dir>/supervisor.lock   flock()ed by the running supervisor (holds its pid, as text)
    <queue dir>/worker-<i>/       the write-ahead log of worker i (layout: otlp_ingest.wal.layout)

Log ``worker-<k>`` is read by exporter ``k % exporters``; logs with ``k`` at or above the current
worker count (left by an earlier run with more workers) are drained but no longer written.
``OTLP_QUEUE_MAX_BYTES`` is split evenly over the current workers: each log refuses appends once
its uncommitted bytes would pass ``queue_max_bytes // workers``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal

from otlp_ingest.config import Settings
from otlp_ingest.ring import RingReader, RingWriter, ring_usage
from otlp_ingest.wal import WalReader, WalWriter, wal_usage

QueueKind = Literal["shm", "wal"]
SUPERVISOR_LOCK = "supervisor.lock"
_WORKER_DIR = re.compile(r"worker-(\d+)")


@dataclass(frozen=True, slots=True)
class QueueSpec:
    kind: QueueKind
    target: str  # ring name or log directory

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"


def parse_queue(text: str) -> QueueSpec:
    """``shm:NAME`` / ``wal:DIR`` / bare ring name -> QueueSpec; ValueError if empty."""
    kind, sep, target = text.partition(":")
    if sep and kind in ("shm", "wal") and target:
        return QueueSpec(kind, target)  # type: ignore[arg-type]
    if not text or sep:
        raise ValueError(f"invalid queue spec {text!r}: use shm:<ring name> or wal:<directory>")
    return QueueSpec("shm", text)


def wal_max_bytes(settings: Settings) -> int:
    """Uncommitted bytes one worker's log may hold: the disk bound split over the workers."""
    return max(1 << 16, settings.queue_max_bytes // max(1, settings.resolved_workers()))


def worker_dir(queue_dir: str, index: int) -> str:
    return os.path.join(queue_dir, f"worker-{index}")


def existing_worker_dirs(queue_dir: str) -> dict[int, str]:
    """``worker-<k>`` directories already in ``queue_dir``, by k."""
    found = {}
    for name in os.listdir(queue_dir):
        m = _WORKER_DIR.fullmatch(name)
        if m and os.path.isdir(os.path.join(queue_dir, name)):
            found[int(m.group(1))] = os.path.join(queue_dir, name)
    return found


def open_writer(spec: QueueSpec, settings: Settings) -> RingWriter | WalWriter:
    """The producer side (receiver worker). OSError/RingCorrupt/WalLocked when it cannot open."""
    if spec.kind == "wal":
        return WalWriter.open(spec.target, settings.queue_segment_bytes, wal_max_bytes(settings))
    return RingWriter.attach(spec.target)


def open_reader(spec: QueueSpec) -> RingReader | WalReader:
    """The consumer side (exporter)."""
    if spec.kind == "wal":
        return WalReader.open(spec.target)
    return RingReader.attach(spec.target)


@dataclass(frozen=True, slots=True)
class Usage:
    records: int
    used_bytes: int
    capacity_bytes: int  # 0: unknown
    max_records: int  # 0: unknown (a log bounds bytes, not records)


def queue_usage(spec: QueueSpec, wal_capacity_bytes: int = 0) -> Usage:
    """Fill level of any queue, from any process, without opening it for reading or writing."""
    if spec.kind == "wal":
        u = wal_usage(spec.target)
        return Usage(u.records, u.used_bytes, wal_capacity_bytes, 0)
    r = ring_usage(spec.target)
    return Usage(r.records, r.used_bytes, r.capacity_bytes, r.max_records)
