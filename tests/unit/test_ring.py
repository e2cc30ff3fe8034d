"""The shared-memory ring: layout, wrap-around, backpressure, crash recovery, corruption, and a
real producer process feeding a consumer."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time
import uuid
from collections import deque
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otlp_ingest.ring import (
    RingCorrupt,
    RingReader,
    RingUsage,
    RingWriter,
    create_ring,
    layout,
    max_payload,
    ring_name,
    ring_usage,
    unlink_ring,
    wipe_stale_rings,
)
from otlp_ingest.ring.segment import RingNotEmpty

REPO_ROOT = Path(__file__).resolve().parents[2]


def _unique_name() -> str:
    # Not the "otlp-ingest-" prefix: a running server's wipe_stale_rings must not see test rings.
    return f"otlptest-{os.getpid()}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def ring():
    """A factory for fresh rings, all unlinked after the test."""
    names: list[str] = []

    def make(capacity: int = 4096, max_records: int = 1000) -> str:
        name = _unique_name()
        create_ring(name, capacity, max_records)
        names.append(name)
        return name

    yield make
    for name in names:
        unlink_ring(name)


def _poke(name: str, offset: int, data: bytes) -> None:
    """Overwrite raw bytes of a segment, as a bug or a stray process would."""
    fd = os.open(layout.segment_path(name), os.O_RDWR)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _peek(name: str, offset: int, size: int) -> bytes:
    fd = os.open(layout.segment_path(name), os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def _u64(name: str, offset: int) -> int:
    return layout.U64.unpack(_peek(name, offset, 8))[0]


def test_ring_name_format():
    assert ring_name(1234, 0) == "otlp-ingest-1234-w0"
    assert ring_name(7, 12) == "otlp-ingest-7-w12"
    assert ring_name(layout.owner_id(1, 42), 3) == "otlp-ingest-1.42-w3"


def test_create_ring_refuses_to_replace_a_ring_holding_records():
    name = _unique_name()
    try:
        create_ring(name, 4096, 10)
        create_ring(name, 4096, 10)  # empty: replaced
        writer = RingWriter.attach(name)
        assert writer.try_write(1, 1, b"acknowledged")
        writer.close()
        with pytest.raises(RingNotEmpty):
            create_ring(name, 8192, 10)
        assert ring_usage(name).records == 1 and ring_usage(name).capacity_bytes == 4096
    finally:
        unlink_ring(name)


def test_round_trip(ring):
    name = ring()
    with RingWriter.attach(name) as writer, RingReader.attach(name) as reader:
        assert reader.read() is None
        assert writer.try_write(1, 10, b"hello")
        assert writer.try_write(3, 0, b"")
        assert writer.try_write(2, 7, memoryview(b"xxworldxx")[2:7])
        first, second, third = reader.read(), reader.read(), reader.read()
        assert reader.read() is None
        assert (first.seq, first.signal, first.item_count, first.payload) == (0, 1, 10, b"hello")
        assert (first.start, first.end) == (0, layout.record_size(5))
        assert (second.seq, second.signal, second.item_count, second.payload) == (1, 3, 0, b"")
        assert second.start == first.end and second.end == second.start + 24
        assert (third.seq, third.signal, third.item_count, third.payload) == (2, 2, 7, b"world")
        assert isinstance(third.payload, bytes)
        reader.commit(third)  # cumulative: releases the first two as well
        assert ring_usage(name).records == 0


def test_wraps_many_times_with_random_sizes(ring):
    capacity = 1024
    name = ring(capacity, 64)
    rng = random.Random(1)
    pending: deque[bytes] = deque()
    written = read = 0
    with RingWriter.attach(name) as writer, RingReader.attach(name) as reader:
        while read < 5000:
            # Write a random burst until the ring refuses, then read a random number back.
            for _ in range(rng.randrange(1, 12)):
                size = rng.choice((0, 1, 7, 8, 9, rng.randrange(0, max_payload(capacity) + 1)))
                payload = rng.randbytes(size)
                if not writer.try_write(written % 3 + 1, size, payload):
                    break
                pending.append(payload)
                written += 1
            for _ in range(rng.randrange(0, len(pending) + 1)):
                record = reader.read()
                assert record is not None
                assert record.seq == read and record.payload == pending.popleft()
                assert record.signal == read % 3 + 1 and record.item_count == len(record.payload)
                assert record.start % 8 == 0 and record.end - record.start == layout.record_size(
                    len(record.payload)
                )
                assert record.start // capacity == (record.end - 1) // capacity  # never split
                reader.commit(record)
                read += 1
        assert writer.head > 20 * capacity  # many laps


def test_full_ring_refuses_then_accepts_after_commit(ring):
    name = ring(1024, 1000)
    payload = b"x" * 100  # 128-byte records: 8 fill the ring exactly
    with RingWriter.attach(name) as writer, RingReader.attach(name) as reader:
        for _ in range(8):
            assert writer.try_write(1, 1, payload)
        assert not writer.try_write(1, 1, payload)
        assert not writer.try_write(1, 1, b"")
        first = reader.read()
        assert not writer.try_write(1, 1, payload)  # read is not enough: only commit frees room
        reader.commit(first)
        assert writer.try_write(1, 1, payload)
        assert not writer.try_write(1, 1, payload)
        assert ring_usage(name) == RingUsage(
            records=8, used_bytes=1024, capacity_bytes=1024, max_records=1000
        )


def test_has_room_for_agrees_with_the_write_that_follows(ring):
    name = ring(1024, 5)
    with RingWriter.attach(name) as writer, RingReader.attach(name) as reader:
        assert writer.has_room_for(writer.max_payload)
        assert not writer.has_room_for(1025)  # more than the whole ring
        # Before the first wrap-around the check and the write agree exactly.
        for size in (300, 200, 100, 300, 200, 50, 0):
            assert writer.has_room_for(size) == writer.try_write(1, 1, b"x" * size), size
        assert not writer.has_room_for(0)  # bytes or the record count are spent
        reader.commit(reader.read())
        assert writer.has_room_for(0)  # committing frees room


def test_max_records_limits_the_count(ring):
    name = ring(4096, 3)
    with RingWriter.attach(name) as writer, RingReader.attach(name) as reader:
        assert all(writer.try_write(1, 1, b"a") for _ in range(3))
        assert not writer.try_write(1, 1, b"a")
        reader.commit(reader.read())
        assert writer.try_write(1, 1, b"a")
        assert not writer.try_write(1, 1, b"a")


def test_record_larger_than_half_the_ring_is_refused(ring):
    capacity = 1024
    name = ring(capacity, 10)
    limit = max_payload(capacity)
    assert limit == capacity // 2 - 24
    with RingWriter.attach(name) as writer, RingReader.attach(name) as reader:
        assert writer.max_payload == limit
        assert not writer.try_write(1, 1, b"z" * (capacity + 1))
        assert not writer.try_write(1, 1, b"z" * (limit + 1))
        # Any accepted size fits an empty ring wherever the head is: move it to mid-ring first.
        assert writer.try_write(1, 1, b"q" * 300)
        reader.commit(reader.read())
        assert writer.try_write(1, 1, b"z" * limit)
        assert reader.read().payload == b"z" * limit


def test_wrap_skip_counts_as_used_until_the_next_record_is_committed(ring):
    name = ring(1024, 100)
    with RingWriter.attach(name) as writer, RingReader.attach(name) as reader:
        assert writer.try_write(1, 1, b"a" * 376)  # 400 bytes
        assert writer.try_write(1, 1, b"b" * 376)  # 800
        reader.commit(reader.read())
        reader.commit(reader.read())
        assert writer.try_write(1, 1, b"c" * 272)  # 296 bytes do not fit in the last 224: wrap
        record = reader.read()
        assert (record.start, record.end, record.payload) == (1024, 1320, b"c" * 272)
        assert ring_usage(name).used_bytes == 1320 - 800
        reader.commit(record)
        assert ring_usage(name).used_bytes == 0


def test_reader_reattach_rereads_uncommitted(ring):
    name = ring()
    with RingWriter.attach(name) as writer:
        for i in range(5):
            assert writer.try_write(1, i, f"r{i}".encode())
        reader = RingReader.attach(name)
        records = [reader.read() for _ in range(4)]
        reader.commit(records[1])  # 0 and 1 are delivered; 2 and 3 were read but not committed
        reader.close()  # as if the exporter died
        reader = RingReader.attach(name)
        again = [reader.read() for _ in range(3)]
        assert [r.payload for r in again] == [b"r2", b"r3", b"r4"]
        assert again[0] == records[2] and again[1] == records[3]
        assert reader.read() is None
        reader.close()


def test_rewind_and_commit_order(ring):
    name = ring()
    with RingWriter.attach(name) as writer, RingReader.attach(name) as reader:
        for i in range(4):
            writer.try_write(1, i, bytes([i]))
        r0, r1, r2 = reader.read(), reader.read(), reader.read()
        reader.commit(r0)
        with pytest.raises(ValueError):
            reader.commit(r0)  # already committed
        reader.rewind()
        assert reader.read() == r1
        with pytest.raises(ValueError):
            reader.commit(r2)  # not read (again) yet after the rewind
        reader.commit(r1)
        assert reader.read() == r2
        assert reader.read().seq == 3


def test_writer_reattach_continues(ring):
    name = ring(1024, 100)
    writer = RingWriter.attach(name)
    for i in range(6):
        assert writer.try_write(1, i, b"w" * 100)
    head = writer.head
    writer.close()  # as if the worker died
    with RingReader.attach(name) as reader:
        for _ in range(5):
            reader.commit(reader.read())
        writer = RingWriter.attach(name)
        assert (writer.head, writer.head_seq) == (head, 6)
        for i in range(6, 12):
            assert writer.try_write(1, i, b"w" * 100)
        writer.close()
        seqs = []
        while (record := reader.read()) is not None:
            seqs.append(record.seq)
            reader.commit(record)
        assert seqs == list(range(5, 12))


def test_writer_recovers_head_seq_after_dying_between_head_and_head_seq(ring):
    name = ring()
    with RingWriter.attach(name) as writer:
        for i in range(3):
            writer.try_write(1, i, b"abc")
    _poke(name, layout.OFF_HEAD_SEQ, layout.U64.pack(2))  # head_seq store lost
    with RingWriter.attach(name) as writer, RingReader.attach(name) as reader:
        assert writer.head_seq == 3
        writer.try_write(1, 3, b"abc")
        assert [reader.read().seq for _ in range(4)] == [0, 1, 2, 3]


def test_reader_recovers_after_dying_between_tail_seq_and_tail(ring):
    name = ring()
    with RingWriter.attach(name) as writer:
        for i in range(3):
            writer.try_write(1, i, f"r{i}".encode())
    with RingReader.attach(name) as reader:
        reader.commit(reader.read())
    _poke(name, layout.OFF_TAIL_SEQ, layout.U64.pack(2))  # record 1 "committed" but tail not moved
    with RingReader.attach(name) as reader:
        record = reader.read()
        assert (record.seq, record.payload) == (1, b"r1")  # re-delivered: at-least-once


def test_empty_ring_reattach_keeps_seq(ring):
    name = ring()
    with RingWriter.attach(name) as writer, RingReader.attach(name) as reader:
        for i in range(3):
            writer.try_write(1, i, b"x")
            reader.commit(reader.read())
    with RingWriter.attach(name) as writer, RingReader.attach(name) as reader:
        assert writer.head_seq == 3
        writer.try_write(1, 0, b"y")
        assert reader.read().seq == 3


def test_flipped_payload_byte_is_detected(ring):
    name = ring()
    with RingWriter.attach(name) as writer, RingReader.attach(name) as reader:
        writer.try_write(1, 1, b"payload bytes")
        offset = layout.HEADER_SIZE + layout.RECORD_HEADER_SIZE + 3
        _poke(name, offset, bytes([_peek(name, offset, 1)[0] ^ 0x01]))
        with pytest.raises(RingCorrupt, match="checksum"):
            reader.read()
        with pytest.raises(RingCorrupt):  # the cursor did not move past the bad record
            reader.read()


def test_flipped_header_fields_are_detected(ring):
    name = ring()
    with RingWriter.attach(name) as writer:
        writer.try_write(1, 5, b"abc")
        writer.try_write(1, 5, b"def")
    item_count_offset = layout.HEADER_SIZE + 12
    _poke(name, item_count_offset, layout.U32.pack(6))
    with RingReader.attach(name) as reader, pytest.raises(RingCorrupt, match="checksum"):
        reader.read()
    _poke(name, item_count_offset, layout.U32.pack(5))
    _poke(name, layout.HEADER_SIZE, layout.U32.pack(10_000))  # payload length beyond head
    with pytest.raises(RingCorrupt, match="length"):
        RingReader.attach(name)
    _poke(name, layout.HEADER_SIZE, layout.U32.pack(3))
    second = layout.HEADER_SIZE + layout.record_size(3)
    _poke(name, second + 16, layout.U64.pack(7))  # seq out of order
    with RingReader.attach(name) as reader:
        reader.read()
        with pytest.raises(RingCorrupt, match="seq"):
            reader.read()


def test_bad_segments_are_refused_on_attach(ring):
    name = ring()
    _poke(name, 0, b"NOTARING")
    with pytest.raises(RingCorrupt, match="magic"):
        RingReader.attach(name)
    with pytest.raises(RingCorrupt, match="magic"):
        RingWriter.attach(name)
    with pytest.raises(RingCorrupt, match="magic"):
        ring_usage(name)
    name = ring()
    os.truncate(layout.segment_path(name), 1000)
    with pytest.raises(RingCorrupt, match="size"):
        RingWriter.attach(name)
    name = ring()
    _poke(name, layout.OFF_HEAD, layout.U64.pack(1 << 40))  # head far beyond tail + capacity
    with pytest.raises(RingCorrupt, match="inconsistent"):
        RingReader.attach(name)
    with pytest.raises(FileNotFoundError):
        RingWriter.attach(_unique_name())


def test_create_replaces_and_unlink_is_idempotent(ring):
    name = ring(1024, 10)
    with RingWriter.attach(name) as writer:
        writer.try_write(1, 1, b"old")
    with pytest.raises(RingNotEmpty):  # a ring holding records is never replaced
        create_ring(name, 2048, 20)
    with RingReader.attach(name) as reader:
        reader.commit(reader.read())
    create_ring(name, 2048, 20)  # drained: replaced
    assert ring_usage(name) == RingUsage(records=0, used_bytes=0, capacity_bytes=2048, max_records=20)
    assert _peek(name, layout.OFF_OWNER_PID, 8) == layout.U64.pack(os.getpid())
    with RingReader.attach(name) as reader:
        assert reader.read() is None
    create_ring(name, 1001, 1)  # rounded down to a multiple of 8
    assert ring_usage(name).capacity_bytes == 1000
    unlink_ring(name)
    unlink_ring(name)
    assert not os.path.exists(layout.segment_path(name))
    with pytest.raises(ValueError):
        create_ring(name, 16, 1)
    with pytest.raises(ValueError):
        create_ring(name, 4096, 0)


def test_ring_usage_numbers(ring):
    name = ring(4096, 50)
    assert ring_usage(name) == RingUsage(records=0, used_bytes=0, capacity_bytes=4096, max_records=50)
    with RingWriter.attach(name) as writer, RingReader.attach(name) as reader:
        for _ in range(4):
            writer.try_write(1, 1, b"x" * 40)  # 64-byte records
        assert ring_usage(name) == RingUsage(records=4, used_bytes=256, capacity_bytes=4096, max_records=50)
        reader.read()
        reader.commit(reader.read())
        assert ring_usage(name) == RingUsage(records=2, used_bytes=128, capacity_bytes=4096, max_records=50)
    assert _u64(name, layout.OFF_WRITER_PID) == os.getpid()
    assert _u64(name, layout.OFF_READER_PID) == os.getpid()


def test_wipe_stale_rings_removes_dead_owners_only():
    prefix = f"otlptest-wipe-{uuid.uuid4().hex[:8]}-"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = os.getpid()
    names = {
        "dead0": f"{prefix}{dead.pid}-w0",
        "dead1": f"{prefix}{dead.pid}-w1",
        "dead_tmp": f"{prefix}{dead.pid}-w2.tmp-{dead.pid}",
        "live": f"{prefix}{live}-w0",
        "odd": f"{prefix}notapid-w0",
    }
    try:
        for name in names.values():
            create_ring(name, 1024, 1)
        removed = wipe_stale_rings(prefix)
        assert removed == sorted([names["dead0"], names["dead1"], names["dead_tmp"]])
        remaining = {n for n in os.listdir(layout.shm_dir()) if n.startswith(prefix)}
        assert remaining == {names["live"], names["odd"]}
        assert wipe_stale_rings(prefix) == []
    finally:
        for name in names.values():
            unlink_ring(name)


_PRODUCER = textwrap.dedent(
    """
    import random, sys, time
    from otlp_ingest.ring import RingWriter

    name, count = sys.argv[1], int(sys.argv[2])
    pattern = bytes(range(256)) * 4
    rng = random.Random(42)
    writer = RingWriter.attach(name)
    deadline = time.monotonic() + 60
    full = 0
    for i in range(count):
        size = rng.randrange(0, 400)
        payload = i.to_bytes(8, "little") + pattern[i % 256 : i % 256 + size]
        while not writer.try_write(i % 3 + 1, size, payload):
            full += 1
            if time.monotonic() > deadline:
                sys.exit("consumer stalled")
            time.sleep(0.0002)  # polling for room; correctness does not depend on it
    writer.close()
    print(full)
    """
)


def test_producer_and_consumer_processes_move_100k_records(ring):
    count = 100_000
    name = ring(64 * 1024, 512)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    producer = subprocess.Popen(
        [sys.executable, "-c", _PRODUCER, name, str(count)], env=env, stdout=subprocess.PIPE, text=True
    )
    pattern = bytes(range(256)) * 4
    rng = random.Random(42)
    commit_rng = random.Random(3)
    received = 0
    last = None
    deadline = time.monotonic() + 90
    try:
        with RingReader.attach(name) as reader:
            while received < count:
                record = reader.read()
                if record is None:
                    if last is not None:
                        reader.commit(last)
                        last = None
                    assert time.monotonic() < deadline, f"only {received} records arrived"
                    assert producer.poll() in (None, 0), "producer failed"
                    time.sleep(0.0002)
                    continue
                size = rng.randrange(0, 400)
                i = received
                expected = i.to_bytes(8, "little") + pattern[i % 256 : i % 256 + size]
                assert record.seq == i and record.payload == expected
                assert record.signal == i % 3 + 1 and record.item_count == size
                received += 1
                last = record
                if commit_rng.random() < 0.1:  # commit in batches, as the exporter does
                    reader.commit(record)
                    last = None
            if last is not None:
                reader.commit(last)
        assert producer.wait(timeout=30) == 0
        full_refusals = int(producer.stdout.read())
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()
    usage = ring_usage(name)
    assert (usage.records, usage.used_bytes) == (0, 0)
    assert _u64(name, layout.OFF_HEAD) > 100 * 64 * 1024  # wrapped over a hundred times
    print(f"producer saw the ring full {full_refusals} times")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("write"), st.integers(0, 300)),
            st.tuples(st.just("read"), st.just(0)),
            st.tuples(st.just("commit"), st.just(0)),
            st.tuples(st.just("rewind"), st.just(0)),
            st.tuples(st.just("reattach"), st.just(0)),
        ),
        max_size=120,
    )
)
def test_matches_a_queue_model(ring, ops):
    """Any sequence of operations behaves like a bounded FIFO with a read cursor."""
    capacity, max_records = 1024, 6
    name = ring(capacity, max_records)
    writer, reader = RingWriter.attach(name), RingReader.attach(name)
    committed_seq = read_seq = next_seq = 0
    payloads: dict[int, bytes] = {}
    last_read = None
    try:
        for op, arg in ops:
            if op == "write":
                payload = bytes([next_seq % 256]) * arg
                accepted = writer.try_write(1, arg, payload)
                if next_seq - committed_seq >= max_records:
                    assert not accepted
                if next_seq == committed_seq:
                    assert accepted  # an empty ring takes any record up to max_payload
                if accepted:
                    payloads[next_seq] = payload
                    next_seq += 1
            elif op == "read":
                record = reader.read()
                if read_seq == next_seq:
                    assert record is None
                else:
                    assert (record.seq, record.payload) == (read_seq, payloads[read_seq])
                    read_seq += 1
                    last_read = record
            elif op == "commit" and last_read is not None and committed_seq <= last_read.seq < read_seq:
                reader.commit(last_read)
                committed_seq = last_read.seq + 1
            elif op == "rewind":
                reader.rewind()
                read_seq = committed_seq
            elif op == "reattach":
                writer.close()
                reader.close()
                writer, reader = RingWriter.attach(name), RingReader.attach(name)
                read_seq = committed_seq
            usage = ring_usage(name)
            assert usage.records == next_seq - committed_seq
            assert 0 <= usage.used_bytes <= capacity
    finally:
        writer.close()
        reader.close()


_COUNTER_WRITER = textwrap.dedent(
    """
    import mmap, os, sys
    from otlp_ingest.ring import layout

    path, count = sys.argv[1], int(sys.argv[2])
    with open(path, "r+b") as f:
        mm = mmap.mmap(f.fileno(), 4096)
    value = 1 << 20
    for _ in range(count):
        value += 0x0101_0101  # changes several bytes at once
        layout.store_u64(mm, 64, value)
    """
)


def test_shared_counters_are_never_seen_torn(tmp_path):
    """A counter published by one process and polled by another is always a value the writer
    stored. struct.pack_into would fail this: it zeroes the field before writing it."""
    import mmap

    path = tmp_path / "counter"
    path.write_bytes(bytes(4096))
    with open(path, "r+b") as f:
        mm = mmap.mmap(f.fileno(), 4096)
    start = 1 << 20
    layout.store_u64(mm, 64, start)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    writer = subprocess.Popen([sys.executable, "-c", _COUNTER_WRITER, str(path), "300000"], env=env)
    last, reads = start, 0
    try:
        while writer.poll() is None:
            value = layout.load_u64(mm, 64)
            assert value >= last and (value - start) % 0x0101_0101 == 0, f"torn read {value:#x}"
            last, reads = value, reads + 1
    finally:
        writer.wait()
    assert writer.returncode == 0 and reads > 0
    mm.close()


# --- memory follows the load (layout: "Memory follows the load") -----------------------------

PAGE = layout.PAGE
MiB = 1024 * 1024


def _allocated(name: str) -> int:
    return os.stat(layout.segment_path(name)).st_blocks * 512


def _trim_all(writer: RingWriter, now: float) -> int:
    """What the worker's sweeper does over a few calls (each gives back at most TRIM_MAX_RELEASE)."""
    total = step = writer.trim(now)
    while step:
        assert step <= layout.TRIM_MAX_RELEASE
        step = writer.trim(now)
        total += step
    return total


