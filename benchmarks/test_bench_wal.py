"""Write-ahead log micro-benchmarks against the shared-memory ring (``test_bench_ring.py``), with
the same real OTLP trace payloads of 10 and 512 spans, on this machine's disk (a directory under
the repository, not tmpfs, so fsync does real work; ``OTLP_BENCH_WAL_DIR`` overrides).

- ``test_append_group_commit``: 8 threads each append and wait until durable (how a receiver
  worker's request threads use it); reports acknowledged appends/s, MB/s and appends per fsync.
- ``test_append_only``: the page-cache write a request pays before it waits (no fsync wait).

Run with ``pytest benchmarks/test_bench_wal.py -s``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from benchmarks.test_bench_ring import trace_payload
from otlp_ingest.wal import WalReader, WalWriter

BENCH_ROOT = os.environ.get("OTLP_BENCH_WAL_DIR", str(Path(__file__).resolve().parent.parent))


@pytest.fixture
def wal_dir():
    path = tempfile.mkdtemp(prefix=".bench-wal-", dir=BENCH_ROOT)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("spans", [10, 512])
def test_append_group_commit(wal_dir, spans):
    payload = trace_payload(spans)
    threads, seconds = 8, 2.0
    counts = [0] * threads
    stop = threading.Event()
    with WalWriter.open(wal_dir, 16 << 20, 1 << 40) as w, WalReader.open(wal_dir) as r:

        def client(k: int) -> None:
            while not stop.is_set():
                ticket = w.append(1, spans, payload)
                assert ticket is not None and w.wait_durable(ticket, 10)
                counts[k] += 1

        def drain() -> None:  # the exporter side: keeps deleting segments so disk use stays flat
            last = None
            while not stop.is_set() or last is not None:
                rec = r.read()
                if rec is None:
                    if last is not None:
                        r.commit(last)
                        last = None
                    elif stop.is_set():
                        return
                    stop.wait(0.005)
                else:
                    last = rec

        fsyncs0 = w.fsync_count
        workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
        reader = threading.Thread(target=drain)
        start = time.perf_counter()
        for t in [*workers, reader]:
            t.start()
        stop.wait(seconds)
        stop.set()
        for t in workers:
            t.join()
        elapsed = time.perf_counter() - start
        fsyncs = w.fsync_count - fsyncs0
        reader.join()
    n = sum(counts)
    print(
        f"\nwal append+durable (group commit, {threads} threads), {spans} spans ({len(payload)} B): "
        f"{n / elapsed:,.0f} appends/s, {n * len(payload) / elapsed / 1e6:,.1f} MB/s, "
        f"{n * spans / elapsed:,.0f} spans/s, {n / max(fsyncs, 1):.1f} appends per fsync"
    )


@pytest.mark.parametrize("spans", [10, 512])
def test_append_only(benchmark, wal_dir, spans):
    payload = trace_payload(spans)
    with WalWriter.open(wal_dir, 16 << 20, 1 << 40) as w:
        benchmark.pedantic(lambda: w.append(1, spans, payload), rounds=2000)
    mean = benchmark.stats.stats.mean
    print(
        f"\nwal append (no wait), {spans} spans ({len(payload)} B): {1 / mean:,.0f} appends/s, "
        f"{len(payload) / mean / 1e6:,.0f} MB/s"
    )
