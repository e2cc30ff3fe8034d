"""RFC 9113 section 5: stream states (5.1), identifiers (5.1.1), concurrency (5.1.2), priority
fields (5.3) and error handling (5.4), driven frame by frame (h2peer, on hyperframe).

A stream the server has answered is not forgotten: what arrives on it afterwards is judged by
the state the RFC gives it (half-closed (remote), or closed after END_STREAM both ways or a
RST_STREAM either way).
"""

from __future__ import annotations

import struct

from tests.transport.h2peer import (
    CANCEL,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    Peer,
    grpc_message,
    raw_frame,
)


def rst(stream_id: int, code: int = CANCEL) -> bytes:
    return raw_frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))


def window_update(stream_id: int, increment: int) -> bytes:
    return raw_frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def half_closed_remote(connect) -> tuple[Peer, int]:
    """A connection whose stream is half-closed (remote) on the server: the request is complete
    (END_STREAM), and the answer cannot end because our initial window is 0, so the server has
    sent its HEADERS and holds the DATA."""
    peer = connect({SETTINGS_INITIAL_WINDOW_SIZE: 0})
    sid = peer.next_stream_id()
    peer.send(peer.headers(sid), peer.data(sid, grpc_message(), end_stream=True))
    first = peer.collect(lambda f: f.stream_id == sid, timeout=3.0, grace=None)
    assert first is not None and first.type == HEADERS and "END_STREAM" not in first.flags, (
        f"expected the answer's HEADERS, its DATA held by our zero window: {peer.transcript()}"
    )
    return peer, sid


def reopen_window(peer: Peer) -> None:
    """Give the server a window again, so a call on a new stream can be answered in full."""
    peer.send(raw_frame(4, 0, 0, struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE, 65535)))


def closed_by_end_stream(peer: Peer) -> int:
    """A stream closed the ordinary way: a complete call, END_STREAM both ways."""
    result = peer.grpc_call()
    assert result.ended and result.grpc_status == 0, peer.transcript()
    return result.stream_id


def answered_before_request_end(peer: Peer) -> int:
    """A stream the server closed with its own RST_STREAM: an unknown method is answered
    (UNIMPLEMENTED) before the request's body, so the server ends its side and resets the
    stream (RFC 9113 8.1: "a server MAY request that the client abort transmission of a request
    without error by sending a RST_STREAM with an error code of NO_ERROR")."""
    sid = peer.next_stream_id()
    block = peer.encode(peer.request_headers(path="/no.such.Service/Method"))
    peer.send(raw_frame(HEADERS, END_HEADERS, sid, block))
    frame = peer.collect(lambda f: f.type == RST_STREAM and f.stream_id == sid, timeout=3.0, grace=None)
    assert frame is not None, f"expected the early answer and RST_STREAM: {peer.transcript()}"
    return sid


def frames_on(frames: list, stream_id: int) -> list:
    return [f for f in frames if not isinstance(f, str) and f.stream_id == stream_id]


# --- 5.1 idle ---------------------------------------------------------------------------------------


def test_5_1_data_on_idle_stream_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 5.1 (idle): "Receiving any frame other than HEADERS or PRIORITY on a stream in
    this state MUST be treated as a connection error of type PROTOCOL_ERROR" (6.1 also allows a
    stream error STREAM_CLOSED for DATA on a stream that is not open, as h2spec does)."""
    peer.send(raw_frame(DATA, END_STREAM, 1, b"test"), barrier=True)
    peer.expect_stream_or_connection_error(1, PROTOCOL_ERROR, STREAM_CLOSED)


def test_5_1_rst_stream_on_idle_stream_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 5.1 (idle): a RST_STREAM on an idle stream "MUST be treated as a connection error
    of type PROTOCOL_ERROR"."""
    peer.send(rst(1), barrier=True)
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_5_1_window_update_on_idle_stream_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 5.1 (idle): a WINDOW_UPDATE on an idle stream "MUST be treated as a connection
    error of type PROTOCOL_ERROR"."""
    peer.send(window_update(1, 100), barrier=True)
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_5_1_window_update_on_idle_stream_above_open_ones_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 5.1 (idle): a WINDOW_UPDATE on a stream id above every stream opened so far is on
    an idle stream: "MUST be treated as a connection error of type PROTOCOL_ERROR"."""
    closed_by_end_stream(peer)
    peer.send(window_update(peer.max_stream_id + 4, 100), barrier=True)
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_5_1_continuation_on_idle_stream_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 5.1 (idle) and 6.10: a CONTINUATION on an idle stream (no HEADERS before it) "MUST
    be treated as a connection error of type PROTOCOL_ERROR"."""
    block = peer.encode(peer.request_headers())
    peer.send(raw_frame(CONTINUATION, END_HEADERS, 1, block), barrier=True)
    peer.expect_connection_error(PROTOCOL_ERROR)


