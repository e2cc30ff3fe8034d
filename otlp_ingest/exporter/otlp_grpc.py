"""OTLP/gRPC sender: raw bytes over one shared channel, no re-encoding.

The method callables are built with `request_serializer=None, response_deserializer=None`, so the
concatenated batch goes on the wire as is and the response comes back as bytes (only the small
response is decoded, for partial_success). A grpc channel is thread-safe: every sending thread
shares it. Build this inside the exporter process, never before a fork.

Endpoint forms: "host:port" (plaintext unless settings.export_insecure is False),
"http://host:port" (plaintext), "https://host:port" (TLS). TLS verifies the backend with
settings.export_ca_file (else grpc's default roots) and presents settings.export_cert_file/key_file
as a client certificate when set (mTLS). The files are read when the sender is built, i.e. when the
exporter process starts, so a rolling restart (SIGHUP) picks up rotated files.

settings.export_headers travel as metadata on every call (e.g. `authorization` for an upstream
gateway); settings.export_compression "gzip" compresses every message (grpcio's channel-level
gzip; config refuses "zstd" for gRPC: grpcio cannot send it).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import grpc

from otlp_ingest.config import Settings
from otlp_ingest.exporter.retry import grpc_send_error
from otlp_ingest.exporter.sender import SendError, SendResult, partial_success
from otlp_ingest.otlp.signals import SIGNALS, Signal


def parse_grpc_endpoint(endpoint: str, insecure: bool) -> tuple[str, bool]:
    """(target "host:port", use_tls) for an endpoint in any of the accepted forms."""
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"gRPC endpoint must be host:port or http(s)://host:port, got {endpoint!r}")
        return parts.netloc, parts.scheme == "https"
    return endpoint, not insecure


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials:
    """TLS credentials for the backend channel. Raises OSError when a file cannot be read."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(settings.export_ca_file),
        private_key=_read(settings.export_key_file),
        certificate_chain=_read(settings.export_cert_file),
    )


class GrpcSender:
    """Sends batches with the OTLP gRPC Export methods."""

    def __init__(self, settings: Settings) -> None:
        target, tls = parse_grpc_endpoint(settings.endpoint or "", settings.export_insecure)
        options = [
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            # Fail fast and let retry.py back off, rather than grpc's own hidden reconnect waits.
            ("grpc.enable_retries", 0),
        ]
        compression = grpc.Compression.Gzip if settings.export_compression == "gzip" else None
        if tls:
            self._channel = grpc.secure_channel(
                target, channel_credentials(settings), options=options, compression=compression
            )
        else:
            self._channel = grpc.insecure_channel(target, options=options, compression=compression)
        self._timeout = settings.export_timeout
        # gRPC metadata keys must be lowercase.
        self._metadata = tuple((k.lower(), v) for k, v in settings.export_headers.items()) or None
        self._methods = {
            signal: self._channel.unary_unary(
                info.grpc_method, request_serializer=None, response_deserializer=None
            )
            for signal, info in SIGNALS.items()
        }

    def send(self, signal: Signal, payload: bytes) -> SendResult:
        try:
            response = self._methods[signal](payload, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            call: grpc.Call = error  # type: ignore[assignment]  # grpc raises a Call that is an RpcError
            raise grpc_send_error(call.code(), call.details(), call.trailing_metadata()) from None
        except ValueError as error:  # e.g. the channel was closed by shutdown
            raise SendError(f"gRPC channel: {error}", retryable=True) from None
        return partial_success(signal, response)

    def close(self) -> None:
        """Close the channel; in-flight calls fail with CANCELLED."""
        self._channel.close()
