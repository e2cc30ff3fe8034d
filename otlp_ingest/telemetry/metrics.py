"""Every Prometheus metric the server exports, defined once.

Children (receiver workers, exporters) update the counters and histograms below; the supervisor
sets `PROMETHEUS_MULTIPROC_DIR` (wiped at start-up) before any child starts, so prometheus_client
writes their values to per-process files that the admin endpoint sums (see `telemetry.collect`).
Gauges that describe the whole tree (queue size and capacity, process up, CPU, memory) are not
defined here: the supervisor computes them at scrape time from the rings and psutil.

The names are a contract with the alert rules, the dashboard and docs/operations.md
(design.md section 6): do not rename.
"""

from __future__ import annotations

import bisect
from typing import Any

from prometheus_client import Counter, Histogram

from otlp_ingest.otlp.signals import SIGNALS, Signal

# Latency buckets from 0.5 ms to 30 s: ack latency lives at the low end, export latency higher.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


def _per_signal(prefix: str, doc: str, labels: tuple[str, ...]) -> dict[Signal, Counter]:
    return {
        signal: Counter(
            f"{prefix}_{info.item_noun}", doc.format(noun=info.item_noun.replace("_", " ")), labels
        )
        for signal, info in SIGNALS.items()
    }


RECEIVER_ACCEPTED = _per_signal(
    "otlp_receiver_accepted",
    "Items ({noun}) acknowledged to clients: written to a ring.",
    ("transport",),
)
RECEIVER_REFUSED = _per_signal(
    "otlp_receiver_refused",
    "Items ({noun}) not accepted: invalid items (partial success) or retryable refusals.",
    ("transport",),
)
RECEIVER_REQUESTS = Counter(
    "otlp_receiver_requests",
    "Export requests received, by outcome (ok, partial, invalid, too_large, unsupported, refused, error).",
    ("transport", "signal", "outcome"),
)
# Bearer-token authentication (otlp_ingest.auth, OTLP_AUTH_TOKENS_FILE). Refusals are counted per
# transport only: the request never got as far as a signal, and a label from a client-chosen value
# would let anyone grow the series. `token_name` is the name from the tokens file ("unnamed" for a
# line without one), never the token.
RECEIVER_UNAUTHENTICATED = Counter(
    "otlp_receiver_unauthenticated_requests",
    "OTLP requests refused because their bearer token was missing or not in the tokens file.",
    ("transport",),
)
RECEIVER_AUTHENTICATED = Counter(
    "otlp_receiver_authenticated_requests",
    "OTLP requests whose bearer token was accepted, by the token's name in the tokens file.",
    ("transport", "token_name"),
)
RECEIVER_REQUEST_DURATION = Histogram(
    "otlp_receiver_request_duration_seconds",
    "Time from a request's body being read to its response (ack latency inside the server).",
    ("transport", "signal"),
    buckets=LATENCY_BUCKETS,
)

# Every defence of a network-facing server (design.md house rule 13): a connection closed or a
# request refused because it crossed a bound in bytes, time or count. `transport` is grpc, http or
# admin (the supervisor's :8888, which counts into its own multiprocess file: supervisor/admin.py);
# `reason` names the bound (connection_limit, header_timeout, header_too_large, ...), from a fixed
# set in the code, never from the client. docs/hostile-input.md lists them with their limits.
TRANSPORT_DEFENCES = Counter(
    "otlp_transport_defences",
    "Connections closed or requests refused by a transport's defences, by the bound that acted.",
    ("transport", "reason"),
)

EXPORTER_SENT = _per_signal(
    "otlp_exporter_sent",
    "Items ({noun}) acknowledged by the backend or written to the file sink.",
    ("exporter",),
)
# `reason` (exporter/split.py REASONS): permanent (the backend rejected the data: HTTP 400/4xx,
# INVALID_ARGUMENT), retries_exhausted (retryable failures past OTLP_RETRY_MAX_ELAPSED), too_large
# (a single item over the backend's size limit even after splitting). Sum over reason for totals.
EXPORTER_SEND_FAILED = _per_signal(
    "otlp_exporter_send_failed",
    "Items ({noun}) given up on and dropped, by reason (permanent, retries_exhausted, too_large).",
    ("exporter", "reason"),
)
EXPORTER_BACKEND_REJECTED = _per_signal(
    "otlp_exporter_backend_rejected",
    "Items ({noun}) the backend acknowledged but reported as rejected in partial_success.",
    ("exporter",),
)
EXPORTER_SEND_RETRIES = Counter(
    "otlp_exporter_send_retries",
    "Batch send attempts that failed with a retryable error and were retried.",
    ("exporter", "signal"),
)
EXPORT_DURATION = Histogram(
    "otlp_export_duration_seconds",
    "Time to send one batch to the backend (one attempt, success or failure).",
    ("exporter", "signal"),
    buckets=LATENCY_BUCKETS,
)
EXPORTER_BATCH_ITEMS = Histogram(
    "otlp_exporter_batch_items",
    "Items per batch sent.",
    ("exporter", "signal"),
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2048, 4096, 8192),
)

