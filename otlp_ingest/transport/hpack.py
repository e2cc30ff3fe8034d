"""HPACK (RFC 7541) for the HTTP/2 server: a decoder for request header blocks, and the literal
encoding of response headers.

Why our own decoder: the `hpack` package's `Decoder` costs ~30-50 us for the 9-byte block a gRPC
client sends per call (measured, docs/performance.md), more than the rest of a small request. This
one keeps the same dynamic table rules and borrows only `hpack`'s Huffman decoder (a nibble state
machine; RFC 7541 Appendix B).

Decoding (`HeaderDecoder.decode`) returns a `HeaderBlock`: the headers as a dict of names to
values (bytes); a repeated name keeps its values joined by ", " (RFC 9110 5.3). The decoder also
checks the field rules of RFC 9113 8.2-8.3 as it goes, because only it sees the fields' order
(`HeaderBlock.problem`: upper-case or invalid names, invalid values, a pseudo-header after a
regular field or repeated or unknown, connection-specific fields, `te` other than `trailers`):
such a block is malformed, a stream error, but decoding goes on to its end so the dynamic table
stays in step with the client's. Once the client's table is warm, gRPC clients send blocks made of
indexed fields only; those are decoded once per table state and then served from a cache
(`_cache`, cleared whenever the dynamic table changes), so the common call costs a dict lookup.

Limits: a block whose decoded fields pass `max_list_size` (names + values + 32 each) is decoded
on to its end but flagged `too_large`; past `BOMB_FACTOR` times the limit decoding stops with
`HeaderBomb` (a connection error: a few bytes of indexed references can name kilobytes each, and
decoding them all would cost milliseconds of the one event loop per block).

Encoding (`encode_literal`): "literal header field without indexing, new name" (0x00), no Huffman.
The server never adds to the client's dynamic table, so it never needs the client's
SETTINGS_HEADER_TABLE_SIZE, and constant responses can be built once as bytes.
"""

from __future__ import annotations

from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE
_STATIC_LEN = len(STATIC_TABLE)  # 61
_ENTRY_OVERHEAD = 32  # RFC 7541 4.1: an entry's size is len(name) + len(value) + 32
DEFAULT_TABLE_SIZE = 4096
# Bytes that, alone, are a complete "indexed header field" with a 7-bit index in 1..126.
_INDEXED_BYTES = bytes(range(0x81, 0xFF))
_CACHE_MAX = 64


class HpackError(Exception):
    """The header block is invalid: a connection error (COMPRESSION_ERROR) in HTTP/2."""


class HeaderBomb(HpackError):
    """The decoded headers passed BOMB_FACTOR x the list limit: decoding stopped, the table is no
    longer in step with the client's, so the connection must end (ENHANCE_YOUR_CALM)."""


# A pseudo-header a request may carry (RFC 9113 8.3.1); `:protocol` (RFC 8441) is not offered.
REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":path", b":authority"))
# Connection-specific fields (RFC 9113 8.2.2).
CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
# Bytes allowed in a field name (RFC 9110 5.1 token characters, lower case only: RFC 9113 8.2.1).
_NAME_BYTES = bytes(
    c for c in range(0x21, 0x7F) if not 0x41 <= c <= 0x5A and chr(c) not in '"(),/:;<=>?@[\\]{}'
)
BOMB_FACTOR = 2


class HeaderBlock:
    """One decoded header block: `headers`, `problem` (None, or why it is malformed), `size`
    (RFC 7541 4.1 sizes summed) and `too_large` (size above the decoder's list limit)."""

    __slots__ = ("_request", "headers", "problem", "size", "too_large")

    def __init__(self, headers: dict[bytes, bytes], problem: str | None, size: int, too_large: bool) -> None:
        self.headers = headers
        self.problem = problem
        self.size = size
        self.too_large = too_large
        self._request: tuple[str | None, int] | None = None

    def request(self) -> tuple[str | None, int]:
        """(why the block is not a valid request head or None, its content-length or -1), worked
        out once per block (cached blocks are shared by every call that sends them)."""
        if self._request is None:
            problem = self.problem or _pseudo_problem(self.headers)
            length = -1
            value = self.headers.get(b"content-length")
            if value is not None and problem is None:
                if value.isdigit():
                    length = int(value)
                else:
                    problem = "content-length is not a number"
            self._request = (problem, length)
        return self._request


def _pseudo_problem(headers: dict[bytes, bytes]) -> str | None:
    """What RFC 9113 8.3.1 requires of a request's pseudo-headers, or None."""
    method = headers.get(b":method")
    if method is None:
        return "no :method"
    if method == b"CONNECT":
        if b":scheme" in headers or b":path" in headers or b":authority" not in headers:
            return "CONNECT with :scheme or :path, or without :authority"
        return None
    if not headers.get(b":scheme"):
        return "no :scheme"
    if not headers.get(b":path"):
        return "no or empty :path"
    return None


def field_problem(name: bytes, value: bytes, regular_seen: bool, headers: dict[bytes, bytes]) -> str | None:
    """Why a field breaks RFC 9113 8.2-8.3 at its place in a block, or None."""
    if name[:1] == b":":
        if regular_seen:
            return f"pseudo-header {name!r} after a regular field"
        if name not in REQUEST_PSEUDO:
            return f"pseudo-header {name!r} not allowed in a request"
        if name in headers:
            return f"repeated pseudo-header {name!r}"
    elif not name or name.translate(None, _NAME_BYTES):
        return f"invalid field name {name!r}"
    elif name in CONNECTION_SPECIFIC:
        return f"connection-specific field {name!r}"
    elif name == b"te" and value != b"trailers":
        return "te other than trailers"
    if b"\x00" in value or b"\r" in value or b"\n" in value:
        return f"invalid character in the value of {name!r}"
    if value[:1] in (b" ", b"\t") or value[-1:] in (b" ", b"\t"):
        return f"whitespace around the value of {name!r}"
    return None


