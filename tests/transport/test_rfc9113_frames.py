"""RFC 9113 section 6: frame definitions (DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING,
GOAWAY, WINDOW_UPDATE, CONTINUATION), each frame's MUSTs on the server side, with the `h2`
package where a valid client suffices (flow control) and raw frames (h2peer) elsewhere.
"""

from __future__ import annotations

import contextlib
import socket
import struct

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from tests.transport.h2peer import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    EXPORT_PATH,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    RST_STREAM,
    SETTINGS,
    SETTINGS_ENABLE_PUSH,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_FRAME_SIZE,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    Peer,
    grpc_message,
    raw_frame,
)

MAX_WINDOW = 2**31 - 1


def settings(*pairs: tuple[int, int], flags: int = 0, stream_id: int = 0) -> bytes:
    return raw_frame(SETTINGS, flags, stream_id, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def window_update(stream_id: int, increment: int) -> bytes:
    return raw_frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def data_frames(peer: Peer, stream_id: int, frames: list) -> list:
    return [f for f in frames if not isinstance(f, str) and f.type == DATA and f.stream_id == stream_id]


# --- 6.1 DATA -----------------------------------------------------------------------------------------


def test_6_1_data_on_stream_0_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 6.1: "If a DATA frame is received whose Stream Identifier field is 0x00, the
    recipient MUST respond with a connection error of type PROTOCOL_ERROR"."""
    peer.send(raw_frame(DATA, END_STREAM, 0, b"test"), barrier=True)
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_6_1_data_on_stream_not_open_is_stream_closed(peer: Peer) -> None:
    """RFC 9113 6.1: "If a DATA frame is received whose stream is not in the "open" or
    "half-closed (local)" state, the recipient MUST respond with a stream error of type
    STREAM_CLOSED" -- DATA right after a HEADERS that carried END_STREAM (the stream is
    half-closed (remote), or closed if already answered: STREAM_CLOSED either way)."""
    sid = peer.next_stream_id()
    peer.send(peer.headers(sid, end_stream=True), peer.data(sid, b"test", end_stream=True), barrier=True)
    peer.expect_stream_or_connection_error(sid, STREAM_CLOSED)


def test_6_1_data_with_padding_longer_than_payload_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 6.1: "If the length of the padding is the length of the frame payload or greater,
    the recipient MUST treat this as a connection error of type PROTOCOL_ERROR"."""
    sid = peer.next_stream_id()
    head = peer.headers(sid)
    peer.send(head, raw_frame(DATA, END_STREAM | PADDED, sid, b"\x06Test"), barrier=True)
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_6_1_padded_data_is_accepted(peer: Peer) -> None:
    """RFC 9113 6.1: the Pad Length field and the padding are removed; the content is what is left
    (a valid padded message is served)."""
    sid = peer.next_stream_id()
    message = grpc_message()
    padded = bytes((10,)) + message + bytes(10)
    peer.send(peer.headers(sid), raw_frame(DATA, END_STREAM | PADDED, sid, padded))
    result = peer.response(sid)
    assert result.grpc_status == 0, peer.transcript()


# --- 6.2 HEADERS ----------------------------------------------------------------------------------------


def test_6_2_headers_on_stream_0_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 6.2: "If a HEADERS frame is received whose Stream Identifier field is 0x00, the
    recipient MUST respond with a connection error of type PROTOCOL_ERROR"."""
    peer.send(
        raw_frame(HEADERS, END_HEADERS | END_STREAM, 0, peer.plain(peer.request_headers())), barrier=True
    )
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_6_2_headers_with_padding_longer_than_payload_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 6.2: "Padding that exceeds the size remaining for the field block fragment MUST be
    treated as a PROTOCOL_ERROR" (a stream or a connection error)."""
    block = peer.plain(peer.request_headers())
    payload = bytes((len(block) + 2,)) + block
    peer.send(raw_frame(HEADERS, END_HEADERS | END_STREAM | PADDED, 1, payload), barrier=True)
    peer.expect_stream_or_connection_error(1, PROTOCOL_ERROR)


def test_6_2_headers_too_short_for_its_priority_fields_is_frame_size_error(peer: Peer) -> None:
    """RFC 9113 4.2 / 6.2: a frame "too small to contain mandatory frame data" is a FRAME_SIZE_ERROR,
    and for a frame carrying a field block a connection error: HEADERS with the PRIORITY flag and
    3 octets (the priority fields need 5)."""
    peer.send(raw_frame(HEADERS, END_HEADERS | END_STREAM | PRIORITY_FLAG, 1, b"\x00\x00\x00"), barrier=True)
    peer.expect_connection_error(FRAME_SIZE_ERROR, PROTOCOL_ERROR)


def test_6_2_headers_with_padding_and_priority_is_accepted(peer: Peer) -> None:
    """RFC 9113 6.2: Pad Length, the (deprecated) priority fields and the padding are stripped; the
    rest is the field block fragment (a valid request is served)."""
    sid = peer.next_stream_id()
    block = peer.encode(peer.request_headers())
    payload = bytes((4,)) + struct.pack(">IB", 0, 15) + block + bytes(4)
    peer.send(
        raw_frame(HEADERS, END_HEADERS | PADDED | PRIORITY_FLAG, sid, payload),
        peer.data(sid, grpc_message(), end_stream=True),
    )
    result = peer.response(sid)
    assert result.grpc_status == 0, peer.transcript()


# --- 6.3 PRIORITY ------------------------------------------------------------------------------------


def test_6_3_priority_on_stream_0_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 6.3: "If a PRIORITY frame is received with a stream identifier of 0x00, the
    recipient MUST respond with a connection error of type PROTOCOL_ERROR"."""
    peer.send(raw_frame(PRIORITY, 0, 0, struct.pack(">IB", 0, 255)), barrier=True)
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_6_3_priority_with_length_other_than_5_is_frame_size_error(peer: Peer) -> None:
    """RFC 9113 6.3: "A PRIORITY frame with a length other than 5 octets MUST be treated as a stream
    error of type FRAME_SIZE_ERROR" (5.4.1 lets it be a connection error)."""
    sid = peer.next_stream_id()
    peer.send(peer.headers(sid), raw_frame(PRIORITY, 0, sid, b"\x80\x00\x00\x01"), barrier=True)
    peer.expect_stream_or_connection_error(sid, FRAME_SIZE_ERROR)


# --- 6.4 RST_STREAM ------------------------------------------------------------------------------------


def test_6_4_rst_stream_on_stream_0_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 6.4: "If a RST_STREAM frame is received with a stream identifier of 0x00, the
    recipient MUST treat this as a connection error of type PROTOCOL_ERROR"."""
    peer.send(raw_frame(RST_STREAM, 0, 0, struct.pack(">I", 8)), barrier=True)
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_6_4_rst_stream_on_idle_stream_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 6.4: "If a RST_STREAM frame identifying an idle stream is received, the recipient
    MUST treat this as a connection error of type PROTOCOL_ERROR" (a stream id above all opened)."""
    peer.grpc_call()
    peer.send(raw_frame(RST_STREAM, 0, peer.max_stream_id + 2, struct.pack(">I", 8)), barrier=True)
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_6_4_rst_stream_with_length_other_than_4_is_frame_size_error(peer: Peer) -> None:
    """RFC 9113 6.4: "A RST_STREAM frame with a length other than 4 octets MUST be treated as a
    connection error of type FRAME_SIZE_ERROR"."""
    sid = peer.next_stream_id()
    peer.send(peer.headers(sid), raw_frame(RST_STREAM, 0, sid, b"\x00\x00\x00"), barrier=True)
    peer.expect_connection_error(FRAME_SIZE_ERROR)


# --- 6.5 SETTINGS --------------------------------------------------------------------------------------


def test_6_5_settings_ack_with_payload_is_frame_size_error(peer: Peer) -> None:
    """RFC 9113 6.5: "Receipt of a SETTINGS frame with the ACK flag set and a length field value
    other than 0 MUST be treated as a connection error of type FRAME_SIZE_ERROR"."""
    peer.send(raw_frame(SETTINGS, ACK, 0, b"\x00"), barrier=True)
    peer.expect_connection_error(FRAME_SIZE_ERROR)


def test_6_5_settings_on_a_stream_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 6.5: "If an endpoint receives a SETTINGS frame whose Stream Identifier field is
    anything other than 0x00, the endpoint MUST respond with a connection error of type
    PROTOCOL_ERROR"."""
    peer.send(settings((0x3, 100), stream_id=1), barrier=True)
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_6_5_settings_length_not_multiple_of_6_is_frame_size_error(peer: Peer) -> None:
    """RFC 9113 6.5: "A SETTINGS frame with a length other than a multiple of 6 octets MUST be
    treated as a connection error of type FRAME_SIZE_ERROR"."""
    peer.send(raw_frame(SETTINGS, 0, 0, b"\x00\x03\x00"), barrier=True)
    peer.expect_connection_error(FRAME_SIZE_ERROR)


def test_6_5_2_enable_push_above_1_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 6.5.2: SETTINGS_ENABLE_PUSH: "Any value other than 0 or 1 MUST be treated as a
    connection error of type PROTOCOL_ERROR"."""
    peer.send(settings((SETTINGS_ENABLE_PUSH, 2)), barrier=True)
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_6_5_2_initial_window_size_above_max_is_flow_control_error(peer: Peer) -> None:
    """RFC 9113 6.5.2: SETTINGS_INITIAL_WINDOW_SIZE: "Values above the maximum flow-control window
    size of 2^31-1 MUST be treated as a connection error of type FLOW_CONTROL_ERROR"."""
    peer.send(settings((SETTINGS_INITIAL_WINDOW_SIZE, 2**31)), barrier=True)
    peer.expect_connection_error(FLOW_CONTROL_ERROR)


def test_6_5_2_max_frame_size_below_initial_value_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 6.5.2: SETTINGS_MAX_FRAME_SIZE: "Values outside this range [2^14, 2^24-1] MUST be
    treated as a connection error of type PROTOCOL_ERROR" (16383 here)."""
    peer.send(settings((SETTINGS_MAX_FRAME_SIZE, 16383)), barrier=True)
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_6_5_2_max_frame_size_above_maximum_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 6.5.2: SETTINGS_MAX_FRAME_SIZE above 2^24-1 "MUST be treated as a connection error
    of type PROTOCOL_ERROR" (16777216 here)."""
    peer.send(settings((SETTINGS_MAX_FRAME_SIZE, 16777216)), barrier=True)
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_6_5_2_unknown_setting_is_ignored(peer: Peer) -> None:
    """RFC 9113 6.5.2: "An endpoint that receives a SETTINGS frame with any unknown or unsupported
    identifier MUST ignore that setting"."""
    start = len(peer.received)
    peer.send(settings((0xFF, 1), (0x4242, 0xFFFFFFFF)))
    seen = peer.settle()
    acks = [f for f in seen if not isinstance(f, str) and f.type == SETTINGS and "ACK" in f.flags]
    assert acks, f"SETTINGS with unknown identifiers must still be acknowledged: {peer.transcript(start)}"
    peer.expect_ignored("an unknown setting")


def test_6_5_3_settings_values_are_processed_in_order(connect) -> None:
    """RFC 9113 6.5.3: "The values in the SETTINGS frame MUST be processed in the order they
    appear, with no other frame processing between values" -- INITIAL_WINDOW_SIZE 100 then 1
    leaves a window of 1: the answer's DATA comes 1 octet at a time."""
    peer = connect()
    peer.send(settings((SETTINGS_INITIAL_WINDOW_SIZE, 100), (SETTINGS_INITIAL_WINDOW_SIZE, 1)))
    sid = peer.next_stream_id()
    peer.send(peer.headers(sid), peer.data(sid, grpc_message(), end_stream=True))
    first = peer.collect(lambda f: f.type == DATA and f.stream_id == sid, timeout=3.0, grace=None)
    assert first is not None and len(first.data) == 1, (
        f"expected a DATA frame of 1 octet: {peer.transcript()}"
    )


def test_6_5_3_settings_are_acknowledged(peer: Peer) -> None:
    """RFC 9113 6.5.3: "Upon receiving a SETTINGS frame with the ACK flag not set, the recipient
    MUST ... immediately emit a SETTINGS frame with the ACK flag set"."""
    start = len(peer.received)
    peer.send(settings((SETTINGS_ENABLE_PUSH, 0)))
    seen = peer.settle()
    assert any(not isinstance(f, str) and f.type == SETTINGS and "ACK" in f.flags for f in seen), (
        peer.transcript(start)
    )


# --- 6.7 PING ----------------------------------------------------------------------------------------


def test_6_7_ping_is_answered_with_identical_payload(peer: Peer) -> None:
    """RFC 9113 6.7: "Receivers of a PING frame that does not include an ACK flag MUST send a PING
    frame with the ACK flag set in response, with an identical frame payload"."""
    peer.send(raw_frame(PING, 0, 0, b"h2spec\x00\x01"))
    ack = peer.collect(lambda f: f.type == PING and "ACK" in f.flags, timeout=3.0)
    assert ack is not None and bytes(ack.opaque_data) == b"h2spec\x00\x01", peer.transcript()


def test_6_7_ping_ack_is_not_answered(peer: Peer) -> None:
    """RFC 9113 6.7: "An endpoint MUST NOT respond to PING frames containing this [ACK] flag"."""
    peer.send(raw_frame(PING, ACK, 0, b"invalid\x00"), raw_frame(PING, 0, 0, b"h2spec\x00\x00"))
    ack = peer.collect(lambda f: f.type == PING and "ACK" in f.flags, timeout=3.0)
    assert ack is not None and bytes(ack.opaque_data) == b"h2spec\x00\x00", (
        f"a PING ACK was answered: {peer.transcript()}"
    )


def test_6_7_ping_on_a_stream_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 6.7: "If a PING frame is received with a Stream Identifier field value other than
    0x00, the recipient MUST respond with a connection error of type PROTOCOL_ERROR"."""
    peer.send(raw_frame(PING, 0, 1, bytes(8)), barrier=True)
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_6_7_ping_with_length_other_than_8_is_frame_size_error(peer: Peer) -> None:
    """RFC 9113 6.7: "Receipt of a PING frame with a length field value other than 8 MUST be
    treated as a connection error of type FRAME_SIZE_ERROR"."""
    peer.send(raw_frame(PING, 0, 0, bytes(6)), barrier=True)
    peer.expect_connection_error(FRAME_SIZE_ERROR)


# --- 6.8 GOAWAY --------------------------------------------------------------------------------------


def test_6_8_goaway_on_nonzero_stream_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 6.8: "The GOAWAY frame applies to the connection, not a specific stream. An
    endpoint MUST treat a GOAWAY frame with a stream identifier other than 0x00 as a connection
    error of type PROTOCOL_ERROR"."""
    peer.send(raw_frame(GOAWAY, 0, 1, bytes(8)), barrier=True)
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_6_8_goaway_too_short_is_frame_size_error(peer: Peer) -> None:
    """RFC 9113 4.2: a frame "too small to contain mandatory frame data" on stream 0 is a
    connection error FRAME_SIZE_ERROR: a GOAWAY of 4 octets has no error code."""
    peer.send(raw_frame(GOAWAY, 0, 0, bytes(4)), barrier=True)
    peer.expect_connection_error(FRAME_SIZE_ERROR)


# --- 6.9 WINDOW_UPDATE -----------------------------------------------------------------------------------


def test_6_9_window_update_of_0_on_connection_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 6.9: "A receiver MUST treat the receipt of a WINDOW_UPDATE frame with a
    flow-control window increment of 0 as a stream error of type PROTOCOL_ERROR; errors on the
    connection flow-control window MUST be treated as a connection error"."""
    peer.send(window_update(0, 0), barrier=True)
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_6_9_window_update_of_0_on_stream_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 6.9: a WINDOW_UPDATE with an increment of 0 on a stream is "a stream error of type
    PROTOCOL_ERROR" (5.4.1 allows a connection error)."""
    sid = peer.next_stream_id()
    peer.send(peer.headers(sid), window_update(sid, 0), barrier=True)
    peer.expect_stream_or_connection_error(sid, PROTOCOL_ERROR)


def test_6_9_window_update_with_length_other_than_4_is_frame_size_error(peer: Peer) -> None:
    """RFC 9113 6.9: "A WINDOW_UPDATE frame with a length other than 4 octets MUST be treated as a
    connection error of type FRAME_SIZE_ERROR"."""
    peer.send(raw_frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"), barrier=True)
    peer.expect_connection_error(FRAME_SIZE_ERROR)


def test_6_9_1_server_respects_a_window_of_1(address) -> None:
    """RFC 9113 6.9.1: "A sender MUST NOT send a flow-controlled frame with a length that exceeds
    the space available in either of the flow-control windows advertised by the receiver" --
    with the `h2` package as the client (which itself fails on any overrun), a stream window of
    1 gets the 5-octet answer 1 octet at a time, each after a WINDOW_UPDATE."""
    config = h2.config.H2Configuration(client_side=True, header_encoding=None)
    conn = h2.connection.H2Connection(config)
    conn.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1}
    )
    conn.initiate_connection()
    sizes: list[int] = []
    trailers: list = []
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
        conn.send_data(sid, grpc_message(), end_stream=True)
        sock.sendall(conn.data_to_send())
        ended = False
        while not ended:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed; DATA sizes so far {sizes}"
            for event in conn.receive_data(chunk):  # h2 raises FlowControlError on an overrun
                if isinstance(event, h2.events.DataReceived):
                    sizes.append(len(event.data))
                    conn.increment_flow_control_window(len(event.data))
                    if not event.stream_ended:
                        with contextlib.suppress(h2.exceptions.StreamClosedError):
                            conn.increment_flow_control_window(len(event.data), sid)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = event.headers
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    ended = True
            sock.sendall(conn.data_to_send())
    assert sizes == [1] * 5, f"DATA frame sizes {sizes} with a stream window of 1"
    assert dict(trailers).get(b"grpc-status") == b"0", trailers