# --- 5.1 half-closed (remote) ------------------------------------------------------------------------


def test_5_1_data_on_half_closed_remote_stream_is_stream_closed(connect) -> None:
    """RFC 9113 5.1 (half-closed (remote)): "If an endpoint receives additional frames, other than
    WINDOW_UPDATE, PRIORITY, or RST_STREAM, for a stream that is in this state, it MUST respond
    with a stream error of type STREAM_CLOSED"."""
    peer, sid = half_closed_remote(connect)
    peer.send(peer.data(sid, b"test", end_stream=True), barrier=True)
    frame = peer.collect(lambda f: f.type in (RST_STREAM, 7) and f.stream_id in (sid, 0), timeout=3.0)
    assert frame is not None and frame.type == RST_STREAM and frame.error_code == STREAM_CLOSED, (
        f"expected RST_STREAM STREAM_CLOSED on stream {sid}; the server sent: {peer.transcript()}"
    )
    reopen_window(peer)
    peer.assert_usable()


def test_5_1_headers_on_half_closed_remote_stream_is_stream_closed(connect) -> None:
    """RFC 9113 5.1 (half-closed (remote)): a HEADERS frame on such a stream "MUST respond with a
    stream error of type STREAM_CLOSED" (or, 5.4.1, a connection error of that type)."""
    peer, sid = half_closed_remote(connect)
    block = peer.encode(peer.request_headers())
    peer.send(raw_frame(HEADERS, END_HEADERS | END_STREAM, sid, block), barrier=True)
    frame = peer.collect(lambda f: f.type in (RST_STREAM, 7) and f.stream_id in (sid, 0), timeout=3.0)
    assert frame is not None and frame.error_code == STREAM_CLOSED, (
        f"expected RST_STREAM or GOAWAY STREAM_CLOSED; the server sent: {peer.transcript()}"
    )
    if frame.type == RST_STREAM:
        reopen_window(peer)
        peer.assert_usable()


def test_5_1_continuation_on_half_closed_remote_stream_is_an_error(connect) -> None:
    """RFC 9113 5.1 (half-closed (remote)) and 6.10: a CONTINUATION without a HEADERS before it on
    such a stream is STREAM_CLOSED or PROTOCOL_ERROR, a stream or a connection error."""
    peer, sid = half_closed_remote(connect)
    block = peer.encode(peer.request_headers())
    peer.send(raw_frame(CONTINUATION, END_HEADERS, sid, block), barrier=True)
    frame = peer.collect(lambda f: f.type in (RST_STREAM, 7) and f.stream_id in (sid, 0), timeout=3.0)
    assert frame is not None and frame.error_code in (STREAM_CLOSED, PROTOCOL_ERROR), (
        f"expected STREAM_CLOSED or PROTOCOL_ERROR; the server sent: {peer.transcript()}"
    )


def test_5_1_window_update_and_priority_on_half_closed_remote_are_allowed(connect) -> None:
    """RFC 9113 5.1 (half-closed (remote)): WINDOW_UPDATE, PRIORITY and RST_STREAM are the frames
    such a stream may still receive: a WINDOW_UPDATE lets the held answer out, and neither is an
    error."""
    peer, sid = half_closed_remote(connect)
    peer.send(raw_frame(PRIORITY, 0, sid, struct.pack(">IB", 0, 15)), window_update(sid, 100))
    result = peer.response(sid)
    assert result.ended and result.reset is None and result.goaway is None, peer.transcript()
    assert result.grpc_status == 0, peer.transcript()


