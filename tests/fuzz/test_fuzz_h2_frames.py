"""Hypothesis fuzzing of the HTTP/2 server connection (otlp_ingest.transport.h2) in process:
generated frame sequences -- valid and invalid: random types, flags, stream ids (reserved bit
included), lengths that lie, payloads, header blocks, bursts of streams -- cut at random points
into `data_received` calls, against a recording fake transport and a trivial handler that
answers every complete request.

Properties, whatever the client sends:
- no exception escapes `data_received` (or `connection_lost`);
- every stream `on_request` saw gets `on_closed` exactly once by the end of `connection_lost`,
  and nothing is asked of the handler about a stream after its `on_closed`;
- the output is well-formed HTTP/2: whole frames, starting with SETTINGS;
- after a GOAWAY with an error code nothing more is written (the bytes queued before it go out
  before it); after our END_STREAM nothing but a RST_STREAM is sent on that stream, and after our
  RST_STREAM nothing at all -- at least until `REMEMBERED` other streams were closed since (RFC
  9113 5.1 lets a server limit how long it remembers a reset stream; 5.4.2);
- the streams the connection tracks stay bounded: open ones by SETTINGS_MAX_CONCURRENT_STREAMS,
  remembered (closed) ones by a small multiple of it.

Runs in the normal suite with a few examples; `make fuzz` sets `OTLP_FUZZ_EXAMPLES`.
"""

from __future__ import annotations

import asyncio
import struct

from hypothesis import given
from hypothesis import strategies as st

from otlp_ingest.transport.h2 import H2Config, H2Connection
from otlp_ingest.transport.hpack import encode_literal
from tests.fuzz import FUZZ

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x4, 0x8, 0x20
MAX_CONCURRENT = 8  # small, so bursts of streams go past it
# Closed streams a connection may remember (to answer late frames by the RFC's state rules),
# as a multiple of the concurrency limit: generous, but independent of how much a client sends.
TRACKED_FACTOR = 4
# ...and at least this many: a stream we reset is remembered (late frames on it ignored, RFC 9113
# 5.1) until this many other streams were closed after it.
REMEMBERED = 2 * MAX_CONCURRENT

RESPONSE_HEADERS = encode_literal([(b":status", b"200"), (b"content-type", b"application/grpc")])
RESPONSE_TRAILERS = encode_literal([(b"grpc-status", b"0")])


# --- the seams: one factory for the connection, a fake transport, a trivial handler ----------------


def make_connection(handler: RecordingHandler, transport: RecordingTransport) -> H2Connection:
    """The one place that knows H2Connection's constructor (it changes while h2.py is rewritten)."""
    clock = iter(range(10**9))
    config = H2Config(read_timeout=2.0, max_concurrent_streams=MAX_CONCURRENT)
    conn = H2Connection(handler, config, set(), lambda: 1000.0 + next(clock) / 1000)
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn


def tracked_streams(conn: H2Connection) -> tuple[int, int]:
    """(open streams, every stream the connection keeps state for, closed ones included)."""
    open_streams = len(conn.streams)
    remembered = getattr(conn, "closed_streams", None)
    try:
        closed = len(remembered) if remembered is not None else 0  # type: ignore[arg-type]
    except TypeError:
        closed = 0
    return open_streams, open_streams + closed