def test_6_9_1_connection_window_above_max_is_flow_control_error(peer: Peer) -> None:
    """RFC 9113 6.9.1: "If a sender receives a WINDOW_UPDATE that causes a flow-control window to
    exceed this maximum, it MUST terminate either the stream or the connection, as appropriate.
    For ... the connection, a GOAWAY frame with an error code of FLOW_CONTROL_ERROR is sent"."""
    peer.send(window_update(0, MAX_WINDOW), window_update(0, MAX_WINDOW), barrier=True)
    peer.expect_connection_error(FLOW_CONTROL_ERROR)


def test_6_9_1_stream_window_above_max_is_flow_control_error(peer: Peer) -> None:
    """RFC 9113 6.9.1: "For streams, the sender sends a RST_STREAM with an error code of
    FLOW_CONTROL_ERROR"."""
    sid = peer.next_stream_id()
    peer.send(peer.headers(sid), window_update(sid, MAX_WINDOW), window_update(sid, MAX_WINDOW), barrier=True)
    peer.expect_stream_error(sid, FLOW_CONTROL_ERROR)


def test_6_9_2_initial_window_change_adjusts_open_streams(connect) -> None:
    """RFC 9113 6.9.2: "When the value of SETTINGS_INITIAL_WINDOW_SIZE changes, a receiver MUST
    adjust the size of all stream flow-control windows that it maintains by the difference
    between the new value and the old value" -- a stream blocked by a window of 0 gets 1 octet
    once the setting becomes 1."""
    peer = connect({SETTINGS_INITIAL_WINDOW_SIZE: 0})
    sid = peer.next_stream_id()
    peer.send(peer.headers(sid), peer.data(sid, grpc_message(), end_stream=True))
    peer.settle()
    peer.send(settings((SETTINGS_INITIAL_WINDOW_SIZE, 1)))
    first = peer.collect(lambda f: f.type == DATA and f.stream_id == sid, timeout=3.0, grace=None)
    assert first is not None and len(first.data) == 1, f"expected DATA of 1 octet: {peer.transcript()}"


