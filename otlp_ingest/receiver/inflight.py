"""How much request-body memory one receiver worker lets in at once, per transport.

The memory limiter (`telemetry/memory.py`) refuses new requests once the tree is above its soft
limit, but it samples every 0.2 s and cannot stop bodies already being read or decoded. These
bounds make the in-flight part finite and small enough to fit the soft limit:

- gRPC: a byte budget (`grpc_admission_bytes`: `grpc_in_flight_limit()` worst-case messages)
  charged by the HTTP/2 connections with each message's bytes as they arrive; each connection's
  receive window is its fair share (`grpc_connection_window`).
- HTTP: a byte budget (`transport.defences.BodyBudget`) charged with the bytes a request actually
  holds: the raw body as it is read (so a slow client holds only what it sent), then 2 x the decompressed size
  (decompressed bytes + decoded request). Sized as N worst-case bodies of `http_max_body_bytes`
  x 3, N = `http_body_slots()`.

N (and the gRPC limit) is derived, not configured: the number of worst-case requests per worker
that fit half of the soft limit each (the other half is the transport next door), at least
`MIN_SLOTS` so ordinary concurrency is never refused, and without a memory limit a fixed default.
"""

from __future__ import annotations

from otlp_ingest.config import Settings
from otlp_ingest.telemetry.memory import MemoryLimits, resolve_limits

# Worst-case bytes held per byte of request body: the body, the decoded request, the re-serialized
# subset (or, in the ring path, the copy written).
BODY_FACTOR = 3
MIN_SLOTS = 4
HTTP_SLOTS_UNLIMITED = 16  # no memory limit: still bounded, generously
GRPC_CALLS_UNLIMITED = 16
# Calls never hold a thread (the event loop serves them), so only memory bounds them; this cap
# keeps a huge memory limit from admitting thousands of half-sent calls per worker.
GRPC_CALLS_MAX = 256


def _slots(settings: Settings, body_bytes: int, limits: MemoryLimits | None, default: int) -> int:
    if limits is None:
        return default
    share = limits.soft // 2 // max(1, settings.resolved_workers())
    return max(MIN_SLOTS, share // (BODY_FACTOR * max(1, body_bytes)))


def memory_limits(settings: Settings) -> MemoryLimits | None:
    """The limiter's limits for these settings (reads the cgroup when derived)."""
    return resolve_limits(settings.memory_limit_mib, settings.memory_spike_limit_mib)


def http_body_slots(settings: Settings, limits: MemoryLimits | None) -> int:
    """Worst-case (`http_max_body_bytes`) HTTP bodies one worker holds at once."""
    return _slots(settings, settings.http_max_body_bytes, limits, HTTP_SLOTS_UNLIMITED)


def grpc_in_flight_limit(settings: Settings, limits: MemoryLimits | None) -> int:
    """Export calls one worker admits at once: memory-derived, at least MIN_SLOTS, at most
    GRPC_CALLS_MAX; GRPC_CALLS_UNLIMITED without a memory limit."""
    return min(GRPC_CALLS_MAX, _slots(settings, settings.grpc_max_recv_bytes, limits, GRPC_CALLS_UNLIMITED))


def grpc_admission_bytes(settings: Settings, limits: MemoryLimits | None) -> int:
    """Message bytes one worker's gRPC connections hold at once: as many worst-case messages as
    `grpc_in_flight_limit` allows. Admission counts these bytes, not calls."""
    return grpc_in_flight_limit(settings, limits) * (settings.grpc_max_recv_bytes + 5)


def grpc_connection_window(budget_bytes: int, max_message: int) -> int:
    """One connection's fair share of the gRPC budget, as its HTTP/2 receive window: a quarter
    of the budget (so no single connection can lock the others out), at most 16 MiB, and never
    less than one whole message with room to spare."""
    return max(min(16 << 20, budget_bytes // 4), max_message + 5 + (64 << 10))
