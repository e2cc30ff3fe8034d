"""RFC 9113 section 8: HTTP semantics over HTTP/2. A malformed request is a stream error of type
PROTOCOL_ERROR (RST_STREAM), never an HTTP or gRPC answer, and never the end of the connection:
after each one, a valid Export call on a new stream of the same connection must succeed.

Every request here is a gRPC Export call made malformed in exactly one way; the header blocks
use python-hyper's HPACK encoder (with indexing), so a server that skipped decoding the block of
a refused stream would also fail the call that follows.
"""

from __future__ import annotations

import pytest

from tests.transport.h2peer import (
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    Peer,
    grpc_message,
    literal,
    raw_frame,
)


def send_request(peer: Peer, block: bytes, body: bytes | None = grpc_message()) -> int:
    """HEADERS with `block` on a new stream (END_STREAM when there is no body), then the body."""
    sid = peer.next_stream_id()
    if body is None:
        peer.send(raw_frame(HEADERS, END_HEADERS | END_STREAM, sid, block), barrier=True)
    else:
        peer.send(
            raw_frame(HEADERS, END_HEADERS, sid, block), peer.data(sid, body, end_stream=True), barrier=True
        )
    return sid


def request_fields(peer: Peer, drop: str = "", **replace: str) -> list[tuple[str, str]]:
    fields = [(n, replace.get(n.lstrip(":"), v)) for n, v in peer.request_headers() if n != drop]
    return fields


# --- 8.1 HTTP Message Framing ------------------------------------------------------------------------


def test_8_1_request_with_trailers_is_served(peer: Peer) -> None:
    """RFC 9113 8.1: a request is HEADERS, DATA, and optionally a trailing HEADERS frame with
    END_STREAM: a valid request with trailers is answered normally."""
    sid = peer.next_stream_id()
    head = peer.headers(sid)
    trailers = raw_frame(HEADERS, END_HEADERS | END_STREAM, sid, peer.encode([("x-trailer", "ok")]))
    peer.send(head, peer.data(sid, grpc_message()), trailers)
    result = peer.response(sid)
    assert result.grpc_status == 0 and result.reset is None, peer.transcript()


def test_8_1_second_headers_without_end_stream_is_malformed(peer: Peer) -> None:
    """RFC 9113 8.1: "An endpoint that receives a HEADERS frame without the END_STREAM flag set
    after receiving the HEADERS frame that opens a request ... MUST treat the corresponding request
    or response as malformed" -- a stream error of type PROTOCOL_ERROR (8.1.1)."""
    sid = peer.next_stream_id()
    head = peer.headers(sid)
    trailers = raw_frame(HEADERS, END_HEADERS, sid, peer.encode([("x-test", "ok")]))
    peer.send(head, peer.data(sid, b"test"), trailers, barrier=True)
    peer.expect_stream_error(sid, PROTOCOL_ERROR)


def test_8_1_pseudo_header_in_trailers_is_malformed(peer: Peer) -> None:
    """RFC 9113 8.1 / 8.3: "Pseudo-header fields MUST NOT appear in a trailer section" ... a
    request with them is malformed: stream error PROTOCOL_ERROR."""
    sid = peer.next_stream_id()
    head = peer.headers(sid)
    trailers = raw_frame(HEADERS, END_HEADERS | END_STREAM, sid, peer.encode([(":method", "POST")]))
    peer.send(head, peer.data(sid, grpc_message()), trailers, barrier=True)
    peer.expect_stream_error(sid, PROTOCOL_ERROR)


# --- 8.1.1 Malformed Messages: content-length --------------------------------------------------------


def test_8_1_1_content_length_above_data_is_malformed(peer: Peer) -> None:
    """RFC 9113 8.1.1: "A request or response is also malformed if the value of a content-length
    header field does not equal the sum of the DATA frame payload lengths that form the content"
    -- "Malformed requests or responses that are detected MUST be treated as a stream error of
    type PROTOCOL_ERROR"."""
    block = peer.encode(peer.request_headers(extra=[("content-length", "6")]))
    sid = send_request(peer, block, grpc_message())  # 5 bytes
    peer.expect_stream_error(sid, PROTOCOL_ERROR)