def test_6_9_2_window_can_become_negative(connect) -> None:
    """RFC 9113 6.9.2: "A change to SETTINGS_INITIAL_WINDOW_SIZE can cause the available space in a
    flow-control window to become negative. A sender MUST track the negative flow-control window
    and MUST NOT send new flow-controlled frames until it receives WINDOW_UPDATE frames that cause
    the flow-control window to become positive" -- window 3 (3 octets sent), then 2 (window -1),
    then +2: exactly 1 more octet."""
    peer = connect({SETTINGS_INITIAL_WINDOW_SIZE: 3})
    sid = peer.next_stream_id()
    peer.send(peer.headers(sid), peer.data(sid, grpc_message(), end_stream=True))
    first = peer.collect(lambda f: f.type == DATA and f.stream_id == sid, timeout=3.0, grace=None)
    assert first is not None and len(first.data) == 3, f"expected DATA of 3 octets: {peer.transcript()}"
    peer.send(settings((SETTINGS_INITIAL_WINDOW_SIZE, 2)))
    seen = peer.settle()
    assert not data_frames(peer, sid, seen), f"DATA sent on a negative window: {peer.transcript()}"
    peer.send(window_update(sid, 2))
    seen = peer.settle()
    sent = [len(f.data) for f in data_frames(peer, sid, seen)]
    assert sum(sent) == 1, f"after -1 + 2 the window is 1, the server sent {sent}: {peer.transcript()}"


