"""`google.rpc.Status` bodies for errors, with a `google.rpc.RetryInfo` detail for retryable ones.

gRPC carries the serialized Status in the `grpc-status-details-bin` trailer (the gRPC "rich error
model"); OTLP/HTTP sends it as the body of 4xx/5xx responses, protobuf-encoded for protobuf
requests and as proto3 JSON (`{"code": 3, "message": "..."}`) for JSON requests.
"""

from __future__ import annotations

import json
import traceback

from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2

from otlp_ingest import errors
from otlp_ingest.telemetry.logging import RateLimitedLogger

# The gRPC trailer that carries the serialized google.rpc.Status.
DETAILS_TRAILER = "grpc-status-details-bin"
_RETRY_INFO_TYPE_URL = "type.googleapis.com/google.rpc.RetryInfo"
# What a client is told about an unexpected error: its text may hold internals (paths, values).
INTERNAL_ERROR_MESSAGE = "internal error; the data was not accepted, retry later"


def client_message(exc: BaseException, unexpected_log: RateLimitedLogger, where: str) -> str:
    """The message a client may see for `exc`, shared by both transports.

    An `OtlpError` carries a message meant for the client. Anything else is a bug or an
    environment failure: it is logged with its traceback (rate-limited under the key
    "unexpected", as "unexpected error in <where>: ..."; `where` names the transport, the
    request and the answer) and the client gets `INTERNAL_ERROR_MESSAGE`.
    """
    if isinstance(exc, errors.OtlpError):
        return exc.message
    # format_exception(exc), not format_exc(): callers may be outside the except block.
    unexpected_log.error(
        "unexpected", "unexpected error in %s: %s", where, "".join(traceback.format_exception(exc))
    )
    return INTERNAL_ERROR_MESSAGE


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
