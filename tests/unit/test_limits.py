"""Request-body decompression with limits (otlp_ingest.receiver.limits): zstd next to gzip."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import zlib

import pytest
import zstandard

from otlp_ingest import errors
from otlp_ingest.receiver.limits import ZSTD_MAX_WINDOW, decompress, normalize_encoding
from tests.conftest import REPO_ROOT

MiB = 1024 * 1024
BODY = os.urandom(50_000) + bytes(200_000) + b"span-attribute " * 20_000


@pytest.mark.parametrize(
    ("header", "name"),
    [(None, "identity"), ("", "identity"), ("gzip", "gzip"), ("x-gzip", "gzip"), ("deflate", "deflate"),
     (" ZSTD ", "zstd"), ("zstd", "zstd")],
)  # fmt: skip
def test_normalize_encoding(header: str | None, name: str) -> None:
    assert normalize_encoding(header) == name


def test_unknown_encoding_lists_zstd_among_the_supported() -> None:
    with pytest.raises(errors.UnsupportedEncoding, match="gzip, zstd, deflate, identity"):
        normalize_encoding("br")


@pytest.mark.parametrize(
    "frame",
    [
        zstandard.ZstdCompressor().compress(BODY),
        zstandard.ZstdCompressor(level=19, write_checksum=True).compress(BODY),
        zstandard.ZstdCompressor(write_content_size=False).compress(BODY),
    ],
    ids=["default", "checksum", "no-content-size"],
)
def test_zstd_bodies(frame: bytes) -> None:
    assert decompress("zstd", frame, 10 * MiB) == BODY
    assert decompress("zstd", frame + frame, 10 * MiB) == BODY + BODY  # several frames


def test_zstd_streamed_frame_and_skippable_frame() -> None:
    c = zstandard.ZstdCompressor().compressobj()
    streamed = c.compress(BODY[:1000]) + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK) + c.compress(BODY[1000:])
    streamed += c.flush()
    skippable = b"\x50\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"hello"
    assert decompress("zstd", skippable + streamed, 10 * MiB) == BODY
    assert decompress("zstd", zstandard.ZstdCompressor().compress(b""), 10) == b""
    assert decompress("zstd", b"", 10) == b""


def test_same_limit_as_gzip_exactly_at_and_over() -> None:
    limit = len(BODY)
    for encoding, packed in (
        ("zstd", zstandard.ZstdCompressor().compress(BODY)),
        ("gzip", gzip.compress(BODY)),
    ):
        assert decompress(encoding, packed, limit) == BODY
        with pytest.raises(errors.PayloadTooLarge, match=f"limit of {limit - 1} bytes"):
            decompress(encoding, packed, limit - 1)


@pytest.mark.parametrize(
    "bad",
    [
        b"not zstd at all",
        zstandard.ZstdCompressor().compress(BODY)[:-1],  # truncated: must not yield a prefix
        zstandard.ZstdCompressor().compress(BODY)[:40],
        zstandard.ZstdCompressor().compress(BODY) + b"junk",
        zstandard.ZstdCompressor().compress(BODY)[:3],
        gzip.compress(BODY),
    ],
    ids=["garbage", "truncated-end", "truncated-early", "trailing-junk", "magic-only", "gzip-as-zstd"],
)
def test_invalid_zstd_is_invalid_argument(bad: bytes) -> None:
    with pytest.raises(errors.InvalidArgument, match="invalid zstd body"):
        decompress("zstd", bad, 10 * MiB)


def test_zstd_frame_with_a_window_over_8_mib_is_refused() -> None:
    params = zstandard.ZstdCompressionParameters(window_log=24)  # 16 MiB window
    frame = zstandard.ZstdCompressor(compression_params=params).compress(os.urandom(64) * 300_000)
    assert zstandard.get_frame_parameters(frame).window_size > ZSTD_MAX_WINDOW
    with pytest.raises(errors.InvalidArgument, match="invalid zstd body"):
        decompress("zstd", frame, 100 * MiB)


_BOMB_CHILD = """
import io, resource, sys, zstandard
from otlp_ingest import errors
from otlp_ingest.receiver.limits import decompress

buf = io.BytesIO()
# 2 GiB of zeros declared in the frame header (content size), ~64 KiB compressed.
with zstandard.ZstdCompressor(level=1).stream_writer(buf, closefd=False, size=2 << 30) as w:
    chunk = bytes(8 << 20)
    for _ in range(256):
        w.write(chunk)
bomb = buf.getvalue()
del chunk, buf
assert zstandard.frame_content_size(bomb) == 2 << 30
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decompress("zstd", bomb, 1 << 20)
except errors.PayloadTooLarge:
    pass
else:
    sys.exit("bomb accepted")
print(len(bomb), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_zstd_bomb_is_refused_without_allocating_past_the_limit() -> None:
    """A frame that claims (and holds) 2 GiB is stopped after ~1 MiB of output: the declared
    content size is not used to size anything. In a fresh process, so ru_maxrss means this."""
    result = subprocess.run(
        [sys.executable, "-c", _BOMB_CHILD], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr
    bomb_bytes, grown_kib = map(int, result.stdout.split())
    assert bomb_bytes < 256 * 1024
    assert grown_kib < 16 * 1024, f"peak RSS grew {grown_kib} KiB decompressing a 1 MiB-capped bomb"


def test_deflate_and_gzip_unchanged() -> None:
    assert decompress("deflate", zlib.compress(BODY), 10 * MiB) == BODY
    assert decompress("gzip", gzip.compress(BODY) + gzip.compress(BODY), 10 * MiB) == BODY * 2
    assert decompress("identity", BODY, len(BODY)) == BODY
    with pytest.raises(errors.PayloadTooLarge):
        decompress("identity", BODY, len(BODY) - 1)


def test_zstd_from_several_threads_at_once() -> None:
    from concurrent.futures import ThreadPoolExecutor

    frames = [zstandard.ZstdCompressor().compress(BODY + bytes([i])) for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        out = list(pool.map(lambda f: decompress("zstd", f, 10 * MiB), frames * 4))
    assert out == [BODY + bytes([i]) for i in range(8)] * 4