class HeaderDecoder:
    """One connection's HPACK decoding context (its dynamic table).

    `max_table_size` is our SETTINGS_HEADER_TABLE_SIZE: the largest table the client may ask for
    with a size update. `max_list_size` bounds the decoded headers (names + values + 32 each).
    """

    __slots__ = ("_cache", "_dynamic", "_limit", "_max_size", "_size", "max_list_size")

    def __init__(self, max_table_size: int = DEFAULT_TABLE_SIZE, max_list_size: int = 65536) -> None:
        self._dynamic: list[tuple[bytes, bytes]] = []  # newest first: index 62 is _dynamic[0]
        self._size = 0
        self._max_size = max_table_size  # current size, as last set by the client
        self._limit = max_table_size
        self.max_list_size = max_list_size
        self._cache: dict[bytes, HeaderBlock] = {}

    def decode(self, block: bytes) -> HeaderBlock:
        """One complete header block. Raises HpackError (HeaderBomb past the bomb limit).

        The result may be shared with later calls (the cache): callers must not modify it.
        """
        cached = self._cache.get(block)
        if cached is not None:
            return cached
        if not block.translate(None, _INDEXED_BYTES):  # indexed fields only: cacheable
            headers = self._decode(block)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[block] = headers
            return headers
        return self._decode(block)

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= _STATIC_LEN:
            return STATIC_TABLE[index - 1]
        position = index - _STATIC_LEN - 1
        if index <= 0 or position >= len(self._dynamic):
            raise HpackError(f"invalid header table index {index}")
        return self._dynamic[position]

    def _add(self, name: bytes, value: bytes) -> None:
        self._cache.clear()  # every index above 61 now points elsewhere
        size = len(name) + len(value) + _ENTRY_OVERHEAD
        if size > self._max_size:  # RFC 7541 4.4: a too-large entry empties the table
            self._dynamic.clear()
            self._size = 0
            return
        self._dynamic.insert(0, (name, value))
        self._size += size
        self._evict()

    def _evict(self) -> None:
        while self._size > self._max_size:
            name, value = self._dynamic.pop()
            self._size -= len(name) + len(value) + _ENTRY_OVERHEAD

    def _decode(self, block: bytes) -> HeaderBlock:
        headers: dict[bytes, bytes] = {}
        pos = 0
        end = len(block)
        list_size = 0
        limit = self.max_list_size
        problem: str | None = None
        seen_field = False
        regular_seen = False
        try:
            while pos < end:
                byte = block[pos]
                if byte & 0x80:  # indexed header field
                    index, pos = _integer(block, pos, 7)
                    name, value = self._entry(index)
                elif byte & 0x40:  # literal with incremental indexing
                    name, value, pos = self._literal(block, pos, 6)
                    self._add(name, value)
                elif byte & 0x20:  # dynamic table size update: only before the first field
                    if seen_field:
                        raise HpackError("table size update after a header field")
                    size, pos = _integer(block, pos, 5)
                    if size > self._limit:
                        raise HpackError(f"table size {size} above the advertised {self._limit}")
                    self._max_size = size
                    self._cache.clear()
                    self._evict()
                    continue
                else:  # literal without indexing (0000) or never indexed (0001)
                    name, value, pos = self._literal(block, pos, 4)
                seen_field = True
                list_size += len(name) + len(value) + _ENTRY_OVERHEAD
                if list_size > limit:
                    if list_size > BOMB_FACTOR * limit:
                        raise HeaderBomb(f"header block decodes to more than {BOMB_FACTOR * limit} bytes")
                    continue
                if problem is None:
                    problem = field_problem(name, value, regular_seen, headers)
                if name[:1] != b":":
                    regular_seen = True
                previous = headers.get(name)
                headers[name] = value if previous is None else previous + b", " + value
        except IndexError:
            raise HpackError("truncated header block") from None
        except HPACKDecodingError as exc:
            raise HpackError(str(exc)) from None
        return HeaderBlock(headers, problem, list_size, list_size > limit)

    def _literal(self, block: bytes, pos: int, prefix: int) -> tuple[bytes, bytes, int]:
        index, pos = _integer(block, pos, prefix)
        if index:
            name = self._entry(index)[0]
        else:
            name, pos = _string(block, pos)
        value, pos = _string(block, pos)
        return name, value, pos


def _integer(block: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """RFC 7541 5.1: an integer with an N-bit prefix starting at block[pos]; (value, next pos)."""
    mask = (1 << prefix) - 1
    value = block[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 28:  # beyond any length or index a 64 KiB header list can hold
            raise HpackError("integer too large")


def _string(block: bytes, pos: int) -> tuple[bytes, int]:
    """RFC 7541 5.2: a string literal (Huffman-coded when the H bit is set); (bytes, next pos)."""
    huffman = block[pos] & 0x80
    length, pos = _integer(block, pos, 7)
    end = pos + length
    if end > len(block):
        raise HpackError("string literal past the end of the header block")
    data = block[pos:end]
    return (decode_huffman(data) if huffman else data), end


def _encode_integer(value: int, prefix: int, first: int = 0) -> bytes:
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes((first | value,))
    out = bytearray((first | mask,))
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_literal(headers: list[tuple[bytes, bytes]]) -> bytes:
    """A header block of literal fields without indexing (names and values as given, lower-case
    names; no Huffman): valid whatever the state of the client's decoding table."""
    out = bytearray()
    for name, value in headers:
        out += b"\x00" + _encode_integer(len(name), 7) + name + _encode_integer(len(value), 7) + value
    return bytes(out)
