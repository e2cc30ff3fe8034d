"""A raw HTTP/2 gRPC client for what grpcio's client cannot send: zstd messages, odd framing
(padding, CONTINUATION, tiny frames), protocol violations.

    status, headers, messages = grpc_call(("127.0.0.1", port), "/pkg.Svc/Export", message,
                                          headers={"grpc-encoding": "zstd"}, compressed=True)

It speaks just enough HTTP/2 for one call per connection: preface, SETTINGS (and its ACK),
HEADERS (literal HPACK, optionally split into CONTINUATION frames), DATA, then it reads frames
until the stream ends or is reset. Response headers are decoded with the server's own HPACK
decoder (what the server sends is literal, so any decoder state works).
"""

from __future__ import annotations

import socket
import struct

from otlp_ingest.transport.frames import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
)
from otlp_ingest.transport.hpack import HeaderDecoder, encode_literal


class CallResult:
    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.data = b""
        self.reset: int | None = None  # RST_STREAM error code
        self.goaway: int | None = None  # GOAWAY error code

    @property
    def grpc_status(self) -> int | None:
        value = self.headers.get(b"grpc-status")
        return int(value) if value is not None else None


def grpc_call(
    address: tuple[str, int],
    path: str,
    message: bytes,
    headers: dict[str, str] | None = None,
    compressed: bool = False,
    split_headers: int = 0,
    pad_data: int = 0,
    extra_frames: bytes = b"",
    timeout: float = 10.0,
) -> CallResult:
    """One unary call on a fresh connection; what came back."""
    fields = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.encode()),
        (b":authority", f"{address[0]}:{address[1]}".encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        *((k.encode(), v.encode()) for k, v in (headers or {}).items()),
    ]
    block = encode_literal(fields)
    sid = 1
    if split_headers:  # HEADERS + CONTINUATION frames of at most `split_headers` bytes
        parts = [block[i : i + split_headers] for i in range(0, len(block), split_headers)]
        out = frame(HEADERS, END_HEADERS if len(parts) == 1 else 0, sid, parts[0])
        for i, part in enumerate(parts[1:], 1):
            out += frame(CONTINUATION, END_HEADERS if i == len(parts) - 1 else 0, sid, part)
    else:
        out = frame(HEADERS, END_HEADERS, sid, block)
    body = bytes((1 if compressed else 0,)) + len(message).to_bytes(4, "big") + message
    chunks = [body[i : i + 16000] for i in range(0, len(body), 16000)] or [b""]
    for i, chunk in enumerate(chunks):
        flags = END_STREAM if i == len(chunks) - 1 else 0
        if pad_data:
            out += frame(DATA, flags | PADDED, sid, bytes((pad_data,)) + chunk + bytes(pad_data))
        else:
            out += frame(DATA, flags, sid, chunk)
    result = CallResult()
    decoder = HeaderDecoder()
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(PREFACE + frame(SETTINGS, 0, 0) + extra_frames + out)
        buffer = b""
        while True:
            while len(buffer) < 9 or len(buffer) < 9 + int.from_bytes(buffer[:3], "big"):
                data = sock.recv(65536)
                if not data:
                    return result
                buffer += data
            length = int.from_bytes(buffer[:3], "big")
            kind, flags = buffer[3], buffer[4]
            stream = struct.unpack(">I", buffer[5:9])[0] & 0x7FFFFFFF
            payload, buffer = buffer[9 : 9 + length], buffer[9 + length :]
            if kind == SETTINGS and not flags & 1:
                sock.sendall(frame(SETTINGS, 1, 0))
            elif kind == PING and not flags & 1:
                sock.sendall(frame(PING, 1, 0, payload))
            elif kind == HEADERS and stream == sid:
                result.headers.update(decoder.decode(payload).headers)
                if flags & END_STREAM:
                    return result
            elif kind == DATA and stream == sid:
                result.data += payload
                if payload:
                    sock.sendall(frame(WINDOW_UPDATE, 0, 0, len(payload).to_bytes(4, "big")))
                if flags & END_STREAM:
                    return result
            elif kind == RST_STREAM and stream == sid:
                result.reset = int.from_bytes(payload, "big")
                return result
            elif kind == GOAWAY:
                result.goaway = int.from_bytes(payload[4:8], "big")
                if result.goaway:
                    return result