def test_5_1_rst_stream_on_half_closed_remote_drops_the_held_answer(connect) -> None:
    """RFC 9113 5.1: RST_STREAM is allowed on a half-closed (remote) stream and closes it; then "An
    endpoint MUST NOT send frames other than PRIORITY on a closed stream" -- the answer's DATA
    held by our zero window is never sent, even once the window opens, and no RST_STREAM answers
    ours (5.4.2)."""
    peer, sid = half_closed_remote(connect)
    start = len(peer.received)
    peer.send(rst(sid))
    reopen_window(peer)
    peer.send(window_update(0, 1000))
    seen = peer.settle()
    assert not frames_on(seen, sid), f"frames on a stream the client reset: {peer.transcript(start)}"
    assert not any(isinstance(f, str) or f.type == 7 for f in seen), peer.transcript(start)
    peer.assert_usable()


# --- 5.1 closed ---------------------------------------------------------------------------------------


def test_5_1_data_after_client_rst_stream_is_stream_closed(peer: Peer) -> None:
    """RFC 9113 5.1 (closed) and 6.1: after the client's RST_STREAM the stream is closed; "If a
    DATA frame is received whose stream is not in the "open" or "half-closed (local)" state, the
    recipient MUST respond with a stream error of type STREAM_CLOSED" (5.1 lets the server make
    it a connection error of that type)."""
    sid = peer.next_stream_id()
    peer.send(peer.headers(sid), rst(sid), peer.data(sid, b"test", end_stream=True), barrier=True)
    peer.expect_stream_or_connection_error(sid, STREAM_CLOSED)


def test_5_1_headers_after_client_rst_stream_is_stream_closed(peer: Peer) -> None:
    """RFC 9113 5.1 (closed): HEADERS on a stream the client reset is STREAM_CLOSED (stream
    error, or connection error as 5.1 allows)."""
    sid = peer.next_stream_id()
    first = peer.headers(sid)  # encoded first: the blocks must reach the server in encoding order
    again = raw_frame(HEADERS, END_HEADERS | END_STREAM, sid, peer.encode(peer.request_headers()))
    peer.send(first, rst(sid), again, barrier=True)
    peer.expect_stream_or_connection_error(sid, STREAM_CLOSED)


def test_5_1_continuation_after_client_rst_stream_is_an_error(peer: Peer) -> None:
    """RFC 9113 5.1 (closed) and 6.10: a CONTINUATION on a stream the client reset (and with no
    field block open) is STREAM_CLOSED or PROTOCOL_ERROR."""
    sid = peer.next_stream_id()
    first = peer.headers(sid)
    block = peer.encode([("x-dummy0", "x")])
    peer.send(first, rst(sid), raw_frame(CONTINUATION, END_HEADERS, sid, block), barrier=True)
    peer.expect_stream_or_connection_error(sid, STREAM_CLOSED, PROTOCOL_ERROR)


def test_5_1_data_on_closed_stream_is_stream_closed(peer: Peer) -> None:
    """RFC 9113 6.1 and 5.1 (closed): DATA on a stream closed by END_STREAM both ways "MUST
    respond with a stream error of type STREAM_CLOSED" (or a connection error of that type)."""
    sid = closed_by_end_stream(peer)
    peer.send(peer.data(sid, b"test", end_stream=True), barrier=True)
    peer.expect_stream_or_connection_error(sid, STREAM_CLOSED)


def test_5_1_headers_on_closed_stream_is_connection_error_stream_closed(peer: Peer) -> None:
    """RFC 9113 5.1 (closed): "An endpoint MAY treat receipt of any other type of frame on a
    closed stream as a connection error of type STREAM_CLOSED"; a new HEADERS on a stream closed
    by END_STREAM both ways cannot be ignored (its block is in the HPACK context), h2spec expects
    this connection error."""
    sid = closed_by_end_stream(peer)
    block = peer.encode(peer.request_headers())
    peer.send(raw_frame(HEADERS, END_HEADERS | END_STREAM, sid, block), barrier=True)
    peer.expect_connection_error(STREAM_CLOSED)


