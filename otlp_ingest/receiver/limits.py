"""Request-body decompression with limits.

Supported `Content-Encoding`s: `identity` (or none), `gzip` (also `x-gzip`, multi-member) and
`deflate` (zlib-wrapped as RFC 9110 says, or raw deflate as some clients send). zstd is not
offered: neither the stdlib nor the installed dependencies provide it.

Decompression is streamed with `max_length`, so a small "bomb" never allocates more than the
limit plus one chunk: we stop as soon as the output would exceed `max_bytes`.
"""

from __future__ import annotations

import zlib

from otlp_ingest import errors

# Output produced per decompress() call; bounds the overshoot past the limit.
_CHUNK = 256 * 1024

SUPPORTED_ENCODINGS = ("identity", "gzip", "deflate")


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
    raise errors.UnsupportedEncoding(
        f"unsupported Content-Encoding {header!r}; supported: gzip, deflate, identity"
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
