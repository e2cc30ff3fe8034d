"""Settings: defaults, environment, config file and flags, validated at start-up.

Precedence: CLI flags > environment (`OTLP_*`) > config file (`--config`, YAML or TOML) > defaults.
Every field of `Settings` has one environment variable (`ENV_NAMES`) and one CLI flag
(`--` + field name with `_` -> `-`). Durations accept `200ms`, `5s`, `1m`, `1h` or plain seconds;
sizes accept `512KiB`, `4MiB`, `1GiB`, `1MB` or plain bytes.

`load_settings` is the only entry point that reads anything (the environment mapping and the
config file it is given); it raises `ConfigError` naming every bad setting at once.
"""

from __future__ import annotations

import os
from typing import Literal

import msgspec

MiB = 1024 * 1024

ExportProtocol = Literal["grpc", "http/protobuf"]
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
    export_headers: dict[str, str] = {}
    export_timeout: float = 10.0  # one send attempt
    export_insecure: bool = True  # plaintext gRPC/HTTP unless the endpoint says https
    export_concurrency: int = 4  # batches in flight per exporter
    retry_initial_interval: float = 0.5
    retry_max_interval: float = 30.0
    retry_max_elapsed: float = 300.0  # then the batch is counted as send-failed and dropped

    # Batching (wire-level concatenation).
    batch_size: int = 2048  # items (spans, data points, log records)
    batch_max_bytes: int = 3 * MiB  # below the default 4 MiB gRPC receive limit of backends
    batch_timeout: float = 5.0

    # Queueing.
    queue_size: int = 10000  # queued requests in all rings together; beyond -> retryable refusal
    queue_bytes: int = 64 * MiB  # ring bytes per worker

    # Processes.
    workers: int = 0  # 0 -> usable CPUs (cgroup-aware), resolved by `resolved_workers`
    exporters: int = 1

    # Listeners.
    bind: str = "0.0.0.0"
    grpc_port: int = 4317
    http_port: int = 4318
    admin_port: int = 8888
    grpc_max_recv_bytes: int = 4 * MiB
    http_max_body_bytes: int = 20 * MiB  # after decompression; the compressed body too

    # Lifecycle.
    shutdown_timeout: float = 30.0  # SIGTERM -> exit, all stages together
    log_level: LogLevel = "info"

    # File sink.
    data_dir: str = "./otlp-data"
    file_rotate_bytes: int = 100 * MiB

    def resolved_workers(self) -> int:
        return self.workers if self.workers > 0 else usable_cpus()


# Environment variable for every field. Names in design.md section 5 are kept exactly.
ENV_NAMES: dict[str, str] = {
    "endpoint": "OTLP_ENDPOINT",
    "export_protocol": "OTLP_EXPORT_PROTOCOL",
    "export_headers": "OTLP_EXPORT_HEADERS",  # "k1=v1,k2=v2"
    "export_timeout": "OTLP_EXPORT_TIMEOUT",
    "export_insecure": "OTLP_EXPORT_INSECURE",
    "export_concurrency": "OTLP_EXPORT_CONCURRENCY",
    "retry_initial_interval": "OTLP_RETRY_INITIAL_INTERVAL",
    "retry_max_interval": "OTLP_RETRY_MAX_INTERVAL",
    "retry_max_elapsed": "OTLP_RETRY_MAX_ELAPSED",
    "batch_size": "OTLP_BATCH_SIZE",
    "batch_max_bytes": "OTLP_BATCH_MAX_BYTES",
    "batch_timeout": "OTLP_BATCH_TIMEOUT",
    "queue_size": "OTLP_QUEUE_SIZE",
    "queue_bytes": "OTLP_QUEUE_BYTES",
    "workers": "OTLP_WORKERS",
    "exporters": "OTLP_EXPORTERS",
    "bind": "OTLP_BIND",
    "grpc_port": "OTLP_GRPC_PORT",
    "http_port": "OTLP_HTTP_PORT",
    "admin_port": "OTLP_ADMIN_PORT",
    "grpc_max_recv_bytes": "OTLP_GRPC_MAX_RECV_BYTES",
    "http_max_body_bytes": "OTLP_HTTP_MAX_BODY_BYTES",
    "shutdown_timeout": "OTLP_SHUTDOWN_TIMEOUT",
    "log_level": "OTLP_LOG_LEVEL",
    "data_dir": "OTLP_DATA_DIR",
    "file_rotate_bytes": "OTLP_FILE_ROTATE_BYTES",
}
