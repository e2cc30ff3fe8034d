"""HTTP/2 stream states on the server side (RFC 9113 5.1), as a table.

A server never sends PUSH_PROMISE, so the reserved states do not occur:

                             +--------+
                     recv H  |        |
              ,--------------|  idle  |
             /               +--------+
            v
     +----------+   recv ES    +-------------+
     |          |------------->|  half-      |
     |   open   |              |  closed     |  send ES / R
     |          |---.          |  (remote)   |-------------.
     +----------+    \\        +-------------+              \\
        |  send ES    \\ recv R / send R                     v
        v              `---------------------------->  +--------+
     +-------------+         recv ES / R, send R        |        |
     | half-closed |----------------------------------->| closed |
     |   (local)   |                                     |        |
     +-------------+                                     +--------+

`TRANSITIONS[(state, event)]` is the next state, or a `Violation` saying which error the event is
in that state (a stream error or a connection error, and its code). A pair that is not in the
table cannot happen (the connection never produces it). `NEXT[state][event]` is the same table
indexed by position, for the hot path (a tuple index is a few times cheaper than hashing a pair
of enum members). Closed streams are not kept as objects:
`ClosedStreams` remembers the most recent ones and how they closed, because what a late frame on
a closed stream means depends on who closed it (5.1, "closed").
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import IntEnum

from otlp_ingest.transport.frames import PROTOCOL_ERROR, STREAM_CLOSED


class State(IntEnum):
    IDLE = 0
    OPEN = 1
    HALF_CLOSED_REMOTE = 2
    HALF_CLOSED_LOCAL = 3
    CLOSED = 4


class Event(IntEnum):
    RECV_HEADERS = 0  # a header block opening the stream
    RECV_TRAILERS = 1  # a second header block (it must carry END_STREAM)
    RECV_DATA = 2
    RECV_END_STREAM = 3  # the END_STREAM flag of the DATA or HEADERS just received
    RECV_RST = 4
    RECV_WINDOW_UPDATE = 5
    SEND_END_STREAM = 6
    SEND_RST = 7


@dataclass(frozen=True, slots=True)
class Violation:
    """An event the state does not allow: a stream error (RST_STREAM) or a connection error
    (GOAWAY) with `code`."""

    connection: bool
    code: int
    rule: str


_IDLE_FRAME = Violation(True, PROTOCOL_ERROR, "5.1 idle: only HEADERS or PRIORITY")
_HALF_CLOSED = Violation(False, STREAM_CLOSED, "5.1 half-closed (remote): the client ended the stream")

S, E = State, Event
TRANSITIONS: dict[tuple[State, Event], State | Violation] = {
    (S.IDLE, E.RECV_HEADERS): S.OPEN,
    (S.IDLE, E.RECV_DATA): _IDLE_FRAME,
    (S.IDLE, E.RECV_RST): _IDLE_FRAME,
    (S.IDLE, E.RECV_WINDOW_UPDATE): _IDLE_FRAME,
    (S.OPEN, E.RECV_TRAILERS): S.OPEN,
    (S.OPEN, E.RECV_DATA): S.OPEN,
    (S.OPEN, E.RECV_END_STREAM): S.HALF_CLOSED_REMOTE,
    (S.OPEN, E.RECV_RST): S.CLOSED,
    (S.OPEN, E.RECV_WINDOW_UPDATE): S.OPEN,
    (S.OPEN, E.SEND_END_STREAM): S.HALF_CLOSED_LOCAL,
    (S.OPEN, E.SEND_RST): S.CLOSED,
    (S.HALF_CLOSED_REMOTE, E.RECV_TRAILERS): _HALF_CLOSED,
    (S.HALF_CLOSED_REMOTE, E.RECV_DATA): _HALF_CLOSED,
    (S.HALF_CLOSED_REMOTE, E.RECV_RST): S.CLOSED,
    (S.HALF_CLOSED_REMOTE, E.RECV_WINDOW_UPDATE): S.HALF_CLOSED_REMOTE,
    (S.HALF_CLOSED_REMOTE, E.SEND_END_STREAM): S.CLOSED,
    (S.HALF_CLOSED_REMOTE, E.SEND_RST): S.CLOSED,
    (S.HALF_CLOSED_LOCAL, E.RECV_TRAILERS): S.HALF_CLOSED_LOCAL,
    (S.HALF_CLOSED_LOCAL, E.RECV_DATA): S.HALF_CLOSED_LOCAL,
    (S.HALF_CLOSED_LOCAL, E.RECV_END_STREAM): S.CLOSED,
    (S.HALF_CLOSED_LOCAL, E.RECV_RST): S.CLOSED,
    (S.HALF_CLOSED_LOCAL, E.RECV_WINDOW_UPDATE): S.HALF_CLOSED_LOCAL,
    (S.HALF_CLOSED_LOCAL, E.SEND_RST): S.CLOSED,
}
NEXT: tuple[tuple[State | Violation | None, ...], ...] = tuple(
    tuple(TRANSITIONS.get((state, event)) for event in Event) for state in State
)
del S, E


class Closed(IntEnum):
    """How a remembered closed stream closed: what a late frame on it means (RFC 9113 5.1)."""

    ENDED = 0  # both sides sent END_STREAM: DATA or HEADERS now is STREAM_CLOSED
    RESET_BY_US = 1  # the client may not have seen our RST_STREAM yet: its frames are ignored
    RESET_BY_PEER = 2  # the client reset it: anything but PRIORITY is STREAM_CLOSED


class ClosedStreams:
    """The most recently closed streams of a connection and how each closed, at most `capacity`
    (the oldest forgotten first): bounded memory, unlike a set of every stream id ever seen."""

    __slots__ = ("_capacity", "_closed")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._closed: OrderedDict[int, Closed] = OrderedDict()

    def add(self, stream_id: int, how: Closed) -> None:
        closed = self._closed
        closed[stream_id] = how
        if len(closed) > self._capacity:
            closed.popitem(last=False)

    def get(self, stream_id: int) -> Closed | None:
        return self._closed.get(stream_id)

    def __len__(self) -> int:
        return len(self._closed)


class Stream:
    """One request stream: its state, headers, the body received so far, flow-control windows
    and the bytes it holds of the worker's admission budget."""

    __slots__ = (
        "chunks",
        "content_length",
        "context",
        "handled",
        "headers",
        "held",
        "id",
        "max_body",
        "opened",
        "received",
        "recv_window",
        "responded",
        "send_window",
        "stalled_since",
        "state",
        "unacked",
    )

    def __init__(
        self, stream_id: int, headers: dict[bytes, bytes], send_window: int, recv_window: int, opened: float
    ) -> None:
        self.id = stream_id
        self.state = State.OPEN
        self.headers = headers
        self.chunks: list[bytes] = []
        self.received = 0  # body bytes received (padding excluded)
        self.content_length = -1  # the request's content-length, -1: none
        self.max_body = 0  # set by the handler; more than this -> on_too_large
        self.held = 0  # body bytes charged to the admission budget, not yet released
        self.unacked = 0  # bytes consumed since our last stream WINDOW_UPDATE
        self.recv_window = recv_window  # what the client may still send before our WINDOW_UPDATE
        self.send_window = send_window
        self.opened = opened
        self.stalled_since = 0.0  # when our answer started waiting for the client's window
        self.responded = False  # our answer is queued or sent (END_STREAM maybe still waiting)
        self.handled = False  # the handler saw it (on_request): on_closed is owed
        self.context: object = None  # the handler's per-stream state

    @property
    def remote_closed(self) -> bool:
        """The client's side is done (its END_STREAM, or a reset)."""
        return self.state in (State.HALF_CLOSED_REMOTE, State.CLOSED)

    def body(self) -> bytes:
        chunks = self.chunks
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)
