"""SIGKILL against the write-ahead log: a writer killed at a random moment loses no acknowledged
record, and a reader killed mid-commit re-delivers at most its last uncommitted batch.

``OTLP_SOAK=1`` runs many more iterations (``make soak``)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from otlp_ingest.wal import WalReader, WalWriter

REPO_ROOT = Path(__file__).resolve().parents[2]
SOAK = os.environ.get("OTLP_SOAK") == "1"

# Appends from 4 threads (group commit shares the fsyncs), prints a record's id only after
# wait_durable: a printed id is an acknowledged request.
WRITER = textwrap.dedent(
    """
    import sys, threading
    from otlp_ingest.wal import WalWriter
    directory, run = sys.argv[1], int(sys.argv[2])
    w = WalWriter.open(directory, 64 * 1024, 1 << 30)
    out = threading.Lock()
    print("ready", flush=True)

    def client(t):
        for i in range(1_000_000):
            ident = f"{run}-{t}-{i}".encode()
            ticket = w.append(1, 1, ident + b"." * (200 + i % 300))
            if w.wait_durable(ticket, 10):
                with out:
                    sys.stdout.write(ident.decode() + "\\n")
                    sys.stdout.flush()

    for t in range(4):
        threading.Thread(target=client, args=(t,), daemon=True).start()
    threading.Event().wait()
    """
)

# Reads batches of BATCH records, "delivers" them (prints their ids), then commits the batch.
READER = textwrap.dedent(
    """
    import sys, threading
    from otlp_ingest.wal import WalReader, WalWriter
    directory, batch = sys.argv[1], int(sys.argv[2])
    pause = threading.Event()
    with WalReader.open(directory) as r:
        print("ready", flush=True)
        while True:
            records = []
            while len(records) < batch:
                rec = r.read()
                if rec is None:
                    pause.wait(0.001)
                    continue
                records.append(rec)
            sys.stdout.write("".join(f"{rec.seq}\\n" for rec in records))
            sys.stdout.flush()
            r.commit(records[-1])
    """
)


def spawn(script: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def run_and_kill(proc: subprocess.Popen[str], seconds: float) -> list[str]:
    """Collect stdout lines for ``seconds``, then SIGKILL; return every complete line."""
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    threading.Event().wait(seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    t.join(10)
    return [line.strip() for line in lines if line.endswith("\n")]


def read_all(directory: Path) -> list[bytes]:
    with WalReader.open(str(directory)) as r:
        out = []
        while (rec := r.read()) is not None:
            out.append(rec.payload)
        return out


def test_sigkilled_writer_loses_no_acknowledged_record(tmp_path):
    rng = random.Random()
    acked: set[str] = set()
    iterations = 30 if SOAK else 4
    for run in range(iterations):
        proc = spawn(WRITER, str(tmp_path), str(run))
        acked.update(run_and_kill(proc, rng.uniform(0.1, 0.6)))
    found = {payload.split(b".", 1)[0].decode() for payload in read_all(tmp_path)}
    lost = acked - found
    print(f"\nwriter SIGKILLed {iterations}x: {len(acked)} acked, {len(found)} on disk, {len(lost)} lost")
    assert acked and not lost


def test_sigkilled_reader_redelivers_at_most_one_batch(tmp_path):
    batch = 16
    with WalWriter.open(str(tmp_path), 64 * 1024, 1 << 30) as w:
        total = 3000
        w.wait_durable([w.append(1, 1, b"x" * 300) for _ in range(total)][-1], 10)
        delivered: list[int] = []
        worst = 0
        rng = random.Random()
        iterations = 20 if SOAK else 4
        for _ in range(iterations):
            proc = spawn(READER, str(tmp_path), str(batch))
            seen = [int(s) for s in run_and_kill(proc, rng.uniform(0.02, 0.15))]
            if delivered and seen:
                # Everything the killed reader delivered but had not committed comes again.
                duplicates = len(set(seen) & set(delivered))
                worst = max(worst, duplicates)
                assert duplicates <= batch
            delivered.extend(seen)
            if len(set(delivered)) >= total:
                break
        rest = _drain_seqs(tmp_path)
    everything = set(delivered) | set(rest)
    assert everything == set(range(total))
    print(f"\nreader SIGKILLed: worst re-delivery {worst} records (batch {batch})")


def _drain_seqs(directory: Path) -> list[int]:
    with WalReader.open(str(directory)) as r:
        out = []
        while (rec := r.read()) is not None:
            out.append(rec.seq)
        return out