def test_a_new_ring_reserves_only_its_first_pages(ring) -> None:
    name = ring(capacity=64 * MiB, max_records=100_000)
    assert _allocated(name) <= layout.HEADER_SIZE + layout.INITIAL_RESERVE + PAGE


def test_a_slow_writer_gives_free_pages_back_and_keeps_every_record(ring) -> None:
    name = ring(capacity=16 * MiB, max_records=100_000)
    payload = os.urandom(4000)
    with RingWriter.attach(name) as writer, RingReader.attach(name) as reader:
        clock = 0.0
        for lap in range(3):  # three laps of the ring, a trim every simulated second
            written = 0
            while written < 16 * MiB:
                assert writer.try_write(1, lap, payload)
                record = reader.read()
                assert record is not None and record.payload == payload
                reader.commit(record)
                written += layout.record_size(len(payload))
                if written % (2 * MiB) < layout.record_size(len(payload)):
                    clock += 1.0  # ~2 MiB/s: below TRIM_MAX_RATE
                    _trim_all(writer, clock)
        # Queued: nothing. Reserved: about what the next seconds need, not the whole ring.
        assert _allocated(name) <= 8 * MiB


def test_a_fast_writer_keeps_its_pages(ring) -> None:
    name = ring(capacity=16 * MiB, max_records=100_000)
    payload = os.urandom(4000)
    with RingWriter.attach(name) as writer, RingReader.attach(name) as reader:
        writer.trim(0.0)
        for _ in range(16 * MiB // 4032):
            assert writer.try_write(1, 1, payload)
            reader.commit(reader.read())
        assert writer.trim(1.0) == 0  # 16 MiB in a second: above TRIM_MAX_RATE
    assert _allocated(name) > 15 * MiB


def test_a_backlog_can_fill_the_whole_ring_and_its_memory_is_returned_after(ring) -> None:
    name = ring(capacity=16 * MiB, max_records=100_000)
    payloads = [os.urandom(3000 + i) for i in range(100)]
    with RingWriter.attach(name) as writer, RingReader.attach(name) as reader:
        written = []
        while writer.try_write(2, len(written), payloads[len(written) % 100]):
            written.append(payloads[(len(written)) % 100])
        assert sum(layout.record_size(len(p)) for p in written) > 15 * MiB  # all of the capacity
        got = []
        while (record := reader.read()) is not None:
            got.append(record.payload)
            reader.commit(record)
        assert got == written
        _trim_all(writer, 100.0)  # quiet now: the backlog's pages go back
        assert _allocated(name) <= 4 * MiB
        for i in range(300):  # and the ring goes on working normally
            assert writer.try_write(1, i, payloads[i % 100])
            record = reader.read()
            assert record is not None and record.payload == payloads[i % 100]
            reader.commit(record)


def test_a_full_tmpfs_refuses_the_write_instead_of_crashing(ring, monkeypatch) -> None:
    name = ring(capacity=16 * MiB, max_records=100_000)
    writer = RingWriter.attach(name)
    try:
        payload = os.urandom(4000)
        while writer.head + layout.record_size(len(payload)) <= layout.INITIAL_RESERVE:
            assert writer.try_write(1, 1, payload)

        def enospc(*args: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "posix_fallocate", enospc)
        head = writer.head
        while writer.try_write(1, 1, payload):  # what was reserved ahead is still used
            assert writer.head - head < 2 * MiB
        assert not writer.try_write(1, 1, payload)  # refused: the caller answers "retry later"
        monkeypatch.undo()
        assert writer.try_write(1, 1, payload)
    finally:
        writer.close()


def test_records_with_zlib_crc_from_older_writers_still_read(ring, monkeypatch) -> None:
    """Rings adopted from a run before FLAG_CRC32C hold records with flags 0 and zlib's CRC-32."""
    from otlp_ingest.ring import writer as writer_module

    name = ring()
    with RingWriter.attach(name) as writer:
        monkeypatch.setattr(writer_module, "_FLAGS", 0)
        monkeypatch.setattr(writer_module, "_put", None)  # an older writer: Python lines only
        assert writer.try_write(1, 3, b"old")
        monkeypatch.undo()
        assert writer.try_write(1, 4, b"new")
    with RingReader.attach(name) as reader:
        old, new = reader.read(), reader.read()
        assert (old.payload, new.payload) == (b"old", b"new")
    assert _peek(name, layout.HEADER_SIZE + 10, 2) == b"\x00\x00"  # the old record's flags
    _poke(name, layout.HEADER_SIZE + 10, b"\x02\x00")  # an unknown flag: refused, not guessed at
    with RingReader.attach(name) as reader, pytest.raises(RingCorrupt):
        reader.read()


@pytest.mark.skipif(layout.native_records is None, reason="the _records extension was not built")
def test_the_c_record_writer_and_reader_match_the_python_lines(ring, monkeypatch) -> None:
    """_records.c writes the bytes the Python lines write, reads what they wrote, and computes
    google_crc32c's CRC-32C; a payload byte changed after the write is a checksum mismatch."""
    import random

    import google_crc32c

    from otlp_ingest.ring import reader as reader_module
    from otlp_ingest.ring import writer as writer_module

    rng = random.Random(7)
    for n in (0, 1, 7, 8, 9, 63, 64, 1737, 16499):
        data = rng.randbytes(n)
        assert layout.native_records.crc32c(data) == google_crc32c.value(data)
        assert layout.native_records.crc32c(data[n // 2 :], google_crc32c.value(data[: n // 2])) == (
            google_crc32c.value(data)
        )
    payloads = [rng.randbytes(rng.randrange(1, 3000)) for _ in range(40)]
    images = []
    for native in (True, False):
        name = ring(capacity=200_000, max_records=100)
        if not native:
            monkeypatch.setattr(writer_module, "_put", None)
        with RingWriter.attach(name) as writer:
            for i, payload in enumerate(payloads):
                parts = [payload[:5], memoryview(payload[5:])] if i % 3 == 0 else payload
                assert writer.try_write(1 + i % 3, i, parts)
        images.append(_peek(name, 0, layout.HEADER_SIZE + 200_000)[64:])  # past the static header
        monkeypatch.undo()
        for read in (reader_module._read, None):
            monkeypatch.setattr(reader_module, "_read", read)
            with RingReader.attach(name) as reader:
                assert [reader.read().payload for _ in payloads] == payloads
            monkeypatch.undo()
    assert images[0] == images[1]
    _poke(name, layout.HEADER_SIZE + layout.RECORD_HEADER_SIZE, b"\x00")
    with RingReader.attach(name) as reader, pytest.raises(RingCorrupt, match="checksum"):
        reader.read()
