"""Request-body decompression with limits.

Supported `Content-Encoding`s (and `grpc-encoding`s): `identity` (or none), `gzip` (also
`x-gzip`, multi-member), `deflate` (zlib-wrapped as RFC 9110 says, or raw deflate as some clients
send) and `zstd` (RFC 8878, one or more frames, via the `zstandard` package).

Decompression is streamed with a bounded output per step (zlib's `max_length`, zstd's
`stream_reader.read(n)`), so a small "bomb" never allocates more than the limit plus one chunk:
we stop as soon as the output would exceed `max_bytes`. A zstd frame may declare its content size;
that is never trusted (nor used to size a buffer). Its window size is capped at 8 MiB, the limit
RFC 9659 sets for the `zstd` content coding, so a frame cannot make the decoder reserve more.
"""

from __future__ import annotations

import threading
import zlib

import zstandard

from otlp_ingest import errors

# Output produced per decompress() call; bounds the overshoot past the limit.
_CHUNK = 256 * 1024

SUPPORTED_ENCODINGS = ("identity", "gzip", "deflate", "zstd")
# RFC 9659: zstd content-coding windows are at most 8 MiB; a larger frame is refused unread.
ZSTD_MAX_WINDOW = 8 * 1024 * 1024
# Decompressors are cheap to keep and not safe to share between threads (gRPC handler threads
# and the HTTP offload pool call `decompress` concurrently): one per thread.
_zstd_local = threading.local()


def normalize_encoding(header: str | None) -> str:
    """The canonical name for a `Content-Encoding` header value; UnsupportedEncoding otherwise."""
    if not header:
        return "identity"
    value = header.strip().lower()
    if value in ("", "identity"):
        return "identity"
    if value in ("gzip", "x-gzip"):
        return "gzip"
    if value == "deflate":
        return "deflate"
    if value == "zstd":
        return "zstd"
    raise errors.UnsupportedEncoding(
        f"unsupported Content-Encoding {header!r}; supported: gzip, zstd, deflate, identity"
    )


def decompress(encoding: str, data: bytes, max_bytes: int) -> bytes:
    """Decompress `data` per `encoding` (a value of `normalize_encoding`).

    Raises PayloadTooLarge when the output exceeds `max_bytes`, InvalidArgument when the data is
    not valid for the encoding.
    """
    if encoding == "identity":
        if len(data) > max_bytes:
            raise errors.PayloadTooLarge(f"body of {len(data)} bytes exceeds the limit of {max_bytes}")
        return data
    if encoding == "gzip":
        return _inflate(data, zlib.MAX_WBITS | 16, max_bytes, "gzip")
    if encoding == "deflate":
        # RFC 9110 "deflate" is the zlib format; some clients send raw deflate. A zlib stream
        # starts with a header byte whose low nibble is 8 (CM=deflate) and passes a mod-31 check.
        if len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0:
            return _inflate(data, zlib.MAX_WBITS, max_bytes, "deflate")
        return _inflate(data, -zlib.MAX_WBITS, max_bytes, "deflate")
    if encoding == "zstd":
        return _unzstd(data, max_bytes)
    raise errors.UnsupportedEncoding(f"unsupported Content-Encoding {encoding!r}")


def _inflate(data: bytes, wbits: int, max_bytes: int, name: str) -> bytes:
    if not data:
        return b""
    out: list[bytes] = []
    total = 0
    pending = data
    try:
        while True:
            d = zlib.decompressobj(wbits)
            while not d.eof:
                chunk = d.decompress(pending, _CHUNK)
                if chunk:
                    total += len(chunk)
                    if total > max_bytes:
                        raise errors.PayloadTooLarge(
                            f"decompressed body exceeds the limit of {max_bytes} bytes"
                        )
                    out.append(chunk)
                pending = d.unconsumed_tail
                if not pending and not chunk:
                    break  # input used up and nothing more buffered inside zlib
            if not d.eof:
                raise errors.InvalidArgument(f"truncated {name} body")
            # gzip allows several concatenated members; anything after a zlib/raw stream is junk.
            pending = d.unused_data
            if not pending:
                break
            if wbits != zlib.MAX_WBITS | 16:
                raise errors.InvalidArgument(f"trailing data after the {name} stream")
    except zlib.error as exc:
        raise errors.InvalidArgument(f"invalid {name} body: {exc}") from None
    return out[0] if len(out) == 1 else b"".join(out)


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_zstd_local, "decompressor", None)
    if d is None:
        d = _zstd_local.decompressor = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
    return d


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _zstd_frames_end_cleanly(data: bytes) -> bool:
    """True when `data` is a whole number of complete zstd frames (RFC 8878 section 3.1).

    The stream reader treats input that ends inside a frame as a short read, not an error, so a
    truncated body would decode to a prefix of its content; this walks the frame and block
    headers (no decoding: a few steps per 128 KiB block) to tell. Skippable frames count.
    """
    pos, end = 0, len(data)
    while pos < end:
        magic = data[pos : pos + 4]
        if len(magic) < 4:
            return False
        if magic[1:] == b"\x2a\x4d\x18" and magic[0] & 0xF0 == 0x50:  # skippable frame
            if pos + 8 > end:
                return False
            pos += 8 + int.from_bytes(data[pos + 4 : pos + 8], "little")
            continue
        if magic != _ZSTD_MAGIC:
            return False
        try:
            header = zstandard.frame_header_size(data[pos : pos + 18])  # at most 18 bytes
        except zstandard.ZstdError:
            return False
        checksum = data[pos + 4] & 0x04 if pos + 4 < end else 0
        pos += header
        while True:
            if pos + 3 > end:
                return False
            block = int.from_bytes(data[pos : pos + 3], "little")
            kind, size = (block >> 1) & 0x3, block >> 3
            pos += 3 + (1 if kind == 1 else size)  # RLE: one byte repeated `size` times
            if block & 1:  # last block of the frame
                break
        pos += 4 if checksum else 0
    return pos == end


def _unzstd(data: bytes, max_bytes: int) -> bytes:
    if not data:
        return b""
    if not _zstd_frames_end_cleanly(data):
        raise errors.InvalidArgument("invalid zstd body: truncated, or data after the last frame")
    out: list[bytes] = []
    total = 0
    try:
        # stream_reader: every read returns at most _CHUNK bytes whatever the frame header claims;
        # read_across_frames: a body may hold several frames (their contents concatenated).
        with _zstd_decompressor().stream_reader(data, read_across_frames=True) as reader:
            while chunk := reader.read(_CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise errors.PayloadTooLarge(f"decompressed body exceeds the limit of {max_bytes} bytes")
                out.append(chunk)
    except zstandard.ZstdError as exc:
        raise errors.InvalidArgument(f"invalid zstd body: {exc}") from None
    return out[0] if len(out) == 1 else b"".join(out)