def test_5_1_continuation_on_closed_stream_is_connection_error(peer: Peer) -> None:
    """RFC 9113 5.1 (closed) and 6.10: a CONTINUATION on a closed stream, with no field block
    open, is a connection error STREAM_CLOSED or PROTOCOL_ERROR."""
    sid = closed_by_end_stream(peer)
    peer.send(raw_frame(CONTINUATION, END_HEADERS, sid, peer.encode([("x-dummy0", "x")])), barrier=True)
    peer.expect_connection_error(STREAM_CLOSED, PROTOCOL_ERROR)


def test_5_1_window_update_and_rst_stream_after_end_stream_are_ignored(peer: Peer) -> None:
    """RFC 9113 5.1 (closed): "An endpoint that sends a frame with the END_STREAM flag set or a
    RST_STREAM frame might receive a WINDOW_UPDATE or RST_STREAM frame from its peer in the time
    before the peer receives and processes the frame that closes the stream" -- tolerated, and
    "An endpoint MUST NOT send frames other than PRIORITY on a closed stream": no RST_STREAM."""
    sid = closed_by_end_stream(peer)
    start = len(peer.received)
    peer.send(window_update(sid, 100), rst(sid), raw_frame(PRIORITY, 0, sid, struct.pack(">IB", 0, 7)))
    seen = peer.settle()
    assert not frames_on(seen, sid) and not any(isinstance(f, str) or f.type == 7 for f in seen), (
        f"frames after our END_STREAM on a closed stream must be ignored: {peer.transcript(start)}"
    )
    peer.assert_usable()


def test_5_1_frames_after_server_rst_stream_are_ignored(peer: Peer) -> None:
    """RFC 9113 5.1 (closed): "An endpoint MUST ignore frames that it receives on closed streams
    after it has sent a RST_STREAM frame" -- the client may have sent them before it saw the
    reset; and nothing is sent back on that stream (no RST_STREAM on a closed stream)."""
    sid = answered_before_request_end(peer)
    start = len(peer.received)
    peer.send(
        peer.data(sid, grpc_message(b"")[:3]),
        window_update(sid, 10),
        peer.data(sid, grpc_message(b"")[3:], end_stream=True),
        rst(sid),
    )
    seen = peer.settle()
    assert not frames_on(seen, sid) and not any(isinstance(f, str) or f.type == 7 for f in seen), (
        f"frames on a stream the server reset must be ignored: {peer.transcript(start)}"
    )
    peer.assert_usable()


def test_5_1_data_after_server_stream_error_is_ignored(connect) -> None:
    """RFC 9113 5.1 (closed) and 5.4.2: after the server reset a stream for an error, late frames
    on it "MUST" be ignored -- never a second RST_STREAM ("A RST_STREAM is the last frame that an
    endpoint can send on a stream")."""
    peer, sid = half_closed_remote(connect)
    peer.send(peer.data(sid, b"test"), barrier=True)
    first = peer.collect(lambda f: f.type in (RST_STREAM, 7) and f.stream_id in (sid, 0), timeout=3.0)
    assert first is not None and first.type == RST_STREAM, (
        f"expected RST_STREAM STREAM_CLOSED: {peer.transcript()}"
    )
    start = len(peer.received)
    peer.send(peer.data(sid, b"more"), peer.data(sid, b"end", end_stream=True))
    seen = peer.settle()
    assert not frames_on(seen, sid) and not any(isinstance(f, str) or f.type == 7 for f in seen), (
        f"frames after the server's RST_STREAM must be ignored: {peer.transcript(start)}"
    )


def test_5_1_priority_on_closed_stream_is_allowed(peer: Peer) -> None:
    """RFC 9113 5.1 (closed) / 6.3: "The PRIORITY frame can be sent for a stream in any state"
    -- on a closed stream it is not an error."""
    sid = closed_by_end_stream(peer)
    peer.send(raw_frame(PRIORITY, 0, sid, struct.pack(">IB", 0, 7)))
    peer.expect_ignored("PRIORITY on a closed stream")


def test_5_1_priority_on_idle_stream_is_allowed(peer: Peer) -> None:
    """RFC 9113 5.1 (idle): HEADERS or PRIORITY are the frames an idle stream may receive, and
    6.3: PRIORITY "can be sent for a stream in any state" -- then a HEADERS on a lower stream id
    still opens a stream."""
    peer.send(raw_frame(PRIORITY, 0, 9, struct.pack(">IB", 0, 15)))
    peer.expect_ignored("PRIORITY on an idle stream")


