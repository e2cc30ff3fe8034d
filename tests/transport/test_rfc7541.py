"""RFC 7541 (HPACK) on the gRPC port: decoding errors are connection errors of type
COMPRESSION_ERROR (RFC 9113 4.3), and the dynamic table (sizes, updates, eviction) stays in step
with a correct encoder across requests.

Blocks are built by hand (field representations spelled out below) where a test needs exact
bytes, and by python-hyper's `hpack.Encoder` where a real encoder's choices are the point.
Every invalid block has a valid twin built the same way, so a test cannot pass on a block that
was broken by accident.
"""

from __future__ import annotations

from collections.abc import Callable

from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

from tests.transport.h2peer import (
    COMPRESSION_ERROR,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    Peer,
    grpc_message,
    hpack_int,
    raw_frame,
)

STATIC_ENTRIES = 61
DEFAULT_TABLE_SIZE = 4096  # SETTINGS_HEADER_TABLE_SIZE's initial value (RFC 9113 6.5.2)
EOS = 256


def indexed(index: int) -> bytes:
    """6.1 Indexed Header Field."""
    return hpack_int(index, 7, 0x80)


def incremental(name: bytes, value: bytes) -> bytes:
    """6.2.1 Literal Header Field with Incremental Indexing -- New Name (no Huffman)."""
    return b"\x40" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def without_indexing(name: bytes, value: bytes) -> bytes:
    """6.2.2 Literal Header Field without Indexing -- New Name (no Huffman)."""
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def never_indexed(name: bytes, value: bytes) -> bytes:
    """6.2.3 Literal Header Field Never Indexed -- New Name (no Huffman)."""
    return b"\x10" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def size_update(size: int) -> bytes:
    """6.3 Dynamic Table Size Update."""
    return hpack_int(size, 5, 0x20)


def huffman_bits(text: bytes, extra_symbols: tuple[int, ...] = ()) -> tuple[int, int]:
    """The Huffman code of `text` (then `extra_symbols`, e.g. EOS) as (bits, bit count), with
    python-hyper's code table (RFC 7541 Appendix B)."""
    bits = count = 0
    for symbol in [*text, *extra_symbols]:
        bits = (bits << REQUEST_CODES_LENGTH[symbol]) | REQUEST_CODES[symbol]
        count += REQUEST_CODES_LENGTH[symbol]
    return bits, count


def huffman(
    text: bytes, pad_bits: int | None = None, pad_with: int = 1, extra_symbols: tuple[int, ...] = ()
) -> bytes:
    """Huffman-coded `text`, padded to a whole octet with `pad_with` bits (1s: the EOS prefix,
    RFC 7541 5.2) -- or with exactly `pad_bits` of them, to build invalid padding."""
    bits, count = huffman_bits(text, extra_symbols)
    pad = (-count) % 8 if pad_bits is None else pad_bits
    bits = (bits << pad) | (((1 << pad) - 1) if pad_with else 0)
    count += pad
    assert count % 8 == 0, "padding must end on an octet boundary"
    return bits.to_bytes(count // 8, "big")


def huffman_field(name: bytes, coded_value: bytes) -> bytes:
    """A literal without indexing whose value is the given Huffman-coded bytes (H bit set)."""
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(coded_value), 7, 0x80) + coded_value


def request(peer: Peer, prefix: bytes = b"", suffix: bytes = b"") -> tuple[int, bytes]:
    """A valid Export request whose block is `prefix`, the request's fields as literals without
    indexing (the dynamic table untouched), then `suffix`; sent with its message. (stream id,
    block)."""
    sid = peer.next_stream_id()
    block = prefix + peer.plain(peer.request_headers()) + suffix
    peer.send(
        raw_frame(HEADERS, END_HEADERS, sid, block),
        peer.data(sid, grpc_message(), end_stream=True),
        barrier=True,
    )
    return sid, block


def served(peer: Peer, sid: int) -> None:
    result = peer.response(sid)
    assert result.status == 200 and result.grpc_status == 0, (
        f"a valid block was not served: {peer.transcript()}"
    )


