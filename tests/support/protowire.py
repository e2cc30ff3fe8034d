"""Hand-built protobuf wire bytes for tests that need shapes a message class will not produce."""

from __future__ import annotations


def varint(n: int) -> bytes:
    """A base-128 varint."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def ld(field_number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(field_number << 3 | 2) + varint(len(payload)) + payload
