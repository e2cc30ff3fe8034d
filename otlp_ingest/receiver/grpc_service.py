"""OTLP/gRPC transport: a grpcio sync server with raw-bytes handlers for the three Export methods.

The handlers get the request as bytes (no request deserializer) so the body is decoded exactly
once, by `validate`, and return the already-serialized response bytes. Errors are mapped with
`otlp_ingest.status`; every error carries a `google.rpc.Status` in the `grpc-status-details-bin`
trailer, with a `google.rpc.RetryInfo` detail when the client should retry. Messages above
`settings.grpc_max_recv_bytes` are refused by grpc itself with RESOURCE_EXHAUSTED (no RetryInfo).
gzip request compression is handled by grpc.

TLS: with settings.tls_cert_file/tls_key_file the port serves TLS only (a plaintext client fails
its handshake, UNAVAILABLE on its side); with settings.tls_client_ca_file too, clients must present
a certificate signed by that CA (mTLS). The files are read in `build_grpc_server`, i.e. when a
worker starts, so a rolling restart (SIGHUP) picks up rotated certificates.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc

from otlp_ingest import errors
from otlp_ingest.config import Settings
from otlp_ingest.otlp.signals import SIGNALS, Signal
from otlp_ingest.receiver.export import ExportService
from otlp_ingest.receiver.rpc_status import DETAILS_TRAILER, status_bytes
from otlp_ingest.status import retry_after_seconds, status_for
from otlp_ingest.telemetry.logging import RateLimitedLogger

log = logging.getLogger(__name__)
_unexpected_log = RateLimitedLogger(log)

# Handler threads. Handlers never block (the ring write is try-or-refuse) and all their work holds
# the GIL, so extra threads only add GIL hand-offs: measured on 2 cores with 100-span requests,
# 1 thread costs ~375 us of CPU per RPC, 2 threads ~400 us, 4 threads ~450 us. The C-core does
# the socket I/O on its own threads either way.
GRPC_THREADS = 1


def grpc_address(bind: str, port: int) -> str:
    """`host:port` as grpc wants it (IPv6 literals in brackets)."""
    host = f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind
    return f"{host}:{port}"


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials for the gRPC port from the settings' PEM files; None -> plaintext.

    Raises OSError when a file cannot be read (the worker then exits with its boot-failure code).
    """
    if not settings.tls_cert_file or not settings.tls_key_file:
        return None
    client_ca = _read(settings.tls_client_ca_file) if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(_read(settings.tls_key_file), _read(settings.tls_cert_file))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _abort(context: grpc.ServicerContext, signal: Signal, exc: BaseException) -> None:
    wire = status_for(exc)
    if isinstance(exc, errors.OtlpError):
        message = exc.message
    else:
        _unexpected_log.error(
            "unexpected",
            "unexpected error in gRPC %s export (answered UNAVAILABLE): %s",
            SIGNALS[signal].name,
            traceback.format_exc(),
        )
        message = "internal error; the data was not accepted, retry later"
    retry = retry_after_seconds(exc) if wire.retry_hint else None
    details = status_bytes(wire.grpc_code.value[0], message, retry)
    context.set_trailing_metadata(((DETAILS_TRAILER, details),))
    context.abort(wire.grpc_code, message)


def _export_handler(service: ExportService, signal: Signal) -> Callable[[bytes, grpc.ServicerContext], bytes]:
    def export(request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            result = service.export(signal, request, "protobuf", "grpc")
            if result.ticket is not None:  # durable mode: answer once the record is fsynced
                result = service.wait_durable(result)
            return result.response
        except Exception as exc:  # every failure becomes a status: never an unhandled error
            failure = exc
        _abort(context, signal, failure)  # raises
        raise AssertionError("unreachable")  # pragma: no cover

    return export


def build_grpc_server(service: ExportService, settings: Settings) -> grpc.Server:
    """A grpc server bound (SO_REUSEPORT) to settings.bind:settings.grpc_port, not yet started.

    Serves TLS (or mTLS) when the settings name a certificate (`server_credentials`). Raises
    RuntimeError when the port cannot be bound, OSError when a TLS file cannot be read.
    """
    credentials = server_credentials(settings)  # before the server exists: nothing to clean up
    server = grpc.server(
        ThreadPoolExecutor(max_workers=GRPC_THREADS, thread_name_prefix="grpc-export"),
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", settings.grpc_max_recv_bytes),
        ],
    )
    handlers = []
    for signal, info in SIGNALS.items():
        method = grpc.unary_unary_rpc_method_handler(
            _export_handler(service, signal),
            request_deserializer=None,  # raw bytes: validate decodes once
            response_serializer=None,  # the response is already serialized
        )
        handlers.append(grpc.method_handlers_generic_handler(info.grpc_service, {"Export": method}))
    server.add_generic_rpc_handlers(tuple(handlers))
    address = grpc_address(settings.bind, settings.grpc_port)
    if credentials is not None:
        bound = server.add_secure_port(address, credentials)
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:  # older grpcio reports failure as port 0
        raise RuntimeError(f"cannot bind gRPC port {address}")
    return server