def test_8_1_1_content_length_below_data_is_malformed(peer: Peer) -> None:
    """RFC 9113 8.1.1: content-length 1 with a 5-byte DATA frame is malformed: stream error
    PROTOCOL_ERROR."""
    block = peer.encode(peer.request_headers(extra=[("content-length", "1")]))
    sid = send_request(peer, block, grpc_message())
    peer.expect_stream_error(sid, PROTOCOL_ERROR)


def test_8_1_1_content_length_below_sum_of_data_frames_is_malformed(peer: Peer) -> None:
    """RFC 9113 8.1.1: content-length must equal the *sum* of the DATA payloads: 5 declared, two
    frames of 5 bytes each is malformed (stream error PROTOCOL_ERROR)."""
    sid = peer.next_stream_id()
    head = raw_frame(
        HEADERS, END_HEADERS, sid, peer.encode(peer.request_headers(extra=[("content-length", "5")]))
    )
    peer.send(
        head, peer.data(sid, grpc_message()), peer.data(sid, grpc_message(), end_stream=True), barrier=True
    )
    peer.expect_stream_error(sid, PROTOCOL_ERROR)


def test_8_1_1_content_length_without_data_is_malformed(peer: Peer) -> None:
    """RFC 9113 8.1.1: content-length 5 on a request whose HEADERS ends the stream (no DATA at all)
    does not equal the content received: malformed, stream error PROTOCOL_ERROR."""
    block = peer.encode(peer.request_headers(extra=[("content-length", "5")]))
    sid = send_request(peer, block, body=None)
    peer.expect_stream_error(sid, PROTOCOL_ERROR)


def test_8_1_1_matching_content_length_is_served(peer: Peer) -> None:
    """RFC 9113 8.1.1: a content-length equal to the DATA received is a valid request."""
    block = peer.encode(peer.request_headers(extra=[("content-length", "5")]))
    sid = peer.next_stream_id()
    peer.send(raw_frame(HEADERS, END_HEADERS, sid, block), peer.data(sid, grpc_message(), end_stream=True))
    result = peer.response(sid)
    assert result.grpc_status == 0, peer.transcript()


# --- 8.2 HTTP Fields ----------------------------------------------------------------------------------


def test_8_2_uppercase_field_name_is_malformed(peer: Peer) -> None:
    """RFC 9113 8.2: "Field names MUST be converted to lowercase when constructing an HTTP/2
    message" and 8.2.1: a field name "MUST NOT contain characters in the ranges ... 0x41-0x5a"
    ... "A request or response that contains a field that violates any of these conditions MUST
    be treated as malformed" -- a stream error, not a COMPRESSION_ERROR of the connection."""
    block = peer.encode(peer.request_headers()) + literal("X-TEST", "ok")
    sid = send_request(peer, block)
    peer.expect_stream_error(sid, PROTOCOL_ERROR)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-test", "a\r\nb"),
        ("x-test", "a\x00b"),
        ("x-test", " leading-space"),
        ("x-test", "trailing-tab\t"),
        ("x test", "ok"),
        ("x-t\x7fst", "ok"),
        ("x-t\xe9st", "ok"),
        ("x:test", "ok"),
    ],
    ids=[
        "value-crlf",
        "value-nul",
        "value-leading-space",
        "value-trailing-tab",
        "name-space",
        "name-del",
        "name-non-ascii",
        "name-colon",
    ],
)
def test_8_2_1_invalid_field_characters_are_malformed(peer: Peer, name: str, value: str) -> None:
    """RFC 9113 8.2.1: "A field name MUST NOT contain characters in the ranges 0x00-0x20, 0x41-0x5a,
    or 0x7f-0xff" (nor a colon except for the leading one of a pseudo-header); "A field value MUST
    NOT contain the zero value (ASCII NUL, 0x00), line feed (ASCII LF, 0x0a), or carriage return
    (ASCII CR, 0x0d)"; "A field value MUST NOT start or end with an ASCII whitespace character" --
    such a request "MUST be treated as malformed": stream error PROTOCOL_ERROR."""
    block = peer.encode(peer.request_headers()) + literal(name.encode("latin-1"), value.encode("latin-1"))
    sid = send_request(peer, block)
    peer.expect_stream_error(sid, PROTOCOL_ERROR)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
    ],
)
def test_8_2_2_connection_specific_header_is_malformed(peer: Peer, name: str, value: str) -> None:
    """RFC 9113 8.2.2: "An endpoint MUST NOT generate an HTTP/2 message containing connection-
    specific header fields. This includes the Connection header field and those listed as having
    connection-specific semantics (that is, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding,
    and Upgrade). Any message containing connection-specific header fields MUST be treated as
    malformed" -- stream error PROTOCOL_ERROR."""
    block = peer.encode(peer.request_headers(extra=[(name, value)]))
    sid = send_request(peer, block)
    peer.expect_stream_error(sid, PROTOCOL_ERROR)


