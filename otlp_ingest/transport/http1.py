"""HTTP/1.1 server connections on asyncio, parsed by httptools (llhttp), for OTLP/HTTP.

Why not uvicorn + starlette: per request they cost ~90-105 us of CPU on this machine for a request
that does nothing, against ~35 us for a protocol that calls httptools and writes bytes
(docs/performance.md). What a request means lives in `http_app.py`; this module is HTTP only:

- The fast path (`http1_fast.py`): while nothing else is in progress on the connection, the
  plain valid protobuf request is read, queued and answered in `data_received` without llhttp's
  callbacks; whatever it does not take whole goes to llhttp from its first byte, so everything
  below applies unchanged. A taken head whose body is still arriving is held once (deadlines
  then replay it through llhttp, so it is answered as any late request).

- Keep-alive and pipelining: responses go out in request order (`_queue`); while a request waits
  on a slow path (a big body decoded off the loop, a durable-mode fsync), reading pauses, so a
  pipelining client cannot queue unbounded work. Small requests are answered by the flush at the
  end of the loop turn (`ExportRunner`) and what they hold meanwhile is capped (a signal's staged
  requests are written out at 256 KiB, `ExportService._stage`), so reading goes on for them.
- `Expect: 100-continue` is answered when the request is accepted at its headers; a request
  refused at its headers gets its final answer at once (and, when its body may follow, the
  connection is closed after it).
- Limits: request line plus headers at most MAX_HEADER_BYTES (431 and close; httptools buffers a
  header value until it ends, so bytes are counted as they arrive: the callbacks' pieces while
  a read holds the start of a request, the whole read when it only continues an open head, so
  pipelined requests in one read are not counted as one head); at most `max_connections`
  connections per worker (more are closed at once). Writes: the transport's buffer is limited
  (`write_buffer_high`); above it reading pauses (a client that sends requests but never reads
  the answers cannot make us queue more), and a connection whose writes stay blocked for
  `write_timeout` is closed. Every defence is counted (`Defences`, reason in the metric).
- Deadlines, checked by the worker's sweeper (`sweep(now)`, about every 0.25 s) instead of a timer
  per request: a request's headers and body must arrive within `read_timeout` of its first byte;
  headers late -> 503 + Retry-After and close (OTLP clients retry 503, never 408), body late ->
  the app's answer (503 + Retry-After, a google.rpc.Status) and close; a connection that sent
  nothing within `read_timeout` gets 408 (RFC 9110 15.5.9: closing an unused connection, what
  Go's transport expects on an idle connection) and is closed; a kept-alive connection idle for
  `keepalive_timeout` is closed quietly (uvicorn's default, 5 s).
- Connection ageing (`max_age`, jittered per connection by the caller; `max_requests`): the first
  response after the limit carries `Connection: close`, so long-lived clients reconnect and the
  kernel (SO_REUSEPORT) or the Service spreads them again, e.g. onto pods a scale-up added.
- Closing while a request body may still be arriving half-closes first (`write_eof`) and reads
  and drops what still comes for up to `LINGER` seconds (at most LINGER_MAX_BYTES, then it closes
  anyway: a client must not make us read gigabytes): closing a socket with unread data sends
  a TCP reset, which can destroy the answer before the client reads it.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import httptools

from otlp_ingest.transport.defences import Defences

log = logging.getLogger(__name__)

# Request line plus headers of one request. OTLP clients send well under 8 KiB; 64 KiB leaves room
# for large auth tokens.
MAX_HEADER_BYTES = 64 * 1024
LINGER = 2.0
LINGER_MAX_BYTES = 1 << 20
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CLOSE = b"connection: close\r\n"

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    415: b"Unsupported Media Type",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP response without its Date/Connection headers (the connection adds those):
    `head` is the status line and header lines, each ending in CRLF."""

    head: bytes
    body: bytes
    close: bool = False  # the connection must be closed after it


def response(
    status: int, content_type: bytes, body: bytes, headers: tuple[bytes, ...] = (), close: bool = False
) -> Response:
    """A Response; `headers` are complete lines without CRLF (e.g. b"retry-after: 1")."""
    head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n" % (
        status,
        _REASONS.get(status, b"Unknown"),
        content_type,
        len(body),
    )
    if headers:
        head += b"\r\n".join(headers) + b"\r\n"
    return Response(head, body, close)


def plain_response(status: int, message: bytes, headers: tuple[bytes, ...] = ()) -> Response:
    """A text/plain answer for what is not an application request (bad HTTP, header limits), closing."""
    return response(status, b"text/plain; charset=utf-8", message, headers, close=True)