class RecordingTransport:
    """The asyncio.Transport surface H2Connection uses; records what is written and when."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, chunks: list[bytes]) -> None:
        self.write(b"".join(chunks))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError  # can_write_eof() is False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return None


class RecordingHandler:
    """A StreamHandler that answers every complete request at once and checks the call order."""

    def __init__(self) -> None:
        self.requested: dict[int, object] = {}  # id(stream) -> stream
        self.closed: dict[int, int] = {}  # id(stream) -> on_closed calls
        self.errors: list[str] = []

    def _alive(self, stream: object, what: str) -> None:
        if id(stream) not in self.requested:
            self.errors.append(f"{what} for a stream on_request never saw")
        elif self.closed.get(id(stream)):
            self.errors.append(f"{what} after on_closed")

    def on_request(self, conn: H2Connection, stream) -> None:  # type: ignore[no-untyped-def]
        if id(stream) in self.requested:
            self.errors.append("on_request twice for one stream")
        self.requested[id(stream)] = stream
        stream.max_body = 4096

    def on_body(self, conn: H2Connection, stream) -> None:  # type: ignore[no-untyped-def]
        self._alive(stream, "on_body")
        conn.respond(stream, RESPONSE_HEADERS, b"", RESPONSE_TRAILERS)

    def on_too_large(self, conn: H2Connection, stream) -> None:  # type: ignore[no-untyped-def]
        self._alive(stream, "on_too_large")
        conn.respond(stream, RESPONSE_HEADERS, b"", RESPONSE_TRAILERS)

    def on_over_budget(self, conn: H2Connection, stream) -> None:  # type: ignore[no-untyped-def]
        self._alive(stream, "on_over_budget")
        conn.respond(stream, RESPONSE_HEADERS, b"", RESPONSE_TRAILERS)

    def on_stalled(self, conn: H2Connection, stream) -> None:  # type: ignore[no-untyped-def]
        self._alive(stream, "on_stalled")
        conn.cancel(stream)

    def on_closed(self, stream) -> None:  # type: ignore[no-untyped-def]
        if id(stream) not in self.requested:
            self.errors.append("on_closed for a stream on_request never saw")
        self.closed[id(stream)] = self.closed.get(id(stream), 0) + 1


# --- generated input --------------------------------------------------------------------------------


def frame(kind: int, flags: int, stream_id: int, payload: bytes, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    return struct.pack(">I", n)[1:] + bytes((kind, flags)) + struct.pack(">I", stream_id) + payload


def literal(name: bytes, value: bytes) -> bytes:
    return b"\x00" + bytes((len(name),)) + name + bytes((len(value),)) + value


REQUEST_BLOCK = b"".join(
    literal(n, v)
    for n, v in [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/opentelemetry.proto.collector.trace.v1.TraceService/Export"),
        (b":authority", b"fuzz"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]
)
BLOCKS = st.one_of(
    st.just(REQUEST_BLOCK),
    st.just(REQUEST_BLOCK + b"\x40\x06x-fuzz\x03one"),  # adds a dynamic table entry
    st.just(b"\xbe" + REQUEST_BLOCK),  # refers to it (valid only after the one above)
    st.just(literal(b":path", b"/x") + literal(b":path", b"/y")),  # repeated pseudo-header
    st.just(REQUEST_BLOCK + literal(b"Upper", b"x")),
    st.just(b"\x3f\xe1\x1f" + REQUEST_BLOCK),  # table size update to 4096
    st.binary(max_size=40),
    st.builds(lambda cut: REQUEST_BLOCK[:cut], st.integers(0, len(REQUEST_BLOCK))),
)
STREAM_IDS = st.one_of(
    st.sampled_from([1, 3, 5, 7, 9, 11, 13, 0, 2, 4, 0x7FFFFFFF]),
    st.integers(0, 0xFFFFFFFF),  # reserved bit included
)
FLAGS = st.one_of(
    st.sampled_from([0, END_STREAM, END_HEADERS, END_STREAM | END_HEADERS]), st.integers(0, 255)
)
U32 = st.one_of(
    st.sampled_from([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 65535]), st.integers(0, 0xFFFFFFFF)
)


def padded(payload: bytes, pad: int) -> bytes:
    return bytes((pad,)) + payload + bytes(max(0, min(pad, 255)))


headers_frames = st.builds(
    lambda sid, flags, block, pad, prio: frame(
        HEADERS,
        flags,
        sid,
        (bytes((pad,)) if flags & PADDED else b"")
        + (prio if flags & PRIORITY_FLAG else b"")
        + block
        + (bytes(pad) if flags & PADDED else b""),
    ),
    STREAM_IDS,
    FLAGS,
    BLOCKS,
    st.integers(0, 20),
    st.sampled_from([b"\x00\x00\x00\x00\x10", b"\x00\x00\x00\x01\xff", b"\x80\x00\x00\x03\x00"]),
)
continuation_frames = st.builds(
    lambda sid, flags, block: frame(CONTINUATION, flags, sid, block), STREAM_IDS, FLAGS, BLOCKS
)
data_frames = st.builds(
    lambda sid, flags, body, pad: frame(DATA, flags, sid, padded(body, pad) if flags & PADDED else body),
    STREAM_IDS,
    FLAGS,
    st.one_of(
        st.just(b"\x00\x00\x00\x00\x00"), st.binary(max_size=64), st.binary(min_size=4000, max_size=5000)
    ),
    st.integers(0, 255),
)
settings_frames = st.builds(
    lambda sid, flags, pairs, extra: frame(
        SETTINGS, flags, sid, b"".join(struct.pack(">HI", k, v) for k, v in pairs) + extra
    ),
    st.sampled_from([0, 0, 0, 1]),
    st.sampled_from([0, 0, 1]),
    st.lists(st.tuples(st.integers(0, 10), U32), max_size=4),
    st.sampled_from([b"", b"", b"\x00\x01"]),
)
simple_frames = st.one_of(
    st.builds(lambda sid, inc: frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", inc)), STREAM_IDS, U32),
    st.builds(lambda sid, code: frame(RST_STREAM, 0, sid, struct.pack(">I", code)), STREAM_IDS, U32),
    st.builds(
        lambda sid, flags: frame(PING, flags, sid, b"12345678"),
        st.sampled_from([0, 0, 1]),
        st.sampled_from([0, 0, 1]),
    ),
    st.builds(lambda sid, dep: frame(PRIORITY, 0, sid, struct.pack(">IB", dep, 16)), STREAM_IDS, STREAM_IDS),
    st.builds(
        lambda sid, last, code: frame(GOAWAY, 0, sid, struct.pack(">II", last, code)),
        st.sampled_from([0, 0, 1]),
        U32,
        U32,
    ),
    st.builds(
        lambda sid, block: frame(PUSH_PROMISE, END_HEADERS, sid, b"\x00\x00\x00\x02" + block),
        STREAM_IDS,
        BLOCKS,
    ),
)
raw_frames = st.builds(
    lambda kind, flags, sid, payload, lie: frame(kind, flags, sid, payload, None if lie is None else lie),
    st.integers(0, 255),
    st.integers(0, 255),
    STREAM_IDS,
    st.binary(max_size=32),
    st.one_of(st.none(), st.none(), st.none(), st.integers(0, 1 << 24)),
)
# Many streams at once: HEADERS on successive odd ids, half of them without END_STREAM.
bursts = st.builds(
    lambda first, count, end: b"".join(
        frame(HEADERS, END_HEADERS | (END_STREAM if end and i % 2 else 0), first + 2 * i, REQUEST_BLOCK)
        for i in range(count)
    ),
    st.sampled_from([1, 15, 101]),
    st.integers(1, 3 * MAX_CONCURRENT + 5),
    st.booleans(),
)
# Mostly valid traffic on a few client streams, so that stream states (open, half-closed,
# answered, reset, remembered) are reached and then hit by the odd frame.
ODD_IDS = st.sampled_from([1, 3, 5, 7, 9, 11, 13, 15])
valid_headers = st.builds(
    lambda sid, end: frame(HEADERS, END_HEADERS | (END_STREAM if end else 0), sid, REQUEST_BLOCK),
    ODD_IDS,
    st.booleans(),
)
valid_data = st.builds(
    lambda sid, end, body: frame(DATA, END_STREAM if end else 0, sid, body),
    ODD_IDS,
    st.booleans(),
    st.sampled_from([b"\x00\x00\x00\x00\x00", b"\x00\x00\x00", b"\x00\x00", b""]),
)
valid_control = st.one_of(
    st.builds(
        lambda sid, inc: frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", inc)), ODD_IDS, st.integers(1, 99)
    ),
    st.builds(lambda sid: frame(RST_STREAM, 0, sid, struct.pack(">I", 8)), ODD_IDS),
    st.builds(lambda sid: frame(PRIORITY, 0, sid, struct.pack(">IB", 0, 16)), ODD_IDS),
    st.builds(lambda w: frame(SETTINGS, 0, 0, struct.pack(">HI", 4, w)), st.sampled_from([0, 1, 65535])),
)
MOSTLY_VALID = st.one_of(
    valid_headers, valid_data, valid_headers, valid_data, valid_control, headers_frames, data_frames, bursts
)
FRAMES = st.one_of(
    headers_frames, continuation_frames, data_frames, settings_frames, simple_frames, raw_frames, bursts
)
OPENINGS = st.one_of(
    st.just(PREFACE + frame(SETTINGS, 0, 0, b"")),
    st.just(PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 0))),  # window 0: answers wait
    st.just(PREFACE),
    st.builds(lambda junk: PREFACE[:10] + junk, st.binary(min_size=1, max_size=20)),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at the given positions (interleavings of partial frames across reads)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, last = [], 0
    for point in [*points, len(data)]:
        if point > last:
            chunks.append(data[last:point])
            last = point
    return chunks


# --- checks on what the server wrote ---------------------------------------------------------------


def parse_output(out: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) of every frame written; asserts they are whole."""
    frames, pos = [], 0
    while pos < len(out):
        assert len(out) - pos >= 9, f"a partial frame header at the end of the output: {out[pos:]!r}"
        length = int.from_bytes(out[pos : pos + 3], "big")
        kind, flags = out[pos + 3], out[pos + 4]
        sid = int.from_bytes(out[pos + 5 : pos + 9], "big")
        assert not sid & 0x80000000, "the reserved bit must be 0 when sending (RFC 9113 4.1)"
        payload = out[pos + 9 : pos + 9 + length]
        assert len(payload) == length, "a partial frame at the end of the output"
        frames.append((kind, flags, sid, payload))
        pos += 9 + length
    return frames


