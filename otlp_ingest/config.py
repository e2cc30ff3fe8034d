"""Settings: defaults, environment, config file and flags, validated at start-up.

Precedence: CLI flags > environment (`OTLP_*`) > config file (`--config`, YAML or TOML) > defaults.
Every field of `Settings` has one environment variable (`ENV_NAMES`) and one CLI flag
(`--` + field name with `_` -> `-`). Durations accept `200ms`, `5s`, `1m`, `1h` or plain seconds;
sizes accept `512KiB`, `4MiB`, `1GiB`, `1MB` or plain bytes.

`load_settings` is the only entry point that reads anything (the environment mapping, the config
file it is given, and the TLS certificate/key/CA files the settings name, loaded once to check
them); it raises `ConfigError` naming every bad setting at once.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable, Mapping
from typing import Any, Literal

import msgspec

from otlp_ingest.errors import ConfigError

MiB = 1024 * 1024

ExportProtocol = Literal["grpc", "http/protobuf"]
ExportCompression = Literal["none", "gzip", "zstd"]
LogLevel = Literal["debug", "info", "warning", "error"]


def usable_cpus() -> int:
    """CPUs this process may use: affinity mask, capped by a cgroup v2/v1 CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, int(quota + 0.999)))
    return max(1, cpus)


def _cgroup_cpu_quota() -> float | None:
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:  # cgroup v2: "max 100000" or "200000 100000"
            quota, period = f.read().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota_us = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period_us = int(f.read())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Every setting of the server. Durations are float seconds, sizes are int bytes."""

    # Backend. Unset endpoint -> file sink in data_dir.
    endpoint: str | None = None
    export_protocol: ExportProtocol = "grpc"
    # Sent with every export request (gRPC metadata / HTTP headers), e.g. the upstream's bearer
    # token when gateways are chained. Env form as OTEL_EXPORTER_OTLP_HEADERS (URL-decoded).
    export_headers: dict[str, str] = {}
    # gzip: both protocols; zstd: http/protobuf only (grpcio's client offers no zstd).
    export_compression: ExportCompression = "none"
    export_timeout: float = 10.0  # one send attempt
    export_insecure: bool = True  # plaintext gRPC/HTTP unless the endpoint says https
    # TLS towards the backend (used when the endpoint is https://, or bare with insecure=false).
    # Read when an exporter starts, so a SIGHUP (rolling restart) picks up rotated files.
    export_ca_file: str | None = None  # PEM roots to verify the backend; unset -> system roots
    export_cert_file: str | None = None  # client certificate (mTLS to the backend), with the key
    export_key_file: str | None = None
    export_concurrency: int = 4  # batches in flight per exporter
    retry_initial_interval: float = 0.5
    retry_max_interval: float = 30.0
    # 0 -> retry forever (the Collector's max_elapsed_time: 0): never give up acknowledged data;
    # a long outage fills the queue and clients get retryable refusals instead. > 0 -> after it,
    # the batch is counted as send-failed and dropped.
    retry_max_elapsed: float = 0.0

    # Batching (wire-level concatenation).
    batch_size: int = 2048  # items (spans, data points, log records)
    batch_max_bytes: int = 3 * MiB  # below the default 4 MiB gRPC receive limit of backends
    batch_timeout: float = 5.0

    # Queueing.
    queue_size: int = 10000  # queued requests in all rings together; beyond -> retryable refusal
    queue_bytes: int = 64 * MiB  # ring bytes per worker
    # Durable mode: a write-ahead log per worker under queue_dir instead of shared-memory rings.
    queue_dir: str | None = None
    queue_max_bytes: int = 1024 * MiB  # disk bound over every log; beyond -> retryable refusal
    queue_segment_bytes: int = 16 * MiB  # size of one log segment file

    # Memory: above the soft limit (limit - spike) new data is refused with retryable codes.
    memory_limit_mib: int = 0  # 0 -> 80% of the cgroup memory limit, or no limit without one
    memory_spike_limit_mib: int = 0  # 0 -> 20% of the limit

    # Processes.
    workers: int = 0  # 0 -> usable CPUs (cgroup-aware), resolved by `resolved_workers`
    exporters: int = 1

    # Listeners. Loopback by default, like the OpenTelemetry Collector since v0.104 (collector
    # issue #8510): a laptop's `make run` must not take telemetry from the whole network. The
    # image, the chart and the manifests set 0.0.0.0 explicitly.
    bind: str = "127.0.0.1"
    grpc_port: int = 4317
    http_port: int = 4318
    admin_port: int = 8888
    # The admin port's bounds (supervisor/admin.py): open connections (beyond, the oldest one still
    # waiting for a request head is closed to make room, else the new one), and the time a request
    # head (and body) has to arrive, from the connection's start or the previous response.
    admin_max_connections: int = 128
    admin_header_timeout: float = 10.0
    grpc_max_recv_bytes: int = 4 * MiB
    http_max_body_bytes: int = 20 * MiB  # after decompression; the compressed body too
    http_read_timeout: float = 30.0  # headers and body of one request must arrive within this
    # Unsent response bytes (the client does not read, or its HTTP/2 window stays shut) may wait
    # this long before the connection (or the stream) is closed (docs/hostile-input.md).
    write_timeout: float = 30.0
    # Connection ageing, so long-lived clients re-spread over workers and pods (an HPA scale-up
    # gets traffic): GOAWAY after the age (x0.9-1.1 jitter), close after the grace; HTTP keep-alive
    # connections close after the response past the age or the request count. 0 = never.
    grpc_max_connection_age: float = 300.0
    grpc_max_connection_age_grace: float = 30.0
    http_max_connection_age: float = 300.0
    http_max_connection_requests: int = 0
    # Receiver TLS on both OTLP ports (gRPC and HTTP), like the Collector's receiver `tls`.
    # Cert and key together or neither; a client CA makes client certificates required (mTLS).
    # Read when a worker starts, so a SIGHUP (rolling restart) picks up rotated certificates.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None
    # Bearer-token authentication on both OTLP ports (otlp_ingest.auth documents the file format).
    # Unset -> no authentication. Re-read on SIGHUP and when the file changes, without restarts.
    auth_tokens_file: str | None = None

    # Lifecycle.
    shutdown_timeout: float = 30.0  # SIGTERM -> exit, all stages together
    log_level: LogLevel = "info"

    # File sink.
    data_dir: str = "./otlp-data"
    file_rotate_bytes: int = 100 * MiB

    # Processing (config file only: `processors` and `pipelines` sections, otlp_ingest.processing).
    # Kept as written and checked at load; each exporter builds its own processors from them.
    processors: dict[str, Any] = {}
    pipelines: dict[str, Any] = {}

    def resolved_workers(self) -> int:
        return self.workers if self.workers > 0 else usable_cpus()


# Environment variable for every field. Names in design.md section 5 are kept exactly.
ENV_NAMES: dict[str, str] = {
    "endpoint": "OTLP_ENDPOINT",
    "export_protocol": "OTLP_EXPORT_PROTOCOL",
    "export_headers": "OTLP_EXPORT_HEADERS",  # "k1=v1,k2=v2"
    "export_compression": "OTLP_EXPORT_COMPRESSION",
    "export_timeout": "OTLP_EXPORT_TIMEOUT",
    "export_insecure": "OTLP_EXPORT_INSECURE",
    "export_ca_file": "OTLP_EXPORT_CA_FILE",
    "export_cert_file": "OTLP_EXPORT_CERT_FILE",
    "export_key_file": "OTLP_EXPORT_KEY_FILE",
    "export_concurrency": "OTLP_EXPORT_CONCURRENCY",
    "retry_initial_interval": "OTLP_RETRY_INITIAL_INTERVAL",
    "retry_max_interval": "OTLP_RETRY_MAX_INTERVAL",
    "retry_max_elapsed": "OTLP_RETRY_MAX_ELAPSED",
    "batch_size": "OTLP_BATCH_SIZE",
    "batch_max_bytes": "OTLP_BATCH_MAX_BYTES",
    "batch_timeout": "OTLP_BATCH_TIMEOUT",
    "queue_size": "OTLP_QUEUE_SIZE",
    "queue_bytes": "OTLP_QUEUE_BYTES",
    "queue_dir": "OTLP_QUEUE_DIR",
    "queue_max_bytes": "OTLP_QUEUE_MAX_BYTES",
    "queue_segment_bytes": "OTLP_QUEUE_SEGMENT_BYTES",
    "memory_limit_mib": "OTLP_MEMORY_LIMIT_MIB",
    "memory_spike_limit_mib": "OTLP_MEMORY_SPIKE_LIMIT_MIB",
    "workers": "OTLP_WORKERS",
    "exporters": "OTLP_EXPORTERS",
    "bind": "OTLP_BIND",
    "grpc_port": "OTLP_GRPC_PORT",
    "http_port": "OTLP_HTTP_PORT",
    "admin_port": "OTLP_ADMIN_PORT",
    "admin_max_connections": "OTLP_ADMIN_MAX_CONNECTIONS",
    "admin_header_timeout": "OTLP_ADMIN_HEADER_TIMEOUT",
    "grpc_max_recv_bytes": "OTLP_GRPC_MAX_RECV_BYTES",
    "http_max_body_bytes": "OTLP_HTTP_MAX_BODY_BYTES",
    "http_read_timeout": "OTLP_HTTP_READ_TIMEOUT",
    "write_timeout": "OTLP_WRITE_TIMEOUT",
    "grpc_max_connection_age": "OTLP_GRPC_MAX_CONNECTION_AGE",
    "grpc_max_connection_age_grace": "OTLP_GRPC_MAX_CONNECTION_AGE_GRACE",
    "http_max_connection_age": "OTLP_HTTP_MAX_CONNECTION_AGE",
    "http_max_connection_requests": "OTLP_HTTP_MAX_CONNECTION_REQUESTS",
    "tls_cert_file": "OTLP_TLS_CERT_FILE",
    "tls_key_file": "OTLP_TLS_KEY_FILE",
    "tls_client_ca_file": "OTLP_TLS_CLIENT_CA_FILE",
    "auth_tokens_file": "OTLP_AUTH_TOKENS_FILE",
    "shutdown_timeout": "OTLP_SHUTDOWN_TIMEOUT",
    "log_level": "OTLP_LOG_LEVEL",
    "data_dir": "OTLP_DATA_DIR",
    "file_rotate_bytes": "OTLP_FILE_ROTATE_BYTES",
}


# Settings only a config file can give (nested sections, no env or flag form).
FILE_ONLY_FIELDS = ("processors", "pipelines")

# --- Loading: defaults < file < environment < flags -------------------------------------------------

# Which parser checks each field. Durations and sizes take units; the rest are plain.
_DURATION_FIELDS = {
    "export_timeout": 0.0,  # value: lower bound (exclusive unless listed in _ZERO_OK)
    "retry_initial_interval": 0.0,
    "retry_max_interval": 0.0,
    "retry_max_elapsed": 0.0,
    "batch_timeout": 0.0,
    "shutdown_timeout": 0.0,
    "http_read_timeout": 0.0,
    "write_timeout": 0.0,
    "admin_header_timeout": 0.0,
    "grpc_max_connection_age": 0.0,
    "grpc_max_connection_age_grace": 0.0,
    "http_max_connection_age": 0.0,
}
_ZERO_OK = {
    "retry_max_elapsed",
    "grpc_max_connection_age",
    "grpc_max_connection_age_grace",
    "http_max_connection_age",
}
_SIZE_FIELDS = {
    "batch_max_bytes",
    "queue_bytes",
    "queue_max_bytes",
    "queue_segment_bytes",
    "grpc_max_recv_bytes",
    "http_max_body_bytes",
    "file_rotate_bytes",
}
# Integer fields and their allowed (min, max).
_INT_RANGES: dict[str, tuple[int, int | None]] = {
    "export_concurrency": (1, 1024),
    "batch_size": (1, None),
    "queue_size": (1, None),
    "workers": (0, 1024),
    "memory_limit_mib": (0, None),
    "memory_spike_limit_mib": (0, None),
    "exporters": (1, 1024),
    "grpc_port": (0, 65535),
    "http_port": (0, 65535),
    "admin_port": (0, 65535),
    "admin_max_connections": (1, 65536),
    "http_max_connection_requests": (0, None),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "export_protocol": ("grpc", "http/protobuf"),
    "export_compression": ("none", "gzip", "zstd"),
    "log_level": ("debug", "info", "warning", "error"),
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
}
# PEM files (certificates, keys, CA bundles): must be readable at start-up and at every reload.
_FILE_FIELDS = {
    "export_ca_file",
    "export_cert_file",
    "export_key_file",
    "tls_cert_file",
    "tls_key_file",
    "tls_client_ca_file",
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class _Bad(ValueError):
    """One field's value is not allowed; the message says what is."""


