"""RFC 9113 sections 3 and 4 (connection preface, frame format and size, field blocks), 5.5
(extensions) and 7 (error codes): the gRPC port driven by a frame-level client (h2peer, on
hyperframe) and, where a valid client suffices, by the `h2` package.

Each test names the rule it proves; many mirror a case of h2spec 2.6.0 (RFC 7540 numbering there).
"""

from __future__ import annotations

import socket
import struct

import h2.config
import h2.connection
import h2.events

from tests.transport.h2peer import (
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    EXPORT_PATH,
    FRAME_SIZE_ERROR,
    HEADERS,
    PING,
    PREFACE,
    PRIORITY,
    PROTOCOL_ERROR,
    SETTINGS,
    Peer,
    grpc_message,
    raw_frame,
)

_FINAL = h2.events.StreamEnded | h2.events.StreamReset | h2.events.ConnectionTerminated


def h2_client_call(address: tuple[str, int]) -> tuple[list[h2.events.Event], bool]:
    """One Export call with the `h2` package as the client: its events, and whether the server
    acknowledged our SETTINGS before answering."""
    config = h2.config.H2Configuration(client_side=True, header_encoding=None)
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    events: list[h2.events.Event] = []
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(conn.data_to_send())
        sid = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", EXPORT_PATH),
                (":authority", f"{address[0]}:{address[1]}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        conn.send_data(sid, grpc_message(b""), end_stream=True)
        sock.sendall(conn.data_to_send())
        done = False
        while not done:
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                events.append(event)
                if isinstance(event, _FINAL):
                    done = True
                if isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            sock.sendall(conn.data_to_send())
    acked = any(isinstance(e, h2.events.SettingsAcknowledged) for e in events)
    return events, acked


# --- 3.4 HTTP/2 Connection Preface -----------------------------------------------------------------


def test_3_4_server_preface_is_settings_and_client_settings_are_acked(connect) -> None:
    """RFC 9113 3.4: "The server connection preface consists of a potentially empty SETTINGS
    frame that MUST be the first frame the server sends in the HTTP/2 connection." and "The
    SETTINGS frames received from a peer as part of the connection preface MUST be acknowledged"."""
    peer = connect(handshake=False)
    peer.handshake({0x4: 65535})  # asserts the server's first frame is a non-ACK SETTINGS
    seen = peer.settle()
    assert any(getattr(f, "type", None) == SETTINGS and "ACK" in f.flags for f in peer.received), (
        f"our SETTINGS were never acknowledged: {peer.transcript()} / {seen}"
    )


def test_3_4_valid_client_h2_package_call_succeeds(address) -> None:
    """RFC 9113 3.4 and 8.1: an independent, well-kept client (the `h2` package) completes the
    preface exchange and a request/response: HEADERS :status 200, DATA, trailers grpc-status 0."""
    events, acked = h2_client_call(address)
    assert acked, f"the server never acknowledged the client's SETTINGS: {events}"
    headers = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    trailers = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
    data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert headers and dict(headers[0].headers)[b":status"] == b"200", events
    assert trailers and dict(trailers[0].headers)[b"grpc-status"] == b"0", events
    assert data == grpc_message(b""), events
    assert any(isinstance(e, h2.events.StreamEnded) for e in events), events


def test_3_4_invalid_preface_is_protocol_error(connect) -> None:
    """RFC 9113 3.4: "Clients and servers MUST treat an invalid connection preface as a connection
    error of type PROTOCOL_ERROR. A GOAWAY frame MAY be omitted in this case"."""
    peer = connect(handshake=False)
    peer.send_raw(b"INVALID CONNECTION PREFACE\r\n\r\n")
    assert peer.wait_closed(5.0), f"invalid preface: connection not closed; got {peer.transcript()}"
    goaways = [f for f in peer.received if getattr(f, "type", None) == 7]
    assert all(f.error_code == PROTOCOL_ERROR for f in goaways), peer.transcript()


def test_3_4_preface_not_followed_by_settings_is_protocol_error(connect) -> None:
    """RFC 9113 3.4: the client preface "MUST be followed by a SETTINGS frame" and "Clients and
    servers MUST treat an invalid connection preface as a connection error of type
    PROTOCOL_ERROR"."""
    peer = connect(handshake=False)
    peer.send_raw(PREFACE + raw_frame(PING, 0, 0, b"12345678"))
    peer.expect_connection_error(PROTOCOL_ERROR)


# --- 4.1 Frame Format ------------------------------------------------------------------------------


def test_4_1_unknown_frame_type_is_ignored(peer: Peer) -> None:
    """RFC 9113 4.1: "Implementations MUST ignore and discard frames of unknown types."."""
    peer.send(raw_frame(0x16, 0, 0, bytes(8)), raw_frame(0xFF, 0xFF, 1, b"whatever"))
    peer.expect_ignored("a frame of an unknown type")


def test_4_1_undefined_flags_are_ignored(peer: Peer) -> None:
    """RFC 9113 4.1: "Unused flags MUST be ignored on receipt"."""
    sid = peer.next_stream_id()
    peer.send(raw_frame(PING, 0x16, 0, bytes(8)))
    block = peer.encode(peer.request_headers())
    peer.send(
        raw_frame(HEADERS, END_HEADERS | 0x2 | 0x10 | 0x40, sid, block),
        raw_frame(DATA, END_STREAM | 0x2 | 0x4 | 0x10, sid, grpc_message()),
    )
    result = peer.response(sid)
    assert result.status == 200 and result.grpc_status == 0, peer.transcript()
    peer.expect_ignored("undefined flags")


def test_4_1_reserved_bit_is_ignored(peer: Peer) -> None:
    """RFC 9113 4.1: the reserved bit of the stream identifier "MUST remain unset (0x0) when
    sending and MUST be ignored when receiving"."""
    sid = peer.next_stream_id()
    block = peer.encode(peer.request_headers())
    peer.send(
        raw_frame(PING, 0, 0x80000000, bytes(8)),
        raw_frame(HEADERS, END_HEADERS, sid | 0x80000000, block),
        raw_frame(DATA, END_STREAM, sid | 0x80000000, grpc_message()),
    )
    result = peer.response(sid)
    assert result.status == 200 and result.grpc_status == 0, peer.transcript()


# --- 4.2 Frame Size --------------------------------------------------------------------------------


def test_4_2_data_frame_of_max_frame_size_is_accepted(peer: Peer) -> None:
    """RFC 9113 4.2: "All implementations MUST be capable of receiving and minimally processing
    frames up to 2^14 octets in length, plus the 9-octet frame header"."""
    sid = peer.next_stream_id()
    # An ExportTraceServiceRequest of one ResourceSpans whose schema_url fills the frame.
    size = 16384 - 5
    inner_len = size - 1 - 2  # outer tag + 2-byte length varint
    n = inner_len - 1 - 2
    inner = b"\x1a" + bytes((0x80 | (n & 0x7F), n >> 7)) + b"x" * n
    body = b"\x0a" + bytes((0x80 | (len(inner) & 0x7F), len(inner) >> 7)) + inner
    message = grpc_message(body)
    assert len(message) == 16384
    peer.send(peer.headers(sid), peer.data(sid, message, end_stream=True))
    result = peer.response(sid)
    assert result.status == 200 and result.grpc_status is not None and result.reset is None, peer.transcript()
    assert result.goaway is None, peer.transcript()


def test_4_2_data_frame_above_max_frame_size_is_frame_size_error(peer: Peer) -> None:
    """RFC 9113 4.2: "An endpoint MUST send an error code of FRAME_SIZE_ERROR if a frame exceeds
    the size defined in SETTINGS_MAX_FRAME_SIZE" (a stream or a connection error for DATA)."""
    sid = peer.next_stream_id()
    limit = peer.server_settings.get(0x5, 16384)
    peer.send(peer.headers(sid), raw_frame(DATA, END_STREAM, sid, b"x" * (limit + 1)), barrier=True)
    peer.expect_stream_or_connection_error(sid, FRAME_SIZE_ERROR)


def test_4_2_headers_frame_above_max_frame_size_is_connection_error(peer: Peer) -> None:
    """RFC 9113 4.2: "A frame size error in a frame that could alter the state of the entire
    connection MUST be treated as a connection error; this includes any frame carrying a field
    block (that is, HEADERS, PUSH_PROMISE, and CONTINUATION)"."""
    sid = peer.next_stream_id()
    limit = peer.server_settings.get(0x5, 16384)
    block = peer.encode(peer.request_headers(extra=[(f"x-dummy{i}", "x" * 4000) for i in range(5)]))
    assert len(block) > limit
    peer.send(raw_frame(HEADERS, END_HEADERS | END_STREAM, sid, block), barrier=True)
    peer.expect_connection_error(FRAME_SIZE_ERROR)


def test_4_2_settings_frame_too_large_is_connection_error(peer: Peer) -> None:
    """RFC 9113 4.2: a frame exceeding SETTINGS_MAX_FRAME_SIZE on stream 0 (a SETTINGS frame)
    "MUST be treated as a connection error" of type FRAME_SIZE_ERROR."""
    limit = peer.server_settings.get(0x5, 16384)
    payload = struct.pack(">HI", 0x99, 0) * ((limit // 6) + 1)
    peer.send(raw_frame(SETTINGS, 0, 0, payload), barrier=True)
    peer.expect_connection_error(FRAME_SIZE_ERROR)


# --- 4.3 Field Section Compression and Decompression -----------------------------------------------


def test_4_3_invalid_field_block_is_compression_error(peer: Peer) -> None:
    """RFC 9113 4.3: "A decoding error in a field block MUST be treated as a connection error of
    type COMPRESSION_ERROR" (here a literal with incremental indexing cut after its first byte)."""
    peer.send(raw_frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\x40"), barrier=True)
    peer.expect_connection_error(COMPRESSION_ERROR)


def test_4_3_priority_frame_inside_field_block_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 4.3: "Field blocks MUST be transmitted as a contiguous sequence of frames, with no
    interleaved frames of any other type or from any other stream" ... "Receipt of any other type
    of frame or a frame on a different stream MUST be treated as a connection error of type
    PROTOCOL_ERROR"."""
    block = peer.encode(peer.request_headers())
    peer.send(
        raw_frame(HEADERS, 0, 1, block),
        raw_frame(PRIORITY, 0, 1, struct.pack(">IB", 0, 255)),
        raw_frame(CONTINUATION, END_HEADERS, 1, peer.encode([("x-dummy0", "x")])),
        barrier=True,
    )
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_4_3_headers_of_another_stream_inside_field_block_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 4.3: a field block interleaved with "a frame on a different stream MUST be treated
    as a connection error of type PROTOCOL_ERROR"."""
    block = peer.plain(peer.request_headers())
    peer.send(
        raw_frame(HEADERS, 0, 1, block),
        raw_frame(HEADERS, END_HEADERS | END_STREAM, 3, block),
        raw_frame(CONTINUATION, END_HEADERS, 1, b""),
        barrier=True,
    )
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_4_3_ping_inside_field_block_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 4.3: any other frame type (here a PING on stream 0) inside a field block "MUST be
    treated as a connection error of type PROTOCOL_ERROR"."""
    block = peer.encode(peer.request_headers())
    peer.send(
        raw_frame(HEADERS, END_STREAM, 1, block),
        raw_frame(PING, 0, 0, bytes(8)),
        raw_frame(CONTINUATION, END_HEADERS, 1, b""),
        barrier=True,
    )
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_4_3_refused_streams_field_blocks_still_update_the_table(peer: Peer) -> None:
    """RFC 9113 4.3: "A receiver MUST terminate the connection with a connection error of type
    COMPRESSION_ERROR if it does not decompress a field block" -- i.e. every block is decoded, even
    one of a stream the server refuses, so that the dynamic table stays in step: a later request
    whose block refers to entries added by the refused one must still be understood."""
    sid = peer.next_stream_id()
    # A malformed request (unknown pseudo-header) whose block adds every field to the table...
    bad = peer.encode(peer.request_headers(extra=[("x-table", "primed")]))
    bad += b"\x00" + bytes((5,)) + b":test" + bytes((2,)) + b"ok"
    peer.send(raw_frame(HEADERS, END_HEADERS | END_STREAM, sid, bad), barrier=True)
    peer.settle()
    # ...then a valid request encoded against that table (indexed fields only).
    peer.assert_usable()


# --- 5.5 Extending HTTP/2 --------------------------------------------------------------------------


def test_5_5_unknown_extension_frame_is_ignored(peer: Peer) -> None:
    """RFC 9113 5.5: "Implementations MUST ignore unknown or unsupported values in all extensible
    protocol elements ... MUST discard frames that have unknown or unsupported types"."""
    peer.send(raw_frame(0x16, 0, 0, bytes(8)))
    peer.expect_ignored("an unknown extension frame")


def test_5_5_unknown_extension_frame_inside_field_block_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 5.5: "Extension frames that appear in the middle of a field block (Section 4.3)
    are not permitted; these MUST be treated as a connection error of type PROTOCOL_ERROR"."""
    block = peer.encode(peer.request_headers())
    peer.send(
        raw_frame(HEADERS, END_STREAM, 1, block),
        raw_frame(0x16, 0, 0, bytes(8)),
        barrier=True,
    )
    peer.expect_connection_error(PROTOCOL_ERROR)


# --- 7 Error Codes ---------------------------------------------------------------------------------


def test_7_unknown_error_code_in_goaway_triggers_nothing_special(peer: Peer) -> None:
    """RFC 9113 7: "Unknown or unsupported error codes MUST NOT trigger any special behavior".
    A GOAWAY with code 0xff: the server answers a PING (or closes, as after any GOAWAY)."""
    peer.send(raw_frame(7, 0, 0, struct.pack(">II", 0, 0xFF)), barrier=True)
    seen = peer.settle()
    assert peer.closed or any(getattr(f, "type", None) == PING and "ACK" in f.flags for f in seen), (
        peer.transcript()
    )
    errors = [f for f in seen if getattr(f, "type", None) in (3, 7) and f.error_code not in (0,)]
    assert not errors, f"an unknown error code must not trigger an error: {peer.transcript()}"


def test_7_unknown_error_code_in_rst_stream_triggers_nothing_special(peer: Peer) -> None:
    """RFC 9113 7: "Unknown or unsupported error codes MUST NOT trigger any special behavior".
    RST_STREAM with code 0xff on an open stream: the connection carries on."""
    sid = peer.next_stream_id()
    peer.send(peer.headers(sid), raw_frame(3, 0, sid, struct.pack(">I", 0xFF)))
    peer.expect_ignored("RST_STREAM with an unknown error code")
