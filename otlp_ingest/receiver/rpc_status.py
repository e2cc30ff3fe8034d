"""`google.rpc.Status` bodies for errors, with a `google.rpc.RetryInfo` detail for retryable ones.

gRPC carries the serialized Status in the `grpc-status-details-bin` trailer (the gRPC "rich error
model"); OTLP/HTTP sends it as the body of 4xx/5xx responses, protobuf-encoded for protobuf
requests and as proto3 JSON (`{"code": 3, "message": "..."}`) for JSON requests.
"""

from __future__ import annotations

import json

from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2

# The gRPC trailer that carries the serialized google.rpc.Status.
DETAILS_TRAILER = "grpc-status-details-bin"
_RETRY_INFO_TYPE_URL = "type.googleapis.com/google.rpc.RetryInfo"


def status_message(code: int, message: str, retry_after: int | None = None) -> status_pb2.Status:
    """A google.rpc.Status; with a RetryInfo(retry_delay=retry_after s) detail when given."""
    status = status_pb2.Status(code=code, message=message)
    if retry_after is not None:
        info = error_details_pb2.RetryInfo(retry_delay=Duration(seconds=retry_after))
        status.details.add().Pack(info)
    return status


def status_bytes(code: int, message: str, retry_after: int | None = None) -> bytes:
    """The serialized google.rpc.Status (for the gRPC trailer and protobuf HTTP bodies)."""
    return status_message(code, message, retry_after).SerializeToString()


def status_json(code: int, message: str, retry_after: int | None = None) -> bytes:
    """The proto3 JSON form of the same Status, for OTLP/HTTP JSON requests."""
    body: dict[str, object] = {"code": code, "message": message}
    if retry_after is not None:
        body["details"] = [{"@type": _RETRY_INFO_TYPE_URL, "retryDelay": f"{retry_after}s"}]
    return json.dumps(body, separators=(",", ":")).encode()
