"""The fast path's head scanner (receiver/_http1scan.c) takes only heads that llhttp reads the
same way, and only the plain OTLP form: checked against httptools itself."""

from __future__ import annotations

import random

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otlp_ingest.otlp.signals import Signal

_http1scan = pytest.importorskip("otlp_ingest.receiver._http1scan")
scan = _http1scan.scan

PLAIN = (
    b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
    b"Content-Length: 5\r\n\r\n"
)


def test_the_plain_heads_of_each_signal() -> None:
    for path, signal in ((b"traces", Signal.TRACES), (b"metrics", Signal.METRICS), (b"logs", Signal.LOGS)):
        head = PLAIN.replace(b"traces", path)
        assert scan(head + b"hello", 0, 1024) == (signal, len(head), 5)
    # what real clients add: any case, keep-alive, other headers, spaces around values
    head = (
        b"POST /v1/logs HTTP/1.1\r\nhost: 127.0.0.1:4318\r\nUser-Agent: OTel-OTLP-Exporter-Python/1.2\r\n"
        b"Accept-Encoding: identity\r\ncontent-length:  12 \r\nCONTENT-TYPE: Application/X-Protobuf\r\n"
        b"Connection: Keep-Alive\r\n\r\n"
    )
    assert scan(b"junk" + head, 4, 1024) == (Signal.LOGS, 4 + len(head), 12)


@pytest.mark.parametrize(
    ("why", "head"),
    [
        ("incomplete", PLAIN[:-2]),
        ("GET", PLAIN.replace(b"POST", b"GET")),
        ("HTTP/1.0", PLAIN.replace(b"HTTP/1.1", b"HTTP/1.0")),
        ("a query string", PLAIN.replace(b"/v1/traces", b"/v1/traces?x=1")),
        ("another path", PLAIN.replace(b"/v1/traces", b"/v1/tracesx")),
        ("JSON", PLAIN.replace(b"x-protobuf", b"json")),
        ("content type parameters", PLAIN.replace(b"x-protobuf", b"x-protobuf; charset=utf-8")),
        ("no length", PLAIN.replace(b"Content-Length: 5\r\n", b"")),
        (
            "two lengths",
            PLAIN.replace(b"Content-Length: 5\r\n", b"Content-Length: 5\r\nContent-Length: 5\r\n"),
        ),
        ("a signed length", PLAIN.replace(b": 5", b": +5")),
        ("a length too large", PLAIN.replace(b": 5", b": 2000")),
        ("chunked", PLAIN.replace(b"Host: x", b"Transfer-Encoding: chunked")),
        ("gzip", PLAIN.replace(b"Host: x", b"Content-Encoding: gzip")),
        ("identity encoding too", PLAIN.replace(b"Host: x", b"Content-Encoding: identity")),
        ("expect", PLAIN.replace(b"Host: x", b"Expect: 100-continue")),
        ("upgrade", PLAIN.replace(b"Host: x", b"Upgrade: h2c")),
        ("connection close", PLAIN.replace(b"Host: x", b"Connection: close")),
        ("proxy-connection", PLAIN.replace(b"Host: x", b"Proxy-Connection: keep-alive")),
        ("a bare LF", PLAIN.replace(b"Host: x\r\n", b"Host: x\n")),
        ("obs-fold", PLAIN.replace(b"Host: x\r\n", b"Host: x\r\n y\r\n")),
        ("a space before the colon", PLAIN.replace(b"Host:", b"Host :")),
        ("obs-text in a value", PLAIN.replace(b"Host: x", b"Host: \xe9")),
        ("a control byte in a value", PLAIN.replace(b"Host: x", b"Host: \x01")),
        ("a head over 8 KiB", PLAIN.replace(b"Host: x", b"Host: " + b"x" * 8200)),
    ],
)
def test_other_heads_go_to_llhttp(why: str, head: bytes) -> None:
    assert scan(head + b"hello", 0, 1024) is None, why


class _Seen:
    """What llhttp makes of a request: the general path's view."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.url = b""
        self.body = b""
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


HEADER_NAMES = [b"Host", b"Content-Type", b"Content-Length", b"Connection", b"X-A", b"Transfer-Encoding"]
HEADER_VALUES = [
    b"x",
    b"application/x-protobuf",
    b"5",
    b"keep-alive",
    b"chunked",
    b" 5 ",
    b"05",
    b"",
    b"a\tb",
]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(HEADER_NAMES), st.sampled_from(HEADER_VALUES)), max_size=6),
    st.integers(0, 3),
)
def test_what_the_scanner_takes_llhttp_reads_the_same_way(headers, mutation: int) -> None:
    head = b"POST /v1/traces HTTP/1.1\r\n" + b"".join(b"%s: %s\r\n" % pair for pair in headers) + b"\r\n"
    if mutation == 1:
        head = head.replace(b": ", b":", 1)
    elif mutation == 2:
        head = head.replace(b"\r\n", b"\n", 2)
    elif mutation == 3 and len(head) > 30:
        at = random.Random(head).randrange(26, len(head))
        head = head[:at] + b"\x00" + head[at:]
    data = head + b"hello" + b"POST"
    found = scan(data, 0, 1024)
    if found is None:
        return
    seen = _Seen()
    parser = httptools.HttpRequestParser(seen)
    _, head_end, length = found
    parser.feed_data(data[: head_end + length])
    assert seen.complete and parser.get_method() == b"POST" and seen.url == b"/v1/traces"
    assert parser.should_keep_alive() and seen.body == data[head_end : head_end + length]
    names = [name for name, _ in seen.headers]
    assert names.count(b"content-length") == 1 and b"transfer-encoding" not in names
    assert dict(seen.headers)[b"content-type"].lower() == b"application/x-protobuf"
