"""Durable mode end to end (OTLP_QUEUE_DIR): real servers, real clients, real crashes.

- a torn tail and a corrupt byte: the server starts, counts what it quarantined, delivers the rest;
- a second server on the same queue dir is refused;
- shared-memory mode: a ring still holding acknowledged records at a timed-out SIGTERM is kept and
  delivered by the next start.

kill -9 of the whole tree under load and a full disk are fault scenarios: tests/faults/test_durable.py
reconciles them under mixed gRPC+HTTP load.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from otlp_ingest.loadgen import OK, GrpcSender, PayloadFactory
from otlp_ingest.otlp.signals import Signal
from otlp_ingest.ring.layout import NAME_PREFIX, shm_dir
from otlp_ingest.wal import layout as wal_layout
from tests.conftest import ServerProcess, free_port, wait_until

SPANS = 10
FACTORY = PayloadFactory(Signal.TRACES, SPANS)
BATCH = 200  # spans per batch


def durable_env(queue_dir: Path, endpoint: str, **extra: str) -> dict[str, str]:
    return {
        "OTLP_QUEUE_DIR": str(queue_dir),
        "OTLP_ENDPOINT": endpoint,
        "OTLP_BATCH_SIZE": str(BATCH),
        "OTLP_EXPORT_CONCURRENCY": "1",
        **extra,
    }


class Client:
    """Sequential OTLP/gRPC requests, remembering which tokens were acknowledged."""

    def __init__(self, endpoint: str) -> None:
        self.sender = GrpcSender(endpoint, Signal.TRACES, False)
        self.acked: list[bytes] = []

    def send(self) -> str:
        token = uuid.uuid4().bytes
        outcome, _, _ = self.sender.send(FACTORY.build(token))
        if outcome == OK:
            self.acked.append(token)
        return outcome

    def keys(self, tokens: list[bytes] | None = None) -> set[str]:
        return {k for t in (self.acked if tokens is None else tokens) for k in FACTORY.keys(t)}

    def close(self) -> None:
        self.sender.close()


def _records(segment: Path) -> list[tuple[int, int, bytes]]:
    """(file position, record size, payload) of every record in a segment file."""
    data = segment.read_bytes()
    out, pos = [], 0
    while pos + wal_layout.RECORD_HEADER_SIZE <= len(data):
        _magic, length, *_ = wal_layout.RECORD_PREFIX.unpack_from(data, pos)
        size = wal_layout.RECORD_HEADER_SIZE + length
        out.append((pos, size, data[pos + wal_layout.RECORD_HEADER_SIZE : pos + size]))
        pos += size
    return out


def test_torn_tail_and_corrupt_byte_start_quarantine_and_deliver_the_rest(
    server_factory, backend_factory, tmp_path
) -> None:
    queue_dir = tmp_path / "queue"
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: everything stays in the log
    env = durable_env(queue_dir, dead, OTLP_WORKERS="1", OTLP_QUEUE_SEGMENT_BYTES="8KiB")
    server = server_factory(env=env)
    client = Client(server.grpc_endpoint)
    for _ in range(40):
        assert client.send() == OK
    client.close()
    server.kill()  # kill -9 of the whole tree

    log_dir = queue_dir / "worker-0"
    segments = sorted(log_dir.glob("*.wal"))
    assert len(segments) >= 3, segments
    by_payload = {FACTORY.build(t): t for t in client.acked}
    first, last = _records(segments[0]), _records(segments[-1])
    # A flipped byte in the first segment's second record: that record and the rest of its
    # segment are quarantined (record boundaries after it cannot be trusted).
    pos, size, _ = first[1]
    with open(segments[0], "r+b") as f:
        f.seek(pos + size - 3)
        byte = f.read(1)
        f.seek(pos + size - 3)
        f.write(bytes([byte[0] ^ 0xFF]))
    # The newest segment's last record cut in half: a torn write.
    pos, size, _ = last[-1]
    os.truncate(segments[-1], pos + size // 2)
    lost = {by_payload[p] for _, _, p in first[1:]} | {by_payload[last[-1][2]]}
    expected = client.keys([t for t in client.acked if t not in lost])

    backend = backend_factory()
    restarted = server_factory(env={**env, "OTLP_ENDPOINT": backend.grpc_endpoint})
    wait_until(lambda: expected <= set(backend.records()["traces"]["keys"]), 20, 0.1, "the undamaged records")
    delivered = set(backend.records()["traces"]["keys"])
    assert delivered <= client.keys(), "something not acknowledged was delivered"
    m = restarted.metrics()
    assert m.value("otlp_queue_quarantined_bytes_total") > 0
    assert m.value("otlp_queue_truncated_bytes_total") > 0
    assert any((log_dir / "quarantine").iterdir())


def test_second_server_on_the_same_queue_dir_is_refused(server_factory, backend, tmp_path) -> None:
    queue_dir = tmp_path / "queue"
    env = durable_env(queue_dir, backend.grpc_endpoint)
    server_factory(env=env)
    second = ServerProcess(tmp_path / "second", env)
    second.grpc_port, second.http_port, second.admin_port = free_port(), free_port(), free_port()
    result = subprocess.run(
        [sys.executable, "-m", "otlp_ingest", "serve"],
        env=second._env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert "in use by another server" in result.stderr


def test_shm_ring_with_unsent_records_is_kept_and_delivered_at_next_start(
    server_factory, backend_factory
) -> None:
    backend = backend_factory(fail_first=10**9)  # "down": every export answered UNAVAILABLE
    env = {"OTLP_ENDPOINT": backend.grpc_endpoint, "OTLP_SHUTDOWN_TIMEOUT": "2s", "OTLP_WORKERS": "1"}
    server = server_factory(env=env)
    client = Client(server.grpc_endpoint)
    for _ in range(20):
        assert client.send() == OK
    client.close()
    pid = server.pid
    assert server.stop() == 4
    kept = [n for n in os.listdir(shm_dir()) if n.startswith(f"{NAME_PREFIX}{pid}.") and "-w" in n]
    assert kept, "the ring holding acknowledged records was unlinked"

    backend.control(fail_next=0)
    backend.reset()
    again = server_factory(env=env)
    expected = client.keys()
    wait_until(lambda: expected <= set(backend.records()["traces"]["keys"]), 20, 0.1, "the kept records")
    wait_until(
        lambda: (
            not any(n.startswith(f"{NAME_PREFIX}{again.pid}.") and "-a" in n for n in os.listdir(shm_dir()))
        ),
        10,
        0.1,
        "the adopted ring removed once drained",
    )
    assert not any(n.startswith(f"{NAME_PREFIX}{pid}.") for n in os.listdir(shm_dir()))
