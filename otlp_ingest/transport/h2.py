"""HTTP/2 server connections (RFC 9113) on asyncio: the part of HTTP/2 a gRPC server needs, with
every per-connection resource bounded.

Why not grpcio's server: its serving model costs ~200 us of CPU per call on this machine even
with a handler that does nothing (docs/performance.md); an event-loop connection that parses
frames in place costs a fraction.

`H2Connection` is an `asyncio.Protocol`. It speaks the server side of one connection: the
client preface (then a SETTINGS frame first), SETTINGS (ours: `H2Config`; theirs: initial window
and frame size honoured), PING, WINDOW_UPDATE, RST_STREAM, GOAWAY, HEADERS + CONTINUATION (HPACK
in `hpack.py`), DATA, PRIORITY (checked, otherwise ignored) and padding; unknown frame types are
ignored, PUSH_PROMISE from a client is a protocol error. Streams follow the state table of
`streams.py`; a frame a state does not allow is the stream or connection error RFC 9113 names,
and closed streams are remembered (`ClosedStreams`) so a late frame gets the right answer.
Malformed requests (RFC 9113 8.2-8.3: field rules, missing pseudo-headers, a content-length
that the DATA does not match) are stream errors (RST_STREAM PROTOCOL_ERROR) and never reach the
handler. What a request means is the `StreamHandler`'s business:

- `on_request(conn, stream)`: a new stream's headers arrived. The handler may answer at once
  (`conn.respond`, e.g. to refuse) or set `stream.max_body` and wait for the body.
- `on_body(conn, stream)`: the request is complete (END_STREAM); `stream.body()` is its data.
- `on_too_large(conn, stream)`: more than `stream.max_body` bytes arrived (the data is dropped).
- `on_over_budget(conn, stream)`: the worker's admission budget cannot hold the next bytes.
- `on_stalled(conn, stream)`: the body did not arrive within `read_timeout`.
- `on_closed(stream)`: the stream is gone, exactly once for every stream `on_request` saw.

Answering early never resets the stream: once the answer (ending with END_STREAM) is out, what
the client still sends of the body is read and dropped (its flow-control credit given back),
within the connection's discard bucket and `read_timeout` (then RST_STREAM NO_ERROR), so a
proxy in front passes the answer on unchanged (a RST_STREAM right after a complete answer
reaches some clients through HAProxy as CANCELLED).

Admission and flow control (receiving): body bytes are charged to the worker's `BodyBudget` as
they arrive (a stalled body holds only what it sent) and released when the stream is answered;
a stream the budget cannot hold is refused (`on_over_budget`). The connection's receive window is
its fair share of that budget (`H2Config.connection_window`): credit for the connection comes
back only when bytes are released, so one connection never holds more than its window, however
many streams it opens. Stream windows are given back as bytes arrive (a message is whole before
it is handled), up to `max_body`. A peer that sends past a window is a FLOW_CONTROL_ERROR.

Sending: DATA respects the client's stream and connection windows and its max frame size and
waits for WINDOW_UPDATE (responses are small, so this is rare); an answer stuck longer than
`write_timeout` is reset (`window_stalled`). Frames produced while handling one `data_received`
go out in one write. The transport's write buffer is limited (`write_buffer_high`): above it the
connection stops reading (so a peer that does not read cannot make us queue more answers, PING
or SETTINGS ACKs) and it is closed once writing stays blocked for `write_timeout`
(`write_stalled`).

Floods (each a `Defences` reason, answered GOAWAY ENHANCE_YOUR_CALM): frames that do no work
(PING, SETTINGS, PRIORITY, WINDOW_UPDATE on closed streams, unknown types: `control_flood`; empty
DATA, HEADERS or CONTINUATION fragments: `empty_frames`) spend a token bucket that each answered
request refills; streams reset by the client before their answer, and stream errors it caused,
spend another (`rapid_reset`, CVE-2023-44487); DATA dropped on closed or answered streams spends a
byte bucket (`discarded_data`); a header block is bounded in bytes, in CONTINUATION frames
(`continuation_flood`, CVE-2024-27316) and in decoded size (`header_list_too_large` for the
stream, `hpack_bomb` for the connection); streams above SETTINGS_MAX_CONCURRENT_STREAMS are
refused (`too_many_streams`).

Deadlines are not timers per request: the worker's sweeper calls `sweep(now)` about every
0.25 s: the preface and each header block and request body must arrive within `read_timeout`
(`preface_timeout`, `header_timeout`, `body_timeout`), plus the write deadlines above, the
GOAWAY PING and the connection's age.

Closing (`goaway`) is two-phase (RFC 9113 6.8): GOAWAY with the last stream id 2^31-1 and a
PING; when the PING's ACK comes back (every stream the client opened before our GOAWAY has then
arrived) or after `goaway_ping_timeout`, GOAWAY with the real last stream id. Streams above it
are refused (REFUSED_STREAM, the client retries them elsewhere), those below finish. Once none is
left the connection stops writing (a half-close where the transport has one) and reads and drops
what still comes until the peer closes or `linger` passes: closing a socket with unread data
sends a TCP reset, which can destroy answers the peer (a proxy) had not read yet. Connection
errors close the same way after their GOAWAY.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from otlp_ingest.transport.defences import BodyBudget, Defences, TokenBucket
from otlp_ingest.transport.frames import (
    ACK,
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    DEFAULT_FRAME_SIZE,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_HEAD,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    MAX_FRAME_SIZE_LIMIT,
    MAX_STREAM_ID,
    MAX_WINDOW,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    SETTINGS_ENABLE_PUSH,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_FRAME_SIZE,
    SETTINGS_MAX_HEADER_LIST_SIZE,
    STREAM_CLOSED,
    U32,
    WINDOW_UPDATE,
    ConnectionError_,
    StreamError,
    frame,
    frame_head,
    goaway,
    rst_stream,
    unpad,
)
from otlp_ingest.transport.hpack import HeaderBlock, HeaderBomb, HeaderDecoder, HpackError, encode_literal
from otlp_ingest.transport.streams import (
    NEXT,
    Closed,
    ClosedStreams,
    Event,
    State,
    Stream,
    Violation,
)

log = logging.getLogger(__name__)

_GOAWAY_PING = b"goaway\x00\x01"
# DATA a connection may send that we only drop (on closed or answered streams): a burst, then
# a rate, in bytes. Legitimate cases are small: frames in flight when we reset a stream, or the
# rest of a message answered RESOURCE_EXHAUSTED.
DISCARD_BURST = 2 << 20
DISCARD_RATE = 1 << 20
# What a closing connection reads and drops before it gives up waiting for the peer to close.
LINGER_MAX_BYTES = 1 << 20
_SETTING = struct.Struct(">HI")
_HEADERS_TOO_LARGE = encode_literal([(b":status", b"431")])


@dataclass(frozen=True, slots=True)
class H2Config:
    """Our side of the connection settings and limits (docs/hostile-input.md lists each)."""

    read_timeout: float = 30.0  # the preface, each header block and each request body
    write_timeout: float = 30.0  # unsent bytes (socket or flow control) wait at most this long
    max_concurrent_streams: int = 256
    stream_window: int = 1 << 20
    connection_window: int = 16 << 20  # the connection's share of the admission budget
    max_header_list_size: int = 16 * 1024  # also the compressed header block's limit
    max_continuations: int = 64  # CONTINUATION frames per header block
    write_buffer_high: int = 256 * 1024
    # Frames that do no work: a burst, then this rate; each answered request refills one.
    flood_burst: int = 1000
    flood_rate: float = 100.0
    # Streams the client resets before their answer (or makes us reset): a burst, then this rate.
    reset_burst: int = 200
    reset_rate: float = 50.0
    goaway_ping_timeout: float = 2.0
    linger: float = 2.0
    # Connection ageing (0 = never): after `max_age` (jittered by the caller) GOAWAY is sent;
    # `age_grace` later the connection is closed even if streams are still open.
    max_age: float = 0.0
    age_grace: float = 0.0


class StreamHandler(Protocol):
    """What an HTTP/2 connection calls; see the module docstring."""

    def on_request(self, conn: H2Connection, stream: Stream) -> None: ...

    def on_body(self, conn: H2Connection, stream: Stream) -> None: ...

    def on_too_large(self, conn: H2Connection, stream: Stream) -> None: ...

    def on_over_budget(self, conn: H2Connection, stream: Stream) -> None: ...

    def on_stalled(self, conn: H2Connection, stream: Stream) -> None: ...

    def on_closed(self, stream: Stream) -> None: ...


class _Outgoing:
    """Response DATA (and trailers) waiting for the client's flow-control windows."""

    __slots__ = ("data", "trailers")

    def __init__(self, data: bytes, trailers: bytes | None) -> None:
        self.data = data
        self.trailers = trailers


