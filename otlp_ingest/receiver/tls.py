"""TLS for the two OTLP listeners, from the settings' PEM files.

Both ports serve TLS when `tls_cert_file`/`tls_key_file` are set, and require a client certificate
signed by `tls_client_ca_file` when that is set too (mTLS). The files are read when the worker
starts and nowhere else: a SIGHUP rolling restart is how rotated certificates (e.g. a cert-manager
renewal) take effect, one worker at a time and without refusing connections.
"""

from __future__ import annotations

import ssl

from otlp_ingest.config import Settings

# What each listener speaks, announced with ALPN: gRPC needs HTTP/2 negotiated ("h2"), the
# OTLP/HTTP listener speaks HTTP/1.1 only.
GRPC_ALPN = ["h2"]
HTTP_ALPN = ["http/1.1"]


def server_ssl_context(settings: Settings, alpn: list[str]) -> ssl.SSLContext | None:
    """The TLS context for a listener; None -> plaintext.

    TLS 1.2 or newer (HTTP/2 requires it). Raises OSError (ssl.SSLError included) for unreadable
    or bad files.
    """
    if not settings.tls_cert_file or not settings.tls_key_file:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.tls_client_ca_file:
        context.load_verify_locations(cafile=settings.tls_client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(alpn)
    return context


def tls_mode(settings: Settings) -> str:
    """ "plaintext", "TLS" or "mTLS", for log lines."""
    if not settings.tls_cert_file:
        return "plaintext"
    return "mTLS" if settings.tls_client_ca_file else "TLS"