def parse_duration(value: object) -> float:
    """`200ms`, `5s`, `1m`, `1h`, `1.5` (seconds) or a number -> float seconds."""
    if isinstance(value, bool):
        raise _Bad("not a duration (expected e.g. 200ms, 5s, 1m, 1h or seconds)")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip().lower()
    for unit in ("ms", "s", "m", "h"):  # "ms" before "m" and "s"
        if text.endswith(unit):
            number, scale = text[: -len(unit)].strip(), _DURATION_UNITS[unit]
            break
    else:
        number, scale = text, 1.0
    try:
        seconds = float(number) * scale
    except ValueError:
        raise _Bad("not a duration (expected e.g. 200ms, 5s, 1m, 1h or seconds)") from None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise _Bad("not a finite duration (expected e.g. 200ms, 5s, 1m, 1h or seconds)")
    return seconds


def parse_size(value: object) -> int:
    """`4MiB`, `512KiB`, `1GiB`, `10MB`, `1024` -> int bytes (binary and decimal units)."""
    if isinstance(value, bool):
        raise _Bad("not a size (expected e.g. 512KiB, 4MiB, 1GiB, 10MB or bytes)")
    if isinstance(value, int):
        return value
    text = str(value).strip().lower().replace(" ", "")
    split = len(text)
    while split > 0 and text[split - 1].isalpha():
        split -= 1
    number, unit = text[:split], text[split:]
    if unit not in _SIZE_UNITS:
        raise _Bad("not a size (expected e.g. 512KiB, 4MiB, 1GiB, 10MB or bytes)")
    try:
        size = float(number) * _SIZE_UNITS[unit]
    except ValueError:
        raise _Bad("not a size (expected e.g. 512KiB, 4MiB, 1GiB, 10MB or bytes)") from None
    if size != size or size != int(size):
        raise _Bad("not a whole number of bytes (expected e.g. 512KiB, 4MiB, 1GiB, 10MB or bytes)")
    return int(size)