def test_8_2_2_te_other_than_trailers_is_malformed(peer: Peer) -> None:
    """RFC 9113 8.2.2: "The only exception to this is the TE header field, which MAY be present in
    an HTTP/2 request; when it is, it MUST NOT contain any value other than "trailers"" -- "te:
    trailers, deflate" makes the request malformed: stream error PROTOCOL_ERROR."""
    fields = [(n, "trailers, deflate" if n == "te" else v) for n, v in peer.request_headers()]
    sid = send_request(peer, peer.encode([*fields, ("trailers", "test")]))
    peer.expect_stream_error(sid, PROTOCOL_ERROR)


# --- 8.3 HTTP Control Data (pseudo-header fields) -----------------------------------------------------


def test_8_3_unknown_pseudo_header_is_malformed(peer: Peer) -> None:
    """RFC 9113 8.3: "Endpoints MUST NOT generate pseudo-header fields other than those defined in
    this document" ... "Endpoints MUST treat a request or response that contains undefined or
    invalid pseudo-header fields as malformed" -- stream error PROTOCOL_ERROR."""
    sid = send_request(
        peer, peer.encode([*peer.request_headers()[:4], (":test", "ok"), *peer.request_headers()[4:]])
    )
    peer.expect_stream_error(sid, PROTOCOL_ERROR)


def test_8_3_response_pseudo_header_in_request_is_malformed(peer: Peer) -> None:
    """RFC 9113 8.3: "Pseudo-header fields defined for requests MUST NOT appear in responses;
    pseudo-header fields defined for responses MUST NOT appear in requests" -- a request with
    :status is malformed: stream error PROTOCOL_ERROR."""
    fields = peer.request_headers()
    sid = send_request(peer, peer.encode([*fields[:4], (":status", "200"), *fields[4:]]))
    peer.expect_stream_error(sid, PROTOCOL_ERROR)


def test_8_3_pseudo_header_after_regular_header_is_malformed(peer: Peer) -> None:
    """RFC 9113 8.3: "All pseudo-header fields MUST appear in a field block before all regular
    field lines. Any request or response that contains a pseudo-header field that appears in a
    field block after a regular field line MUST be treated as malformed"."""
    fields = peer.request_headers()
    sid = send_request(peer, peer.encode([("x-test", "ok"), *fields]))
    peer.expect_stream_error(sid, PROTOCOL_ERROR)


@pytest.mark.parametrize("name", [":method", ":scheme", ":path", ":authority"])
def test_8_3_repeated_pseudo_header_is_malformed(peer: Peer, name: str) -> None:
    """RFC 9113 8.3: "The same pseudo-header field name MUST NOT appear more than once in a field
    block. A field block for an HTTP request or response that contains a repeated pseudo-header
    field name MUST be treated as malformed" -- a stream error, not a COMPRESSION_ERROR of the
    whole connection."""
    fields = peer.request_headers()
    value = dict(fields)[name]
    sid = send_request(peer, peer.encode([*fields[:4], (name, value), *fields[4:]]))
    peer.expect_stream_error(sid, PROTOCOL_ERROR)


# --- 8.3.1 Request Pseudo-Header Fields ---------------------------------------------------------------


