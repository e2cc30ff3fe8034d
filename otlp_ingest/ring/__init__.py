"""Shared-memory single-producer single-consumer rings between receiver workers and exporters.

One ring per receiver worker, named ``ring_name(supervisor_pid, worker_index)``, a file in
``/dev/shm``. The supervisor creates (``create_ring``), inspects (``ring_usage``) and removes
(``unlink_ring``, ``wipe_stale_rings``) segments; worker ``i`` appends with a ``RingWriter``; the
exporter that owns ring ``i`` reads with a ``RingReader`` and commits records once the backend
acknowledged them. The byte layout is documented in ``otlp_ingest.ring.layout``.
"""

from otlp_ingest.ring.layout import Record, RingCorrupt, RingUsage, max_payload, ring_name
from otlp_ingest.ring.reader import RingReader
from otlp_ingest.ring.segment import create_ring, ring_usage, unlink_ring, wipe_stale_rings
from otlp_ingest.ring.writer import RingWriter

__all__ = [
    "Record",
    "RingCorrupt",
    "RingReader",
    "RingUsage",
    "RingWriter",
    "create_ring",
    "max_payload",
    "ring_name",
    "ring_usage",
    "unlink_ring",
    "wipe_stale_rings",
]