# While a fast-path body arrives, at most this much of one request is held per connection.
HOLD_MAX_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class FastPath:
    """What one worker's connections need to serve a request on the fast path:

    - `scan(data, start, max_body)` -> (signal, head_end, content_length) when data[start:]
      begins with a head the fast path takes (its body may still be arriving), else None;
    - `export(signal, body, "http")` -> True when the request was queued and counted (answer
      `ok_head`), False when nothing happened (run the general path).
    """

    scan: Callable[[bytes, int, int], tuple[int, int, int] | None]
    export: Callable[[int, bytes, str], bool]
    max_body: int
    ok_head: bytes  # the 200's status line and headers, without Date and the blank line


class Exchange(Protocol):
    """One request as the application sees it (see `HttpApp`)."""

    refusal: Response | None  # set: answered at its headers, the body is dropped

    def chunk(self, data: bytes) -> Response | None: ...

    def complete(self, done: Callable[[Response], None]) -> bool: ...

    def timeout(self) -> Response: ...

    def release(self) -> None: ...


class HttpApp(Protocol):
    """What an HTTP/1.1 connection calls: `start` at a request's complete headers (an Exchange,
    maybe refused already); `fast` serves whole plain requests in one call (None: off)."""

    fast: FastPath | None

    def start(
        self, method: bytes, path: bytes, headers: dict[bytes, bytes], length: int | None
    ) -> Exchange: ...


_HEADER_TIMEOUT = plain_response(503, b"request headers not received in time\n", (b"retry-after: 1",))
_IDLE_TIMEOUT = plain_response(408, b"no request received in time\n")
_HEADERS_TOO_LARGE = plain_response(431, b"request headers larger than 64 KiB\n")
_BAD_REQUEST = plain_response(400, b"invalid HTTP request\n")
_UPGRADE_REFUSED = plain_response(400, b"protocol upgrade not supported\n")

_date_second = 0
_date_line = b""


def date_line() -> bytes:
    """The `Date` header line (RFC 9110 6.6.1: origin servers with a clock send it), computed
    once per second."""
    global _date_second, _date_line
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_line = b"date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n"
    return _date_line


@dataclass(frozen=True, slots=True)
class HttpConfig:
    read_timeout: float = 30.0
    write_timeout: float = 30.0  # a connection whose writes stay blocked this long is closed
    write_buffer_high: int = 256 * 1024
    keepalive_timeout: float = 5.0
    max_connections: int = 4096
    max_requests: int = 0  # per connection, 0 = unlimited


class _Slot:
    """A request awaiting its response, in the order requests arrived."""

    __slots__ = ("exchange", "keep_alive", "response")

    def __init__(self, exchange: Exchange, keep_alive: bool) -> None:
        self.exchange = exchange
        self.keep_alive = keep_alive
        self.response: Response | None = exchange.refusal


