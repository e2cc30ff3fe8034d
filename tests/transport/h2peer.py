"""A frame-level HTTP/2 client for the conformance tests, built on `hyperframe` and `hpack`
(python-hyper), never on the server's own code: what it sends and how it reads the answer must
not share a bug with what it tests.

    peer = Peer.connect(("127.0.0.1", port))         # preface + SETTINGS, the server's SETTINGS acked
    peer.send(peer.headers(1, end_stream=True), raw_frame(DATA, END_STREAM, 1, b"x"), barrier=True)
    peer.expect_stream_error(1, STREAM_CLOSED)      # RST_STREAM, then a gRPC call still succeeds

`send` writes everything in one `sendall` (frames a valid client would never send are built with
`raw_frame`); with `barrier=True` a PING goes last, so the server's PING ACK marks the point by
which it has processed the frames before it: a test that waits for an error fails within
`grace` of that point instead of waiting for a timeout. Server SETTINGS and PINGs are answered
automatically. Every frame received is kept in `received`, and failures print a transcript of
what the server sent instead.
"""

from __future__ import annotations

import itertools
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

# RFC 9113 numbers, spelled out here rather than imported from the server under test.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
ERROR_NAMES = {
    0x0: "NO_ERROR",
    0x1: "PROTOCOL_ERROR",
    0x2: "INTERNAL_ERROR",
    0x3: "FLOW_CONTROL_ERROR",
    0x4: "SETTINGS_TIMEOUT",
    0x5: "STREAM_CLOSED",
    0x6: "FRAME_SIZE_ERROR",
    0x7: "REFUSED_STREAM",
    0x8: "CANCEL",
    0x9: "COMPRESSION_ERROR",
    0xA: "CONNECT_ERROR",
    0xB: "ENHANCE_YOUR_CALM",
    0xC: "INADEQUATE_SECURITY",
    0xD: "HTTP_1_1_REQUIRED",
}
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x5, 0x6, 0x7, 0x8, 0x9
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

EXPORT_PATH = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_FRAME_NAMES = {
    DATA: "DATA",
    HEADERS: "HEADERS",
    PRIORITY: "PRIORITY",
    RST_STREAM: "RST_STREAM",
    SETTINGS: "SETTINGS",
    PUSH_PROMISE: "PUSH_PROMISE",
    PING: "PING",
    GOAWAY: "GOAWAY",
    WINDOW_UPDATE: "WINDOW_UPDATE",
    CONTINUATION: "CONTINUATION",
}


def raw_frame(
    kind: int, flags: int, stream_id: int, payload: bytes = b"", length: int | None = None
) -> bytes:
    """One frame, byte by byte: any type, flags, stream id (reserved bit included) and a length
    field that may lie about the payload."""
    n = len(payload) if length is None else length
    return struct.pack(">I", n)[1:] + bytes((kind, flags)) + struct.pack(">I", stream_id) + payload


def grpc_message(body: bytes = b"") -> bytes:
    """A gRPC length-prefixed message, uncompressed. b"" is a valid empty ExportTraceServiceRequest."""
    return b"\x00" + len(body).to_bytes(4, "big") + body


def hpack_int(value: int, prefix: int, first: int = 0) -> bytes:
    """RFC 7541 5.1: `value` with an N-bit prefix, the high bits of the first byte from `first`."""
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


def literal(name: bytes | str, value: bytes | str) -> bytes:
    """RFC 7541 6.2.2: literal header field without indexing, new name, no Huffman. Exactly the
    bytes given (upper case included) and no change to the dynamic table on either side."""
    n = name.encode() if isinstance(name, str) else name
    v = value.encode() if isinstance(value, str) else value
    return b"\x00" + hpack_int(len(n), 7) + n + hpack_int(len(v), 7) + v


def error_name(code: int) -> str:
    return ERROR_NAMES.get(code, hex(code))