def _parse_int(value: object, low: int, high: int | None) -> int:
    expected = f"a whole number >= {low}" if high is None else f"a whole number from {low} to {high}"
    if isinstance(value, bool):
        raise _Bad(f"not an integer (expected {expected})")
    if isinstance(value, int):
        number = value
    else:
        try:
            number = int(str(value).strip())
        except ValueError:
            raise _Bad(f"not an integer (expected {expected})") from None
    if number < low or (high is not None and number > high):
        raise _Bad(f"out of range (expected {expected})")
    return number


def _parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _Bad("not a boolean (expected true or false)")


# OTEL_EXPORTER_OTLP_HEADERS syntax, as the OpenTelemetry SDKs parse it (the exporter spec's
# "Specifying headers via environment variables": W3C Baggage without properties). A key is an
# HTTP token; a value is URL-encoded (no blanks, no `,;/"\`) and decoded, or, like the Python
# SDK's liberal mode, plain text with blanks, taken as written.
_HEADER_DELIMITER = re.compile(r"[ \t]*,[ \t]*")
_HEADER_KEY = r"[\x21\x23-\x27\x2a\x2b\x2d\x2e\x30-\x39\x41-\x5a\x5e-\x7a\x7c\x7e]+"
_HEADER_ENCODED = re.compile(
    rf"[ \t]*({_HEADER_KEY})[ \t]*=[ \t]*([\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*)[ \t]*"
)
_HEADER_LIBERAL = re.compile(
    rf"[ \t]*({_HEADER_KEY})[ \t]*=[ \t]*([\x20\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*)[ \t]*"
)
# Set by the exporter itself (or hop-by-hop, or grpc's own): a copy would clash or break framing.
_RESERVED_HEADERS = {
    "content-type", "content-length", "content-encoding", "transfer-encoding", "host", "connection",
    "te", "user-agent", "grpc-encoding", "grpc-accept-encoding", "grpc-timeout",
}  # fmt: skip
_HEADERS_EXPECTED = "expected key1=value1,key2=value2 with URL-encoded values, as OTEL_EXPORTER_OTLP_HEADERS"