# --- 5.1.1 Stream Identifiers -----------------------------------------------------------------------


def test_5_1_1_even_stream_id_from_client_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 5.1.1: "Streams initiated by a client MUST use odd-numbered stream identifiers"
    ... "An endpoint that receives an unexpected stream identifier MUST respond with a connection
    error of type PROTOCOL_ERROR"."""
    block = peer.encode(peer.request_headers())
    peer.send(raw_frame(HEADERS, END_HEADERS | END_STREAM, 2, block), barrier=True)
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_5_1_1_stream_id_lower_than_previous_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 5.1.1: "The identifier of a newly established stream MUST be numerically greater
    than all streams that the initiating endpoint has opened" ... "An endpoint that receives an
    unexpected stream identifier MUST respond with a connection error of type PROTOCOL_ERROR"."""
    block = peer.encode(peer.request_headers())
    peer.send(
        raw_frame(HEADERS, END_HEADERS | END_STREAM, 5, block),
        raw_frame(HEADERS, END_HEADERS | END_STREAM, 3, peer.encode(peer.request_headers())),
        barrier=True,
    )
    peer.expect_connection_error(PROTOCOL_ERROR)


# --- 5.1.2 Stream Concurrency -----------------------------------------------------------------------


def test_5_1_2_streams_above_max_concurrent_streams_are_refused(connect) -> None:
    """RFC 9113 5.1.2: "An endpoint that receives a HEADERS frame that causes its advertised
    concurrent stream limit to be exceeded MUST treat this as a stream error of type
    PROTOCOL_ERROR or REFUSED_STREAM". Our window is 0, so an answer with DATA cannot end: one
    complete request more than the limit is sent. A stream counts until the server has ended it
    (END_STREAM, as our side already did) or reset it; at most the limit may remain, and a stream
    reset without an answer must carry one of those two codes."""
    peer = connect({SETTINGS_INITIAL_WINDOW_SIZE: 0})
    limit = peer.server_settings.get(SETTINGS_MAX_CONCURRENT_STREAMS)
    assert limit is not None, "the server must advertise SETTINGS_MAX_CONCURRENT_STREAMS"
    block = peer.plain(peer.request_headers())  # the same bytes for every stream
    ids = list(range(1, 2 * (limit + 1), 2))
    frames = []
    for sid in ids:
        frames += [
            raw_frame(HEADERS, END_HEADERS, sid, block),
            raw_frame(DATA, END_STREAM, sid, grpc_message()),
        ]
    peer.send(*frames)
    seen = peer.settle(timeout=10.0)
    assert not any(isinstance(f, str) or f.type == 7 for f in seen), peer.transcript()
    frames_seen = [f for f in seen if not isinstance(f, str)]
    resets = {f.stream_id: f.error_code for f in frames_seen if f.type == RST_STREAM}
    ended = {f.stream_id for f in frames_seen if f.type in (HEADERS, DATA) and "END_STREAM" in f.flags}
    answered = {f.stream_id for f in frames_seen if f.type == HEADERS}
    still_open = [sid for sid in ids if sid not in resets and sid not in ended]
    assert len(still_open) <= limit, (
        f"{len(still_open)} streams open with SETTINGS_MAX_CONCURRENT_STREAMS {limit}"
    )
    refused_badly = {
        sid: code
        for sid, code in resets.items()
        if sid not in answered and code not in (REFUSED_STREAM, PROTOCOL_ERROR)
    }
    assert not refused_badly, f"streams over the limit reset with other codes: {refused_badly}"


# --- 5.3.1 Stream Dependencies ----------------------------------------------------------------------


def test_5_3_1_headers_depending_on_itself_is_protocol_error(peer: Peer) -> None:
    """RFC 7540 5.3.1 (priority fields, still parsed under RFC 9113 5.3.2): "A stream cannot
    depend on itself. An endpoint MUST treat this as a stream error of type PROTOCOL_ERROR"."""
    sid = peer.next_stream_id()
    block = peer.encode(peer.request_headers())
    payload = struct.pack(">IB", sid, 255) + block
    peer.send(raw_frame(HEADERS, END_HEADERS | END_STREAM | PRIORITY_FLAG, sid, payload), barrier=True)
    peer.expect_stream_or_connection_error(sid, PROTOCOL_ERROR)