def describe(item: Frame | str) -> str:
    """One line for a transcript."""
    if isinstance(item, str):
        return item
    kind = _FRAME_NAMES.get(item.type, f"type {item.type:#x}")
    flags = ",".join(sorted(item.flags))
    text = f"{kind}(stream {item.stream_id}{', ' + flags if flags else ''}"
    if isinstance(item, RstStreamFrame):
        text += f", {error_name(item.error_code)}"
    elif isinstance(item, GoAwayFrame):
        text += f", last {item.last_stream_id}, {error_name(item.error_code)}"
        if item.additional_data:
            text += f", {bytes(item.additional_data)[:80]!r}"
    elif isinstance(item, DataFrame):
        text += f", {len(item.data)} bytes"
    elif isinstance(item, WindowUpdateFrame):
        text += f", +{item.window_increment}"
    elif isinstance(item, SettingsFrame) and item.settings:
        text += f", {dict(item.settings)}"
    return text + ")"


def _error_for(frame: Frame, stream_id: int) -> bool:
    """A GOAWAY, or a RST_STREAM on `stream_id`."""
    return isinstance(frame, GoAwayFrame) or (
        isinstance(frame, RstStreamFrame) and frame.stream_id == stream_id
    )


@dataclass
class Response:
    """What came back on one stream."""

    stream_id: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    data: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    reset: int | None = None  # RST_STREAM error code
    goaway: int | None = None  # GOAWAY error code
    ended: bool = False  # END_STREAM seen

    def header(self, name: bytes) -> bytes | None:
        for key, value in [*self.headers, *self.trailers]:
            if key == name:
                return value
        return None

    @property
    def status(self) -> int | None:
        value = self.header(b":status")
        return int(value) if value is not None else None

    @property
    def grpc_status(self) -> int | None:
        value = self.header(b"grpc-status")
        return int(value) if value is not None else None