class HttpConnection(asyncio.Protocol):
    """One HTTP/1.1 connection (see the module docstring)."""

    def __init__(
        self,
        app: HttpApp,
        config: HttpConfig,
        connections: set[HttpConnection],
        clock: Callable[[], float],
        max_age: float = 0.0,
        defences: Defences | None = None,
    ) -> None:
        self.app = app
        self.defences = defences if defences is not None else Defences("http")
        self.config = config
        self.connections = connections
        self.clock = clock
        self.max_age = max_age
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.opened = 0.0
        self.served = 0
        self.closing = False
        self._linger_until = 0.0
        self._lingered = 0  # bytes read and dropped while lingering
        self._write_blocked_since = 0.0  # the transport's buffer went above its limit
        self._began = False  # a request began during the current feed
        self._request_start = 0.0  # first byte of the request being received; 0: none
        self._idle_since = 0.0  # last response written with nothing else in progress
        self._in_headers = False
        self._header_bytes = 0
        self._url: list[bytes] = []
        self._headers: dict[bytes, bytes] = {}
        self._current: _Slot | None = None  # the request whose body is being received
        self._queue: deque[_Slot] = deque()
        self._paused = False
        self._draining = False  # close once idle (worker shutdown)
        self._held = b""  # a fast-path request whose body is still arriving (see _serve_fast)

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.opened = self._idle_since = self.clock()
        self.connections.add(self)
        if len(self.connections) > self.config.max_connections:
            limit = self.config.max_connections
            self.defences.hit("connection_limit", f"HTTP connection limit ({limit}) reached")
            self.closing = True
            transport.close()
            return
        self.transport.set_write_buffer_limits(high=self.config.write_buffer_high)  # type: ignore[union-attr]

    def pause_writing(self) -> None:
        self._write_blocked_since = self.clock()
        if not self.closing:
            self.transport.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self._write_blocked_since = 0.0
        if not self.closing and not self._paused:
            self.transport.resume_reading()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.connections.discard(self)
        for slot in self._queue:
            slot.exchange.release()
        self._queue.clear()
        self._current = None

    def data_received(self, data: bytes) -> None:
        if self.closing:  # lingering: drop what still arrives, within reason
            self._lingered += len(data)
            if self._lingered > LINGER_MAX_BYTES:
                self.transport.abort()  # type: ignore[union-attr]
            return
        held = self._held
        if held:
            self._held = b""
            data = held + data
        if (
            self.app.fast is not None
            and not self._queue
            and self._current is None
            and not self._in_headers
            and not self._draining
        ):
            data = self._serve_fast(data, may_hold=not held)
            if not data:
                return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """The general path: `data` to llhttp, whose callbacks below handle the requests."""
        if not self._request_start:
            self._request_start = self.clock()
            self._in_headers = True
        continuing = self._in_headers  # this read continues a head already open
        self._began = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.defences.hit("bad_request", "an HTTP client asked for a protocol upgrade")
            self._answer_and_close(_UPGRADE_REFUSED)
            return
        except httptools.HttpParserError:
            self.defences.hit("bad_request", "not a valid HTTP/1.1 request: 400")
            self._answer_and_close(_BAD_REQUEST)
            return
        if self._in_headers and not self.closing:
            # Still inside a request's head after this read. If the read only continued that head,
            # all of it was header bytes; if a request began in it, the callbacks counted its head.
            if continuing and not self._began:
                self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self.defences.hit("header_too_large", f"HTTP request head over {MAX_HEADER_BYTES} bytes: 431")
                self._answer_and_close(_HEADERS_TOO_LARGE)

    def _serve_fast(self, data: bytes, may_hold: bool) -> bytes:
        """Serve the requests at the start of `data` that the fast path takes whole
        (http1_fast.py), answering each at once; return the bytes left for the general path,
        from the first request it did not take. A taken head whose body has not all arrived is
        held (b"" returned) once, when what arrived of it is at most HOLD_MAX_BYTES: if the next
        bytes do not complete it, it goes to llhttp with them, so a slow body costs at most one
        copy and the body budget charges what llhttp then holds."""
        fast = self.app.fast
        assert fast is not None
        start, size = 0, len(data)
        now = self.clock()
        while start < size:
            found = fast.scan(data, start, fast.max_body)
            if found is None:
                break
            signal, head_end, length = found
            end = head_end + length
            if end > size:
                if may_hold and size - start <= HOLD_MAX_BYTES:
                    self._held = data[start:] if start else data
                    if not self._request_start:
                        self._request_start = now
                    return b""
                break
            if self._aged(self.served + 1, now) or not fast.export(signal, data[head_end:end], "http"):
                break  # the general path answers (and closes, for an aged connection)
            self.served += 1
            self.transport.write(fast.ok_head + date_line() + b"\r\n")  # type: ignore[union-attr]
            start = end
            self._request_start = 0.0
        if start:
            self._idle_since = now
            return data[start:]
        return data

    def _feed_held(self) -> None:
        """A held request goes to the general path (deadlines, shutdown): llhttp parses it."""
        held, self._held = self._held, b""
        if held:
            self._feed(held)

    # --- httptools callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if not self._request_start:  # a pipelined request in the same chunk as the previous end
            self._request_start = self.clock()
        self._in_headers = True
        self._began = True
        self._header_bytes = 0
        self._url = []
        self._headers = {}

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        name = name.lower()
        headers = self._headers
        previous = headers.get(name)
        headers[name] = value if previous is None else previous + b", " + value

    def on_headers_complete(self) -> None:
        self._in_headers = False
        if self.closing:
            return
        if self._header_bytes > MAX_HEADER_BYTES:  # a whole head that came in one read
            self.defences.hit("header_too_large", f"HTTP request head over {MAX_HEADER_BYTES} bytes: 431")
            self._answer_and_close(_HEADERS_TOO_LARGE)
            return
        headers = self._headers
        url = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        path = url.split(b"?", 1)[0]
        length = headers.get(b"content-length")
        exchange = self.app.start(
            self.parser.get_method(), path, headers, int(length) if length is not None else None
        )
        slot = _Slot(exchange, self.parser.should_keep_alive())
        self._current = slot
        self._queue.append(slot)
        expects = headers.get(b"expect", b"").lower() == b"100-continue"
        if slot.response is not None:
            if expects or (length is not None and length != b"0") or b"transfer-encoding" in headers:
                # The body may follow (or, with Expect, may never come): answer, then close.
                slot.response = Response(slot.response.head, slot.response.body, True)
            self._write_ready()
        elif expects and self._queue[0] is slot:
            self.transport.write(_CONTINUE)  # type: ignore[union-attr]

    def on_body(self, body: bytes) -> None:
        slot = self._current
        if slot is None or slot.response is not None:
            return  # refused already: the body is dropped
        refusal = slot.exchange.chunk(body)
        if refusal is not None:
            slot.response = refusal
            self._write_ready()

    def on_message_complete(self) -> None:
        slot = self._current
        self._current = None
        self._request_start = 0.0
        if slot is None or self.closing:
            return
        if slot.response is not None:
            if slot in self._queue:  # refused, its answer still waiting for earlier ones
                return
            self._idle()
            return
        slow = slot.exchange.complete(partial(self._answered, slot))
        if slow and slot.response is None and not self._paused and not self.closing:
            # A slow path: read no further requests until it is answered. Not for a staged
            # request, answered by this loop turn's flush before the next read anyway: pausing
            # and resuming cost two epoll changes (syscalls) per request.
            self._paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    # --- responses ---------------------------------------------------------------------------------

    def _answered(self, slot: _Slot, answer: Response) -> None:
        slot.response = answer
        if not self.closing:
            self._write_ready()

    def _write_ready(self) -> None:
        queue = self._queue
        while queue and queue[0].response is not None:
            slot = queue.popleft()
            answer = slot.response
            assert answer is not None
            self.served += 1
            close = answer.close or not slot.keep_alive or self._draining or self._aged(self.served)
            head = answer.head + date_line()
            if close:
                self.transport.write(head + _CLOSE + b"\r\n" + answer.body)  # type: ignore[union-attr]
                self._close(lingering=self._current is not None or bool(queue))
                return
            self.transport.write(head + b"\r\n" + answer.body)  # type: ignore[union-attr]
        if not queue:
            if self._paused:
                self._paused = False
                if not self._write_blocked_since:
                    self.transport.resume_reading()  # type: ignore[union-attr]
            if self._current is None:
                self._idle()

    def _idle(self) -> None:
        if self._queue or self._current is not None:
            return
        self._idle_since = self.clock()
        if self._draining and not self._request_start:
            self._close(lingering=False)

    def _aged(self, served: int, now: float = 0.0) -> bool:
        """Whether the response that makes `served` must close the connection (its age); `now`:
        the clock, when the caller has read it."""
        config = self.config
        if config.max_requests and served >= config.max_requests:
            return True
        return bool(self.max_age) and (now or self.clock()) - self.opened >= self.max_age

    def _answer_and_close(self, answer: Response) -> None:
        """An answer outside the request order (bad HTTP, header limits): only when nothing is
        pending, else just close."""
        if not self._queue and self.transport is not None and not self.closing:
            self.transport.write(answer.head + date_line() + _CLOSE + b"\r\n" + answer.body)
        self._close(lingering=True)

    def _close(self, lingering: bool) -> None:
        if self.closing:
            return
        self.closing = True
        for slot in self._queue:
            slot.exchange.release()
        self._queue.clear()
        if self._current is not None:
            self._current.exchange.release()
            self._current = None
        transport = self.transport
        assert transport is not None
        if lingering and transport.can_write_eof():
            if self._paused or self._write_blocked_since:
                transport.resume_reading()
            transport.write_eof()
            self._linger_until = self.clock() + LINGER
        else:
            transport.close()

    # --- deadlines and shutdown -----------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Deadlines (see the module docstring); called about every 0.25 s."""
        if self.closing:
            if self._linger_until and now >= self._linger_until:
                self._linger_until = 0.0
                self.transport.abort()  # type: ignore[union-attr]  # close() would wait for the peer
            return
        timeout = self.config.read_timeout
        if self._write_blocked_since and now - self._write_blocked_since > self.config.write_timeout:
            self.defences.hit("write_stalled", "an HTTP client did not read its answers in time: closed")
            self.abort()
            return
        if self._request_start:
            if now - self._request_start <= timeout:
                return
            self._feed_held()  # a fast-path request late too: answered as any late request
            if self.closing:
                return
            slot = self._current
            if slot is None:  # headers late
                self.defences.hit("header_timeout", f"HTTP request head not received within {timeout:.1f}s")
                self._answer_and_close(_HEADER_TIMEOUT)
            elif slot.response is None:  # body late
                self.defences.hit("body_timeout", f"HTTP request body not received within {timeout:.1f}s")
                slot.response = slot.exchange.timeout()
                self._write_ready()
            else:  # refused, body still dribbling in
                self._close(lingering=False)
        elif self._queue:
            return  # our answers are on their way
        elif not self.served and now - self.opened > timeout:
            self.defences.hit("idle_timeout", f"no HTTP request within {timeout:.1f}s of connecting")
            self._answer_and_close(_IDLE_TIMEOUT)
        elif self.served and now - self._idle_since > self.config.keepalive_timeout:
            self._close(lingering=False)

    def drain(self) -> None:
        """Worker shutdown: finish what is in progress, close once idle (answers say close)."""
        self._draining = True
        if not self.closing and not self._queue and not self._request_start:
            self._close(lingering=False)

    def abort(self) -> None:
        """Close now, dropping unsent bytes (a peer that does not read would hold close())."""
        if self.transport is not None:
            self.closing = True
            self.transport.abort()
