"""The well-known HTTP/2 denial-of-service classes against the gRPC port (:4317), one test each.

The abuser speaks raw HTTP/2 (`hyperframe` frames and `hpack` blocks over a plain socket, never
the server's own code) to the one worker that the legitimate gRPC and HTTP clients of `Attack`
use at the same time (conftest.py). Each test says what the abuser must see (GOAWAY with
ENHANCE_YOUR_CALM where that fits, RST_STREAM, or a close) and by when, which defence counter
must move, and `Attack` adds what must not happen: a legitimate call failing or slower than 1 s
at p99, the worker growing by 50 MiB or more, the worker restarting.

Issue 20 ("Known attacks") is the list; docs/hostile-input.md names the limits.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import itertools
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable

import grpc
import hpack
import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.transport.attacks.conftest import (
    CALL_TIMEOUT,
    LEGIT_BODY,
    READ_TIMEOUT,
    TRACE_METHOD,
    WRITE_TIMEOUT,
    Attack,
    Gateway,
    KiB,
    MiB,
    Sender,
    close_all,
    closed_by_server,
    dropped,
    expect_all_closed,
    raw_socket,
    tcp_state,
)
from tests.transport.h2peer import error_name, grpc_message, hpack_int, literal

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
DEFAULT_FRAME_SIZE = 16384
DEFAULT_TABLE_SIZE = 4096
NO_ERROR = ErrorCodes.NO_ERROR
ENHANCE_YOUR_CALM = ErrorCodes.ENHANCE_YOUR_CALM
TCP_CLOSE = 7  # the kernel's state of a connection the peer reset
ATTACK_SECONDS = 3.0  # how long a flood goes on if nothing stops it first
SMALL_BUFFER = 64 * KiB  # the socket buffers of an abuser that must bite at once
# What a peer that never reads may get the server to take from it: the kernel's buffers (up to
# tcp_rmem's 32 MiB maximum here, when autotuning grew them before the server stopped reading)
# and the server's own bounded buffers. Without the defence it is gigabytes.
UNREAD_MAX = 40 * MiB


def hpack_str(data: bytes) -> bytes:
    return hpack_int(len(data), 7) + data  # not Huffman-coded


def export_headers(path: str = TRACE_METHOD) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "127.0.0.1"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]


def plain_block(headers: list[tuple[str, str]]) -> bytes:
    """A header block of literals only (for connections whose dynamic table the test manages)."""
    return b"".join(literal(n.encode(), v.encode()) for n, v in headers)


def headers_frame(stream_id: int, block: bytes, end_stream: bool = False, end_headers: bool = True) -> bytes:
    flags = (["END_HEADERS"] if end_headers else []) + (["END_STREAM"] if end_stream else [])
    return HeadersFrame(stream_id, data=block, flags=flags).serialize()


def data_frame(stream_id: int, data: bytes, end_stream: bool = False) -> bytes:
    return DataFrame(stream_id, data=data, flags=["END_STREAM"] if end_stream else []).serialize()


# ------------------------------------------------------------------------------------ the abuser


class H2Abuser:
    """One raw HTTP/2 connection to the gRPC port: preface and SETTINGS (ours: `settings`), the
    server's SETTINGS read and acknowledged, then whatever the test sends (`out`, a `Sender`).

    With `read`, a thread reads everything the server sends and records GOAWAY, RST_STREAM and
    streams the server ended; it never answers anything (an abuser acknowledges nothing). Without
    it nothing is read after the handshake: a peer that never reads."""

    def __init__(
        self,
        gw: Gateway,
        settings: dict[int, int] | None = None,
        *,
        read: bool = True,
        window_boost: bool = True,
        rcvbuf: int = 0,
        sndbuf: int = 0,
    ) -> None:
        self.gw = gw
        self.sock = raw_socket(gw.grpc_address, rcvbuf=rcvbuf, sndbuf=sndbuf)
        self.out = Sender(self.sock)
        self.encoder = hpack.Encoder()
        self.server_settings: dict[int, int] = {}
        self.goaways: list[tuple[int, int, float]] = []  # (last stream id, error code, seconds)
        self.resets: dict[int, tuple[int, float]] = {}  # stream -> (error code, seconds)
        self.ended: dict[int, float] = {}  # streams the server ended (END_STREAM) -> seconds
        self.frames_in = 0
        self.bad_frames: list[str] = []
        self.closed_how = ""
        self.closed_at: float | None = None  # seconds after `started`
        self._buf = bytearray()
        self._got_settings = False
        self._stop = threading.Event()
        self.started = time.monotonic()
        hello = PREFACE + SettingsFrame(0, settings=settings or {}).serialize()
        if window_boost:  # responses must never wait for our connection window
            hello += WindowUpdateFrame(0, window_increment=MAX_WINDOW - DEFAULT_WINDOW).serialize()
        self.sock.sendall(hello)
        deadline = time.monotonic() + 5.0
        while not self._got_settings:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection during the handshake"
            self._feed(data)
            assert time.monotonic() < deadline, "no SETTINGS from the server"
        self.sock.sendall(SettingsFrame(0, flags=["ACK"]).serialize())
        self.sock.settimeout(0.5)  # a write that makes no progress for this long is 'blocked'
        self._reader: threading.Thread | None = None
        if read:
            self._reader = threading.Thread(target=self._read, daemon=True, name="h2-abuser-reader")
            self._reader.start()

    # -- reading

    def now(self) -> float:
        return time.monotonic() - self.started

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(1 << 18)
            except TimeoutError:
                continue
            except OSError as exc:
                self._closed(f"read failed: {exc!r}")
                return
            if not data:
                self._closed("end of stream from the server")
                return
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos : pos + 3], "big")
            if len(buf) - pos - 9 < length:
                break
            try:
                frame, _ = Frame.parse_frame_header(memoryview(bytes(buf[pos : pos + 9])))
                frame.parse_body(memoryview(bytes(buf[pos + 9 : pos + 9 + length])))
            except HyperframeError as exc:
                self.bad_frames.append(repr(exc))
            else:
                self._on_frame(frame)
            pos += 9 + length
        del buf[:pos]

    def _on_frame(self, frame: Frame) -> None:
        self.frames_in += 1
        now = self.now()
        if isinstance(frame, SettingsFrame):
            if "ACK" not in frame.flags:
                self.server_settings.update(frame.settings)
                self._got_settings = True
        elif isinstance(frame, GoAwayFrame):
            self.goaways.append((frame.last_stream_id, frame.error_code, now))
        elif isinstance(frame, RstStreamFrame):
            self.resets.setdefault(frame.stream_id, (frame.error_code, now))
        elif isinstance(frame, HeadersFrame | DataFrame) and "END_STREAM" in frame.flags:
            self.ended.setdefault(frame.stream_id, now)

    def _closed(self, how: str) -> None:
        if self.closed_at is None:
            self.closed_at = self.now()
            self.closed_how = how

    def post_mortem(self, timeout: float = 1.0) -> None:
        """After a peer that never read is done: read what the server left in our socket (its
        GOAWAY, if any), until the end or `timeout`."""
        if self._reader is not None:
            return
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(1 << 18)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            self._feed(data)

    # -- state

    @property
    def sent(self) -> int:
        return self.out.sent

    @property
    def goaway(self) -> tuple[int, int, float] | None:
        """The first GOAWAY with an error code, else the last one, else None."""
        return next((g for g in self.goaways if g[1] != NO_ERROR), self.goaways[-1] if self.goaways else None)

    @property
    def error_goaway(self) -> tuple[int, int, float] | None:
        return next((g for g in self.goaways if g[1] != NO_ERROR), None)

    def is_closed(self) -> bool:
        """The connection is over. With a reader: it saw the end (so it has seen every frame
        before it, a GOAWAY included). Without one: a write failed, or the kernel says the
        server closed or reset the connection."""
        if self.closed_at is None and self._reader is None:
            if self.out.closed:
                self._closed(self.out.closed)
            elif closed_by_server(self.sock):
                self._closed("closed by the server (TCP state)")
        return self.closed_at is not None

    def is_dropped(self) -> bool:
        """Closed, or the worker no longer holds its end (a FIN may wait behind unread data)."""
        if self.is_closed():
            return True
        if dropped(self.gw, self.sock):
            self._closed("the worker no longer holds the connection")
            return True
        return False

    def finished(self, stream_id: int) -> bool:
        """The server is done with `stream_id`: reset, ended, beyond an error GOAWAY, or closed."""
        if stream_id in self.resets or stream_id in self.ended or self.closed_at is not None:
            return True
        goaway = self.error_goaway
        return goaway is not None and stream_id > goaway[0]

    def wait(self, predicate: Callable[[], bool], until: float, interval: float = 0.02) -> bool:
        """Poll `predicate` until it holds or `until` (monotonic)."""
        while not predicate():
            if time.monotonic() >= until:
                return False
            time.sleep(interval)  # polling with a deadline
        return True

    def describe(self) -> str:
        parts = [f"abuser sent {self.sent / MiB:.2f} MiB, received {self.frames_in} frames"]
        for last, code, at in self.goaways:
            parts.append(f"GOAWAY {error_name(code)} (last stream {last}) at {at:.2f}s")
        if not self.goaways:
            parts.append("no GOAWAY")
        if self.resets:
            codes = collections.Counter(error_name(c) for c, _ in self.resets.values())
            first = min(t for _, t in self.resets.values())
            parts.append(f"RST_STREAM on {len(self.resets)} streams {dict(codes)} (first at {first:.2f}s)")
        if self.ended:
            parts.append(f"{len(self.ended)} streams answered")
        if self.out.first_blocked is not None:
            parts.append(f"writes first blocked at {self.out.first_blocked - self.started:.2f}s")
        if self.closed_at is not None:
            parts.append(f"closed at {self.closed_at:.2f}s ({self.closed_how})")
        else:
            parts.append("connection still open")
        if self.bad_frames:
            parts.append(f"unparsable frames: {self.bad_frames[:3]}")
        return "; ".join(parts)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader's recv at once
        if self._reader is not None:
            self._reader.join(2)
        close_all([self.sock])


def expect_goaway_or_close(a: Attack, ab: H2Abuser, within: float, codes: tuple[int, ...] = ()) -> None:
    """The connection ended (an error GOAWAY, or closed) within `within` s of the handshake; with
    `codes`, a GOAWAY's code must be one of them."""
    ended = [g[2] for g in ab.goaways if g[1] != NO_ERROR]
    if ab.closed_at is not None:
        ended.append(ab.closed_at)
    a.expect(ended and min(ended) <= within, f"expected GOAWAY or a close within {within:.1f}s")
    goaway = ab.error_goaway
    if codes and goaway is not None:
        names = " or ".join(error_name(c) for c in codes)
        a.expect(goaway[1] in codes, f"expected GOAWAY {names}, got {error_name(goaway[1])}")


