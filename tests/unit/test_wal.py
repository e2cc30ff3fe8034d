"""The durable write-ahead log: round trip, segments, a reader process following a writer, group
commit, the byte bound, torn and corrupt data, durable commits, and a disk that fills up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from otlp_ingest.errors import QueueFull
from otlp_ingest.wal import DiskFull, WalLocked, WalReader, WalWriter, layout, wal_usage

REPO_ROOT = Path(__file__).resolve().parents[2]
HDR = layout.RECORD_HEADER_SIZE


def payload(i: int, size: int = 100) -> bytes:
    return i.to_bytes(8, "little") * (size // 8) + b"p" * (size % 8)


def drain(reader: WalReader) -> list:
    out = []
    while (record := reader.read()) is not None:
        out.append(record)
    return out


def segments(d: Path) -> list[int]:
    return layout.list_segments(str(d))


def test_round_trip(tmp_path):
    with WalWriter.open(str(tmp_path), 1 << 20, 1 << 24) as w:
        tickets = [w.append(i % 3 + 1, i + 1, payload(i, 50 + i)) for i in range(20)]
        assert w.wait_durable(tickets[-1], 5)
        assert w.max_payload == (1 << 24) - HDR
    with WalReader.open(str(tmp_path)) as r:
        records = drain(r)
    assert [rec.seq for rec in records] == list(range(20))
    for i, rec in enumerate(records):
        assert (rec.signal, rec.item_count, rec.payload) == (i % 3 + 1, i + 1, payload(i, 50 + i))
        assert rec.end == tickets[i] and rec.end - rec.start == HDR + len(rec.payload)
    assert records[1].start == records[0].end


def test_segments_roll_and_are_deleted_after_commit(tmp_path):
    with WalWriter.open(str(tmp_path), 1000, 1 << 20) as w, WalReader.open(str(tmp_path)) as r:
        last = None
        for i in range(40):  # 128-byte records, 7 per 1000-byte segment
            last = w.append(1, 1, payload(i))
        assert w.wait_durable(last, 5)
        assert len(segments(tmp_path)) == 6
        assert all(
            name == layout.segment_name(b)
            for b, name in zip(
                segments(tmp_path), sorted(n for n in os.listdir(tmp_path) if n.endswith(".wal")), strict=True
            )
        )
        records = drain(r)
        assert [rec.seq for rec in records] == list(range(40))
        r.commit(records[19])  # seq 19 ends inside the 3rd segment: the first two go
        assert segments(tmp_path)[0] == 2 * 7 * 128
        r.rewind()
        assert [rec.seq for rec in drain(r)] == list(range(20, 40))
        r.commit(records[-1])
        assert segments(tmp_path) == [35 * 128]  # the live segment stays for the writer
        assert wal_usage(str(tmp_path)).records == 0


def test_rewind_rereads_uncommitted(tmp_path):
    with WalWriter.open(str(tmp_path), 1 << 20, 1 << 20) as w, WalReader.open(str(tmp_path)) as r:
        w.wait_durable([w.append(1, 1, payload(i)) for i in range(5)][-1], 5)
        first = drain(r)
        r.commit(first[1])
        r.rewind()
        assert [rec.seq for rec in drain(r)] == [2, 3, 4]
        with pytest.raises(ValueError):
            r.commit(first[0])  # already committed


def test_one_writer_and_one_reader_per_directory(tmp_path):
    with WalWriter.open(str(tmp_path), 1000, 1 << 20), WalReader.open(str(tmp_path)):
        with pytest.raises(WalLocked):
            WalWriter.open(str(tmp_path), 1000, 1 << 20, lock_timeout=0.1)
        with pytest.raises(WalLocked):
            WalReader.open(str(tmp_path), lock_timeout=0.1)


READER_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from otlp_ingest.wal import WalReader
    directory, want = sys.argv[1], int(sys.argv[2])
    pause = threading.Event()
    seqs = []
    with WalReader.open(directory) as r:
        while len(seqs) < want:
            rec = r.read()
            if rec is None:
                pause.wait(0.002)
                continue
            assert int.from_bytes(rec.payload[:8], "little") == rec.seq, rec
            seqs.append(rec.seq)
            r.commit(rec)
    print(",".join(map(str, seqs)), flush=True)
    """
)


