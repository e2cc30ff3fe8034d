"""HTTP/2 server connections (RFC 9113): the part of HTTP/2 a gRPC server needs, on asyncio.

Why not grpcio's server: its serving model costs ~200 us of CPU per call on this machine even
with a handler that does nothing (thread hand-offs through the completion queue, see
docs/performance.md); an event-loop connection that parses frames in place costs a fraction.

`H2Connection` is an `asyncio.Protocol`. It speaks the server side of one connection: the
client preface, SETTINGS (ours: `H2Config`; theirs: initial window and frame size honoured),
PING, WINDOW_UPDATE, RST_STREAM, GOAWAY, HEADERS + CONTINUATION (HPACK in `hpack.py`), DATA,
padding and priority fields; PRIORITY and unknown frame types are ignored, PUSH_PROMISE from a
client is a protocol error. What a request means is the `StreamHandler`'s business:

- `on_request(conn, stream)`: a new stream's headers arrived. The handler may answer at once
  (`conn.respond`, e.g. to refuse) or set `stream.max_body` and wait for the body.
- `on_body(conn, stream)`: the request is complete (END_STREAM); `stream.body()` is its data.
- `on_too_large(conn, stream)`: more than `stream.max_body` bytes arrived (the data is dropped).
- `on_closed(stream)`: the stream is gone (answered, reset by the client, or the connection
  closed), exactly once for every stream `on_request` saw.

Flow control, receiving: our SETTINGS_INITIAL_WINDOW_SIZE is `stream_window` and the connection
window is raised to `connection_window` at once; consumed bytes are given back with
WINDOW_UPDATE once half a window was used (a small request never needs one per stream).
Sending: DATA respects the client's stream and connection windows and its max frame size, and
waits for WINDOW_UPDATE when they are spent (responses are small, so this is rare).

Writes are batched: frames produced while handling one `data_received` go out in one write.

Shutdown (`goaway`): GOAWAY with the last stream id seen; streams above it are not processed
(the client retries them elsewhere, RFC 9113 6.8), streams below it finish; the connection
closes once none is left (`close_when_idle`). Deadlines are not timers per request: the worker's
sweeper calls `sweep(now)` about every 0.25 s, which checks the preface deadline, stalled request
bodies (`on_stalled`) and the connection-age limit.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from otlp_ingest.telemetry.logging import RateLimitedLogger
from otlp_ingest.transport.hpack import HeaderDecoder, HeaderListTooLarge, HpackError

log = logging.getLogger(__name__)
_hostile_log = RateLimitedLogger(log)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE = range(9)
CONTINUATION = 9
# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# Error codes (RFC 9113 7).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB
# Settings identifiers.
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
DEFAULT_FRAME_SIZE = 16384
_FRAME_HEAD = struct.Struct(">BHBBI")  # 24-bit length as (high byte, low 16 bits), type, flags, id
_U32 = struct.Struct(">I")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One serialized frame."""
    n = len(payload)
    return _FRAME_HEAD.pack(n >> 16, n & 0xFFFF, kind, flags, stream_id) + payload


def frame_head(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    """The 9-byte header of a frame whose payload follows separately."""
    return _FRAME_HEAD.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id)