class _HeaderBlockInProgress:
    """HEADERS without END_HEADERS, and the CONTINUATION frames so far."""

    __slots__ = ("flags", "fragments", "frames", "self_dependent", "size", "started", "stream_id")

    def __init__(self, stream_id: int, flags: int, fragment: bytes, self_dependent: bool, now: float) -> None:
        self.stream_id = stream_id
        self.flags = flags
        self.fragments = [fragment]
        self.size = len(fragment)
        self.frames = 0
        self.self_dependent = self_dependent
        self.started = now


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
        budget: BodyBudget | None = None,
        defences: Defences | None = None,
    ) -> None:
        self.handler = handler
        self.config = config
        self.connections = connections
        self.clock = clock
        self.max_connections = max_connections
        self.max_age = max_age  # this connection's jittered age limit (0 = none)
        self.budget = budget
        self.defences = defences if defences is not None else Defences("grpc")
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.closed_streams = ClosedStreams(2 * config.max_concurrent_streams)
        self.last_stream_id = 0  # the highest stream id the client used
        self.last_accepted = 0  # the highest stream id we took on (GOAWAY's last stream id)
        self.opened = 0.0
        self.goaway_at = 0.0  # when we sent the first GOAWAY (0 = not yet)
        self.closed = False  # no more frames are processed or written
        self._goaway_last = MAX_STREAM_ID  # the last stream id of our final GOAWAY
        self._final_goaway_sent = False
        self._close_when_idle = False
        self._linger_until = 0.0
        self._lingered = 0  # bytes read and dropped while lingering
        self._buffer = b""
        self._preface = False
        self._settings_seen = False
        self._decoder = HeaderDecoder(max_list_size=config.max_header_list_size)
        self._out: list[bytes] = []
        self._in_receive = False
        self._block: _HeaderBlockInProgress | None = None
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_FRAME_SIZE
        self._send_window = DEFAULT_WINDOW  # connection-level, towards the client
        self._recv_window = config.connection_window  # what the client may still send
        self._released = 0  # bytes released since our last connection WINDOW_UPDATE
        self._pending: dict[int, _Outgoing] = {}  # stream id -> output blocked by flow control
        self._write_blocked_since = 0.0  # the transport's buffer went above its limit
        self._flood: TokenBucket | None = None  # made at connection_made (needs the clock)
        self._resets: TokenBucket | None = None
        self._discards: TokenBucket | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.opened = now = self.clock()
        self.connections.add(self)
        if len(self.connections) > self.max_connections:
            self.defences.hit("connection_limit", f"gRPC connection limit ({self.max_connections}) reached")
            self.closed = True
            transport.close()
            return
        config = self.config
        self._flood = TokenBucket(config.flood_burst, config.flood_rate, now)
        self._resets = TokenBucket(config.reset_burst, config.reset_rate, now)
        self._discards = TokenBucket(DISCARD_BURST, DISCARD_RATE, now)
        self.transport.set_write_buffer_limits(high=config.write_buffer_high)  # type: ignore[union-attr]
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
            frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, U32.pack(increment))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.connections.discard(self)
        streams = list(self.streams.values())
        self.streams.clear()
        self._pending.clear()
        for stream in streams:
            stream.state = State.CLOSED
            self._release_held(stream)
            if stream.handled:
                self.handler.on_closed(stream)

    def eof_received(self) -> bool:
        return False  # the peer is done: close (also ends a linger)

    def pause_writing(self) -> None:
        self._write_blocked_since = self.clock()
        if self.transport is not None and not self._linger_until:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_blocked_since = 0.0
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closed:  # lingering after our last frame: read and dropped, within reason
            self._lingered += len(data)
            if self._lingered > LINGER_MAX_BYTES:
                self.transport.abort()  # type: ignore[union-attr]
            return
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        self._in_receive = True
        try:
            self._receive(data)
        except ConnectionError_ as exc:
            self._fail(exc.code, str(exc), exc.reason)
        finally:
            self._in_receive = False
            self._flush()

    def _flush(self) -> None:
        if self._out:
            out = self._out
            self._out = []
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))  # type: ignore[union-attr]
        if self._close_when_idle and not self.streams and self._final_goaway_sent:
            self._close_gracefully()

    def _send(self, data: bytes) -> None:
        if self.closed:
            return
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
        unpack = FRAME_HEAD.unpack_from
        while end - pos >= 9:
            high, low, kind, flags, stream_id = unpack(data, pos)
            length = (high << 16) | low
            if length > DEFAULT_FRAME_SIZE:  # our SETTINGS_MAX_FRAME_SIZE (the default)
                raise ConnectionError_(FRAME_SIZE_ERROR, f"frame of {length} bytes")
            start = pos + 9
            if end - start < length:
                break
            pos = start + length
            try:
                if self._block is None and self._settings_seen and kind <= HEADERS:  # the common two
                    if kind == DATA:
                        self._on_data(flags, stream_id & 0x7FFFFFFF, data[start:pos])
                    else:
                        self._on_headers(flags, stream_id & 0x7FFFFFFF, data[start:pos])
                else:
                    self._on_frame(kind, flags, stream_id & 0x7FFFFFFF, data[start:pos])
            except StreamError as exc:
                self._stream_error(exc)
            if self.closed:
                return
        if pos < end:
            self._buffer = data[pos:]

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._block is not None and kind != CONTINUATION:
            raise ConnectionError_(PROTOCOL_ERROR, "a header block is open: expected CONTINUATION")
        if not self._settings_seen:
            if kind != SETTINGS or flags & ACK:
                raise ConnectionError_(PROTOCOL_ERROR, "the preface must be followed by SETTINGS")
            self._settings_seen = True
        if kind == DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == CONTINUATION:
            self._on_continuation(flags, stream_id, payload)
        elif kind == SETTINGS:
            self._on_settings(flags, stream_id, payload)
        elif kind == PING:
            self._on_ping(flags, stream_id, payload)
        elif kind == RST_STREAM:
            self._on_reset(stream_id, payload)
        elif kind == PRIORITY:
            self._on_priority(stream_id, payload)
        elif kind == GOAWAY:
            if stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise ConnectionError_(FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
            # The client opens no more streams here; it closes the connection itself.
        elif kind == PUSH_PROMISE:
            raise ConnectionError_(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        else:
            self._useless("control_flood", "frames of unknown types")

    def _useless(self, reason: str, what: str) -> None:
        """A frame that does no work: spend the flood bucket."""
        if not self._flood.spend(self.clock()):  # type: ignore[union-attr]
            raise ConnectionError_(ENHANCE_YOUR_CALM, f"flood of {what}", reason)

    def _transition(self, stream: Stream, event: Event) -> None:
        after = NEXT[stream.state][event]
        if type(after) is Violation:
            if after.connection:
                raise ConnectionError_(after.code, f"stream {stream.id}: {after.rule}")
            raise StreamError(stream.id, after.code, f"stream {stream.id}: {after.rule}", "stream_state")
        stream.state = after  # type: ignore[assignment]

    # HEADERS and CONTINUATION

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id or not stream_id & 1:
            raise ConnectionError_(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        if flags & PADDED:
            payload = unpad(payload)
        self_dependent = False
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise ConnectionError_(FRAME_SIZE_ERROR, "HEADERS priority fields missing")
            self_dependent = U32.unpack_from(payload)[0] & 0x7FFFFFFF == stream_id
            payload = payload[5:]
        if flags & END_HEADERS:
            self._on_header_block(flags, stream_id, payload, self_dependent)
            return
        if not payload:
            self._useless("empty_frames", "empty header fragments")
        self._block = _HeaderBlockInProgress(stream_id, flags, payload, self_dependent, self.clock())
        self._check_block_size(self._block)

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        block = self._block
        if block is None or block.stream_id != stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        block.fragments.append(payload)
        block.size += len(payload)
        block.frames += 1
        if block.frames > self.config.max_continuations:
            raise ConnectionError_(ENHANCE_YOUR_CALM, "too many CONTINUATION frames", "continuation_flood")
        self._check_block_size(block)
        if flags & END_HEADERS:
            self._block = None
            self._on_header_block(block.flags, stream_id, b"".join(block.fragments), block.self_dependent)

    def _check_block_size(self, block: _HeaderBlockInProgress) -> None:
        if block.size > self.config.max_header_list_size:
            raise ConnectionError_(
                ENHANCE_YOUR_CALM,
                f"header block over {self.config.max_header_list_size} bytes",
                "continuation_flood",
            )

    def _decode(self, block: bytes) -> HeaderBlock:
        try:
            return self._decoder.decode(block)
        except HeaderBomb as exc:
            raise ConnectionError_(ENHANCE_YOUR_CALM, str(exc), "hpack_bomb") from None
        except HpackError as exc:
            raise ConnectionError_(COMPRESSION_ERROR, f"header block: {exc}") from None

    def _on_header_block(self, flags: int, stream_id: int, block: bytes, self_dependent: bool) -> None:
        decoded = self._decode(block)  # first, always: the HPACK table must stay in step
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._on_trailers(flags, stream, decoded, self_dependent)
            return
        if stream_id <= self.last_stream_id:
            how = self.closed_streams.get(stream_id)
            if how is Closed.RESET_BY_US:
                return  # the client had not seen our reset yet
            if how is not None:
                raise ConnectionError_(STREAM_CLOSED, f"HEADERS on closed stream {stream_id}")
            raise ConnectionError_(PROTOCOL_ERROR, f"stream id {stream_id} not above {self.last_stream_id}")
        self.last_stream_id = stream_id
        if stream_id > self._goaway_last:  # above our final GOAWAY: retried elsewhere
            self._refuse_new(stream_id, REFUSED_STREAM)
            return
        if self_dependent:
            raise StreamError(stream_id, PROTOCOL_ERROR, "stream depends on itself (5.3.1)", "malformed")
        problem, content_length = decoded.request()
        if problem is not None:
            raise StreamError(stream_id, PROTOCOL_ERROR, f"malformed request: {problem}", "malformed")
        headers = decoded.headers
        if len(self.streams) >= self.config.max_concurrent_streams:
            self._spend_reset()
            self.defences.hit("too_many_streams", "a client opened more streams than it may")
            self._refuse_new(stream_id, REFUSED_STREAM)
            return
        window = self.config.stream_window
        stream = Stream(stream_id, headers, self._peer_initial_window, window, self.clock())
        stream.content_length = content_length
        self.streams[stream_id] = stream
        self.last_accepted = stream_id
        if decoded.too_large:
            self.defences.hit("header_list_too_large", "request headers over the list limit: 431")
            head = frame_head(len(_HEADERS_TOO_LARGE), HEADERS, END_HEADERS | END_STREAM, stream_id)
            self._answer(stream, head + _HEADERS_TOO_LARGE)
        else:
            stream.handled = True
            self.handler.on_request(self, stream)
        if flags & END_STREAM and stream.state is not State.CLOSED:
            self._end_stream(stream)

    def _on_trailers(self, flags: int, stream: Stream, decoded: HeaderBlock, self_dependent: bool) -> None:
        self._transition(stream, Event.RECV_TRAILERS)
        if self_dependent:
            raise StreamError(stream.id, PROTOCOL_ERROR, "stream depends on itself (5.3.1)", "malformed")
        if not flags & END_STREAM:
            raise StreamError(stream.id, PROTOCOL_ERROR, "trailers without END_STREAM", "malformed")
        if decoded.problem is not None or any(name[:1] == b":" for name in decoded.headers):
            raise StreamError(stream.id, PROTOCOL_ERROR, "malformed trailers", "malformed")
        self._end_stream(stream)

    def _refuse_new(self, stream_id: int, code: int) -> None:
        """Reset a stream that never got an object (refused at its headers)."""
        self._send(rst_stream(stream_id, code))
        self.closed_streams.add(stream_id, Closed.RESET_BY_US)

    def _end_stream(self, stream: Stream) -> None:
        """The client's END_STREAM on `stream`."""
        if stream.content_length >= 0 and stream.received != stream.content_length:
            raise StreamError(stream.id, PROTOCOL_ERROR, "body shorter than its content-length", "malformed")
        self._transition(stream, Event.RECV_END_STREAM)
        if stream.state is State.CLOSED:
            self._forget(stream, Closed.ENDED)
        elif not stream.responded:
            self.handler.on_body(self, stream)

    # DATA

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "DATA on stream 0")
        consumed = len(payload)  # padding counts against the windows too
        self._recv_window -= consumed
        if self._recv_window < 0:
            raise ConnectionError_(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        if flags & PADDED:
            payload = unpad(payload)
        stream = self.streams.get(stream_id)
        if stream is None:
            self._release(consumed)
            if stream_id > self.last_stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            self._discard(consumed)
            if self.closed_streams.get(stream_id) is Closed.RESET_BY_US:
                return  # sent before the client saw our reset
            raise StreamError(stream_id, STREAM_CLOSED, f"DATA on closed stream {stream_id}", "stream_state")
        self._transition(stream, Event.RECV_DATA)
        stream.recv_window -= consumed
        if stream.recv_window < 0:
            raise StreamError(stream_id, FLOW_CONTROL_ERROR, "DATA beyond the stream window", "stream_state")
        n = len(payload)
        stream.received += n
        if 0 <= stream.content_length < stream.received:
            raise StreamError(stream_id, PROTOCOL_ERROR, "body longer than its content-length", "malformed")
        if consumed > n:
            self._release(consumed - n)  # the padding
        if stream.responded:  # answered already: drop the rest of the body (bounded by the
            self._release(n)  # discard bucket in bytes and by read_timeout in time)
            self._discard(n)
        elif stream.received > stream.max_body:
            self._release(n)
            stream.chunks = []
            self._release_held(stream)
            self.handler.on_too_large(self, stream)
        elif n:
            budget = self.budget
            if budget is not None and not budget.try_charge(n):
                self._release(n)
                stream.chunks = []
                self._release_held(stream)
                self.defences.hit("admission", "request bodies held by this worker at the budget: refused")
                self.handler.on_over_budget(self, stream)
            else:
                stream.held += n
                stream.chunks.append(payload)
        elif not flags & END_STREAM:
            self._useless("empty_frames", "empty DATA frames")
        if flags & END_STREAM:
            self._end_stream(stream)
            return
        if stream.state is State.CLOSED:
            return
        stream.unacked += consumed
        if stream.unacked >= self.config.stream_window >> 1:
            self._send(frame(WINDOW_UPDATE, 0, stream_id, U32.pack(stream.unacked)))
            stream.recv_window += stream.unacked
            stream.unacked = 0

    def _release(self, n: int) -> None:
        """Give `n` bytes of connection window back (they are no longer held)."""
        self._released += n
        if self._released >= self.config.connection_window >> 2:
            self._send(frame(WINDOW_UPDATE, 0, 0, U32.pack(self._released)))
            self._recv_window += self._released
            self._released = 0

    def _release_held(self, stream: Stream) -> None:
        held = stream.held
        if held:
            stream.held = 0
            if self.budget is not None:
                self.budget.release(held)
            if not self.closed:
                self._release(held)

    def _discard(self, n: int) -> None:
        if n and not self._discards.spend(self.clock(), n):  # type: ignore[union-attr]
            raise ConnectionError_(ENHANCE_YOUR_CALM, "flood of DATA on closed streams", "discarded_data")

    # control frames

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "WINDOW_UPDATE not 4 bytes")
        increment = U32.unpack(payload)[0] & 0x7FFFFFFF
        if not stream_id:
            if not increment:
                raise ConnectionError_(PROTOCOL_ERROR, "connection WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ConnectionError_(FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            if self._pending:
                self._drain_pending()
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
            self._useless("control_flood", "WINDOW_UPDATE frames on closed streams")
            return
        if not increment:
            raise StreamError(stream_id, PROTOCOL_ERROR, "stream WINDOW_UPDATE of 0", "stream_state")
        self._transition(stream, Event.RECV_WINDOW_UPDATE)
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            raise StreamError(stream_id, FLOW_CONTROL_ERROR, "stream window above 2^31-1", "stream_state")
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
        self._useless("control_flood", "SETTINGS frames")
        for offset in range(0, len(payload), 6):
            ident, value = _SETTING.unpack_from(payload, offset)
            if ident == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "initial window above 2^31-1")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise ConnectionError_(FLOW_CONTROL_ERROR, "a stream window above 2^31-1")
            elif ident == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= MAX_FRAME_SIZE_LIMIT:
                    raise ConnectionError_(PROTOCOL_ERROR, f"max frame size {value}")
                self._peer_max_frame = value
            elif ident == SETTINGS_ENABLE_PUSH and value > 1:
                raise ConnectionError_(PROTOCOL_ERROR, "ENABLE_PUSH above 1")
        self._send(frame(SETTINGS, ACK, 0))
        if self._pending:
            self._drain_pending()

    def _on_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ConnectionError_(FRAME_SIZE_ERROR, "PING not 8 bytes")
        if flags & ACK:
            if payload == _GOAWAY_PING and not self._final_goaway_sent:
                self._final_goaway()
            return
        self._useless("control_flood", "PING frames")
        self._send(frame(PING, ACK, 0, payload))

    def _on_priority(self, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            raise StreamError(stream_id, FRAME_SIZE_ERROR, "PRIORITY not 5 bytes", "stream_state")
        if U32.unpack_from(payload)[0] & 0x7FFFFFFF == stream_id:
            raise StreamError(stream_id, PROTOCOL_ERROR, "stream depends on itself (5.3.1)", "malformed")
        self._useless("control_flood", "PRIORITY frames")

    def _on_reset(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "RST_STREAM not 4 bytes")
        if not stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
            self._useless("control_flood", "RST_STREAM frames on closed streams")
            return
        if not stream.responded:
            self._spend_reset()
        self._transition(stream, Event.RECV_RST)
        stream.responded = True  # nothing more may be sent on it
        self._pending.pop(stream_id, None)
        self._forget(stream, Closed.RESET_BY_PEER)

    def _spend_reset(self) -> None:
        if not self._resets.spend(self.clock()):  # type: ignore[union-attr]
            raise ConnectionError_(ENHANCE_YOUR_CALM, "too many streams reset", "rapid_reset")

    def _stream_error(self, exc: StreamError) -> None:
        """RST_STREAM for a stream error, counted; a stream error the client keeps causing costs it
        the connection (as resets do: CVE-2025-8671)."""
        self.defences.hit(exc.reason, str(exc))
        stream = self.streams.get(exc.stream_id)
        if stream is not None:
            self._reset(stream, exc.code)
        elif self.closed_streams.get(exc.stream_id) is not Closed.RESET_BY_US:
            # Closed already, not by our reset (frames after that are ignored, 5.1); a RST_STREAM
            # itself never gets here: no RST answers a RST.
            self._refuse_new(exc.stream_id, exc.code)
        try:
            self._spend_reset()
        except ConnectionError_ as flood:
            self._fail(flood.code, str(flood), flood.reason)

    # --- frames out --------------------------------------------------------------------------------

    def respond(
        self, stream: Stream, headers: bytes, data: bytes | None = None, trailers: bytes | None = None
    ) -> None:
        """Answer `stream`: a HEADERS block (already HPACK-encoded), then optionally DATA and a
        trailing HEADERS block; the last frame sent ends the stream. A request still being
        received is not reset: the rest of its body is read and dropped (module docstring)."""
        if stream.responded or self.closed:
            return
        stream.chunks = []
        if stream.held:
            self._release_held(stream)
        self._flood.refund()  # type: ignore[union-attr]
        sid = stream.id
        if data is None and trailers is None:
            self._answer(stream, frame_head(len(headers), HEADERS, END_HEADERS | END_STREAM, sid) + headers)
            return
        stream.responded = True
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
            self._sent_end_stream(stream)
        else:
            self._send(head)
            self._pending[sid] = _Outgoing(data, trailers)
            self._drain_pending()

    def _answer(self, stream: Stream, frames: bytes) -> None:
        """Send `frames`, the last of which ends `stream`."""
        stream.responded = True
        self._send(frames)
        self._sent_end_stream(stream)

    def _sent_end_stream(self, stream: Stream) -> None:
        self._transition(stream, Event.SEND_END_STREAM)
        if stream.state is State.CLOSED:
            self._forget(stream, Closed.ENDED)

    def _drain_pending(self) -> None:
        now = 0.0
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
                if not stream.stalled_since:
                    stream.stalled_since = now = now or self.clock()
                continue
            if out.trailers is not None:
                self._send(
                    frame_head(len(out.trailers), HEADERS, END_HEADERS | END_STREAM, sid) + out.trailers
                )
            del self._pending[sid]
            self._sent_end_stream(stream)

    def _forget(self, stream: Stream, how: Closed) -> None:
        """`stream` is closed: remember how, release what it held, tell the handler."""
        stream.state = State.CLOSED
        self._pending.pop(stream.id, None)
        if self.streams.pop(stream.id, None) is None:
            return
        self.closed_streams.add(stream.id, how)
        if stream.held:
            self._release_held(stream)
        if stream.handled:
            self.handler.on_closed(stream)

    def _reset(self, stream: Stream, code: int) -> None:
        """RST_STREAM `code` and forget the stream (never on a stream already closed)."""
        if stream.state is State.CLOSED:
            return
        stream.responded = True
        self._send(rst_stream(stream.id, code))
        self._transition(stream, Event.SEND_RST)
        self._forget(stream, Closed.RESET_BY_US)

    def cancel(self, stream: Stream) -> None:
        """Reset a stream with CANCEL (the client sees CANCELLED)."""
        if not stream.responded:
            self._reset(stream, CANCEL)
            if not self._in_receive:
                self._flush()

    # --- lifecycle ------------------------------------------------------------------------------------

    def goaway(self, close_when_idle: bool = True) -> None:
        """Tell the client to open no more streams here (two-phase, see the module docstring);
        with `close_when_idle`, close once every stream up to the last one is finished."""
        if self.closed:
            return
        if close_when_idle:
            self._close_when_idle = True
        if not self.goaway_at:
            self.goaway_at = self.clock()
            self._send(goaway(MAX_STREAM_ID, NO_ERROR) + frame(PING, 0, 0, _GOAWAY_PING))
        elif not self._in_receive:
            self._flush()

    def _final_goaway(self) -> None:
        self._final_goaway_sent = True
        self._goaway_last = self.last_accepted
        self._send(goaway(self.last_accepted, NO_ERROR))

    def _fail(self, code: int, message: str, reason: str) -> None:
        """A connection error: GOAWAY with `code`, then close (draining reads)."""
        if self.closed:
            return
        if reason != "protocol_error":
            self.defences.hit(reason, message)
        else:
            log.debug("HTTP/2 connection error %d: %s", code, message)
        self._out.append(goaway(self.last_accepted, code))
        self._close_gracefully()

    def _close_gracefully(self) -> None:
        """Write what is queued, stop writing and read until the peer closes or `linger` ends."""
        if self.closed:
            return
        transport = self.transport
        assert transport is not None
        if self._out:
            out, self._out = self._out, []
            transport.write(b"".join(out))
        self.closed = True
        self._linger_until = self.clock() + self.config.linger
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()  # what still comes is read and dropped

    def abort(self) -> None:
        """Close now, dropping unsent bytes (a peer that does not read would hold close())."""
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    def sweep(self, now: float) -> None:
        """Deadlines, checked by the worker's sweeper (module docstring)."""
        if self.closed:
            if self._linger_until and now >= self._linger_until:
                self._linger_until = 0.0
                self.transport.abort()  # type: ignore[union-attr]  # close() would wait for the peer
            return
        config = self.config
        timeout = config.read_timeout
        if self._write_blocked_since and now - self._write_blocked_since > config.write_timeout:
            self.defences.hit("write_stalled", "a client did not read its answers in time: closed")
            self.abort()
            return
        if not self._preface or not self._settings_seen:
            if now - self.opened > timeout:
                self.defences.hit("preface_timeout", "HTTP/2 preface not received in time: closed")
                self._fail(PROTOCOL_ERROR, "preface timeout", "protocol_error")
            return
        if self._block is not None and now - self._block.started > timeout:
            self._fail(ENHANCE_YOUR_CALM, "header block not finished in time", "header_timeout")
            return
        for stream in list(self.streams.values()):
            if stream.state is State.CLOSED:
                continue
            if stream.stalled_since and now - stream.stalled_since > config.write_timeout:
                self.defences.hit("window_stalled", "an answer waited for the client's window too long")
                self._reset(stream, CANCEL)
            elif not stream.remote_closed and now - stream.opened > timeout:
                self.defences.hit("body_timeout", "a request body did not arrive in time")
                if stream.responded:
                    self._reset(stream, NO_ERROR)
                else:
                    self.handler.on_stalled(self, stream)
        ping_late = self.goaway_at and now - self.goaway_at >= config.goaway_ping_timeout
        if ping_late and not self._final_goaway_sent:
            self._final_goaway()
        if self.max_age:
            if not self.goaway_at and now - self.opened >= self.max_age:
                self.goaway()
            elif self.goaway_at and now - self.goaway_at >= config.age_grace + config.goaway_ping_timeout:
                self.abort()
                return
        if not self._in_receive:
            self._flush()
