"""HTTP/2 frame layout (RFC 9113 4.1, 6) and its constants.

A frame is a 9-byte header and a payload:

    +-----------------------------------------------+
    |                 Length (24)                   |
    +---------------+---------------+---------------+
    |   Type (8)    |   Flags (8)   |
    +-+-------------+---------------+-------------------------------+
    |R|                 Stream Identifier (31)                      |
    +=+=============================================================+
    |                   Frame Payload (0...)                      ...
    +---------------------------------------------------------------+

`FRAME_HEAD` packs and unpacks the header with the 24-bit length split as (high byte, low 16 bits).
"""

from __future__ import annotations

import struct

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
SETTINGS_TIMEOUT = 0x4
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB
# Settings identifiers (RFC 9113 6.5.2).
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

MAX_WINDOW = 2**31 - 1
MAX_STREAM_ID = 2**31 - 1
DEFAULT_WINDOW = 65535
DEFAULT_FRAME_SIZE = 16384
MAX_FRAME_SIZE_LIMIT = 16777215

FRAME_HEAD = struct.Struct(">BHBBI")
U32 = struct.Struct(">I")
GOAWAY_PAYLOAD = struct.Struct(">II")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One serialized frame."""
    n = len(payload)
    return FRAME_HEAD.pack(n >> 16, n & 0xFFFF, kind, flags, stream_id) + payload


def frame_head(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    """The 9-byte header of a frame whose payload follows separately."""
    return FRAME_HEAD.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id)


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, U32.pack(code))


def goaway(last_stream_id: int, code: int) -> bytes:
    return frame(GOAWAY, 0, 0, GOAWAY_PAYLOAD.pack(last_stream_id, code))


class ConnectionError_(Exception):
    """A connection error (RFC 9113 5.4.1): GOAWAY with `code`, then close. `reason` names the
    defence when the error is one (a `Defences` reason), else it is "protocol_error"."""

    def __init__(self, code: int, message: str, reason: str = "protocol_error") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class StreamError(Exception):
    """A stream error (RFC 9113 5.4.2): RST_STREAM with `code` on `stream_id`; the connection
    goes on."""

    def __init__(self, stream_id: int, code: int, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.stream_id = stream_id
        self.code = code
        self.reason = reason


def unpad(payload: bytes) -> bytes:
    """The payload of a PADDED frame without its pad length byte and padding (RFC 9113 6.1)."""
    if not payload:
        raise ConnectionError_(PROTOCOL_ERROR, "padded frame without a pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise ConnectionError_(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - pad]