class ConnectionError_(Exception):
    """A connection error: GOAWAY with `code`, then close."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class H2Config:
    """Our side of the connection settings and limits."""

    read_timeout: float = 30.0  # preface and each request body must arrive within this
    max_concurrent_streams: int = 256
    stream_window: int = 1 << 20
    connection_window: int = 16 << 20
    max_header_list_size: int = 64 * 1024
    # Connection ageing (0 = never): after `max_age` (jittered by the caller) GOAWAY is sent;
    # `age_grace` later the connection is closed even if streams are still open.
    max_age: float = 0.0
    age_grace: float = 0.0


class Stream:
    """One request stream: its headers, the body received so far and its state."""

    __slots__ = (
        "admitted",
        "chunks",
        "context",
        "headers",
        "id",
        "max_body",
        "opened",
        "received",
        "remote_closed",
        "responded",
        "send_window",
        "unacked",
    )

    def __init__(self, stream_id: int, headers: dict[bytes, bytes], send_window: int, opened: float) -> None:
        self.id = stream_id
        self.headers = headers
        self.chunks: list[bytes] = []
        self.received = 0
        self.max_body = 0  # set by the handler; more than this -> on_too_large
        self.unacked = 0  # bytes consumed since our last stream WINDOW_UPDATE
        self.remote_closed = False
        self.responded = False  # our END_STREAM is queued or sent
        self.send_window = send_window
        self.opened = opened
        self.admitted = False  # the handler's accounting flag (e.g. counted as in flight)
        self.context: object = None  # the handler's per-stream state

    def body(self) -> bytes:
        chunks = self.chunks
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)


class StreamHandler(Protocol):
    """What an HTTP/2 connection calls; see the module docstring."""

    def on_request(self, conn: H2Connection, stream: Stream) -> None: ...

    def on_body(self, conn: H2Connection, stream: Stream) -> None: ...

    def on_too_large(self, conn: H2Connection, stream: Stream) -> None: ...

    def on_stalled(self, conn: H2Connection, stream: Stream) -> None: ...

    def on_closed(self, stream: Stream) -> None: ...


class _Outgoing:
    """Response DATA (and trailers) waiting for the client's flow-control windows."""

    __slots__ = ("data", "trailers")

    def __init__(self, data: bytes, trailers: bytes | None) -> None:
        self.data = data
        self.trailers = trailers