def _check_header(key: str, value: str) -> None:
    if key in _RESERVED_HEADERS or key.startswith("grpc-"):
        raise _Bad(f"header {key!r} is set by the exporter itself ({_HEADERS_EXPECTED})")
    # Decoded values reach http.client and grpc metadata as is: no control characters (%0A would
    # otherwise inject a header line) and nothing outside ASCII (grpc refuses it per call).
    if any(not 0x20 <= ord(c) <= 0x7E for c in value):
        raise _Bad(f"header {key!r}: the value has control or non-ASCII characters ({_HEADERS_EXPECTED})")


def parse_headers(value: object) -> dict[str, str]:
    """`k1=v1,k2=v2` (the OTEL_EXPORTER_OTLP_HEADERS form, URL-decoded like the SDKs) or a mapping
    from a config file (taken as written). Keys are lower-cased. Unlike the SDKs, which skip a bad
    entry with a warning, a bad entry is an error: a silently missing auth header would only show
    as 401s from the backend."""
    from urllib.parse import unquote

    if isinstance(value, dict):
        headers = {str(k).strip().lower(): str(v).strip() for k, v in value.items()}
    else:
        headers = {}
        for part in _HEADER_DELIMITER.split(str(value)):
            if not part.strip():
                continue
            encoded = _HEADER_ENCODED.fullmatch(part)
            if encoded:
                key, val = unquote(encoded.group(1)).lower(), unquote(encoded.group(2)).strip()
            else:
                liberal = _HEADER_LIBERAL.fullmatch(part)
                if not liberal:
                    raise _Bad(f"not a header list ({_HEADERS_EXPECTED})")
                key, val = liberal.group(1).lower(), liberal.group(2).strip()
            headers[key] = val
    for key, val in headers.items():
        if not re.fullmatch(_HEADER_KEY, key):
            raise _Bad(f"header name {key!r} is not an HTTP token ({_HEADERS_EXPECTED})")
        _check_header(key, val)
    return headers


