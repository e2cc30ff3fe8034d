"""HPACK (RFC 7541) for the HTTP/2 server: a decoder for request header blocks, and the literal
encoding of response headers.

Why our own decoder: the `hpack` package's `Decoder` costs ~30-50 us for the 9-byte block a gRPC
client sends per call (measured, docs/performance.md), more than the rest of a small request. This
one keeps the same dynamic table rules and borrows only `hpack`'s Huffman decoder (a nibble state
machine; RFC 7541 Appendix B).

Decoding (`HeaderDecoder.decode`) returns the request's headers as a dict of lower-case names to
values (bytes); a repeated name keeps its values joined by ", " (RFC 9110 5.3), except that
pseudo-headers may not repeat. Once the client's table is warm, gRPC clients send blocks made of
indexed fields only; those are decoded once per table state and then served from a cache
(`_cache`, cleared whenever the dynamic table changes), so the common call costs a dict lookup.

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


class HeaderListTooLarge(Exception):
    """The decoded headers exceed the advertised SETTINGS_MAX_HEADER_LIST_SIZE. The block was
    decoded in full (the dynamic table stays in step with the client's); the stream is refused."""


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
        self._cache: dict[bytes, dict[bytes, bytes]] = {}

    def decode(self, block: bytes) -> dict[bytes, bytes]:
        """The headers of one complete header block. Raises HpackError, HeaderListTooLarge.

        The returned dict may be shared with later calls (the cache): callers must not modify it.
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

    def _decode(self, block: bytes) -> dict[bytes, bytes]:
        headers: dict[bytes, bytes] = {}
        pos = 0
        end = len(block)
        list_size = 0
        too_large = False
        seen_field = False
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
                if list_size > self.max_list_size:
                    too_large = True
                    continue
                previous = headers.get(name)
                if previous is None:
                    headers[name] = value
                elif name[:1] == b":":
                    raise HpackError(f"repeated pseudo-header {name.decode('latin-1')}")
                else:
                    headers[name] = previous + b", " + value
        except IndexError:
            raise HpackError("truncated header block") from None
        except HPACKDecodingError as exc:
            raise HpackError(str(exc)) from None
        if too_large:
            raise HeaderListTooLarge(f"request headers larger than {self.max_list_size} bytes")
        return headers

    def _literal(self, block: bytes, pos: int, prefix: int) -> tuple[bytes, bytes, int]:
        index, pos = _integer(block, pos, prefix)
        if index:
            name = self._entry(index)[0]
        else:
            name, pos = _string(block, pos)
            if name != name.lower():
                raise HpackError("upper-case header name")
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