def test_6_9_2_initial_window_change_overflowing_a_stream_is_flow_control_error(connect) -> None:
    """RFC 9113 6.9.2: "An endpoint MUST treat a change to SETTINGS_INITIAL_WINDOW_SIZE that causes
    any flow-control window to exceed the maximum size as a connection error of type
    FLOW_CONTROL_ERROR" -- a stream window raised to 2^31-1, then the initial size raised by 1."""
    peer = connect({SETTINGS_INITIAL_WINDOW_SIZE: 0})
    sid = peer.next_stream_id()
    peer.send(
        peer.headers(sid),
        window_update(sid, MAX_WINDOW),
        settings((SETTINGS_INITIAL_WINDOW_SIZE, 1)),
        barrier=True,
    )
    peer.expect_connection_error(FLOW_CONTROL_ERROR)


# --- 6.10 CONTINUATION ---------------------------------------------------------------------------------


def test_6_10_multiple_continuation_frames_are_accepted(peer: Peer) -> None:
    """RFC 9113 6.10: "Any number of CONTINUATION frames can be sent, as long as the preceding frame
    is on the same stream and is a HEADERS, PUSH_PROMISE, or CONTINUATION frame without the
    END_HEADERS flag set" -- a request split in four is served."""
    sid = peer.next_stream_id()
    block = peer.encode(peer.request_headers(extra=[("x-dummy0", "x" * 100)]))
    q = len(block) // 4
    parts = [block[:q], block[q : 2 * q], block[2 * q : 3 * q], block[3 * q :]]
    peer.send(
        raw_frame(HEADERS, 0, sid, parts[0]),
        raw_frame(CONTINUATION, 0, sid, parts[1]),
        raw_frame(CONTINUATION, 0, sid, parts[2]),
        raw_frame(CONTINUATION, END_HEADERS, sid, parts[3]),
        peer.data(sid, grpc_message(), end_stream=True),
    )
    result = peer.response(sid)
    assert result.grpc_status == 0, peer.transcript()