def test_5_3_1_priority_depending_on_itself_is_protocol_error(peer: Peer) -> None:
    """RFC 7540 5.3.1: "A stream cannot depend on itself. An endpoint MUST treat this as a stream
    error of type PROTOCOL_ERROR" -- here a PRIORITY frame on an idle stream naming itself."""
    peer.send(raw_frame(PRIORITY, 0, 1, struct.pack(">IB", 1, 255)), barrier=True)
    peer.expect_stream_or_connection_error(1, PROTOCOL_ERROR)


# --- 5.4 Error Handling ------------------------------------------------------------------------------


def test_5_4_1_connection_error_closes_the_connection(peer: Peer) -> None:
    """RFC 9113 5.4.1: "After sending the GOAWAY frame for an error condition, the endpoint MUST
    close the TCP connection" (a WINDOW_UPDATE of 0 for the connection here); the GOAWAY carries
    the last stream the server processed."""
    closed_by_end_stream(peer)
    peer.send(window_update(0, 0), barrier=True)
    goaway = peer.expect_connection_error(PROTOCOL_ERROR, close_timeout=5.0)
    assert goaway.last_stream_id == 1, peer.transcript()


def test_5_4_2_rst_stream_is_never_answered_with_rst_stream(peer: Peer) -> None:
    """RFC 9113 5.4.2: "To avoid looping, an endpoint MUST NOT send a RST_STREAM in response to a
    RST_STREAM frame", and 5.1: nothing but PRIORITY may be sent on the closed stream."""
    sid = peer.next_stream_id()
    peer.send(peer.headers(sid), peer.data(sid, b"\x00\x00"))
    start = len(peer.received)
    peer.send(rst(sid, CANCEL))
    seen = peer.settle()
    peer.send(rst(sid, PROTOCOL_ERROR))
    seen += peer.settle()
    assert not frames_on(seen, sid), f"frames sent on a stream the client reset: {peer.transcript(start)}"
    assert not any(isinstance(f, str) or f.type == 7 for f in seen), peer.transcript(start)
    peer.assert_usable()


def test_5_4_2_self_dependent_priority_twice_is_one_error(peer: Peer) -> None:
    """RFC 9113 5.4.2: "A RST_STREAM is the last frame that an endpoint can send on a stream", and
    5.1: frames received on a stream after sending RST_STREAM on it MUST be ignored -- two
    self-dependent PRIORITY frames on one stream get one error (RST_STREAM or GOAWAY
    PROTOCOL_ERROR), never a second RST_STREAM."""
    start = len(peer.received)
    priority = raw_frame(PRIORITY, 0, 1, struct.pack(">IB", 1, 255))
    peer.send(priority, priority)
    seen = peer.settle()
    errors = [f for f in seen if not isinstance(f, str) and f.type in (RST_STREAM, 7)]
    assert errors and all(f.error_code == PROTOCOL_ERROR for f in errors), peer.transcript(start)
    resets = [f for f in errors if f.type == RST_STREAM]
    assert len(resets) <= 1, f"a second RST_STREAM on a stream already reset: {peer.transcript(start)}"
    if resets and not any(f.type == 7 for f in errors):
        peer.assert_usable()


def test_5_4_2_stream_error_leaves_other_streams_alone(peer: Peer) -> None:
    """RFC 9113 5.4.2: a stream error ends one stream: another stream opened before it, still
    waiting for its body, completes normally after the reset."""
    other = peer.next_stream_id()
    peer.send(peer.headers(other))
    sid = other + 2
    peer.send(peer.headers(sid), raw_frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", 0)), barrier=True)
    frame = peer.collect(lambda f: f.type in (RST_STREAM, 7), timeout=3.0)
    assert frame is not None and frame.type == RST_STREAM and frame.stream_id == sid, peer.transcript()
    peer.send(peer.data(other, grpc_message(), end_stream=True))
    result = peer.response(other)
    assert result.grpc_status == 0, peer.transcript()