def test_8_3_1_empty_path_is_malformed(peer: Peer) -> None:
    """RFC 9113 8.3.1: ":path ... This pseudo-header field MUST NOT be empty for "http" or "https"
    URIs" -- a request with an empty :path is malformed: stream error PROTOCOL_ERROR."""
    sid = send_request(peer, peer.encode(request_fields(peer, path="")))
    peer.expect_stream_error(sid, PROTOCOL_ERROR)


@pytest.mark.parametrize("missing", [":method", ":scheme", ":path"])
def test_8_3_1_missing_pseudo_header_is_malformed(peer: Peer, missing: str) -> None:
    """RFC 9113 8.3.1: "All HTTP/2 requests MUST include exactly one valid value for the
    ":method", ":scheme", and ":path" pseudo-header fields, unless they are CONNECT requests. An
    HTTP request that omits mandatory pseudo-header fields is malformed" -- stream error
    PROTOCOL_ERROR."""
    sid = send_request(peer, peer.encode(request_fields(peer, drop=missing)))
    peer.expect_stream_error(sid, PROTOCOL_ERROR)


def test_8_3_1_headers_only_malformed_request_is_not_answered(peer: Peer) -> None:
    """RFC 9113 8.1.1: a malformed request is a stream error -- the server must not answer it with
    an HTTP or gRPC response (a request with END_STREAM on its HEADERS and no :path here)."""
    sid = send_request(peer, peer.encode(request_fields(peer, drop=":path")), body=None)
    start = len(peer.received)
    peer.expect_stream_error(sid, PROTOCOL_ERROR)
    answered = [
        f
        for f in peer.received[start:]
        if not isinstance(f, str) and f.type == HEADERS and f.stream_id == sid
    ]
    assert not answered, f"a malformed request must not be answered: {peer.transcript(start)}"


# --- 8.4 Server Push ----------------------------------------------------------------------------------


def test_8_4_push_promise_from_client_is_protocol_error(peer: Peer) -> None:
    """RFC 9113 8.4: "A client cannot push. Thus, servers MUST treat the receipt of a PUSH_PROMISE
    frame as a connection error of type PROTOCOL_ERROR"."""
    block = peer.plain(peer.request_headers())
    peer.send(raw_frame(PUSH_PROMISE, END_HEADERS, 1, (3).to_bytes(4, "big") + block), barrier=True)
    peer.expect_connection_error(PROTOCOL_ERROR)


def test_8_1_non_grpc_request_gets_an_http_answer(peer: Peer) -> None:
    """RFC 9113 8.1: a well-formed request that is not a gRPC call (GET /) is still a valid HTTP
    exchange: the server answers it with a response (any status), not a stream error."""
    fields = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", peer.authority)]
    sid = send_request(peer, peer.encode(fields), body=None)
    result = peer.response(sid)
    assert result.status is not None and result.reset in (None, 0) and result.goaway is None, (
        peer.transcript()
    )
    peer.assert_usable()


def test_8_1_request_exchange_on_many_streams(peer: Peer) -> None:
    """RFC 9113 8.1 / 5: requests on successive streams of one connection are each answered on
    their own stream (gRPC Export, grpc-status 0)."""
    for _ in range(5):
        result = peer.grpc_call()
        assert result.status == 200 and result.grpc_status == 0, peer.transcript()


def test_8_2_header_list_over_the_advertised_size_gets_431_and_the_connection_goes_on(peer: Peer) -> None:
    """RFC 9113 10.5.1: "A server that receives a larger header section than it is willing to
    handle can send an HTTP 431 (Request Header Fields Too Large) status code". Our
    SETTINGS_MAX_HEADER_LIST_SIZE is 16 KiB; ten references to one 2 KiB table entry decode to
    ~20 KiB from a small block. The block is still decoded (the HPACK tables stay in step), so
    the connection keeps serving."""
    big = ("x-big", "v" * 2000)
    ok = send_request(peer, peer.encode([*peer.request_headers(), big]))  # adds the entry
    assert peer.response(ok).grpc_status == 0
    sid = send_request(peer, peer.encode([*peer.request_headers(), *[big] * 10]))
    assert peer.response(sid).status == 431
    peer.assert_usable()
