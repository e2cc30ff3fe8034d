"""Error types and process exit codes.

Retryability is a *type*: code that fails raises one of these, and `otlp_ingest.status` maps the
type to a gRPC code, an HTTP status and a retry hint in exactly one table. Nothing below the
transports knows about gRPC or HTTP.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit codes of `python -m otlp_ingest ...` and of its child processes."""

    OK = 0
    FAILURE = 1
    CONFIG = 2  # bad settings: the message names the setting, value and what is allowed
    CHILD_BOOT = 3  # a child could not start (port in use, ring missing): the supervisor halts
    SHUTDOWN_TIMEOUT = 4  # the drain deadline passed with data still unsent


class OtlpError(Exception):
    """Base of every error that reaches a client. `message` is safe to show to the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PermanentError(OtlpError):
    """The request can never succeed as sent; the client must not retry."""


class InvalidArgument(PermanentError):
    """Malformed payload (protobuf or JSON that does not decode, wrong shape)."""


class UnsupportedMediaType(PermanentError):
    """Content-Type is neither application/x-protobuf nor application/json."""


class UnsupportedEncoding(PermanentError):
    """Content-Encoding the server does not support."""


class PayloadTooLarge(PermanentError):
    """Body above the size limit, before or after decompression."""


class Unauthenticated(PermanentError):
    """The request carries no valid bearer token (`otlp_ingest.auth`). Decided before the body is
    read. `challenge` is the HTTP `WWW-Authenticate` value to send with the 401."""

    def __init__(self, message: str, challenge: str = "Bearer") -> None:
        super().__init__(message)
        self.challenge = challenge


class NotFound(PermanentError):
    """Unknown path or method."""


class MethodNotAllowed(PermanentError):
    """Known path, wrong HTTP method."""


class RetryableError(OtlpError):
    """The request may succeed later. `retry_after` is the hint, in seconds, given to the client."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueFull(RetryableError):
    """The ring (or queue limit) has no room for this request now."""


class ShuttingDown(RetryableError):
    """The server is draining; the client should send to another replica or retry later."""


class MemoryLimited(RetryableError):
    """The process tree is above its soft memory limit (`telemetry.memory`): refused until it is
    back below it."""


class ConfigError(Exception):
    """One or more settings are invalid. Each entry of `problems` is one line for the user."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