def _parse_file(value: object, what: str = "PEM file") -> str | None:
    """A readable file path (empty -> None). Opened and closed here so a typo or a missing
    Secret mount fails at start-up (or is refused on reload), not in the first TLS handshake."""
    if value is None or not str(value).strip():
        return None
    path = str(value).strip()
    if os.path.isdir(path):
        raise _Bad(f"is a directory (expected a readable {what})")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise _Bad(f"cannot read ({exc.strerror}) (expected a readable {what})") from None
    return path


def parse_endpoint(endpoint: str) -> tuple[str, str, int, str]:
    """`host:port`, `http://host:port[/path]` or `https://...` -> (scheme, host, port, path).

    A bare `host:port` has scheme "" (plaintext unless export_insecure is false). A URL without a
    port gets the OTLP default for the scheme-less protocol (4317) - the exporter decides further.
    """
    from urllib.parse import urlsplit

    text = endpoint.strip()
    scheme = ""
    if "://" in text:
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise _Bad("unsupported scheme (expected host:port, http://host:port or https://host:port)")
        try:
            host, port, path = parts.hostname or "", parts.port, parts.path
        except ValueError:
            raise _Bad("bad port (expected host:port, http://host:port or https://host:port)") from None
        if port is None:
            port = 443 if scheme == "https" else 80
    else:
        host, sep, port_text = text.rpartition(":")
        path = ""
        if not sep or not port_text.isdigit():
            raise _Bad("not an endpoint (expected host:port, http://host:port or https://host:port)")
        host = host.strip("[]")
        port = int(port_text)
    if not host or not 0 < port <= 65535:
        raise _Bad("not an endpoint (expected host:port, http://host:port or https://host:port)")
    return scheme, host, port, path