# ----------------------------------------------------------------------------------- the tests


@pytest.mark.parametrize(
    "reset_by", ["client", "server"], ids=["client-resets", "server-resets-cve-2025-8671"]
)
def test_rapid_reset_cve_2023_44487_gets_goaway_enhance_your_calm(
    gateway: Gateway, attack, reset_by: str
) -> None:
    """HEADERS then RST_STREAM(CANCEL), as fast as the abuser can: each stream costs the server
    a request set-up and no concurrency slot is ever held, so only counting resets stops it.
    The same with resets the server is made to send ("MadeYouReset", CVE-2025-8671): HEADERS
    then a WINDOW_UPDATE of 0 on the stream, a stream error the server answers with RST_STREAM."""
    with attack("grpc", "rapid_reset") as a:
        ab = H2Abuser(gateway)
        try:
            headers = export_headers()
            ids = itertools.count(1, 2)

            def chunk() -> bytes:
                out = []
                for _ in range(200):
                    sid = next(ids)
                    out.append(headers_frame(sid, ab.encoder.encode(headers)))
                    if reset_by == "client":
                        out.append(RstStreamFrame(sid, error_code=ErrorCodes.CANCEL).serialize())
                    else:
                        out.append(WindowUpdateFrame(sid, window_increment=0).serialize())
                return b"".join(out)

            until = ab.started + ATTACK_SECONDS
            ab.out.flood(chunk, until, stop=lambda: bool(ab.goaways) or ab.is_closed() or a.stopped)
            ab.wait(lambda: ab.error_goaway is not None or ab.is_closed(), until)
            a.note(
                f"rapid reset ({reset_by}): {(next(ids) - 1) // 2} streams opened and reset; {ab.describe()}"
            )
            goaway = ab.error_goaway
            a.expect(goaway is not None, "expected GOAWAY ENHANCE_YOUR_CALM, got none")
            if goaway is not None:
                a.expect(
                    goaway[1] == ENHANCE_YOUR_CALM, f"GOAWAY {error_name(goaway[1])}, not ENHANCE_YOUR_CALM"
                )
                a.expect(goaway[2] <= 2.0, f"GOAWAY came {goaway[2]:.2f}s into the attack (limit 2s)")
        finally:
            ab.close()


