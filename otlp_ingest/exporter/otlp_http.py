"""OTLP/HTTP (binary protobuf) sender with a keep-alive connection per sending thread.

URL choice: settings.endpoint is a base URL "http(s)://host:port[/prefix]" and the signal path is
appended (`/v1/traces`, `/v1/metrics`, `/v1/logs`), like OTEL_EXPORTER_OTLP_ENDPOINT in the SDKs.
If the URL already ends with one of those signal paths, that suffix is removed and the base is used
for every signal, so each batch always goes to the path of its own signal. A bare "host:port" is
plaintext unless settings.export_insecure is False (then https), as for gRPC.

TLS: `https` verifies the backend with settings.export_ca_file (else the system roots) and presents
settings.export_cert_file/key_file as a client certificate when set (mTLS). The context is built
when the sender is (exporter start), so a rolling restart (SIGHUP) picks up rotated files.

Every request carries settings.export_headers and, with settings.export_compression, a body
compressed with gzip or zstd (`Content-Encoding`). Both at fast levels (gzip 1, zstd 1): the
exporter shares the CPUs with the receivers, and OTLP batches (ids, repeated attribute keys)
compress well even then; compressed once per attempt, so a retried batch costs it again (rare).
"""

from __future__ import annotations

import contextlib
import http.client
import ssl
import threading
import zlib
from collections.abc import Callable
from urllib.parse import urlsplit

import zstandard
from google.rpc import status_pb2

from otlp_ingest.config import Settings
from otlp_ingest.exporter.retry import http_send_error
from otlp_ingest.exporter.sender import SendError, SendResult, partial_success
from otlp_ingest.otlp.signals import SIGNALS, Signal


def parse_http_endpoint(endpoint: str, insecure: bool = True) -> tuple[str, str, int, str]:
    """(scheme, host, port, base path without trailing slash) of an OTLP/HTTP base URL.

    A bare "host:port" gets http, or https when `insecure` is False."""
    default_scheme = "http" if insecure else "https"
    parts = urlsplit(endpoint if "://" in endpoint else f"{default_scheme}://{endpoint}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"HTTP endpoint must be http(s)://host:port[/path], got {endpoint!r}")
    path = parts.path.rstrip("/")
    for info in SIGNALS.values():
        if path.endswith(info.http_path):
            path = path[: -len(info.http_path)]
            break
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port, path


def client_ssl_context(settings: Settings) -> ssl.SSLContext:
    """TLS context for the backend: verify it (export_ca_file or system roots, hostname checked),
    present the client certificate if configured. Raises OSError for unreadable or bad files."""
    context = ssl.create_default_context(cafile=settings.export_ca_file)
    if settings.export_cert_file and settings.export_key_file:
        context.load_cert_chain(settings.export_cert_file, settings.export_key_file)
    return context


GZIP_LEVEL = 1
ZSTD_LEVEL = 1


def body_encoder(compression: str) -> tuple[str | None, Callable[[bytes], bytes]]:
    """(Content-Encoding or None, function compressing one body) for settings.export_compression.
    The function is safe to call from several threads at once."""
    if compression == "gzip":

        def gzip_body(payload: bytes) -> bytes:
            # wbits 31: the gzip container; zlib's one-shot call is faster than the gzip module.
            c = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, zlib.MAX_WBITS | 16)
            return c.compress(payload) + c.flush()

        return "gzip", gzip_body
    if compression == "zstd":
        local = threading.local()  # a ZstdCompressor must not be used by two threads at once

        def zstd_body(payload: bytes) -> bytes:
            compressor = getattr(local, "compressor", None)
            if compressor is None:
                compressor = local.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
            return compressor.compress(payload)

        return "zstd", zstd_body
    return None, lambda payload: payload


def _error_text(response: http.client.HTTPResponse, body: bytes) -> str:
    """The message of an error response: google.rpc.Status.message for protobuf bodies."""
    if "protobuf" in (response.getheader("Content-Type") or ""):
        try:
            return status_pb2.Status.FromString(body).message
        except Exception:
            pass
    return body.decode("utf-8", "replace")


class HttpSender:
    """POSTs batches as application/x-protobuf; one persistent connection per thread."""

    def __init__(self, settings: Settings) -> None:
        self._scheme, self._host, self._port, base = parse_http_endpoint(
            settings.endpoint or "", settings.export_insecure
        )
        # One context shared by every thread's connection (SSLContext is thread-safe to use).
        self._ssl = client_ssl_context(settings) if self._scheme == "https" else None
        self._paths = {signal: base + info.http_path for signal, info in SIGNALS.items()}
        self._timeout = settings.export_timeout
        self._headers = {**settings.export_headers, "Content-Type": "application/x-protobuf"}
        encoding, self._encode = body_encoder(settings.export_compression)
        if encoding is not None:
            self._headers["Content-Encoding"] = encoding
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._ssl is not None:
                conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._ssl
                )
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            # Forget it too: `_all` only serves close(), and every reconnect would grow it forever.
            with self._lock, contextlib.suppress(ValueError):  # ValueError: close() cleared it
                self._all.remove(conn)

    def send(self, signal: Signal, payload: bytes) -> SendResult:
        # A kept-alive connection may have been closed by the server while idle; that shows up as
        # an error on the first request, so one immediate retry on a fresh connection is fair.
        body = self._encode(payload)
        for fresh_retry in (False, True):
            reused = getattr(self._local, "conn", None) is not None
            conn = self._connection()
            try:
                conn.request("POST", self._paths[signal], body=body, headers=self._headers)
                response = conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as error:
                self._drop_connection()
                if reused and not fresh_retry and not isinstance(error, TimeoutError):
                    continue
                raise SendError(f"HTTP connection: {error!r}", retryable=True) from None
            if response.will_close:
                self._drop_connection()
            if 200 <= response.status < 300:
                return partial_success(signal, body)
            raise http_send_error(
                response.status, response.getheader("Retry-After"), _error_text(response, body)
            )
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