def _parse_field(name: str, value: object) -> object:
    """Convert one raw value (string from env/flag, or a YAML/TOML scalar) for field `name`."""
    if name in _DURATION_FIELDS:
        seconds = parse_duration(value)
        if seconds < 0 or (seconds == 0 and name not in _ZERO_OK):
            raise _Bad("must be positive (expected e.g. 200ms, 5s, 1m, 1h or seconds)")
        return seconds
    if name in _SIZE_FIELDS:
        size = parse_size(value)
        if size <= 0:
            raise _Bad("must be positive (expected e.g. 512KiB, 4MiB, 1GiB, 10MB or bytes)")
        return size
    if name in _INT_RANGES:
        return _parse_int(value, *_INT_RANGES[name])
    if name in _CHOICES:
        text = str(value).strip().lower()
        if name == "log_level" and text == "warn":
            text = "warning"
        if text not in _CHOICES[name]:
            raise _Bad(f"not allowed (expected one of {', '.join(_CHOICES[name])})")
        return text
    if name == "export_insecure":
        return _parse_bool(value)
    if name == "export_headers":
        return parse_headers(value)
    if name in _FILE_FIELDS:
        return _parse_file(value)
    if name == "auth_tokens_file":
        return _parse_file(value, "tokens file")
    if name == "endpoint":
        if value is None or not str(value).strip():
            return None
        parse_endpoint(str(value))
        return str(value).strip()
    if name in ("bind", "data_dir"):
        text = str(value).strip()
        if not text:
            raise _Bad("must not be empty")
        return text
    if name == "queue_dir":  # optional directory: empty means unset (shared-memory mode)
        text = "" if value is None else str(value).strip()
        return text or None
    raise _Bad("unknown setting")  # pragma: no cover - every field is listed above


def flag_name(field: str) -> str:
    """The CLI flag of a settings field: `batch_size` -> `--batch-size`."""
    return "--" + field.replace("_", "-")


def add_settings_flags(parser: object) -> None:
    """Add one `--flag VALUE` per Settings field to an argparse parser (dest = field name).

    Values stay strings (default None = not given) so `load_settings` parses and reports them
    exactly like environment values.
    """
    for field in ENV_NAMES:
        parser.add_argument(  # type: ignore[attr-defined]
            flag_name(field),
            dest=field,
            default=None,
            metavar=ENV_NAMES[field],
            help=f"overrides env {ENV_NAMES[field]}",
        )


def flag_overrides(namespace: object) -> dict[str, str]:
    """The settings flags actually given on an argparse namespace."""
    return {
        field: getattr(namespace, field) for field in ENV_NAMES if getattr(namespace, field, None) is not None
    }


def _read_config_file(path: str) -> dict[str, object]:
    """A flat mapping of field name -> value from a YAML (.yaml/.yml) or TOML (.toml) file."""
    lower = path.lower()
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError([f"--config={path}: cannot read ({exc.strerror})"]) from None
    try:
        if lower.endswith(".toml"):
            import tomllib

            data = tomllib.loads(raw.decode("utf-8"))
        elif lower.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(raw) or {}
        else:
            raise ConfigError([f"--config={path}: unknown file type (expected .yaml, .yml or .toml)"])
    except ConfigError:
        raise
    except Exception as exc:  # yaml.YAMLError, tomllib.TOMLDecodeError, UnicodeDecodeError
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError([f"--config={path}: not valid ({first_line})"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"--config={path}: not a mapping of setting names to values"])
    return data


def _show(value: object) -> str:
    return value if isinstance(value, str) else repr(value)