@pytest.mark.parametrize("fragment", [0, DEFAULT_FRAME_SIZE], ids=["empty-frames", "past-the-header-limit"])
def test_continuation_flood_cve_2024_27316_is_cut_off(gateway: Gateway, attack, fragment: int) -> None:
    """HEADERS without END_HEADERS, then CONTINUATION frames that never end the block: empty
    ones (nothing to count in bytes, only frames) or full ones carrying a header value that
    never ends, far past SETTINGS_MAX_HEADER_LIST_SIZE. The connection must end at once, without
    the per-frame work growing with the block (the legitimate p99 says so)."""
    reason = "continuation_flood" if not fragment else ("continuation_flood", "header_list_too_large")
    with attack("grpc", reason) as a:
        ab = H2Abuser(gateway)
        try:
            block = plain_block(export_headers())
            if fragment:  # a literal header whose value claims 1 GiB; the fragments are its bytes
                block += b"\x10" + hpack_str(b"x-flood") + hpack_int(1 << 30, 7)
            ab.out.send(headers_frame(1, block, end_headers=False))
            frame = ContinuationFrame(1, data=b"a" * fragment).serialize()
            chunk = frame * (16 if fragment else 20000)
            until = ab.started + ATTACK_SECONDS
            ab.out.flood(lambda: chunk, until, stop=lambda: bool(ab.goaways) or ab.is_closed() or a.stopped)
            ab.wait(ab.is_closed, until)
            a.note(f"CONTINUATION flood ({fragment}-byte fragments): {ab.describe()}")
            expect_goaway_or_close(
                a,
                ab,
                within=1.5,
                codes=(ENHANCE_YOUR_CALM, ErrorCodes.PROTOCOL_ERROR, ErrorCodes.COMPRESSION_ERROR),
            )
            a.expect(ab.is_closed(), "the connection was not closed")
        finally:
            ab.close()