def invalid_and_valid_twin(
    connect: Callable[..., Peer], bad: bytes, good: bytes, where: str = "suffix"
) -> None:
    """`good` is served on one connection; `bad`, built the same way, is a COMPRESSION_ERROR on
    another."""
    peer = connect()
    sid, _ = request(peer, **{where: good})
    served(peer, sid)
    peer = connect()
    request(peer, **{where: bad})
    peer.expect_connection_error(COMPRESSION_ERROR)


# --- 2.3.3 Index Address Space -------------------------------------------------------------------


def test_2_3_3_indexed_field_with_invalid_index_is_compression_error(connect) -> None:
    """RFC 7541 2.3.3: "Indices strictly greater than the sum of the lengths of both tables MUST be
    treated as a decoding error" -- with an empty dynamic table, index 62 (and 70) are invalid;
    61 (the last static entry, www-authenticate) is valid."""
    invalid_and_valid_twin(connect, indexed(STATIC_ENTRIES + 1), indexed(STATIC_ENTRIES))
    peer = connect()
    request(peer, suffix=indexed(70))
    peer.expect_connection_error(COMPRESSION_ERROR)


def test_2_3_3_literal_with_invalid_name_index_is_compression_error(connect) -> None:
    """RFC 7541 2.3.3: an invalid index in a literal's name reference is a decoding error too
    (literal with incremental indexing, name index 70, empty value)."""
    bad = hpack_int(70, 6, 0x40) + b"\x00"
    good = hpack_int(STATIC_ENTRIES, 6, 0x40) + b"\x00"
    invalid_and_valid_twin(connect, bad, good)


# --- 4 Dynamic Table Management -------------------------------------------------------------------


def test_4_2_table_size_update_after_a_field_is_compression_error(connect) -> None:
    """RFC 7541 4.2: a dynamic table size update "MUST occur at the beginning of the first header
    block following the change to the dynamic table size" (6.3: at the beginning of a block) --
    one at the end of a block is a decoding error."""
    peer = connect()
    sid, _ = request(peer, prefix=size_update(1))
    served(peer, sid)
    peer = connect()
    request(peer, suffix=size_update(1))
    peer.expect_connection_error(COMPRESSION_ERROR)


def test_4_2_table_size_update_between_fields_is_compression_error(connect) -> None:
    """RFC 7541 4.2 / 6.3: a size update after the first field of a block (here between two
    fields) is a decoding error."""
    peer = connect()
    sid = peer.next_stream_id()
    fields = peer.request_headers()
    block = peer.plain(fields[:1]) + size_update(0) + peer.plain(fields[1:])
    peer.send(raw_frame(HEADERS, END_HEADERS | END_STREAM, sid, block), barrier=True)
    peer.expect_connection_error(COMPRESSION_ERROR)


def test_4_3_table_size_update_evicts_entries(connect) -> None:
    """RFC 7541 4.3: "Whenever the maximum size for the dynamic table is reduced, entries are
    evicted from the end of the dynamic table until the size of the dynamic table is less than or
    equal to the maximum size" -- after an update to 0 (and back to 4096) the entry a previous
    block added is gone: index 62 is a decoding error."""
    peer = connect()
    sid, _ = request(peer, suffix=incremental(b"x-entry", b"one"))
    served(peer, sid)
    sid, _ = request(peer, suffix=indexed(62))  # the entry is there: 62 is valid
    served(peer, sid)
    request(peer, prefix=size_update(0) + size_update(DEFAULT_TABLE_SIZE), suffix=indexed(62))
    peer.expect_connection_error(COMPRESSION_ERROR)