class H2Connection(asyncio.Protocol):
    """The server side of one HTTP/2 connection (see the module docstring)."""

    def __init__(
        self,
        handler: StreamHandler,
        config: H2Config,
        connections: set[H2Connection],
        clock: Callable[[], float],
        max_connections: int = 1 << 30,
        max_age: float = 0.0,
    ) -> None:
        self.handler = handler
        self.config = config
        self.connections = connections
        self.clock = clock
        self.max_connections = max_connections
        self.max_age = max_age  # this connection's jittered age limit (0 = none)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.last_stream_id = 0
        self.opened = 0.0
        self.goaway_at = 0.0  # when we sent GOAWAY (0 = not yet)
        self.closed = False
        self._buffer = b""
        self._preface = False
        self._decoder = HeaderDecoder(max_list_size=config.max_header_list_size)
        self._out: list[bytes] = []
        self._in_receive = False
        self._continuation: tuple[int, int, list[bytes]] | None = None  # (stream id, flags, fragments)
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_FRAME_SIZE
        self._send_window = DEFAULT_WINDOW  # connection-level, towards the client
        self._conn_unacked = 0
        self._pending: dict[int, _Outgoing] = {}  # stream id -> output blocked by flow control
        self._close_when_idle = False

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.opened = self.clock()
        self.connections.add(self)
        if len(self.connections) > self.max_connections:
            # A flood of sockets must not flood the log too: once per interval, with a count.
            _hostile_log.warning(
                "connections",
                "gRPC connection limit (%d) reached: closing new connections",
                self.max_connections,
            )
            self.transport.close()  # type: ignore[union-attr]
            return
        config = self.config
        settings = struct.pack(
            ">HIHIHIHI",
            SETTINGS_MAX_CONCURRENT_STREAMS,
            config.max_concurrent_streams,
            SETTINGS_INITIAL_WINDOW_SIZE,
            config.stream_window,
            SETTINGS_MAX_HEADER_LIST_SIZE,
            config.max_header_list_size,
            SETTINGS_ENABLE_PUSH,
            0,
        )
        increment = config.connection_window - DEFAULT_WINDOW
        self.transport.write(  # type: ignore[union-attr]
            frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, _U32.pack(increment))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.connections.discard(self)
        streams = list(self.streams.values())
        self.streams.clear()
        self._pending.clear()
        for stream in streams:
            self.handler.on_closed(stream)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        self._in_receive = True
        try:
            self._receive(data)
        except ConnectionError_ as exc:
            self._fail(exc.code, str(exc))
        finally:
            self._in_receive = False
            self._flush()

    def _flush(self) -> None:
        if self._out and not self.closed:
            out = self._out
            self._out = []
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))  # type: ignore[union-attr]
            if self._close_when_idle and not self.streams:
                self._close()

    def _send(self, data: bytes) -> None:
        self._out.append(data)
        if not self._in_receive:
            self._flush()

    # --- frames in ---------------------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        pos = 0
        end = len(data)
        if not self._preface:
            if end < len(PREFACE):
                if not PREFACE.startswith(data):
                    raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                self._buffer = data
                return
            if not data.startswith(PREFACE):
                raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            self._preface = True
            pos = len(PREFACE)
        unpack = _FRAME_HEAD.unpack_from
        limit = DEFAULT_FRAME_SIZE  # our SETTINGS_MAX_FRAME_SIZE (the default)
        while end - pos >= 9:
            high, low, kind, flags, stream_id = unpack(data, pos)
            length = (high << 16) | low
            if length > limit:
                raise ConnectionError_(FRAME_SIZE_ERROR, f"frame of {length} bytes")
            start = pos + 9
            if end - start < length:
                break
            pos = start + length
            payload = data[start:pos]
            stream_id &= 0x7FFFFFFF
            if self._continuation is not None and kind != CONTINUATION:
                raise ConnectionError_(PROTOCOL_ERROR, "expected CONTINUATION")
            if kind == DATA:
                self._on_data(flags, stream_id, payload)
            elif kind == HEADERS:
                self._on_headers(flags, stream_id, payload)
            elif kind == WINDOW_UPDATE:
                self._on_window_update(stream_id, payload)
            elif kind == SETTINGS:
                self._on_settings(flags, stream_id, payload)
            elif kind == PING:
                if len(payload) != 8 or stream_id:
                    raise ConnectionError_(FRAME_SIZE_ERROR, "bad PING")
                if not flags & ACK:
                    self._send(frame(PING, ACK, 0, payload))
            elif kind == RST_STREAM:
                if len(payload) != 4 or not stream_id:
                    raise ConnectionError_(FRAME_SIZE_ERROR, "bad RST_STREAM")
                self._on_reset(stream_id)
            elif kind == CONTINUATION:
                self._on_continuation(flags, stream_id, payload)
            elif kind == GOAWAY:
                pass  # the client opens no more streams; it closes the connection itself
            elif kind == PUSH_PROMISE:
                raise ConnectionError_(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
            elif kind == PRIORITY and len(payload) != 5:
                raise ConnectionError_(FRAME_SIZE_ERROR, "bad PRIORITY")
            if self.closed:
                return
        if pos < end:
            self._buffer = data[pos:]

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id or not stream_id & 1:
            raise ConnectionError_(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        if flags & PADDED:
            payload = _unpad(payload)
        if flags & PRIORITY_FLAG:
            payload = payload[5:]
        if flags & END_HEADERS:
            self._on_header_block(flags, stream_id, payload)
        else:
            self._continuation = (stream_id, flags, [payload])

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        pending = self._continuation
        if pending is None or pending[0] != stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "unexpected CONTINUATION")
        pending[2].append(payload)
        if sum(map(len, pending[2])) > 2 * self.config.max_header_list_size:
            raise ConnectionError_(ENHANCE_YOUR_CALM, "header block too large")
        if flags & END_HEADERS:
            self._continuation = None
            self._on_header_block(pending[1], stream_id, b"".join(pending[2]))

    def _on_header_block(self, flags: int, stream_id: int, block: bytes) -> None:
        try:
            headers = self._decoder.decode(block)
            too_large = False
        except HeaderListTooLarge:
            headers, too_large = {}, True
        except HpackError as exc:
            raise ConnectionError_(COMPRESSION_ERROR, f"header block: {exc}") from None
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers: must end the stream
            if not flags & END_STREAM or stream.remote_closed:
                raise ConnectionError_(PROTOCOL_ERROR, "HEADERS after the request headers")
            self._end_of_request(stream)
            return
        if stream_id <= self.last_stream_id:
            raise ConnectionError_(STREAM_CLOSED, f"HEADERS on closed stream {stream_id}")
        if self.goaway_at:  # above our GOAWAY's last stream id: not processed, retried elsewhere
            self._send(frame(RST_STREAM, 0, stream_id, _U32.pack(REFUSED_STREAM)))
            return
        self.last_stream_id = stream_id
        if too_large or len(self.streams) >= self.config.max_concurrent_streams:
            self._send(frame(RST_STREAM, 0, stream_id, _U32.pack(REFUSED_STREAM)))
            return
        stream = Stream(stream_id, headers, self._peer_initial_window, self.clock())
        self.streams[stream_id] = stream
        self.handler.on_request(self, stream)
        if flags & END_STREAM and stream_id in self.streams:
            self._end_of_request(stream)

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "DATA on stream 0")
        consumed = len(payload)  # padding counts against the window too
        if flags & PADDED:
            payload = _unpad(payload)
        self._conn_unacked += consumed
        if self._conn_unacked >= self.config.connection_window >> 1:
            self._send(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._conn_unacked)))
            self._conn_unacked = 0
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            return  # a stream we answered or reset already: the client had not seen it yet
        if stream.remote_closed:
            self._reset(stream, STREAM_CLOSED)
            return
        if not stream.responded:
            stream.received += len(payload)
            if stream.received > stream.max_body:
                stream.chunks = []
                self.handler.on_too_large(self, stream)
            elif payload:
                stream.chunks.append(payload)
        if flags & END_STREAM:
            self._end_of_request(stream)
            return
        stream.unacked += consumed
        if stream.unacked >= self.config.stream_window >> 1 and not stream.responded:
            self._send(frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(stream.unacked)))
            stream.unacked = 0

    def _end_of_request(self, stream: Stream) -> None:
        stream.remote_closed = True
        if stream.responded:
            if stream.id not in self._pending:  # else finished once the pending data went out
                self._finish(stream)
        else:
            self.handler.on_body(self, stream)

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if not stream_id:
            if not increment:
                raise ConnectionError_(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ConnectionError_(FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            self._drain_pending()
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if not increment:
            self._reset(stream, PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._reset(stream, FLOW_CONTROL_ERROR)
            return
        if stream_id in self._pending:
            self._drain_pending()

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        for offset in range(0, len(payload), 6):
            ident, value = struct.unpack_from(">HI", payload, offset)
            if ident == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "initial window above 2^31-1")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif ident == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= 16777215:
                    raise ConnectionError_(PROTOCOL_ERROR, f"max frame size {value}")
                self._peer_max_frame = value
            elif ident == SETTINGS_ENABLE_PUSH and value > 1:
                raise ConnectionError_(PROTOCOL_ERROR, "ENABLE_PUSH above 1")
        self._send(frame(SETTINGS, ACK, 0))
        if self._pending:
            self._drain_pending()

    def _on_reset(self, stream_id: int) -> None:
        if stream_id > self.last_stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
        stream = self.streams.pop(stream_id, None)
        self._pending.pop(stream_id, None)
        if stream is not None:
            stream.responded = True  # nothing more may be sent on it
            self.handler.on_closed(stream)

    # --- frames out --------------------------------------------------------------------------------

    def respond(
        self, stream: Stream, headers: bytes, data: bytes | None = None, trailers: bytes | None = None
    ) -> None:
        """Answer `stream`: a HEADERS block (already HPACK-encoded), then optionally DATA and a
        trailing HEADERS block; the last frame sent ends the stream. A request still being
        received is then reset with NO_ERROR (RFC 9113 8.1: the client stops sending it)."""
        if stream.responded or self.closed:
            return
        stream.responded = True
        stream.chunks = []
        sid = stream.id
        if data is None and trailers is None:
            self._send(frame_head(len(headers), HEADERS, END_HEADERS | END_STREAM, sid) + headers)
        else:
            head = frame_head(len(headers), HEADERS, END_HEADERS, sid) + headers
            data = data or b""
            n = len(data)
            if n <= stream.send_window and n <= self._send_window and n <= self._peer_max_frame:
                stream.send_window -= n
                self._send_window -= n
                if trailers is None:
                    self._send(head + frame_head(n, DATA, END_STREAM, sid) + data)
                else:
                    self._send(
                        head
                        + frame_head(n, DATA, 0, sid)
                        + data
                        + frame_head(len(trailers), HEADERS, END_HEADERS | END_STREAM, sid)
                        + trailers
                    )
            else:
                self._send(head)
                self._pending[sid] = _Outgoing(data, trailers)
                self._drain_pending()
                return  # finished once the pending data went out
        self._finish(stream)

    def _drain_pending(self) -> None:
        for sid, out in list(self._pending.items()):
            stream = self.streams.get(sid)
            if stream is None:
                del self._pending[sid]
                continue
            while out.data:
                n = min(len(out.data), stream.send_window, self._send_window, self._peer_max_frame)
                if n <= 0:
                    break
                chunk, out.data = out.data[:n], out.data[n:]
                stream.send_window -= n
                self._send_window -= n
                last = not out.data and out.trailers is None
                self._send(frame_head(n, DATA, END_STREAM if last else 0, sid) + chunk)
            if out.data:
                continue
            if out.trailers is not None:
                self._send(
                    frame_head(len(out.trailers), HEADERS, END_HEADERS | END_STREAM, sid) + out.trailers
                )
            del self._pending[sid]
            self._finish(stream)

    def _finish(self, stream: Stream) -> None:
        """Our side is done: close the stream once the client's side is too (or reset it)."""
        if not stream.remote_closed:
            self._send(frame(RST_STREAM, 0, stream.id, _U32.pack(NO_ERROR)))
        if self.streams.pop(stream.id, None) is not None:
            self.handler.on_closed(stream)
        if self._close_when_idle and not self.streams:
            self._close()

    def _reset(self, stream: Stream, code: int) -> None:
        """RST_STREAM `code` and forget the stream."""
        stream.responded = True
        self._pending.pop(stream.id, None)
        self._send(frame(RST_STREAM, 0, stream.id, _U32.pack(code)))
        if self.streams.pop(stream.id, None) is not None:
            self.handler.on_closed(stream)

    def cancel(self, stream: Stream) -> None:
        """Reset a stream with CANCEL (the client sees CANCELLED)."""
        if not stream.responded:
            self._reset(stream, CANCEL)
            self._flush_if_idle()

    def _flush_if_idle(self) -> None:
        if not self._in_receive:
            self._flush()

    # --- lifecycle ------------------------------------------------------------------------------------

    def goaway(self, close_when_idle: bool = True) -> None:
        """Tell the client to open no more streams here; with `close_when_idle`, close once
        every stream up to the last one seen is finished."""
        if self.closed:
            return
        if not self.goaway_at:
            self.goaway_at = self.clock()
            self._send(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream_id, NO_ERROR)))
        if close_when_idle:
            self._close_when_idle = True
            if not self.streams:
                self._close()

    def _fail(self, code: int, message: str) -> None:
        log.debug("HTTP/2 connection error %d: %s", code, message)
        if not self.closed:
            self._out.append(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream_id, code)))
            self._close()

    def _close(self) -> None:
        if self.closed:
            return
        if self._out:
            out, self._out = self._out, []
            self.transport.write(b"".join(out))  # type: ignore[union-attr]
        self.closed = True
        self.transport.close()  # type: ignore[union-attr]

    def abort(self) -> None:
        """Close now (the shutdown grace is over)."""
        if not self.closed:
            self._close()

    def sweep(self, now: float) -> None:
        """Deadlines, checked by the worker's sweeper: the preface, stalled request bodies and the
        connection's age."""
        if self.closed:
            return
        timeout = self.config.read_timeout
        if not self._preface:
            if now - self.opened > timeout:
                log.debug("HTTP/2 preface not received within %.1fs: closing", timeout)
                self._close()
            return
        for stream in list(self.streams.values()):
            if not stream.remote_closed and not stream.responded and now - stream.opened > timeout:
                self.handler.on_stalled(self, stream)
        if self.max_age:
            if not self.goaway_at and now - self.opened >= self.max_age:
                self.goaway()
            elif self.goaway_at and now - self.goaway_at >= self.config.age_grace:
                self.abort()
        self._flush_if_idle()


def _unpad(payload: bytes) -> bytes:
    if not payload:
        raise ConnectionError_(PROTOCOL_ERROR, "padded frame without a pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise ConnectionError_(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - pad]