def check_output(out: bytes) -> None:
    frames = parse_output(out)
    assert frames and frames[0][0] == SETTINGS and not frames[0][1] & 1, "the server preface is SETTINGS"
    ended: set[int] = set()  # streams we sent END_STREAM on
    closings: list[int] = []  # stream ids, in the order we ended or reset them
    reset_at: dict[int, int] = {}  # stream id -> its position in `closings` when we reset it
    for i, (kind, flags, sid, payload) in enumerate(frames):
        if kind == GOAWAY and int.from_bytes(payload[4:8], "big") != 0:
            assert i == len(frames) - 1, (
                f"frames written after GOAWAY with an error: {[f[:3] for f in frames[i + 1 :]]}"
            )
        if not sid:
            continue
        if sid in reset_at:
            # RFC 9113 5.1: "An endpoint MUST ignore frames that it receives on closed streams
            # after it has sent a RST_STREAM frame. An endpoint MAY choose to limit the period
            # over which it ignores frames": a server with bounded memory may answer a late
            # frame with a new RST_STREAM once it has closed REMEMBERED streams since -- never
            # sooner, and never with anything but RST_STREAM.
            since = len(set(closings[reset_at[sid] :]) - {sid})
            assert kind == RST_STREAM and since >= REMEMBERED, (
                f"a frame of type {kind} on stream {sid} after our RST_STREAM "
                f"({since} other streams closed since)"
            )
        if sid in ended:
            assert kind == RST_STREAM, f"a frame of type {kind} on stream {sid} after our END_STREAM"
        if kind == RST_STREAM:
            reset_at[sid] = len(closings)
            closings.append(sid)
        elif kind in (HEADERS, DATA) and flags & END_STREAM:
            ended.add(sid)
            closings.append(sid)