def test_4_4_entries_are_evicted_oldest_first(connect) -> None:
    """RFC 7541 4.4: "Before a new entry is added to the dynamic table, entries are evicted from
    the end of the dynamic table until the size of the dynamic table is less than or equal to
    (maximum size - new entry size)". Entries of 2040 + 60 + 2040 octets in a 4096-octet table: the
    first is evicted: index 62 is the last added, 63 the small one, and 64 does not exist."""
    fill1 = incremental(b"x-fill-1", b"a" * 2000)  # 8 + 2000 + 32 = 2040 octets
    ctype = incremental(b"x-grpc-ct", b"application/grpc")  # 9 + 16 + 32 = 57
    fill2 = incremental(b"x-fill-2", b"b" * 2000)
    peer = connect()
    sid, _ = request(peer, suffix=fill1 + ctype + fill2)
    served(peer, sid)
    # 62 and 63 still exist (fill-2 and x-grpc-ct); 64 (fill-1) was evicted.
    sid, _ = request(peer, suffix=indexed(62) + indexed(63))
    served(peer, sid)
    request(peer, suffix=indexed(64))
    peer.expect_connection_error(COMPRESSION_ERROR)


def test_4_4_entry_larger_than_table_empties_it(connect) -> None:
    """RFC 7541 4.4: "If the size of the new entry is less than or equal to the maximum size, that
    entry is added to the table. It is not an error to attempt to add an entry that is larger than
    the maximum size; an attempt to add an entry larger than the maximum size causes the table to
    be emptied of all existing entries and results in an empty table"."""
    peer = connect()
    sid, _ = request(peer, suffix=incremental(b"x-small", b"v") + incremental(b"x-huge", b"h" * 5000))
    served(peer, sid)  # not an error
    request(peer, suffix=indexed(62))
    peer.expect_connection_error(COMPRESSION_ERROR)


def test_4_4_dynamic_table_eviction_across_requests(peer: Peer) -> None:
    """RFC 7541 4.4 / 2.3.2: a real encoder (python-hyper's hpack) indexing every field, with
    filler fields that keep evicting the request's own entries, and table size updates down and
    up between requests: the server's table must follow it exactly for every request to be
    understood (:path and content-type come and go from the dynamic table)."""
    for i in range(24):
        if i == 8:
            peer.encoder.header_table_size = 256  # a size update at the start of the next block
        if i == 16:
            peer.encoder.header_table_size = DEFAULT_TABLE_SIZE
        sid = peer.next_stream_id()
        fields = peer.request_headers(extra=[(f"x-filler-{i % 5}", chr(97 + i % 26) * (300 + 97 * i))])
        peer.send(peer.headers(sid, peer.encode(fields)), peer.data(sid, grpc_message(), end_stream=True))
        result = peer.response(sid)
        assert result.status == 200 and result.grpc_status == 0, f"request {i}: {peer.transcript()}"


# --- 5.1 Integer Representation -------------------------------------------------------------------


def test_5_1_truncated_integer_is_compression_error(connect) -> None:
    """RFC 7541 5.1 / RFC 9113 4.3: a block ending in the middle of an integer (an indexed field
    whose prefix is all ones and whose continuation octets never come) cannot be decoded: a
    decoding error, COMPRESSION_ERROR."""
    invalid_and_valid_twin(connect, b"\xff\x80", indexed(16))  # 16: accept-encoding: gzip, deflate


def test_5_1_integer_exceeding_limits_is_compression_error(connect) -> None:
    """RFC 7541 5.1: "Integer encodings that exceed implementation limits -- in value or octet
    length -- MUST be treated as decoding errors" (a string length of about 2^63)."""
    huge = b"\x7f" + b"\xff" * 9 + b"\x7f"
    invalid_and_valid_twin(connect, b"\x00" + huge + b"x", without_indexing(b"x-ok", b"x"))


# --- 5.2 String Literal Representation ------------------------------------------------------------


def test_5_2_string_longer_than_block_is_compression_error(connect) -> None:
    """RFC 7541 5.2 / RFC 9113 4.3: a string literal whose length runs past the end of the block
    cannot be decoded: COMPRESSION_ERROR."""
    invalid_and_valid_twin(connect, b"\x00\x06x-test\x05ok", without_indexing(b"x-test", b"ok"))


