"""The exporter with no endpoint: OTLP JSON Lines files that parse back into the same items."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from otlp_ingest.config import Settings
from otlp_ingest.errors import ExitCode
from otlp_ingest.exporter import file_sink
from otlp_ingest.exporter.file_sink import FileSink
from otlp_ingest.exporter.sender import SendError
from otlp_ingest.otlp.json_codec import decode_json
from otlp_ingest.otlp.signals import SIGNAL_BY_NAME, Signal
from otlp_ingest.ring import ring_usage
from tests.integration._exporter_harness import (
    ExporterProcess,
    Rings,
    log_keys,
    logs,
    metric_keys,
    metric_points,
    span_keys,
    spans,
)
from tests.support.recording_backend import item_keys
from tests.support.waiting import wait_until


def file_keys(data_dir: Path, signal_name: str) -> tuple[Counter[str], int]:
    """Item keys in every file (current and rotated) of a signal, and the number of lines."""
    keys: Counter[str] = Counter()
    lines = 0
    for path in sorted(data_dir.glob(f"{signal_name}*.jsonl")):
        for line in path.read_bytes().splitlines():
            json.loads(line)  # plain JSON too, one object per line
            keys.update(item_keys(signal_name, decode_json(SIGNAL_BY_NAME[signal_name], line)))
            lines += 1
    return keys, lines


def settings(data_dir: Path, **kw: object) -> Settings:
    base: dict[str, object] = {"data_dir": str(data_dir), "batch_timeout": 0.05, "shutdown_timeout": 10.0}
    return Settings(**{**base, **kw})  # type: ignore[arg-type]


def test_files_parse_back_into_the_same_items(rings: Rings, tmp_path: Path) -> None:
    [name] = rings.create()
    for i in range(20):
        rings.write(name, Signal.TRACES, 5, spans(i * 5, 5))
        rings.write(name, Signal.LOGS, 2, logs(i * 2, 2))
        rings.write(name, Signal.METRICS, 3, metric_points(i * 3, 3))
    data_dir = tmp_path / "data"
    e = ExporterProcess(settings(data_dir, batch_size=25), [name], tmp_path)
    wait_until(lambda: ring_usage(name).records == 0, 10, what="records committed")
    assert e.terminate() == ExitCode.OK
    for signal_name, expected in (
        ("traces", span_keys(0, 100)),
        ("logs", log_keys(0, 40)),
        ("metrics", metric_keys(0, 60)),
    ):
        keys, _ = file_keys(data_dir, signal_name)
        assert keys == Counter(expected), signal_name
        assert (data_dir / f"{signal_name}.jsonl").exists()
    assert file_keys(data_dir, "traces")[1] == 4  # 100 spans in batches of 25: one line each
    assert e.counter("otlp_exporter_sent_spans", exporter="0") == 100


def test_rotation_by_size_keeps_every_item(rings: Rings, tmp_path: Path) -> None:
    [name] = rings.create()
    for i in range(60):
        rings.write(name, Signal.TRACES, 2, spans(i * 2, 2))
    data_dir = tmp_path / "data"
    e = ExporterProcess(settings(data_dir, batch_size=2, file_rotate_bytes=2000), [name], tmp_path)
    wait_until(lambda: ring_usage(name).records == 0, 10, what="records committed")
    assert e.terminate() == ExitCode.OK
    rotated = sorted(p.name for p in data_dir.glob("traces-*.jsonl"))
    assert len(rotated) >= 3
    assert all(re.fullmatch(r"traces-\d{8}T\d{6}Z-\d+\.jsonl", n) for n in rotated)
    for path in data_dir.glob("traces*.jsonl"):
        size = path.stat().st_size
        assert size <= 2000 or path.read_bytes().count(b"\n") == 1, path.name
    keys, _ = file_keys(data_dir, "traces")
    assert keys == Counter(span_keys(0, 120))


def test_two_exporters_append_to_the_same_files_without_tearing_lines(rings: Rings, tmp_path: Path) -> None:
    names = rings.create(2)
    for i in range(200):
        rings.write(names[i % 2], Signal.TRACES, 3, spans(i * 3, 3))
    data_dir = tmp_path / "data"
    both = [
        ExporterProcess(
            settings(data_dir, batch_size=3, file_rotate_bytes=20_000), [n], tmp_path / f"e{j}", j
        )
        for j, n in enumerate(names)
    ]
    wait_until(lambda: all(ring_usage(n).records == 0 for n in names), 15, what="records committed")
    assert [e.terminate() for e in both] == [ExitCode.OK, ExitCode.OK]
    keys, lines = file_keys(data_dir, "traces")  # every line parses: no interleaved writes
    assert keys == Counter(span_keys(0, 600))
    assert lines == 200


# -- a failed write leaves no fragment: the retry must not append after half a line -----------------


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("disk-full test needs root to mount a 1 MiB tmpfs")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {result.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_disk_full_mid_line_leaves_no_fragment_and_the_retry_writes_a_whole_line(tiny_tmpfs: Path) -> None:
    data_dir = tiny_tmpfs / "data"
    sink = FileSink(settings(data_dir))
    try:
        sink.send(Signal.TRACES, spans(0, 5))
        size_before = (data_dir / "traces.jsonl").stat().st_size
        ballast = tiny_tmpfs / "ballast"
        fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
        try:  # fill the filesystem to the last page ...
            with pytest.raises(OSError) as full:
                while True:
                    os.write(fd, b"\0" * 4096)
            assert full.value.errno == errno.ENOSPC
            os.ftruncate(fd, os.fstat(fd).st_size - 8192)  # ... then free two: room for a fragment only
        finally:
            os.close(fd)
        big = spans(5, 400)  # an OTLP/JSON line of tens of KiB
        with pytest.raises(SendError) as info:
            sink.send(Signal.TRACES, big)
        assert info.value.retryable
        assert (data_dir / "traces.jsonl").stat().st_size == size_before  # the fragment was cut off
        ballast.unlink()
        sink.send(Signal.TRACES, big)  # the exporter's retry, once space is back
    finally:
        sink.close()
    keys, lines = file_keys(data_dir, "traces")  # every line parses
    assert keys == Counter(span_keys(0, 405)) and lines == 2


@pytest.mark.parametrize("how", ["short", "raises"])
def test_a_short_or_failed_write_is_truncated_back_at_the_seam(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # Regular files write short (or write some, then fail) on ENOSPC and quota; simulate it where
    # the sink calls os.write, really writing the fragment, so any platform runs this test.
    real_write = os.write
    failures = [1]

    def flaky_write(fd: int, data: bytes) -> int:
        if not failures:
            return real_write(fd, data)
        failures.pop()
        written = real_write(fd, bytes(data)[: len(data) // 2])
        if how == "raises":
            raise OSError(errno.ENOSPC, "No space left on device")
        return written

    data_dir = tmp_path / "data"
    sink = FileSink(settings(data_dir))
    try:
        sink.send(Signal.TRACES, spans(0, 5))
        size_before = (data_dir / "traces.jsonl").stat().st_size
        monkeypatch.setattr(file_sink.os, "write", flaky_write)
        with pytest.raises(SendError) as info:
            sink.send(Signal.TRACES, spans(5, 20))
        assert info.value.retryable and not failures
        assert (data_dir / "traces.jsonl").stat().st_size == size_before
        sink.send(Signal.TRACES, spans(5, 20))
    finally:
        sink.close()
    keys, lines = file_keys(data_dir, "traces")
    assert keys == Counter(span_keys(0, 25)) and lines == 2