@pytest.mark.parametrize("shape", ["big-table-entry", "empty-values-cve-2019-9516"])
def test_hpack_bomb_is_refused_without_decoding_it(gateway: Gateway, attack, shape: str) -> None:
    """Header blocks that decode to far more than they weigh, each one HEADERS frame no larger
    than the server's header list limit (so no limit on compressed bytes or frames applies):
    a ~4 KiB entry in the HPACK dynamic table, then blocks of 1-byte references to it (~64 MiB
    decoded each); or blocks of thousands of 1-byte names with empty values, each counted with
    RFC 7541's 32 bytes of overhead (CVE-2019-9516). Each must be refused, or the connection
    closed, once the decoded size is past the limit, not decoded whole."""
    reasons = "hpack_bomb" if shape == "big-table-entry" else ("hpack_bomb", "header_list_too_large")
    with attack("grpc", reasons) as a:
        ab = H2Abuser(gateway)
        try:
            pseudo = plain_block(export_headers())
            size = min(
                ab.server_settings.get(SettingCodes.MAX_FRAME_SIZE, DEFAULT_FRAME_SIZE),
                ab.server_settings.get(SettingCodes.MAX_HEADER_LIST_SIZE, DEFAULT_FRAME_SIZE),
            )
            if shape == "big-table-entry":
                table = ab.server_settings.get(SettingCodes.HEADER_TABLE_SIZE, DEFAULT_TABLE_SIZE)
                value = max(1, min(4000, table - 32 - len(b"x-bomb")))
                # Literal with incremental indexing, new name: becomes dynamic entry 62 (0xbe).
                insert = b"\x40" + hpack_str(b"x-bomb") + hpack_str(b"b" * value)
                ab.out.send(headers_frame(1, pseudo + insert, end_stream=True))
                field, decoded = b"\xbe", value + len(b"x-bomb") + 32
            else:
                field, decoded = literal(b"x", b""), 1 + 32
            bomb = pseudo + field * ((size - len(pseudo)) // len(field))
            ids = itertools.count(3, 2)
            bombs: list[int] = []

            def chunk() -> bytes:
                sid = next(ids)
                bombs.append(sid)
                return headers_frame(sid, bomb, end_stream=True)

            until = ab.started + ATTACK_SECONDS
            ab.out.flood(
                chunk, until, stop=lambda: ab.error_goaway is not None or ab.is_closed() or a.stopped
            )
            all_refused = ab.wait(lambda: all(ab.finished(s) for s in bombs), until + 1.0)
            a.note(
                f"HPACK bomb ({shape}): {len(bombs)} blocks of {len(bomb)} bytes, "
                f"{(len(bomb) - len(pseudo)) // len(field) * decoded / MiB:.1f} MiB decoded each; "
                f"{ab.describe()}"
            )
            unanswered = [s for s in bombs if not ab.finished(s)]
            a.expect(
                all_refused,
                f"{len(unanswered)} of {len(bombs)} bomb streams neither refused nor cut off by GOAWAY/close "
                f"(first {unanswered[:5]})",
            )
        finally:
            ab.close()


@pytest.mark.parametrize("kind", ["settings", "ping", "priority", "window-update-on-a-closed-stream"])
def test_control_frame_flood_from_a_peer_that_never_reads(gateway: Gateway, attack, kind: str) -> None:
    """Frames that do no work, from a peer that never reads: SETTINGS or PING (each demands an
    ACK that must not pile up in the worker, CVE-2019-9515/-9512), PRIORITY (CVE-2019-9513) or
    WINDOW_UPDATE on a closed stream. A bound on them (Go's is 10,000 queued control frames)
    must end the connection, and nothing may grow meanwhile."""
    with attack("grpc", "control_flood") as a:
        ab = H2Abuser(gateway, read=False, rcvbuf=SMALL_BUFFER)
        try:
            if kind == "settings":
                frame = SettingsFrame(0, settings={SettingCodes.ENABLE_PUSH: 0}).serialize()
            elif kind == "ping":
                frame = PingFrame(0, opaque_data=b"abusive!").serialize()
            else:  # on stream 1, closed at once by the client
                block = ab.encoder.encode(export_headers())
                ab.out.send(
                    headers_frame(1, block) + RstStreamFrame(1, error_code=ErrorCodes.CANCEL).serialize()
                )
                if kind == "priority":
                    frame = PriorityFrame(1, depends_on=0, stream_weight=16).serialize()
                else:
                    frame = WindowUpdateFrame(1, window_increment=1).serialize()
            chunk = frame * 4096
            until = ab.started + WRITE_TIMEOUT + 3.0
            ab.out.flood(lambda: chunk, until, stop=lambda: ab.is_closed() or a.stopped)
            closed = ab.wait(ab.is_dropped, until, interval=0.1)
            ab.post_mortem()
            a.note(f"{kind} flood, never reading: {ab.describe()}")
            a.expect(closed, f"the connection was still served {until - ab.started:.1f}s into the flood")
            goaway = ab.error_goaway
            if goaway is not None:
                a.expect(
                    goaway[1] == ENHANCE_YOUR_CALM, f"GOAWAY {error_name(goaway[1])}, not ENHANCE_YOUR_CALM"
                )
        finally:
            ab.close()


def test_empty_data_frames_flood_cve_2019_9518_gets_enhance_your_calm(gateway: Gateway, attack) -> None:
    """Zero-length DATA frames without END_STREAM on an open stream: no bytes to count against
    any window or limit, only frames; the server must count those."""
    with attack("grpc", "empty_frames") as a:
        ab = H2Abuser(gateway)
        try:
            ab.out.send(headers_frame(1, ab.encoder.encode(export_headers())))
            chunk = data_frame(1, b"") * 20000
            until = ab.started + ATTACK_SECONDS
            ab.out.flood(lambda: chunk, until, stop=lambda: bool(ab.goaways) or ab.is_closed() or a.stopped)
            ab.wait(lambda: ab.error_goaway is not None or ab.is_closed(), until)
            a.note(f"empty DATA frames: {ab.describe()}")
            goaway = ab.error_goaway
            a.expect(goaway is not None, "expected GOAWAY ENHANCE_YOUR_CALM, got none")
            if goaway is not None:
                a.expect(
                    goaway[1] == ENHANCE_YOUR_CALM, f"GOAWAY {error_name(goaway[1])}, not ENHANCE_YOUR_CALM"
                )
                # Before the body deadline could end the stream: the frame count acted.
                a.expect(goaway[2] < READ_TIMEOUT, f"GOAWAY only {goaway[2]:.2f}s into the flood")
        finally:
            ab.close()


def _server_rx_queue(server_port: int, client_port: int) -> int | None:
    """Bytes the kernel holds for the worker's end of this connection, not yet read by it
    (/proc/net/tcp's rx_queue of the socket from `server_port` to `client_port`); None once that
    socket is gone (a reset connection: what it held is unknown, and was never read)."""
    local = f":{server_port:04X}"
    remote = f":{client_port:04X}"
    with open("/proc/net/tcp") as table:
        for line in table:
            fields = line.split()
            if len(fields) > 4 and fields[1].endswith(local) and fields[2].endswith(remote):
                return int(fields[4].split(":")[1], 16)
    return None


def _unacked(sock: socket.socket) -> int:
    """Bytes still in our own send queue (not yet acknowledged by the server's kernel)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]


@pytest.mark.parametrize("closed_by", ["answer", "client-reset"])
def test_data_flood_on_a_closed_stream_is_stopped_within_a_few_mib(
    gateway: Gateway, attack, closed_by: str
) -> None:
    """DATA frames on a stream that is closed (answered, or reset by the client), ignoring flow
    control and going on after any GOAWAY until the connection is gone: STREAM_CLOSED, then the
    server must stop reading before it has read more than a few MiB in all, lingering included
    (the bug: 7.6 GB read, each byte credited back to the connection window).

    What the server read is measured, not guessed: the bytes sent, less what is still in our
    send queue and in the worker's receive queue (/proc/net/tcp), after every 256 KiB."""
    accepted_max = 4 * MiB
    with attack("grpc", "discarded_data") as a:
        ab = H2Abuser(gateway, sndbuf=SMALL_BUFFER)
        try:
            block = ab.encoder.encode(export_headers())
            if closed_by == "answer":
                ab.out.send(
                    headers_frame(1, block) + data_frame(1, grpc_message(LEGIT_BODY), end_stream=True)
                )
                answered = ab.wait(lambda: 1 in ab.ended or 1 in ab.resets, time.monotonic() + CALL_TIMEOUT)
                a.expect(answered, "the call before the flood was not answered")
            else:
                ab.out.send(
                    headers_frame(1, block) + RstStreamFrame(1, error_code=ErrorCodes.CANCEL).serialize()
                )
            frame_size = ab.server_settings.get(SettingCodes.MAX_FRAME_SIZE, DEFAULT_FRAME_SIZE)
            chunk = data_frame(1, b"x" * frame_size) * (256 * KiB // frame_size)
            start_sent = ab.sent
            server_port, client_port = gateway.grpc_address[1], ab.sock.getsockname()[1]
            accepted = before_goaway = 0
            until = time.monotonic() + 6.0
            while time.monotonic() < until and not a.stopped:
                if ab.out.send(b"" if ab.out.rest else chunk) == "closed":
                    break
                if tcp_state(ab.sock) == TCP_CLOSE:  # reset: what the worker had queued is gone
                    break
                queued = _server_rx_queue(server_port, client_port)
                if queued is not None:
                    accepted = max(accepted, ab.sent - start_sent - _unacked(ab.sock) - queued)
                    if not ab.goaways:
                        before_goaway = accepted
            gone = ab.wait(ab.is_dropped, until)
            a.note(
                f"DATA on a closed stream ({closed_by}): the server read ~{accepted / MiB:.2f} MiB of it "
                f"in all, ~{before_goaway / MiB:.2f} MiB before any GOAWAY; {ab.describe()}"
            )
            reset = ab.resets.get(1)
            goaway = ab.error_goaway
            a.expect(
                (reset is not None and reset[0] == ErrorCodes.STREAM_CLOSED) or goaway is not None,
                "expected RST_STREAM STREAM_CLOSED on the closed stream, or an error GOAWAY",
            )
            a.expect(gone, "the connection was not closed: the flood goes on")
            a.expect(
                accepted <= accepted_max,
                f"the server read {accepted / MiB:.1f} MiB of the flood (limit {accepted_max // MiB} MiB)",
            )
        finally:
            ab.close()


def test_zero_window_client_does_not_hold_the_worker(gateway: Gateway, attack) -> None:
    """SETTINGS_INITIAL_WINDOW_SIZE 0 and 200 complete Export calls, never a WINDOW_UPDATE: no
    answer can be sent. Legitimate clients must not notice (the calls must not keep admission
    slots), and the abuser's streams end once OTLP_WRITE_TIMEOUT has passed."""
    with attack("grpc", "window_stalled") as a:
        ab = H2Abuser(gateway, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0}, window_boost=False)
        try:
            headers = export_headers()
            calls = list(range(1, 401, 2))
            message = grpc_message(LEGIT_BODY)
            ab.out.send(
                b"".join(
                    headers_frame(sid, ab.encoder.encode(headers)) + data_frame(sid, message, end_stream=True)
                    for sid in calls
                )
            )
            sent_at = ab.now()
            until = time.monotonic() + WRITE_TIMEOUT + 3.0
            done = ab.wait(lambda: all(ab.finished(s) for s in calls), until)
            ends = [ab.resets[s][1] if s in ab.resets else ab.ended.get(s, ab.closed_at) for s in calls]
            latest = max((t for t in ends if t is not None), default=0.0)
            a.note(
                f"zero window: 200 calls sent at {sent_at:.2f}s, "
                f"{sum(1 for s in calls if ab.finished(s))} ended, the last at {latest:.2f}s; {ab.describe()}"
            )
            a.expect(
                done,
                f"{sum(1 for s in calls if not ab.finished(s))} of 200 stalled calls still open "
                f"{WRITE_TIMEOUT + 3.0:.0f}s after they were sent (OTLP_WRITE_TIMEOUT {WRITE_TIMEOUT:.0f}s)",
            )
        finally:
            ab.close()


def test_slow_reader_is_not_read_and_is_closed_after_the_write_timeout(gateway: Gateway, attack) -> None:
    """A peer that never reads, pipelining calls to an unknown method with a long path: each
    14-byte request (the path is in the HPACK table) earns an UNIMPLEMENTED that echoes the path
    (~2.5 KB). The worker must stop reading it once its answers are not taken, and close it
    after OTLP_WRITE_TIMEOUT; its memory must not fill with unsent answers."""
    with attack("grpc", "write_stalled") as a:
        ab = H2Abuser(gateway, read=False, rcvbuf=SMALL_BUFFER, sndbuf=SMALL_BUFFER)
        try:
            path = "/opentelemetry.proto.collector.trace.v1.TraceService/" + "N" * 1000
            headers = export_headers(path)
            ids = itertools.count(1, 2)

            def chunk() -> bytes:
                return b"".join(
                    headers_frame(next(ids), ab.encoder.encode(headers), end_stream=True) for _ in range(1000)
                )

            until = ab.started + WRITE_TIMEOUT + 4.0
            ab.out.flood(chunk, until, stop=lambda: ab.is_closed() or a.stopped)
            closed = ab.wait(ab.is_dropped, until, interval=0.1)
            ab.post_mortem()
            a.note(f"slow reader: {(next(ids) - 1) // 2} calls sent; {ab.describe()}")
            a.expect(
                ab.sent <= UNREAD_MAX,
                f"the server took {ab.sent / MiB:.0f} MiB from a peer that reads nothing (limit "
                f"{UNREAD_MAX // MiB} MiB, kernel buffers included): it does not stop reading it",
            )
            a.expect(
                closed, f"the connection was still held {until - ab.started:.1f}s after the attack began"
            )
        finally:
            ab.close()


def test_a_thousand_streams_on_one_connection_are_refused_beyond_the_limit(gateway: Gateway, attack) -> None:
    """1,000 request streams opened at once on one connection, none sending its body: those
    beyond SETTINGS_MAX_CONCURRENT_STREAMS are refused (REFUSED_STREAM or PROTOCOL_ERROR) at once,
    legitimate clients are not locked out by the others, which end at the read timeout."""
    with attack("grpc", "too_many_streams") as a:
        ab = H2Abuser(gateway)
        try:
            limit = ab.server_settings.get(SettingCodes.MAX_CONCURRENT_STREAMS)
            a.expect(limit is not None, "the server advertises no SETTINGS_MAX_CONCURRENT_STREAMS")
            headers = export_headers()
            streams = list(range(1, 2001, 2))
            ab.out.send(b"".join(headers_frame(sid, ab.encoder.encode(headers)) for sid in streams))
            sent_at = ab.now()
            refusals = (ErrorCodes.REFUSED_STREAM, ErrorCodes.PROTOCOL_ERROR)

            def refused(s: int) -> bool:
                """Told it was not processed (so a client may retry it): REFUSED_STREAM or
                PROTOCOL_ERROR, or above an error GOAWAY's last stream id."""
                goaway = ab.error_goaway
                return (s in ab.resets and ab.resets[s][0] in refusals) or (
                    goaway is not None and s > goaway[0]
                )

            beyond = streams[limit:] if limit else []
            ab.wait(lambda: all(refused(s) for s in beyond), time.monotonic() + 1.0)
            not_refused = [s for s in beyond if not refused(s)]
            until = time.monotonic() + READ_TIMEOUT + 2.5
            all_ended = ab.wait(lambda: all(ab.finished(s) for s in streams), until)
            a.note(
                f"1,000 streams (limit {limit}): {len(beyond) - len(not_refused)} of the {len(beyond)} "
                f"beyond the limit refused within 1s of {sent_at:.2f}s; {ab.describe()}"
            )
            a.expect(
                not not_refused,
                f"{len(not_refused)} of the {len(beyond)} streams beyond the limit were neither refused "
                f"(RST_STREAM REFUSED_STREAM/PROTOCOL_ERROR) nor above an error GOAWAY's last stream id "
                f"within 1s: {not_refused[:5]}",
            )
            a.expect(
                all_ended,
                f"{sum(1 for s in streams if not ab.finished(s))} streams still open after the read timeout",
            )
        finally:
            ab.close()


def test_a_thousand_half_sent_requests_do_not_lock_out_legitimate_calls(gateway: Gateway, attack) -> None:
    """1,000 Export calls over 50 connections, each sending its headers and half its message,
    then nothing. Admission counts bytes, not calls: the legitimate calls are not refused; the
    stalled ones are reset once the read timeout has passed."""
    with attack("grpc", "body_timeout") as a:
        abusers: list[H2Abuser] = []
        try:
            headers = export_headers()
            half = b"\x00" + (1000).to_bytes(4, "big") + b"h" * 500  # a 1,000-byte message, 500 sent
            calls = list(range(1, 41, 2))
            for _ in range(50):
                ab = H2Abuser(gateway)
                abusers.append(ab)
                ab.out.send(
                    b"".join(
                        headers_frame(s, ab.encoder.encode(headers)) + data_frame(s, half) for s in calls
                    )
                )
            sent_at = time.monotonic()
            until = sent_at + READ_TIMEOUT + 2.5
            for ab in abusers:
                ab.wait(lambda ab=ab: all(ab.finished(s) for s in calls), until)
            open_calls = sum(1 for ab in abusers for s in calls if not ab.finished(s))
            early = sum(
                1
                for ab in abusers
                for s in calls
                if s in ab.resets and ab.started + ab.resets[s][1] < sent_at + READ_TIMEOUT / 2
            )
            codes = collections.Counter(error_name(c) for ab in abusers for c, _ in ab.resets.values())
            a.note(
                f"1,000 half-sent calls on 50 connections: {open_calls} still open, "
                f"{early} reset before half the read timeout, resets {dict(codes)}; "
                f"first abuser: {abusers[0].describe()}"
            )
            a.expect(
                open_calls == 0, f"{open_calls} of 1,000 stalled calls still open after the read timeout"
            )
        finally:
            for ab in abusers:
                ab.close()


def test_two_thousand_unfinished_header_blocks_are_closed_after_the_read_timeout(
    gateway: Gateway, attack
) -> None:
    """2,000 connections, each with a HEADERS frame without END_HEADERS, then silence: each holds
    a partial header block (1 KiB under the server's header list limit, at most one 16 KiB frame,
    so no size limit acts) until the read timeout closes it."""
    with attack("grpc", "header_timeout") as a:
        socks = []
        try:
            probe = H2Abuser(gateway, read=False)
            probe.close()
            size = min(
                probe.server_settings.get(SettingCodes.MAX_FRAME_SIZE, DEFAULT_FRAME_SIZE),
                probe.server_settings.get(SettingCodes.MAX_HEADER_LIST_SIZE, DEFAULT_FRAME_SIZE),
            )
            block = plain_block(export_headers()) + b"\x10" + hpack_str(b"x-pending") + hpack_int(1 << 20, 7)
            block += b"p" * (size - KiB - len(block))
            hello = PREFACE + SettingsFrame(0).serialize() + headers_frame(1, block, end_headers=False)
            for _ in range(2000):
                if a.stopped:
                    break
                sock = raw_socket(gateway.grpc_address)
                socks.append(sock)
                sock.sendall(hello)
            connected = a.elapsed()
            expect_all_closed(
                a,
                socks,
                2000,
                time.monotonic() + READ_TIMEOUT + 2.5,
                "2,000 unfinished header blocks",
                connected,
            )
        finally:
            close_all(socks)


def test_a_thousand_connections_without_a_preface_are_closed_after_the_read_timeout(
    gateway: Gateway, attack
) -> None:
    """1,000 connections that never finish the client preface (half send nothing, half its
    first 10 bytes): each is closed once the read timeout has passed."""
    with attack("grpc", "preface_timeout") as a:
        socks = []
        try:
            for i in range(1000):
                if a.stopped:
                    break
                sock = raw_socket(gateway.grpc_address)
                socks.append(sock)
                if i % 2:
                    sock.sendall(PREFACE[:10])
            connected = a.elapsed()
            expect_all_closed(
                a,
                socks,
                1000,
                time.monotonic() + READ_TIMEOUT + 2.5,
                "1,000 connections without a preface",
                connected,
            )
        finally:
            close_all(socks)


def test_forty_concurrent_small_calls_on_four_connections_are_all_admitted(gateway: Gateway, attack) -> None:
    """Not an attack, a busy client: 40 concurrent small Export calls multiplexed on 4
    connections, round after round. The worker has room for all of them, so none may be refused
    (admission counts bytes, not calls; before: ~15% UNAVAILABLE)."""
    with attack("grpc", None, forbid=("admission",)) as a:
        channels = [
            grpc.insecure_channel(
                gateway.server.grpc_endpoint, options=[("grpc.use_local_subchannel_pool", 1)]
            )
            for _ in range(4)
        ]
        try:
            exports = [ch.unary_unary(TRACE_METHOD) for ch in channels]
            for export in exports:  # connect first, so every round is 40 calls at once
                export(LEGIT_BODY, timeout=CALL_TIMEOUT)
            failures: collections.Counter[str] = collections.Counter()
            calls = rounds = 0
            until = time.monotonic() + 3.0
            while time.monotonic() < until:
                futures = [exports[i % 4].future(LEGIT_BODY, timeout=CALL_TIMEOUT) for i in range(40)]
                for future in futures:
                    try:
                        future.result()
                    except grpc.RpcError as exc:
                        failures[str(exc.code())] += 1  # type: ignore[attr-defined]
                calls += len(futures)
                rounds += 1
            a.note(
                f"40 concurrent calls on 4 connections: {rounds} rounds, {calls} calls, "
                f"failed {dict(failures)}"
            )
            a.expect(not failures, f"{sum(failures.values())} of {calls} calls failed: {dict(failures)}")
        finally:
            for ch in channels:
                ch.close()