def load_settings_with_sources(
    argv_overrides: Mapping[str, object],
    environ: Mapping[str, str],
    config_file: str | None = None,
) -> tuple[Settings, dict[str, str]]:
    """Like `load_settings`, and also say where each value came from.

    The sources map field -> "default", "<file>:<key>", "<ENV_NAME>" or "--flag".
    """
    values: dict[str, object] = {}
    raws: dict[str, object] = {}  # as the user wrote them, for messages
    sources: dict[str, str] = dict.fromkeys(Settings.__struct_fields__, "default")
    problems: list[str] = []

    def take(field: str, raw: object, origin: str) -> None:
        try:
            values[field] = _parse_field(field, raw)
            raws[field] = raw
            sources[field] = origin
        except _Bad as exc:
            problems.append(f"{origin}={_show(raw)}: {exc}")

    if config_file:
        for key, raw in _read_config_file(config_file).items():
            field = str(key).replace("-", "_")
            if field in FILE_ONLY_FIELDS:
                values[field] = {} if raw is None else raw
                sources[field] = f"{config_file}:{key}"
                continue
            if field not in ENV_NAMES:
                problems.append(f"{config_file}:{key}: unknown setting (expected a Settings field name)")
                continue
            take(field, raw, f"{config_file}:{key}")
    for field, env_name in ENV_NAMES.items():
        raw = environ.get(env_name)
        if raw is not None and raw.strip() != "":
            take(field, raw, env_name)
    for field, raw in argv_overrides.items():
        if field not in ENV_NAMES:
            problems.append(f"{flag_name(field)}: unknown setting")
            continue
        if raw is not None:
            take(field, raw, flag_name(field))

    if not problems:
        problems.extend(_cross_checks(values, raws, sources))
    if not problems and (values.get("processors") or values.get("pipelines")):
        from otlp_ingest.processing import ProcessingConfigError, build_pipelines

        try:  # builds every processor: compiles patterns, imports python functions
            build_pipelines(values.get("processors", {}), values.get("pipelines", {}), f"{config_file}:")  # type: ignore[arg-type]
        except ProcessingConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    # Every value is already parsed; msgspec assembles the struct and checks the types once more.
    settings = msgspec.convert(values, Settings, strict=False)
    return settings, sources


def _cross_checks(values: dict[str, object], raws: dict[str, object], sources: dict[str, str]) -> list[str]:
    """Rules that relate two settings; each message names the one that must change."""
    defaults = Settings()

    def get(field: str) -> object:
        return values.get(field, getattr(defaults, field))

    def shown(field: str) -> str:
        return f"{sources[field]}={_show(raws.get(field, get(field)))}"

    problems = []
    ports = [f for f in ("grpc_port", "http_port", "admin_port") if get(f) != 0]
    for i, a in enumerate(ports):
        for b in ports[i + 1 :]:
            if get(a) == get(b):
                problems.append(f"{shown(b)}: same port as {sources[a]} (expected distinct ports, or 0)")
    if get("retry_max_interval") < get("retry_initial_interval"):  # type: ignore[operator]
        problems.append(
            f"{shown('retry_max_interval')}: below {shown('retry_initial_interval')} (expected >= it)"
        )
    # Against the resolved count (as the supervisor creates rings): with workers=0 (auto), an
    # exporter beyond the usable CPUs would have no ring to read and idle forever.
    workers = get("workers")
    resolved = workers if workers else usable_cpus()  # type: ignore[operator]
    if get("exporters") > resolved:  # type: ignore[operator]
        shown_workers = str(resolved) if workers else f"{resolved}, auto = usable CPUs"
        problems.append(
            f"{shown('exporters')}: more exporters than workers ({shown_workers}) "
            "(expected exporters <= workers: each exporter drains whole worker rings)"
        )
    problems.extend(_tls_checks(get, shown))
    if get("export_compression") == "zstd" and get("export_protocol") != "http/protobuf":
        # grpcio's channels compress with gzip or deflate only, and a hand-compressed message would
        # need the gRPC frame's compressed flag, which grpcio does not let a caller set.
        problems.append(
            f"{shown('export_compression')}: zstd is only sent over http/protobuf, not "
            f"{shown('export_protocol')} (expected gzip or none for grpc, or "
            f"{ENV_NAMES['export_protocol']}=http/protobuf)"
        )
    if get("auth_tokens_file") is not None:
        from otlp_ingest.auth import TokenFileError, load_tokens_file

        try:
            load_tokens_file(str(get("auth_tokens_file")))
        except TokenFileError as exc:
            # The message starts with the path, already shown by `shown`.
            reason = str(exc).removeprefix(f"{get('auth_tokens_file')}: ")
            problems.append(f"{shown('auth_tokens_file')}: {reason}")
    return problems