def test_reader_in_another_process_follows_the_writer(tmp_path):
    n = 300
    with WalWriter.open(str(tmp_path), 4096, 1 << 20) as w:
        proc = subprocess.Popen(
            [sys.executable, "-c", READER_SCRIPT, str(tmp_path), str(n)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            pace = threading.Event()
            for i in range(n):
                ticket = w.append(1, 1, payload(i, 64 + i % 50))
                assert ticket is not None
                if i % 25 == 0:
                    pace.wait(0.01)  # let the reader catch up and wait for more, several times
            out, _ = proc.communicate(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    assert proc.returncode == 0
    assert [int(s) for s in out.strip().split(",")] == list(range(n))
    assert wal_usage(str(tmp_path)).records == 0


def test_group_commit_shares_fsyncs(tmp_path):
    threads, per_thread = 8, 100
    with WalWriter.open(str(tmp_path), 1 << 22, 1 << 26) as w:
        start = w.fsync_count
        failures = []

        def client() -> None:
            for i in range(per_thread):
                ticket = w.append(1, 1, payload(i, 200))
                if not w.wait_durable(ticket, 10):
                    failures.append(ticket)

        workers = [threading.Thread(target=client) for _ in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        fsyncs = w.fsync_count - start
    assert not failures
    appends = threads * per_thread
    print(f"\ngroup commit: {appends} durable appends, {fsyncs} fsyncs")
    # Each client waits for its own fsync, so at most one fsync per append round; group commit
    # must share them across the eight concurrent clients.
    assert fsyncs <= appends // 2


def test_durable_callback_and_future(tmp_path):
    with WalWriter.open(str(tmp_path), 1 << 20, 1 << 20) as w:
        ticket = w.append(1, 1, b"abc")
        done = threading.Event()
        verdicts = []
        w.add_durable_callback(ticket, lambda ok: (verdicts.append(ok), done.set()))
        assert done.wait(5) and verdicts == [True]
        w.add_durable_callback(ticket, verdicts.append)  # already durable: called at once
        assert verdicts == [True, True]

        async def request() -> bool:
            loop = asyncio.get_running_loop()
            return await asyncio.wait_for(w.durable_future(w.append(1, 1, b"x"), loop), 5)

        assert asyncio.run(request()) is True


def test_max_bytes_refusal_then_acceptance_after_commit(tmp_path):
    size = HDR + 100
    with WalWriter.open(str(tmp_path), 1000, 10 * size) as w, WalReader.open(str(tmp_path)) as r:
        tickets = [w.append(1, 1, payload(i)) for i in range(10)]
        assert None not in tickets
        assert w.append(1, 1, payload(10)) is None  # the 11th would exceed max_bytes
        assert w.append(1, 1, b"x" * (w.max_payload + 1)) is None
        w.wait_durable(tickets[-1], 5)
        records = drain(r)
        r.commit(records[2])
        assert w.append(1, 1, payload(10)) is not None
        assert w.append(1, 1, payload(11)) is not None
        assert w.append(1, 1, payload(12)) is not None
        assert w.append(1, 1, payload(13)) is None
    assert issubclass(DiskFull, QueueFull)


def test_torn_tail_is_cut_and_only_the_torn_record_dropped(tmp_path):
    with WalWriter.open(str(tmp_path), 1 << 20, 1 << 20) as w:
        for i in range(10):
            w.append(1, 1, payload(i))
    seg = tmp_path / layout.segment_name(0)
    os.truncate(seg, seg.stat().st_size - 50)  # the last record loses its end
    with WalWriter.open(str(tmp_path), 1 << 20, 1 << 20) as w:
        assert w.recovery_report.truncated_bytes == HDR + 100 - 50
        assert w.recovery_report.quarantined_segments == 0
        # The durable file had seen seq 9: seqs never repeat, even for a record that was cut.
        assert w.next_seq == 10 and w.head == 9 * (HDR + 100)
        w.append(1, 1, payload(10))
    with WalReader.open(str(tmp_path)) as r:
        got = [(rec.seq, int.from_bytes(rec.payload[:8], "little")) for rec in drain(r)]
    assert got == [(i, i) for i in [*range(9), 10]]


def test_torn_tail_found_by_a_reader_when_no_writer_runs(tmp_path):
    with WalWriter.open(str(tmp_path), 1 << 20, 1 << 20) as w:
        for i in range(5):
            w.append(1, 1, payload(i))
    seg = tmp_path / layout.segment_name(0)
    with open(seg, "ab") as f:
        f.write(b"OWAL\x00\x01")  # a header cut short
    with WalReader.open(str(tmp_path)) as r:
        assert r.recovery_report.truncated_bytes == 6
        assert [rec.seq for rec in drain(r)] == list(range(5))


def test_corrupt_middle_record_is_quarantined_counted_and_the_log_opens(tmp_path):
    with WalWriter.open(str(tmp_path), 1 << 20, 1 << 20) as w:
        for i in range(10):
            w.append(1, 1, payload(i))
    seg = tmp_path / layout.segment_name(0)
    data = bytearray(seg.read_bytes())
    data[4 * (HDR + 100) + HDR + 10] ^= 0xFF  # a payload byte of seq 4
    seg.write_bytes(bytes(data))
    with WalWriter.open(str(tmp_path), 1 << 20, 1 << 20) as w:
        report = w.recovery_report
        assert report.quarantined_segments == 1 and report.quarantined_bytes == 6 * (HDR + 100)
        assert [Path(p).parent.name for p in report.quarantine_files] == ["quarantine"]
        assert Path(report.quarantine_files[0]).read_bytes() == bytes(data[4 * (HDR + 100) :])
        assert w.head == 4 * (HDR + 100) and w.next_seq == 10  # seqs never repeat
        w.wait_durable(w.append(1, 1, payload(10)), 5)
    with WalReader.open(str(tmp_path)) as r:
        assert [rec.seq for rec in drain(r)] == [0, 1, 2, 3, 10]


def test_corruption_in_a_sealed_segment_found_while_reading(tmp_path):
    with WalWriter.open(str(tmp_path), 1000, 1 << 20) as w:
        w.wait_durable([w.append(1, 1, payload(i)) for i in range(20)][-1], 5)
        first = tmp_path / layout.segment_name(0)
        data = bytearray(first.read_bytes())
        data[2 * (HDR + 100) + 20] ^= 0x01  # the crc of seq 2 (the writer only checks the last segment)
        first.write_bytes(bytes(data))
        with WalReader.open(str(tmp_path)) as r:
            seqs = [rec.seq for rec in drain(r)]
            assert seqs == [0, 1, *range(7, 20)]
            assert r.recovery_report.quarantined_segments == 1
            assert first.stat().st_size == 2 * (HDR + 100)


def test_commit_offset_survives_restart_and_redelivery_is_bounded(tmp_path):
    with WalWriter.open(str(tmp_path), 2000, 1 << 20) as w:
        w.wait_durable([w.append(1, 1, payload(i)) for i in range(50)][-1], 5)
        r = WalReader.open(str(tmp_path))
        records = [r.read() for _ in range(30)]
        r.commit(records[24])  # 25..29 read, not committed: in flight
        r.close()  # as good as a crash: nothing is written at close
        with WalReader.open(str(tmp_path)) as r2:
            assert [rec.seq for rec in drain(r2)] == list(range(25, 50))
            assert r2.usage().records == 25
    assert wal_usage(str(tmp_path)).records == 25


def test_acknowledged_records_beyond_the_commit_are_not_redelivered(tmp_path):
    """Batches complete out of order: records acked after an older open one cannot be committed
    yet, but a restarted reader must skip them (re-delivery bounded by what was in flight)."""
    with WalWriter.open(str(tmp_path), 1 << 20, 1 << 24) as w:
        assert w.wait_durable([w.append(1, 1, payload(i)) for i in range(10)][-1], 5)
    with WalReader.open(str(tmp_path)) as r:
        records = drain(r)
        r.commit(records[2])
        r.mark_acked(records[5:8])
        r.mark_acked([records[9], records[8]])
        r.rewind()
        assert [rec.seq for rec in drain(r)] == [3, 4]  # in-process rewind skips them too
    with WalReader.open(str(tmp_path)) as r:
        again = drain(r)
        assert [rec.seq for rec in again] == [3, 4]
        r.commit(again[-1])  # a later commit covers the skipped ones
    with WalWriter.open(str(tmp_path), 1 << 20, 1 << 24) as w:
        assert w.wait_durable(w.append(1, 1, payload(10)), 5)
    with WalReader.open(str(tmp_path)) as r:
        assert [rec.seq for rec in drain(r)] == [10]
    assert layout.read_acked(str(tmp_path)) == [(5, 9)]  # stale ranges are only pruned in memory


def test_seqs_continue_after_every_segment_was_deleted(tmp_path):
    with WalWriter.open(str(tmp_path), 300, 1 << 20) as w, WalReader.open(str(tmp_path)) as r:
        w.wait_durable([w.append(1, 1, payload(i)) for i in range(6)][-1], 5)
        r.commit(drain(r)[-1])
    for name in os.listdir(tmp_path):
        if name.endswith(".wal"):
            os.unlink(tmp_path / name)
    with WalWriter.open(str(tmp_path), 300, 1 << 20) as w:
        assert w.next_seq == 6 and w.head == 6 * (HDR + 100)
        w.wait_durable(w.append(1, 1, payload(6)), 5)
    with WalReader.open(str(tmp_path)) as r:
        assert [rec.seq for rec in drain(r)] == [6]


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("disk-full test needs root to mount a 1 MiB tmpfs")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {result.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_disk_full_raises_then_recovers(tiny_tmpfs):
    ballast = tiny_tmpfs / "ballast"
    ballast.write_bytes(b"\0" * (700 * 1024))
    qdir = tiny_tmpfs / "wal"
    with WalWriter.open(str(qdir), 64 * 1024, 1 << 30) as w, WalReader.open(str(qdir)) as r:
        accepted = 0
        with pytest.raises(DiskFull):
            for i in range(10_000):
                w.append(1, 1, payload(i, 4000))
                accepted += 1
        assert accepted > 10
        with pytest.raises(DiskFull):  # still full, still refusing, still alive
            w.append(1, 1, payload(0, 4000))
        ballast.unlink()
        ticket = w.append(1, 1, payload(accepted, 4000))
        assert ticket is not None and w.wait_durable(ticket, 5)
        records = drain(r)
        assert [rec.seq for rec in records] == list(range(accepted + 1))
        assert all(int.from_bytes(rec.payload[:8], "little") == rec.seq for rec in records)


def test_corruption_in_the_live_segment_loses_only_the_quarantined_records(tmp_path):
    """Review finding 3: after quarantining up to the durable offset of the live segment the
    reader resumes there, so records the writer appends (and acknowledges) afterwards are read."""
    with WalWriter.open(str(tmp_path), 1 << 20, 1 << 24) as w, WalReader.open(str(tmp_path)) as r:
        assert w.wait_durable([w.append(1, 1, payload(i)) for i in range(3)][-1], 5)
        seg = tmp_path / layout.segment_name(0)
        fd = os.open(seg, os.O_RDWR)
        try:  # bit rot in the payload of seq 1, found by the reader while the writer is live
            pos = (HDR + 100) + HDR + 5
            os.pwrite(fd, bytes([os.pread(fd, 1, pos)[0] ^ 0xFF]), pos)
        finally:
            os.close(fd)
        assert [rec.seq for rec in drain(r)] == [0]  # seq 2 lies after the bad length: quarantined
        assert r.recovery_report.quarantined_bytes == 2 * (HDR + 100)
        assert w.wait_durable([w.append(1, 1, payload(i)) for i in range(3, 8)][-1], 5)
        records = drain(r)
        assert [rec.seq for rec in records] == list(range(3, 8))
        assert all(int.from_bytes(rec.payload[:8], "little") == rec.seq for rec in records)
        assert r.recovery_report.quarantined_segments == 1
        assert segments(tmp_path) == [0]


def test_seqs_are_not_reused_when_power_loss_empties_the_newest_segment(tmp_path):
    """Review finding 4: the newest segment lost its data and the (never fsynced) durable file is
    stale; seqs must still continue past every seq handed out, or the reader's acked ranges
    would skip the new records."""
    stale_durable = None
    with WalWriter.open(str(tmp_path), 2000, 1 << 24) as w, WalReader.open(str(tmp_path)) as r:
        stale_durable = (tmp_path / layout.DURABLE_FILE).read_bytes()
        assert w.wait_durable([w.append(1, 1, payload(i, 200)) for i in range(12)][-1], 5)
        records = drain(r)
        r.mark_acked(records[1:])  # seq 0 still in flight: no commit yet
        w.append(1, 1, b"x" * 2000)  # rolls to a new segment, lost before its fsync
        newest = segments(tmp_path)[-1]
    os.truncate(tmp_path / layout.segment_name(newest), 0)
    (tmp_path / layout.DURABLE_FILE).write_bytes(stale_durable)
    with WalWriter.open(str(tmp_path), 2000, 1 << 24) as w:
        assert w.next_seq == 12
        assert w.wait_durable([w.append(1, 1, payload(100 + i, 200)) for i in range(5)][-1], 5)
    with WalReader.open(str(tmp_path)) as r:
        got = [(rec.seq, int.from_bytes(rec.payload[:8], "little")) for rec in drain(r)]
    assert got == [(0, 0), *((12 + i, 100 + i) for i in range(5))]


def test_seqs_continue_past_the_acked_file(tmp_path):
    """Every segment holding acknowledged seqs gone and the durable file stale: the acked file
    alone still says which seqs were handed out."""
    with WalWriter.open(str(tmp_path), 1 << 20, 1 << 24) as w, WalReader.open(str(tmp_path)) as r:
        assert w.wait_durable([w.append(1, 1, payload(i)) for i in range(4)][-1], 5)
        r.mark_acked(drain(r)[2:])
    for name in [*os.listdir(tmp_path)]:
        if name.endswith(".wal") or name == layout.DURABLE_FILE:
            os.unlink(tmp_path / name)
    with WalWriter.open(str(tmp_path), 1 << 20, 1 << 24) as w:
        assert w.next_seq == 4


def _corrupt_seq(path: Path, index: int, size: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[index * (HDR + size) + HDR + 10] ^= 0xFF
    path.write_bytes(bytes(data))


def _full_disk_for_quarantine(d: Path, base: int, start: int) -> None:
    """Make the quarantine copy of segment ``base`` from ``start`` hit a real ENOSPC: its file
    name is a symlink to /dev/full (every write fails with ENOSPC)."""
    qdir = d / layout.QUARANTINE_DIR
    qdir.mkdir(exist_ok=True)
    (qdir / f"{base:020d}-{start:012d}{layout.SEGMENT_SUFFIX}").symlink_to("/dev/full")


def test_quarantine_on_a_full_disk_still_cuts_and_the_log_opens(tmp_path):
    """Review finding 6 (log side): the copy into quarantine/ fails with ENOSPC; the corrupt
    remainder is still cut, counted and logged, and the writer opens."""
    with WalWriter.open(str(tmp_path), 1 << 20, 1 << 20) as w:
        assert w.wait_durable([w.append(1, 1, payload(i)) for i in range(10)][-1], 5)
    _corrupt_seq(tmp_path / layout.segment_name(0), 4)
    _full_disk_for_quarantine(tmp_path, 0, 4 * (HDR + 100))
    with WalWriter.open(str(tmp_path), 1 << 20, 1 << 20) as w:
        report = w.recovery_report
        assert (report.quarantined_segments, report.quarantine_failures) == (1, 1)
        assert report.quarantined_bytes == 6 * (HDR + 100) and report.quarantine_files == []
        assert w.head == 4 * (HDR + 100) and w.next_seq == 10
        assert w.wait_durable(w.append(1, 1, payload(10)), 5)
    assert os.listdir(tmp_path / layout.QUARANTINE_DIR) == []  # the partial copy is removed
    with WalReader.open(str(tmp_path)) as r:
        assert [rec.seq for rec in drain(r)] == [0, 1, 2, 3, 10]


def test_reader_quarantine_on_a_full_disk_still_skips(tmp_path):
    """The same for corruption met while reading, in a sealed and in the live segment."""
    with WalWriter.open(str(tmp_path), 1000, 1 << 20) as w, WalReader.open(str(tmp_path)) as r:
        assert w.wait_durable([w.append(1, 1, payload(i)) for i in range(10)][-1], 5)
        first, live = (tmp_path / layout.segment_name(b) for b in segments(tmp_path))
        _corrupt_seq(first, 2)
        _corrupt_seq(live, 1)
        _full_disk_for_quarantine(tmp_path, 0, 2 * (HDR + 100))
        _full_disk_for_quarantine(tmp_path, 7 * (HDR + 100), HDR + 100)
        assert [rec.seq for rec in drain(r)] == [0, 1, 7]
        assert (r.recovery_report.quarantined_segments, r.recovery_report.quarantine_failures) == (2, 2)
        assert first.stat().st_size == 2 * (HDR + 100)
        assert w.wait_durable(w.append(1, 1, payload(10)), 5)
        assert [rec.seq for rec in drain(r)] == [10]


def test_a_failed_fsync_is_never_forgotten(tmp_path, monkeypatch):
    """Review finding 8: the writer once kept only the last 64 failed ranges, so a late waiter
    on a record whose fsync failed could be told it was durable after enough later failures."""
    fail = threading.Event()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if fail.is_set():
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with WalWriter.open(str(tmp_path), 1 << 20, 1 << 24) as w:
        first = None
        for i in range(66):  # one failed fsync, then a good one, 66 times
            fail.set()
            errors = w.sync_errors
            ticket = w.append(1, 1, payload(i))
            first = first or ticket
            assert not w.wait_durable(ticket, 5) and w.sync_errors == errors + 1
            fail.clear()
            assert w.wait_durable(w.append(1, 1, payload(i)), 5)
        assert not w.wait_durable(first, 0)
        decided: list[bool] = []
        w.add_durable_callback(first, decided.append)
        assert decided == [False]


def test_the_fsync_thread_survives_a_failing_close(tmp_path, monkeypatch):
    """Review finding 9: close() of a sealed segment can fail (EIO on some filesystems); the
    fsync thread must go on, or no record would ever become durable again."""
    real_close = os.close
    failed = threading.Event()

    def close(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        real_close(fd)
        on_thread = threading.current_thread().name == "wal-fsync"
        if on_thread and name.endswith(layout.SEGMENT_SUFFIX) and not failed.is_set():
            failed.set()
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "close", close)
    with WalWriter.open(str(tmp_path), 300, 1 << 24) as w:
        assert w.wait_durable([w.append(1, 1, payload(i)) for i in range(6)][-1], 5)
        assert failed.is_set()
        assert w.wait_durable(w.append(1, 1, payload(6)), 5)