def test_6_10_continuation_followed_by_other_frame_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 6.10: "A CONTINUATION frame MUST be preceded by a HEADERS, PUSH_PROMISE or
    CONTINUATION frame without the END_HEADERS flag set" and 4.3: any other frame inside a field
    block "MUST be treated as a connection error of type PROTOCOL_ERROR" (DATA here)."""
    sid = peer.next_stream_id()
    block = peer.encode(peer.request_headers())
    peer.send(
        raw_frame(HEADERS, 0, sid, block),
        raw_frame(CONTINUATION, 0, sid, peer.encode([("x-dummy0", "x")])),
        raw_frame(DATA, END_STREAM, sid, b"test"),
        barrier=True,
    )
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_6_10_continuation_on_stream_0_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 6.10: "If a CONTINUATION frame is received with a Stream Identifier field of 0x00,
    the recipient MUST respond with a connection error of type PROTOCOL_ERROR"."""
    block = peer.encode(peer.request_headers())
    peer.send(
        raw_frame(HEADERS, END_STREAM, 1, block),
        raw_frame(CONTINUATION, END_HEADERS, 0, peer.encode([("x-dummy0", "x")])),
        barrier=True,
    )
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_6_10_continuation_after_end_headers_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 6.10: "If the END_HEADERS flag is not set, this frame MUST be followed by another
    CONTINUATION frame" -- and a CONTINUATION after a HEADERS with END_HEADERS "MUST be treated as a
    connection error of type PROTOCOL_ERROR"."""
    block = peer.encode(peer.request_headers())
    peer.send(
        raw_frame(HEADERS, END_HEADERS | END_STREAM, 1, block),
        raw_frame(CONTINUATION, END_HEADERS, 1, peer.encode([("x-dummy0", "x")])),
        barrier=True,
    )
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_6_10_continuation_after_continuation_with_end_headers_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 6.10: a CONTINUATION after a CONTINUATION that carried END_HEADERS has no field
    block to continue: "a connection error of type PROTOCOL_ERROR"."""
    block = peer.encode(peer.request_headers())
    peer.send(
        raw_frame(HEADERS, END_STREAM, 1, block),
        raw_frame(CONTINUATION, END_HEADERS, 1, peer.encode([("x-dummy0", "x")])),
        raw_frame(CONTINUATION, END_HEADERS, 1, peer.encode([("x-dummy1", "x")])),
        barrier=True,
    )
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_6_10_continuation_on_another_stream_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 6.10: "A CONTINUATION frame MUST be preceded by a HEADERS ... frame without the
    END_HEADERS flag set" on the same stream: continuing stream 1's block on stream 3 is a
    connection error of type PROTOCOL_ERROR."""
    block = peer.encode(peer.request_headers())
    peer.send(
        raw_frame(HEADERS, END_STREAM, 1, block),
        raw_frame(CONTINUATION, END_HEADERS, 3, peer.encode([("x-dummy0", "x")])),
        barrier=True,
    )
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_6_9_1_data_beyond_the_connection_window_is_flow_control_error(peer: Peer) -> None:
    """RFC 9113 6.9.1: "A receiver MAY respond with a stream error or connection error of type
    FLOW_CONTROL_ERROR if it is unable to accept a frame" beyond the window it advertised. Our
    connection window (16 MiB, the connection's share of the admission budget) is credited back
    only when bytes are released: unfinished messages keep it spent, so the 17th MiB is an error."""
    chunk = 16 * 1024
    per_stream = (4 << 20) - chunk  # each message stays under the 4 MiB limit and never ends
    sent = 0
    # Stop one chunk past the window: after its GOAWAY the server reads and drops at most 1 MiB
    # (LINGER_MAX_BYTES) before it resets the connection, and a reset that arrives before we read
    # the GOAWAY throws it away with the rest of our receive buffer.
    while sent <= 16 << 20:
        sid = peer.next_stream_id()
        first = b"\x00" + (4 << 20).to_bytes(4, "big") + bytes(chunk - 5)
        peer.send(peer.headers(sid), peer.data(sid, first))
        sent += chunk
        for _ in range(per_stream // chunk - 1):
            if sent > 16 << 20:
                break
            peer.send(peer.data(sid, bytes(chunk)))
            sent += chunk
    peer.expect_connection_error(FLOW_CONTROL_ERROR, timeout=5.0)
