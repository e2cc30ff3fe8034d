"""Durable mode: a write-ahead log per receiver worker in ``OTLP_QUEUE_DIR`` instead of a
shared-memory ring.

``WalWriter`` (worker side) and ``WalReader`` (exporter side) have the ring's shapes
(``append``/``max_payload``; ``read``/``commit``/``rewind``/``close`` handing out the same
``Record``), plus group-commit durability: ``wait_durable``, ``add_durable_callback``,
``durable_future``. ``wal_usage`` reads a log's fill level from any process. The file layout is
documented in ``otlp_ingest.wal.layout``.
"""

from otlp_ingest.ring.layout import Record
from otlp_ingest.wal.layout import DiskFull, WalUsage, wal_usage
from otlp_ingest.wal.lock import WalLocked
from otlp_ingest.wal.reader import WalReader
from otlp_ingest.wal.recovery import RecoveryReport
from otlp_ingest.wal.writer import WalWriter

__all__ = [
    "DiskFull",
    "Record",
    "RecoveryReport",
    "WalLocked",
    "WalReader",
    "WalUsage",
    "WalWriter",
    "wal_usage",
]
