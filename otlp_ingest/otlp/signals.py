"""The three OTLP signals and everything that names them on the wire.

`Signal` values are stable small integers: they are written into ring record headers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


class Signal(enum.IntEnum):
    TRACES = 1
    METRICS = 2
    LOGS = 3


@dataclass(frozen=True)
class SignalInfo:
    signal: Signal
    name: str  # "traces": used in HTTP paths, file names and log lines
    grpc_service: str  # fully-qualified gRPC service name
    http_path: str  # "/v1/traces"
    request_type: type[Message]  # Export*ServiceRequest
    response_type: type[Message]  # Export*ServiceResponse
    item_noun: str  # "spans" | "metric_points" | "log_records": metric name part
    rejected_field: str  # field of Export*PartialSuccess holding the rejected count

    @property
    def grpc_method(self) -> str:
        """The full method path gRPC uses on the wire."""
        return f"/{self.grpc_service}/Export"


SIGNALS: dict[Signal, SignalInfo] = {
    Signal.TRACES: SignalInfo(
        Signal.TRACES,
        "traces",
        "opentelemetry.proto.collector.trace.v1.TraceService",
        "/v1/traces",
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse,
        "spans",
        "rejected_spans",
    ),
    Signal.METRICS: SignalInfo(
        Signal.METRICS,
        "metrics",
        "opentelemetry.proto.collector.metrics.v1.MetricsService",
        "/v1/metrics",
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
        "metric_points",
        "rejected_data_points",
    ),
    Signal.LOGS: SignalInfo(
        Signal.LOGS,
        "logs",
        "opentelemetry.proto.collector.logs.v1.LogsService",
        "/v1/logs",
        logs_service_pb2.ExportLogsServiceRequest,
        logs_service_pb2.ExportLogsServiceResponse,
        "log_records",
        "rejected_log_records",
    ),
}

# The repeated fields from a request down to its items: request -> resources -> scopes -> items
# (for metrics the "items" are Metrics, each holding its data points).
CONTAINERS: dict[Signal, tuple[str, str, str]] = {
    Signal.TRACES: ("resource_spans", "scope_spans", "spans"),
    Signal.METRICS: ("resource_metrics", "scope_metrics", "metrics"),
    Signal.LOGS: ("resource_logs", "scope_logs", "log_records"),
}

SIGNAL_BY_PATH: dict[str, Signal] = {info.http_path: s for s, info in SIGNALS.items()}
SIGNAL_BY_NAME: dict[str, Signal] = {info.name: s for s, info in SIGNALS.items()}


def response_bytes(signal: Signal, rejected: int = 0, error_message: str = "") -> bytes:
    """A serialized Export*ServiceResponse, with partial_success only when something was rejected
    or there is a message for the client."""
    info = SIGNALS[signal]
    response = info.response_type()
    if rejected or error_message:
        setattr(response.partial_success, info.rejected_field, rejected)
        response.partial_success.error_message = error_message
    return response.SerializeToString()