async def run(opening: bytes, frames: list[bytes], cuts: list[int]) -> None:
    transport = RecordingTransport()
    handler = RecordingHandler()
    conn = make_connection(handler, transport)
    for chunk in split(opening + b"".join(frames), cuts):
        if transport.closed:
            break
        conn.data_received(chunk)
        open_streams, tracked = tracked_streams(conn)
        assert open_streams <= MAX_CONCURRENT, f"{open_streams} open streams, limit {MAX_CONCURRENT}"
        assert tracked <= TRACKED_FACTOR * MAX_CONCURRENT, f"{tracked} streams tracked"
    conn.connection_lost(None)
    assert not handler.errors, handler.errors
    never_closed = [sid for key, sid in _ids(handler).items() if handler.closed.get(key, 0) != 1]
    assert not never_closed, f"streams without exactly one on_closed: {never_closed} {handler.closed}"
    check_output(b"".join(transport.writes))


def _ids(handler: RecordingHandler) -> dict[int, int]:
    return {key: getattr(stream, "id", -1) for key, stream in handler.requested.items()}


@FUZZ
@given(OPENINGS, st.lists(FRAMES, max_size=40), st.lists(st.integers(0, 1 << 20), max_size=12))
def test_frame_sequences(opening: bytes, frames: list[bytes], cuts: list[int]) -> None:
    asyncio.run(run(opening, frames, cuts))


@FUZZ
@given(st.lists(MOSTLY_VALID, max_size=40), st.lists(st.integers(0, 1 << 16), max_size=6))
def test_stream_frames_after_a_valid_preface(frames: list[bytes], cuts: list[int]) -> None:
    """The same properties, with the preface always valid so that the stream machinery is what
    gets exercised."""
    asyncio.run(run(PREFACE + frame(SETTINGS, 0, 0, b""), frames, cuts))


def test_valid_request_is_answered() -> None:
    """The harness itself: a valid request on a valid connection is answered and closed once."""
    transport = RecordingTransport()
    handler = RecordingHandler()
    conn = make_connection(handler, transport)
    conn.data_received(
        PREFACE
        + frame(SETTINGS, 0, 0, b"")
        + frame(HEADERS, END_HEADERS, 1, REQUEST_BLOCK)
        + frame(DATA, END_STREAM, 1, b"\x00\x00\x00\x00\x00")
    )
    conn.connection_lost(None)
    frames = parse_output(b"".join(transport.writes))
    assert any(kind == HEADERS and sid == 1 and flags & END_STREAM for kind, flags, sid, _ in frames), frames
    assert list(handler.closed.values()) == [1] and not handler.errors