def _tls_checks(get: Callable[[str], object], shown: Callable[[str], str]) -> list[str]:
    """Certificate/key pairs come together and load; TLS files never ride a plaintext endpoint.

    The PEM contents are loaded into a throwaway `ssl.SSLContext` (reading only), so a key that
    does not match its certificate is named here rather than killing every worker at boot.
    """
    problems: list[str] = []
    for cert, key, role in (
        ("tls_cert_file", "tls_key_file", "server"),
        ("export_cert_file", "export_key_file", "client"),
    ):
        if (get(cert) is None) != (get(key) is None):
            given, missing = (cert, key) if get(key) is None else (key, cert)
            problems.append(f"{shown(given)}: set without {ENV_NAMES[missing]} (expected both or neither)")
        elif get(cert) is not None:
            purpose = ssl.PROTOCOL_TLS_SERVER if role == "server" else ssl.PROTOCOL_TLS_CLIENT
            try:
                ssl.SSLContext(purpose).load_cert_chain(str(get(cert)), str(get(key)))
            except (OSError, ssl.SSLError) as exc:
                problems.append(
                    f"{shown(cert)}: does not load with {ENV_NAMES[key]} ({exc}) "
                    "(expected a PEM certificate chain and its matching PEM private key)"
                )
    for ca in ("tls_client_ca_file", "export_ca_file"):
        if get(ca) is None:
            continue
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(get(ca)))
        except (OSError, ssl.SSLError) as exc:
            problems.append(f"{shown(ca)}: not a CA bundle ({exc}) (expected PEM certificates)")
    if get("tls_client_ca_file") is not None and get("tls_cert_file") is None:
        problems.append(
            f"{shown('tls_client_ca_file')}: client certificates need TLS "
            f"(expected {ENV_NAMES['tls_cert_file']} and {ENV_NAMES['tls_key_file']} too)"
        )
    export_files = [f for f in ("export_ca_file", "export_cert_file", "export_key_file") if get(f)]
    endpoint = get("endpoint")
    if (
        export_files
        and endpoint is not None
        and not export_uses_tls(str(endpoint), bool(get("export_insecure")))
    ):
        problems.append(
            f"{shown(export_files[0])}: the endpoint {shown('endpoint')} is plaintext "
            f"(expected an https:// endpoint, or {ENV_NAMES['export_insecure']}=false for host:port)"
        )
    return problems


def export_uses_tls(endpoint: str, insecure: bool) -> bool:
    """Whether the exporter talks TLS to `endpoint`: `https://` always, `http://` never, a bare
    `host:port` unless `insecure` (settings.export_insecure). Same rule for gRPC and HTTP."""
    scheme = parse_endpoint(endpoint)[0]
    return scheme == "https" or (scheme == "" and not insecure)


def load_settings(
    argv_overrides: Mapping[str, object],
    environ: Mapping[str, str],
    config_file: str | None = None,
) -> Settings:
    """Settings from flags > environment > config file > defaults.

    `argv_overrides` maps field names to raw values (strings from flags); `environ` is searched for
    `ENV_NAMES`. Raises `ConfigError` listing every problem, one line each, naming the setting as
    the user wrote it (`--flag`, `ENV_NAME` or `file:key`), its value and what is allowed.
    """
    return load_settings_with_sources(argv_overrides, environ, config_file)[0]


def settings_to_json(settings: Settings) -> str:
    """Settings as JSON (passed to children in OTLP_INGEST_SETTINGS_JSON)."""
    return msgspec.json.encode(settings).decode()


def settings_from_json(text: str) -> Settings:
    return msgspec.json.decode(text, type=Settings)
