"""Scanning and repairing segments: find where the valid records of a segment end, cut off a torn
tail, move a corrupt remainder to ``quarantine/``. See ``otlp_ingest.wal.layout`` for the format.

Recovery never raises on bad data: the log always opens. What it did is returned as a
``RecoveryReport`` (the caller exports it as a metric) and logged once per repair.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import zlib
from dataclasses import dataclass, field

from otlp_ingest.wal import layout

log = logging.getLogger(__name__)

_PREFIX = layout.RECORD_PREFIX
_HDR = layout.RECORD_HEADER_SIZE
_CHUNK = 1 << 20


@dataclass
class RecoveryReport:
    """What recovery repaired. ``quarantined_segments`` counts segments whose remainder was moved
    to ``quarantine/`` (``quarantined_bytes`` in total, files listed in ``quarantine_files``);
    ``truncated_bytes`` is the torn tail cut off the last segment. ``quarantine_failures`` counts
    quarantines whose copy could not be written (disk full, EIO): those bytes were still cut or
    skipped, but are gone rather than kept for forensics."""

    truncated_bytes: int = 0
    quarantined_segments: int = 0
    quarantined_bytes: int = 0
    quarantine_files: list[str] = field(default_factory=list)
    quarantine_failures: int = 0

    def add(self, other: RecoveryReport) -> None:
        self.truncated_bytes += other.truncated_bytes
        self.quarantined_segments += other.quarantined_segments
        self.quarantined_bytes += other.quarantined_bytes
        self.quarantine_files.extend(other.quarantine_files)
        self.quarantine_failures += other.quarantine_failures

    def quarantined(self, path: str | None, nbytes: int) -> None:
        """Count one quarantine of ``nbytes``; ``path`` is its copy, None if the copy failed."""
        self.quarantined_segments += 1
        self.quarantined_bytes += nbytes
        if path is None:
            self.quarantine_failures += 1
        else:
            self.quarantine_files.append(path)


@dataclass(frozen=True, slots=True)
class ScanResult:
    """``valid_end``: file position just past the last valid record of the leading run;
    ``last_seq``: that record's seq (None if there is none); ``torn``: the bytes after
    ``valid_end`` are an incomplete record (or zero fill) rather than a corrupt one."""

    valid_end: int
    last_seq: int | None
    file_size: int
    torn: bool


def check_record(fd: int, pos: int, limit: int) -> tuple[str, int, tuple[int, int, int, int] | None]:
    """Validate the record at file position ``pos`` of ``fd``, reading nothing at or past ``limit``.

    Returns (verdict, end, (payload_len, signal, item_count, seq)) with verdict ``"ok"``,
    ``"short"`` (the header or payload runs past ``limit``: torn, or not yet written) or
    ``"bad"`` (bad magic or crc within the limit: corrupt, or zero fill, see ``is_zero``).
    """
    if limit - pos < _HDR:
        return "short", pos, None
    header = os.pread(fd, _HDR, pos)
    if len(header) < _HDR:
        return "short", pos, None
    magic, length, signal, _flags, items, seq = _PREFIX.unpack_from(header)
    if magic != layout.MAGIC:
        return "bad", pos, None
    end = pos + _HDR + length
    if end > limit:
        return "short", pos, (length, signal, items, seq)
    payload = os.pread(fd, length, pos + _HDR)
    if len(payload) < length:
        return "short", pos, (length, signal, items, seq)
    crc = layout.CRC.unpack_from(header, _PREFIX.size)[0]
    if zlib.crc32(payload, zlib.crc32(header[: _PREFIX.size])) != crc:
        return "bad", pos, (length, signal, items, seq)
    return "ok", end, (length, signal, items, seq)


def is_zero(fd: int, start: int, end: int) -> bool:
    """True if file bytes [start, end) are all zero: what a crash before data reached the disk
    leaves after the file size grew (torn, not corrupt)."""
    pos = start
    while pos < end:
        chunk = os.pread(fd, min(_CHUNK, end - pos), pos)
        if not chunk:
            return True
        if chunk.count(0) != len(chunk):
            return False
        pos += len(chunk)
    return True


def scan_segment(fd: int) -> ScanResult:
    """Walk the records of a segment from its start to the first invalid one."""
    size = os.fstat(fd).st_size
    pos, last_seq = 0, None
    while pos < size:
        # Reading the header and payload separately keeps memory flat on big segments.
        verdict, end, meta = check_record(fd, pos, size)
        if verdict != "ok":
            torn = verdict == "short" or is_zero(fd, pos, size)
            return ScanResult(pos, last_seq, size, torn)
        assert meta is not None
        last_seq, pos = meta[3], end
    return ScanResult(pos, last_seq, size, True)


def quarantine(directory: str, base: int, fd: int, start: int, end: int) -> str | None:
    """Copy segment bytes [start, end) into ``quarantine/`` (fsynced) and return the file path.
    The caller truncates or skips them either way.

    Best effort: if the copy fails (disk full, EIO reading the bad sector, EMFILE, ...) it is
    logged, the partial copy removed, and None returned. Keeping the bytes for forensics must
    never stop the log from opening or the reader from moving past them."""
    qdir = os.path.join(directory, layout.QUARANTINE_DIR)
    path = os.path.join(qdir, f"{base:020d}-{start:012d}{layout.SEGMENT_SUFFIX}")
    try:
        os.makedirs(qdir, exist_ok=True)
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            pos = start
            while pos < end:
                chunk = os.pread(fd, min(_CHUNK, end - pos), pos)
                if not chunk:
                    break
                written = os.write(out, chunk)
                if written != len(chunk):  # a short write is what a filling disk does first
                    raise OSError(errno.ENOSPC, "short write")
                pos += len(chunk)
            os.fsync(out)
        finally:
            os.close(out)
        layout.fsync_dir(qdir)
    except OSError as e:
        log.error(
            "write-ahead log %s: could not keep %d corrupt bytes of segment %d in %s (%s); "
            "dropping them instead",
            directory,
            end - start,
            base,
            qdir,
            e,
        )
        with contextlib.suppress(OSError):  # free what the partial copy took
            os.unlink(path)
        return None
    return path


def repair_segment(directory: str, base: int) -> tuple[ScanResult, RecoveryReport]:
    """Scan segment ``base`` and make it end at its last valid record: a torn tail is truncated,
    a corrupt remainder is quarantined, then truncated. Only for a segment no live writer
    appends to. Returns the scan (before repair) and what was done."""
    path = os.path.join(directory, layout.segment_name(base))
    report = RecoveryReport()
    fd = os.open(path, os.O_RDWR)
    try:
        scan = scan_segment(fd)
        if scan.valid_end < scan.file_size:
            cut = scan.file_size - scan.valid_end
            if scan.torn:
                report.truncated_bytes = cut
                log.warning(
                    "write-ahead log %s: cut a torn tail of %d bytes at %d", path, cut, scan.valid_end
                )
            else:
                qpath = quarantine(directory, base, fd, scan.valid_end, scan.file_size)
                report.quarantined(qpath, cut)
                log.error(
                    "write-ahead log %s: corrupt record at %d; moved the remaining %d bytes to %s",
                    path,
                    scan.valid_end,
                    cut,
                    qpath or "nowhere (copy failed, dropped)",
                )
            os.ftruncate(fd, scan.valid_end)
            os.fsync(fd)
    finally:
        os.close(fd)
    return scan, report


@dataclass(frozen=True, slots=True)
class TailState:
    """Where appending continues after recovery: ``head`` (stream offset), ``next_seq``, and the
    segment to append to (``segment_base``; ``segment_size`` bytes already in it, or None if a
    new segment must be created at ``head``)."""

    head: int
    next_seq: int
    segment_base: int | None
    segment_size: int


def recover_tail(directory: str) -> tuple[TailState, RecoveryReport]:
    """Repair the last segment of the log and work out where appending continues. Hold the writer
    lock while calling this: it truncates the last segment.

    ``next_seq`` is one past the highest seq the log may have handed out: the last valid record
    of the newest segment that has one (a power loss can leave the newest segments empty or
    zero-filled, so earlier ones are scanned too), the commit file, the durable file (a hint:
    never fsynced, so possibly stale) and the last acknowledged seq in the acked file. Seqs
    must never go backwards: the reader skips seqs listed as acknowledged, so a reused seq
    would make it skip a new record.
    """
    commit = layout.read_state(os.path.join(directory, layout.COMMIT_FILE))
    durable = layout.read_state(os.path.join(directory, layout.DURABLE_FILE))
    bases = layout.list_segments(directory)
    report = RecoveryReport()
    head, next_seq, seg_base, seg_size = 0, 0, None, 0
    if bases:
        seg_base = bases[-1]
        scan, report = repair_segment(directory, seg_base)
        seg_size = scan.valid_end
        head = seg_base + seg_size
        last_seq = scan.last_seq
        for base in reversed(bases[:-1]):
            if last_seq is not None:
                break
            last_seq = _last_seq(directory, base)
        if last_seq is not None:
            next_seq = last_seq + 1
    for state in (commit, durable):
        if state is not None:
            next_seq = max(next_seq, state.next_seq)
            if not bases:
                head = max(head, state.offset)
    acked = layout.read_acked(directory)
    if acked:
        next_seq = max(next_seq, acked[-1][1] + 1)
    if commit is not None and commit.offset > head:
        # Committed past what is on disk (only after a quarantine): never hand out offsets the
        # reader considers delivered.
        head, seg_base, seg_size = commit.offset, None, 0
    return TailState(head, next_seq, seg_base, seg_size), report


def _last_seq(directory: str, base: int) -> int | None:
    """Seq of the last valid record of sealed segment ``base`` (read only; None if it has none)."""
    try:
        fd = os.open(os.path.join(directory, layout.segment_name(base)), os.O_RDONLY)
    except FileNotFoundError:  # deleted by a reader's commit meanwhile
        return None
    try:
        return scan_segment(fd).last_seq
    finally:
        os.close(fd)