class Peer:
    """One client connection at the frame level (see the module docstring)."""

    def __init__(self, address: tuple[str, int], timeout: float = 5.0) -> None:
        self.address = address
        self.authority = f"{address[0]}:{address[1]}"
        self.sock = socket.create_connection(address, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.received: list[Frame | str] = []
        self.server_settings: dict[int, int] = {}
        self.closed = False
        self.max_stream_id = 0  # highest client stream id sent in a HEADERS frame
        self.auto_ack = True
        self._buffer = b""
        self._pings = itertools.count(1)
        self._barrier: bytes | None = None
        self._barrier_seen = False
        self._header_block: tuple[int, list[bytes]] | None = None

    # --- set-up -------------------------------------------------------------------------------------

    @classmethod
    def connect(
        cls, address: tuple[str, int], settings: dict[int, int] | None = None, timeout: float = 5.0
    ) -> Peer:
        """Connected, preface and SETTINGS sent, the server's first SETTINGS received (and acked)."""
        peer = cls(address, timeout)
        peer.handshake(settings)
        return peer

    def handshake(self, settings: dict[int, int] | None = None) -> None:
        frame = SettingsFrame(0, settings=settings or {})
        self.send_raw(PREFACE + frame.serialize())
        first = self.collect(lambda f: True, timeout=5.0)
        assert isinstance(first, SettingsFrame) and "ACK" not in first.flags, (
            f"RFC 9113 3.4: the server's preface must be a SETTINGS frame; got {self.transcript()}"
        )

    def close(self) -> None:
        self.closed = True
        self.sock.close()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- sending ------------------------------------------------------------------------------------

    def send(self, *items: Frame | bytes, barrier: bool = False) -> None:
        """Frames (hyperframe objects or raw bytes) in one write; `barrier` appends a PING."""
        out = b"".join(item if isinstance(item, bytes) else item.serialize() for item in items)
        if barrier:
            self._barrier = next(self._pings).to_bytes(8, "big")
            self._barrier_seen = False
            out += raw_frame(PING, 0, 0, self._barrier)
        self.send_raw(out)

    def send_raw(self, data: bytes) -> None:
        self._track(data)
        try:
            self.sock.sendall(data)
        except OSError:
            self._mark_closed("<send failed: connection closed>")

    def _track(self, data: bytes) -> None:
        """Remember the highest stream id our HEADERS opened (raw bytes included)."""
        if data.startswith(PREFACE):
            data = data[len(PREFACE) :]
        pos = 0
        while len(data) - pos >= 9:
            length = int.from_bytes(data[pos : pos + 3], "big")
            kind = data[pos + 3]
            sid = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            if kind == HEADERS and sid & 1:
                self.max_stream_id = max(self.max_stream_id, sid)
            pos += 9 + length

    def next_stream_id(self) -> int:
        return self.max_stream_id + 2 if self.max_stream_id else 1

    def request_headers(
        self, path: str = EXPORT_PATH, method: str = "POST", extra: Iterable[tuple[str, str]] = ()
    ) -> list[tuple[str, str]]:
        """A gRPC Export request's header list (plus `extra`)."""
        return [
            (":method", method),
            (":scheme", "http"),
            (":path", path),
            (":authority", self.authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *extra,
        ]

    def encode(self, headers: Iterable[tuple[str, str]]) -> bytes:
        """An HPACK block from python-hyper's encoder (incremental indexing, Huffman), which
        keeps this connection's dynamic table: the server must decode every block to stay in
        step, including the blocks of streams it refuses."""
        return self.encoder.encode(list(headers))

    def plain(self, headers: Iterable[tuple[str, str]]) -> bytes:
        """An HPACK block of literals without indexing: it leaves both dynamic tables alone, so it
        may be sent in any order, or more than once."""
        return b"".join(literal(name, value) for name, value in headers)

    def headers(
        self,
        stream_id: int,
        block: bytes | None = None,
        end_stream: bool = False,
        end_headers: bool = True,
    ) -> HeadersFrame:
        """A HEADERS frame; the default block is a valid gRPC Export request."""
        frame = HeadersFrame(stream_id)
        frame.data = self.encode(self.request_headers()) if block is None else block
        if end_stream:
            frame.flags.add("END_STREAM")
        if end_headers:
            frame.flags.add("END_HEADERS")
        return frame

    @staticmethod
    def data(stream_id: int, payload: bytes, end_stream: bool = False) -> DataFrame:
        frame = DataFrame(stream_id, data=payload)
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame

    # --- receiving ----------------------------------------------------------------------------------

    def _mark_closed(self, why: str = "<connection closed>") -> None:
        if not self.closed:
            self.closed = True
            self.received.append(why)

    def _read_frame(self, deadline: float) -> Frame | None:
        """The next frame, or None on timeout or once the connection is closed."""
        while True:
            if len(self._buffer) >= 9:
                length = int.from_bytes(self._buffer[:3], "big")
                if len(self._buffer) >= 9 + length:
                    head, body = self._buffer[:9], self._buffer[9 : 9 + length]
                    self._buffer = self._buffer[9 + length :]
                    frame, _ = Frame.parse_frame_header(memoryview(head))
                    frame.parse_body(memoryview(body))
                    return frame
            if self.closed:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            except OSError:
                self._mark_closed("<connection reset>")
                continue
            if not chunk:
                self._mark_closed()
                continue
            self._buffer += chunk

    def _on_frame(self, frame: Frame) -> None:
        self.received.append(frame)
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.server_settings.update(frame.settings)
            if self.auto_ack:
                self.send_raw(raw_frame(SETTINGS, ACK, 0))
        elif isinstance(frame, PingFrame):
            if "ACK" not in frame.flags:
                if self.auto_ack:
                    self.send_raw(raw_frame(PING, ACK, 0, bytes(frame.opaque_data)))
            elif self._barrier is not None and bytes(frame.opaque_data) == self._barrier:
                self._barrier_seen = True

    def collect(
        self, until: Callable[[Frame], bool], timeout: float = 3.0, grace: float | None = 0.3
    ) -> Frame | None:
        """Read frames until one matches `until` (returned), the connection closes, `timeout`
        passes, or `grace` after the ACK of the last barrier PING (None; `grace=None`: the
        barrier does not end the wait)."""
        deadline = time.monotonic() + timeout
        while True:
            if self._barrier_seen and grace is not None:
                deadline = min(deadline, time.monotonic() + grace)
                self._barrier = None
                self._barrier_seen = False
            frame = self._read_frame(deadline)
            if frame is None:
                return None
            self._on_frame(frame)
            if until(frame):
                return frame

    def wait_closed(self, timeout: float = 3.0) -> bool:
        """True once the server closed the connection (frames read meanwhile are kept)."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            frame = self._read_frame(deadline)
            if frame is None:
                return self.closed
            self._on_frame(frame)
        return True

    def settle(self, timeout: float = 3.0) -> list[Frame | str]:
        """Send a PING and read up to its ACK: everything the server sent in answer to what we
        sent before. Returns those frames (a closed connection ends the list early)."""
        start = len(self.received)
        self.send(barrier=True)
        payload = self._barrier
        self.collect(
            lambda f: isinstance(f, PingFrame) and "ACK" in f.flags and bytes(f.opaque_data) == payload,
            timeout,
            grace=None,
        )
        self._barrier = None
        self._barrier_seen = False
        return self.received[start:]

    def _still_open(self, start: int) -> str:
        """A note for failure messages: the connection was neither closed nor sent a GOAWAY."""
        ended = self.closed or any(isinstance(f, GoAwayFrame) for f in self.received[start:])
        return "" if ended else " (connection still open)"

    def transcript(self, start: int = 0) -> str:
        items = self.received[start:]
        if not items:
            return "nothing"
        return "; ".join(describe(item) for item in items)

    def decode_block(self, block: bytes) -> list[tuple[bytes, bytes]]:
        return [(bytes(k), bytes(v)) for k, v in self.decoder.decode(block, raw=True)]

    def response(self, stream_id: int, timeout: float = 3.0) -> Response:
        """Read until `stream_id` ends (END_STREAM or RST_STREAM), a GOAWAY with an error, or the
        connection closes; the response headers, data and trailers that came."""
        result = Response(stream_id)
        fragments: list[bytes] = []
        header_flags: set[str] = set()

        def on(frame: Frame) -> bool:
            nonlocal fragments, header_flags
            if isinstance(frame, GoAwayFrame):
                result.goaway = frame.error_code
                return frame.error_code != NO_ERROR
            if frame.stream_id != stream_id:
                return False
            if isinstance(frame, HeadersFrame | ContinuationFrame):
                if isinstance(frame, HeadersFrame):
                    header_flags = set(frame.flags)
                fragments.append(bytes(frame.data))
                if "END_HEADERS" in frame.flags:
                    fields = self.decode_block(b"".join(fragments))
                    fragments = []
                    if result.headers:
                        result.trailers = fields
                    else:
                        result.headers = fields
                    result.ended = "END_STREAM" in header_flags
                    return result.ended
                return False
            if isinstance(frame, DataFrame):
                result.data += bytes(frame.data)
                if frame.flow_controlled_length:
                    # The connection window only: the stream may be closed by now.
                    update = WindowUpdateFrame(0, window_increment=frame.flow_controlled_length)
                    self.send_raw(update.serialize())
                result.ended = "END_STREAM" in frame.flags
                return result.ended
            if isinstance(frame, RstStreamFrame):
                result.reset = frame.error_code
                return True
            return False

        self.collect(on, timeout, grace=None)
        return result

    def grpc_call(self, stream_id: int | None = None, body: bytes = b"", timeout: float = 3.0) -> Response:
        """A valid unary Export call on a new stream; its response."""
        sid = self.next_stream_id() if stream_id is None else stream_id
        self.send(self.headers(sid), self.data(sid, grpc_message(body), end_stream=True))
        return self.response(sid, timeout)

    # --- verdicts -----------------------------------------------------------------------------------

    def assert_usable(self) -> None:
        """The connection still serves: a valid Export call on a new stream gets grpc-status 0."""
        self._barrier, self._barrier_seen = None, False
        start = len(self.received)
        result = self.grpc_call()
        assert result.status == 200 and result.grpc_status == 0, (
            f"after a stream error the connection must still serve other streams: a valid Export "
            f"call on stream {result.stream_id} got {self.transcript(start)}"
        )

    def expect_connection_error(
        self, *codes: int, timeout: float = 3.0, close_timeout: float | None = None
    ) -> GoAwayFrame:
        """RFC 9113 5.4.1: GOAWAY with one of `codes`, and nothing after it. With `close_timeout`,
        the server must also close the connection within that time (it may first read what the
        client still sends, for a while: only test_5_4_1 waits for that)."""
        start = len(self.received)
        names = " or ".join(map(error_name, codes))
        goaway = self.collect(lambda f: isinstance(f, GoAwayFrame), timeout)
        assert isinstance(goaway, GoAwayFrame), (
            f"expected a connection error (GOAWAY {names}); the server sent: "
            f"{self.transcript(start)}{self._still_open(start)}"
        )
        assert goaway.error_code in codes, (
            f"expected GOAWAY {names}; the server sent: {self.transcript(start)}"
        )
        self._nothing_after_goaway(close_timeout)
        return goaway

    def _nothing_after_goaway(self, close_timeout: float | None) -> None:
        """After a GOAWAY for an error the connection is over: no frame may follow it (what
        arrives within a moment, or until the close when `close_timeout` is given)."""
        later = len(self.received)
        self.wait_closed(0.1 if close_timeout is None else close_timeout)
        extra = [f for f in self.received[later:] if not isinstance(f, str)]
        assert not extra, f"frames sent after a GOAWAY for an error: {self.transcript(later)}"
        if close_timeout is not None:
            assert self.closed, (
                f"RFC 9113 5.4.1: after GOAWAY for an error the server MUST close the connection; "
                f"still open {close_timeout}s later"
            )

    def expect_stream_error(self, stream_id: int, *codes: int, timeout: float = 3.0) -> RstStreamFrame:
        """RFC 9113 5.4.2: RST_STREAM with one of `codes` on `stream_id`, and the connection
        keeps serving other streams."""
        start = len(self.received)
        names = " or ".join(map(error_name, codes))
        frame = self.collect(lambda f: _error_for(f, stream_id), timeout)
        assert isinstance(frame, RstStreamFrame) and frame.error_code in codes, (
            f"expected a stream error (RST_STREAM {names} on stream {stream_id}); the server sent: "
            f"{self.transcript(start)}{self._still_open(start)}"
        )
        self.assert_usable()
        return frame

    def expect_stream_or_connection_error(self, stream_id: int, *codes: int, timeout: float = 3.0) -> Frame:
        """Either of the above with one of `codes` (where the RFC allows both)."""
        start = len(self.received)
        names = " or ".join(map(error_name, codes))
        frame = self.collect(lambda f: _error_for(f, stream_id), timeout)
        assert isinstance(frame, GoAwayFrame | RstStreamFrame) and frame.error_code in codes, (
            f"expected RST_STREAM {names} on stream {stream_id} or GOAWAY {names}; the server sent: "
            f"{self.transcript(start)}{self._still_open(start)}"
        )
        if isinstance(frame, GoAwayFrame):
            self._nothing_after_goaway(None)
        else:
            self.assert_usable()
        return frame

    def expect_ignored(self, what: str) -> None:
        """The frames sent before were ignored: no error, no frame on a stream, the connection
        answers a PING and serves a call."""
        start = len(self.received)
        seen = self.settle()
        bad = [
            f for f in seen if isinstance(f, str | GoAwayFrame | RstStreamFrame | HeadersFrame | DataFrame)
        ]
        acked = any(isinstance(f, PingFrame) and "ACK" in f.flags for f in seen)
        assert acked and not bad, f"{what} must be ignored; the server sent: {self.transcript(start)}"
        self.assert_usable()