def test_5_2_huffman_padding_longer_than_7_bits_is_compression_error(connect) -> None:
    """RFC 7541 5.2: "A padding strictly longer than 7 bits MUST be treated as a decoding error"."""
    good = huffman(b"test")
    bad = good + b"\xff"  # 8 more bits of EOS-prefix padding
    invalid_and_valid_twin(connect, huffman_field(b"x-test", bad), huffman_field(b"x-test", good))


def test_5_2_huffman_padding_not_eos_prefix_is_compression_error(connect) -> None:
    """RFC 7541 5.2: "A padding not corresponding to the most significant bits of the code for the
    EOS symbol MUST be treated as a decoding error" (zeros instead of ones)."""
    _, count = huffman_bits(b"test")
    assert count % 8, "the test string must need padding"
    bad = huffman(b"test", pad_with=0)
    invalid_and_valid_twin(connect, huffman_field(b"x-test", bad), huffman_field(b"x-test", huffman(b"test")))


def test_5_2_huffman_string_containing_eos_is_compression_error(connect) -> None:
    """RFC 7541 5.2: "A Huffman-encoded string literal containing the EOS symbol MUST be treated as
    a decoding error"."""
    bits, count = huffman_bits(b"test", (EOS,))
    bad = huffman(b"test", extra_symbols=(EOS,))
    invalid_and_valid_twin(connect, huffman_field(b"x-test", bad), huffman_field(b"x-test", huffman(b"test")))
    assert count > 30 and bits


# --- 6 Binary Format -------------------------------------------------------------------------------


def test_6_1_indexed_field_with_index_0_is_compression_error(connect) -> None:
    """RFC 7541 6.1: "The index value of 0 is not used. It MUST be treated as a decoding error if
    found in an indexed header field representation"."""
    invalid_and_valid_twin(connect, indexed(0), indexed(16))


def test_6_2_every_literal_representation_is_decoded(peer: Peer) -> None:
    """RFC 7541 6.2: literal fields with incremental indexing, without indexing and never
    indexed, each with a new name or an indexed name, Huffman-coded or not, are all decoded (a
    request carrying all of them, with its content-type as a never-indexed literal, is served)."""
    fields = [(n, v) for n, v in peer.request_headers() if n != "content-type"]
    suffix = (
        incremental(b"x-inc", b"1")
        + without_indexing(b"x-without", b"2")
        + never_indexed(b"content-type", b"application/grpc")
        + hpack_int(58, 6, 0x40)
        + b"\x03abc"  # user-agent (static 58), incremental indexing
        + hpack_int(58, 4, 0x00)
        + b"\x03def"  # indexed name, without indexing
        + hpack_int(58, 4, 0x10)
        + b"\x03ghi"  # indexed name, never indexed
        + huffman_field(b"x-huff", huffman(b"test"))
    )
    sid = peer.next_stream_id()
    block = peer.plain(fields) + suffix
    peer.send(raw_frame(HEADERS, END_HEADERS, sid, block), peer.data(sid, grpc_message(), end_stream=True))
    served(peer, sid)
    sid, _ = request(peer, suffix=indexed(62) + indexed(63))  # both incremental entries exist
    served(peer, sid)


def test_6_3_table_size_update_above_settings_limit_is_compression_error(connect) -> None:
    """RFC 7541 6.3: "The new maximum size MUST be lower than or equal to the limit determined by
    the protocol using HPACK. A value that exceeds this limit MUST be treated as a decoding
    error" -- the limit is our SETTINGS_HEADER_TABLE_SIZE (4096 unless advertised)."""
    peer = connect()
    limit = peer.server_settings.get(0x1, DEFAULT_TABLE_SIZE)
    sid, _ = request(peer, prefix=size_update(limit))
    served(peer, sid)
    peer = connect()
    request(peer, prefix=size_update(limit + 1))
    peer.expect_connection_error(COMPRESSION_ERROR)


def test_6_3_two_table_size_updates_at_block_start_are_accepted(peer: Peer) -> None:
    """RFC 7541 4.2: "...at most two updates: the smallest maximum table size ... then the final
    one" may open a block: accepted."""
    sid, _ = request(peer, prefix=size_update(0) + size_update(DEFAULT_TABLE_SIZE))
    served(peer, sid)