# Processors (otlp_ingest.processing), run by exporters before batching. `processor` is the
# config's name (attributes/pii), `signal` traces|metrics|logs. Items are spans, metric data points
# and log records. dropped `reason`: filtered (filter), sampled (probabilistic_sampler), function
# (a python function removed them), error (the processor failed and its on_error is drop). errors
# `reason`: raised, timeout, invalid_output (processing/python_function.py).
PROCESSOR_INCOMING = Counter(
    "otlp_processor_incoming_items", "Items handed to a processor.", ("processor", "signal")
)
PROCESSOR_OUTGOING = Counter(
    "otlp_processor_outgoing_items", "Items a processor passed on.", ("processor", "signal")
)
PROCESSOR_DROPPED = Counter(
    "otlp_processor_dropped_items",
    "Items a processor dropped, by reason (filtered, sampled, function, error).",
    ("processor", "signal", "reason"),
)
PROCESSOR_ERRORS = Counter(
    "otlp_processor_errors",
    "Processor calls that failed, by reason (raised, timeout, invalid_output).",
    ("processor", "signal", "reason"),
)
PROCESSOR_SECONDS = Counter(
    "otlp_processor_duration_seconds", "Time spent in a processor.", ("processor", "signal")
)

# Durable mode (otlp_ingest.wal): what recovery cut off or moved aside when a log was opened or
# read. Non-zero means acknowledged data may have been lost to disk damage: alert on increase.
QUEUE_QUARANTINED_BYTES = Counter(
    "otlp_queue_quarantined_bytes",
    "Bytes of corrupt write-ahead log data moved to quarantine/ (not delivered).",
)
QUEUE_QUARANTINED_SEGMENTS = Counter(
    "otlp_queue_quarantined_segments",
    "Write-ahead log segments whose corrupt remainder was moved to quarantine/.",
)
QUEUE_TRUNCATED_BYTES = Counter(
    "otlp_queue_truncated_bytes",
    "Bytes of torn write-ahead log tail cut off at recovery (never acknowledged: not a loss).",
)


def count_recovery(report: object, before: object = None) -> None:
    """Add a wal RecoveryReport (minus an earlier snapshot of the same report) to the counters."""
    if report is None:
        return
    for attr, counter in (
        ("quarantined_bytes", QUEUE_QUARANTINED_BYTES),
        ("quarantined_segments", QUEUE_QUARANTINED_SEGMENTS),
        ("truncated_bytes", QUEUE_TRUNCATED_BYTES),
    ):
        delta = getattr(report, attr, 0) - (getattr(before, attr, 0) if before is not None else 0)
        if delta > 0:
            counter.inc(delta)


def observe_many(histogram: Any, values: list[float]) -> None:
    """`histogram.observe(v)` for every value in `values`, writing each bucket and the sum once.

    `histogram` is a labelled prometheus_client Histogram child; this reads its bucket bounds
    and values (`_upper_bounds`, `_buckets`, `_sum`: unchanged since prometheus_client 0.4;
    tests/unit/test_metrics_batch.py pins the result against `observe`). Buckets are cumulative
    in the exposition, so each value counts once, in the first bucket whose bound holds it.
    """
    if not values:
        return
    bounds = histogram._upper_bounds
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
    for bucket, n in zip(histogram._buckets, counts, strict=True):
        if n:
            bucket.inc(n)
    histogram._sum.inc(sum(values))


def count_defences(*defences: object) -> None:
    """Add the counts gathered by transport `Defences` objects since the last call."""
    for each in defences:
        for reason, n in each.take().items():  # type: ignore[attr-defined]
            TRANSPORT_DEFENCES.labels(each.transport, reason).inc(n)  # type: ignore[attr-defined]
