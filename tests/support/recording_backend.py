"""A real OTLP backend for tests: records what it receives, injects faults on demand.

    python tests/support/recording_backend.py --port-file PATH [--fail-first N]
        [--fail-code unavailable|invalid|resource_exhausted|http_503|http_400]
        [--delay-ms M] [--retry-after-s S] [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]
        [--max-items N] [--fail-every K] [--partial-reject R] [--grpc-no-compression]

Listens on ephemeral ports on 127.0.0.1: OTLP/gRPC (grpcio, raw-bytes generic handlers for the
three Export methods) and HTTP (http.server: OTLP/HTTP protobuf `POST /v1/traces|metrics|logs`,
gzip and zstd accepted, plus the control API). Once both listen it writes
`{"grpc_port": P, "http_port": Q, "pid": N}` to PATH atomically (temp file + rename).

Control API on the HTTP port:
- `GET /_counts` -> `{"traces": items, "metrics": items, "logs": items}` (cheap to poll).
- `GET /_records` -> `{"traces": {"requests": n, "items": n, "failed": n, "max_request_items": n,
  "max_request_bytes": n, "too_large": n, "order": [key, ...], "keys": {key: count},
  "encodings": {"grpc": n, "http:zstd": n, "http:identity": n, ...},
  "headers": {"name: value": n, ...}},
  "metrics": {...}, "logs": {...}}`. `requests` counts accepted requests, `failed` injected
  failures (too_large included), `too_large` the requests refused by `max_items`,
  `max_request_items`/`max_request_bytes` the largest accepted request, `order` every accepted
  key in arrival order. Item keys:
  span = trace_id hex + ":" + span_id hex; log record = body string + ":" + time_unix_nano;
  metric point = metric name + ":" + time_unix_nano + ":" + sorted attributes k=v joined by ",".
  `encodings` counts accepted requests by transport and, for HTTP, `Content-Encoding` (grpcio's
  server decompresses before any handler sees the call and does not say how the message came:
  `--grpc-no-compression` makes it refuse compressed messages instead, so a test can tell);
  `headers` counts the request headers (gRPC
  metadata) of accepted requests as "name: value" lines, lower-case names, except those that
  change per request or only frame it (HEADERS_NOT_RECORDED) - so tests can check that export
  headers such as `authorization` arrive. With `--record-attributes`, `attributes` counts every
  attribute as "<where>:<key>=<value>" (where: resource, span, event, log, point; logs add
  "log:body=<body>"), so a test can prove what processors changed never reached the backend.
- `GET /_first` -> `{"traces": "<base64>" | null, "metrics": ..., "logs": ...}`: the first request
  accepted since the start or the last reset, per signal, as protobuf (re-serialized; what a check
  of the data's content, e.g. that a processor ran, samples without recording every request).
- `POST /_control` JSON `{"fail_next": N, "fail_code": "...", "delay_ms": M, "retry_after_s": S,
  "max_items": N, "fail_every": K, "partial_reject": R}` (each key optional) changes fault
  injection; `POST /_reset` clears the records.

Faults (the next N export requests, any signal or transport, fail):
- unavailable / http_503: gRPC UNAVAILABLE with google.rpc.RetryInfo(retry_after_s) in the
  `grpc-status-details-bin` trailer; HTTP 503 with `Retry-After: <retry_after_s>` (fractional
  seconds allowed here so tests stay fast).
- invalid / http_400: gRPC INVALID_ARGUMENT; HTTP 400 with a google.rpc.Status body.
- resource_exhausted: gRPC RESOURCE_EXHAUSTED without RetryInfo; HTTP 413.

More faults: `fail_every` K > 0 fails every K-th export request with `fail_code` (K=2: a
flapping backend); `max_items` N > 0 answers "too large" (RESOURCE_EXHAUSTED without RetryInfo /
413) to any request with more than N items; `partial_reject` R > 0 accepts and records every
request but answers partial_success with rejected = min(R, items) and an error message.

Independent of otlp_ingest on purpose: it only uses opentelemetry-proto, grpcio, zstandard and
the standard library, so it judges the server from the outside.

TLS: with --tls-cert/--tls-key both ports serve TLS only (the control API too); with
--tls-client-ca as well, clients must present a certificate signed by that CA (mTLS).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import os
import signal
import ssl
import threading
import time
from collections import Counter
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import zstandard
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

SIGNALS: dict[str, tuple[str, Any, Any]] = {
    # name: (gRPC service, request type, response type)
    "traces": (
        "opentelemetry.proto.collector.trace.v1.TraceService",
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse,
    ),
    "metrics": (
        "opentelemetry.proto.collector.metrics.v1.MetricsService",
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
    ),
    "logs": (
        "opentelemetry.proto.collector.logs.v1.LogsService",
        logs_service_pb2.ExportLogsServiceRequest,
        logs_service_pb2.ExportLogsServiceResponse,
    ),
}
FAIL_CODES = ("unavailable", "invalid", "resource_exhausted", "http_503", "http_400")
HEADERS_NOT_RECORDED = frozenset(
    {"content-length", "grpc-timeout", "host", "accept-encoding", "connection", "te", "grpc-accept-encoding"}
)


def _recorded_headers(pairs: Any) -> list[str]:
    return [f"{k.lower()}: {v}" for k, v in pairs if k.lower() not in HEADERS_NOT_RECORDED]


def _any_str(value: Any) -> str:
    """AnyValue as a plain string (string/bool/int/double as Python prints them)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return ""
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        return str(getattr(value, kind))
    return str(getattr(value, kind)).replace("\n", " ")


def attribute_pairs(signal: str, request: Any) -> list[str]:
    """ "<where>:<key>=<value>" for every resource attribute (where = resource) and item attribute
    (span, event, log, point) of a request: what tests of processors look for."""
    pairs: list[str] = []
    resources = getattr(
        request, {"traces": "resource_spans", "logs": "resource_logs"}.get(signal, "resource_metrics")
    )
    for resource in resources:
        pairs.extend(f"resource:{kv.key}={_any_str(kv.value)}" for kv in resource.resource.attributes)
        for scope in getattr(
            resource, {"traces": "scope_spans", "logs": "scope_logs"}.get(signal, "scope_metrics")
        ):
            if signal == "traces":
                for span in scope.spans:
                    pairs.extend(f"span:{kv.key}={_any_str(kv.value)}" for kv in span.attributes)
                    for event in span.events:
                        pairs.extend(f"event:{kv.key}={_any_str(kv.value)}" for kv in event.attributes)
            elif signal == "logs":
                for record in scope.log_records:
                    pairs.extend(f"log:{kv.key}={_any_str(kv.value)}" for kv in record.attributes)
                    pairs.append(f"log:body={_any_str(record.body)}")
            else:
                for metric in scope.metrics:
                    kind = metric.WhichOneof("data")
                    for point in getattr(metric, kind).data_points if kind else ():
                        pairs.extend(f"point:{kv.key}={_any_str(kv.value)}" for kv in point.attributes)
    return pairs


def item_keys(signal: str, request: Any) -> list[str]:
    """The identifying key of every item in a decoded Export*ServiceRequest."""
    keys: list[str] = []
    if signal == "traces":
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                keys.extend(f"{s.trace_id.hex()}:{s.span_id.hex()}" for s in ss.spans)
    elif signal == "logs":
        for rl in request.resource_logs:
            for sl in rl.scope_logs:
                keys.extend(f"{_any_str(r.body)}:{r.time_unix_nano}" for r in sl.log_records)
    else:
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    if kind is None:
                        continue
                    for point in getattr(metric, kind).data_points:
                        attrs = ",".join(sorted(f"{kv.key}={_any_str(kv.value)}" for kv in point.attributes))
                        keys.append(f"{metric.name}:{point.time_unix_nano}:{attrs}")
    return keys


class Recorder:
    """Thread-safe records and fault-injection state shared by both transports."""

    def __init__(
        self,
        fail_next: int,
        fail_code: str,
        delay_ms: float,
        retry_after_s: float,
        max_items: int = 0,
        fail_every: int = 0,
        partial_reject: int = 0,
        record_attributes: bool = False,
    ) -> None:
        self.lock = threading.Lock()
        self.fail_next = fail_next
        self.fail_code = fail_code
        self.delay_ms = delay_ms
        self.retry_after_s = retry_after_s
        self.max_items = max_items
        self.fail_every = fail_every
        self.partial_reject = partial_reject
        self.calls = 0
        self.record_attributes = record_attributes
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.records = {
                name: {
                    "requests": 0,
                    "items": 0,
                    "failed": 0,
                    "too_large": 0,
                    "max_request_items": 0,
                    "max_request_bytes": 0,
                    "order": [],
                    "keys": Counter(),
                    "encodings": Counter(),
                    "headers": Counter(),
                    "attributes": Counter(),
                }
                for name in SIGNALS
            }
            self.first: dict[str, Any] = dict.fromkeys(SIGNALS)

    def control(self, doc: dict[str, Any]) -> None:
        with self.lock:
            if "fail_next" in doc:
                self.fail_next = int(doc["fail_next"])
            if "fail_code" in doc:
                if doc["fail_code"] not in FAIL_CODES:
                    raise ValueError(f"fail_code must be one of {FAIL_CODES}")
                self.fail_code = doc["fail_code"]
            if "delay_ms" in doc:
                self.delay_ms = float(doc["delay_ms"])
            if "retry_after_s" in doc:
                self.retry_after_s = float(doc["retry_after_s"])
            for key in ("max_items", "fail_every", "partial_reject"):
                if key in doc:
                    setattr(self, key, int(doc[key]))

    def begin(self, signal: str) -> tuple[str | None, float]:
        """Called once per export request: (fault code or None, retry_after_s). Applies the delay."""
        with self.lock:
            delay = self.delay_ms
            fault = None
            self.calls += 1
            if self.fail_next > 0:
                self.fail_next -= 1
                fault = self.fail_code
                self.records[signal]["failed"] += 1
            elif self.fail_every > 0 and self.calls % self.fail_every == 0:
                fault = self.fail_code
                self.records[signal]["failed"] += 1
            retry_after = self.retry_after_s
        if delay > 0:
            time.sleep(delay / 1000.0)  # the backend's simulated latency; test-only code
        return fault, retry_after

    def record(
        self, signal: str, request: Any, nbytes: int, encoding: str = "", headers: list[str] | None = None
    ) -> tuple[bool, int]:
        """Record an accepted request: (accepted, partial_success rejected count). Not accepted
        (too many items for `max_items`): nothing is recorded, answer "too large". `encoding` is
        "<transport>:<compression>"; `headers` the "name: value" lines to count."""
        keys = item_keys(signal, request)
        with self.lock:
            entry = self.records[signal]
            if 0 < self.max_items < len(keys):
                entry["failed"] += 1
                entry["too_large"] += 1
                return False, 0
            entry["requests"] += 1
            entry["items"] += len(keys)
            entry["max_request_items"] = max(entry["max_request_items"], len(keys))
            entry["max_request_bytes"] = max(entry["max_request_bytes"], nbytes)
            entry["order"].extend(keys)
            entry["keys"].update(keys)
            if encoding:
                entry["encodings"][encoding] += 1
            entry["headers"].update(headers or ())
            if self.record_attributes:
                entry["attributes"].update(attribute_pairs(signal, request))
            if self.first[signal] is None:
                self.first[signal] = request
            return True, min(self.partial_reject, len(keys))

    def counts(self) -> dict[str, int]:
        """Items recorded per signal: what a benchmark polls (a snapshot of millions of keys
        takes seconds to serialize)."""
        with self.lock:
            return {name: entry["items"] for name, entry in self.records.items()}

    def first_requests(self) -> dict[str, str | None]:
        with self.lock:
            first = dict(self.first)
        return {
            name: None if request is None else base64.b64encode(request.SerializeToString()).decode()
            for name, request in first.items()
        }

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                name: {
                    **{
                        k: v
                        for k, v in entry.items()
                        if k not in ("keys", "order", "encodings", "headers", "attributes")
                    },
                    "keys": dict(entry["keys"]),
                    "attributes": dict(entry["attributes"]),
                    "encodings": dict(entry["encodings"]),
                    "headers": dict(entry["headers"]),
                    "order": list(entry["order"]),
                }
                for name, entry in self.records.items()
            }


_REJECTED_FIELD = {
    "traces": "rejected_spans",
    "metrics": "rejected_data_points",
    "logs": "rejected_log_records",
}


def _response(name: str, response_type: Any, rejected: int) -> bytes:
    response = response_type()
    if rejected:
        setattr(response.partial_success, _REJECTED_FIELD[name], rejected)
        response.partial_success.error_message = f"injected: rejected {rejected}"
    return response.SerializeToString()


def _grpc_fault(context: grpc.ServicerContext, fault: str, retry_after: float) -> None:
    if fault in ("unavailable", "http_503"):
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_after * 1e9))
        status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="injected: unavailable")
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        context.abort_with_status(_RpcStatus(grpc.StatusCode.UNAVAILABLE, status))
    if fault == "resource_exhausted":
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "injected: too large")
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "injected: invalid")


class _RpcStatus(grpc.Status):
    def __init__(self, code: grpc.StatusCode, status: status_pb2.Status) -> None:
        self.code = code
        self.details = status.message
        self.trailing_metadata = (("grpc-status-details-bin", status.SerializeToString()),)


def _grpc_handler(recorder: Recorder) -> grpc.GenericRpcHandler:
    def make(name: str, request_type: Any, response_type: Any) -> grpc.RpcMethodHandler:
        def export(request: bytes, context: grpc.ServicerContext) -> bytes:
            fault, retry_after = recorder.begin(name)
            if fault:
                _grpc_fault(context, fault, retry_after)
            try:
                message = request_type.FromString(request)
            except Exception:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "payload does not decode")
            headers = _recorded_headers(context.invocation_metadata() or ())
            accepted, rejected = recorder.record(name, message, len(request), "grpc", headers)
            if not accepted:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many items (max_items)")
            return _response(name, response_type, rejected)

        # No (de)serializers: requests arrive as bytes, like any OTLP receiver sees them.
        return grpc.unary_unary_rpc_method_handler(export)

    handlers = {f"/{service}/Export": make(name, req, resp) for name, (service, req, resp) in SIGNALS.items()}

    class Handler(grpc.GenericRpcHandler):
        def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
            return handlers.get(handler_call_details.method)

    return Handler()


def _http_handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    paths = {f"/v1/{name}": name for name in SIGNALS}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like real backends
        # Headers and body go out in two writes; with Nagle on, delayed ACKs cost 40 ms a request.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, doc: Any) -> None:
            self._reply(status, json.dumps(doc).encode(), "application/json")

        def _body(self) -> bytes:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            encoding = self.headers.get("Content-Encoding", "").lower()
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "zstd":  # test input from the server under test: no size cap needed
                body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
            return body

        def do_GET(self) -> None:
            if self.path == "/_records":
                self._json(200, recorder.snapshot())
            elif self.path == "/_counts":
                self._json(200, recorder.counts())
            elif self.path == "/_first":
                self._json(200, recorder.first_requests())
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:
            body = self._body()
            if self.path == "/_control":
                try:
                    recorder.control(json.loads(body or b"{}"))
                except (ValueError, TypeError) as error:
                    self._json(400, {"error": str(error)})
                    return
                self._json(200, {"ok": True})
            elif self.path == "/_reset":
                recorder.reset()
                self._json(200, {"ok": True})
            elif self.path in paths:
                self._export(paths[self.path], body)
            else:
                self._json(404, {"error": "not found"})

        def _status(
            self, status: int, code: int, message: str, headers: dict[str, str] | None = None
        ) -> None:
            body = status_pb2.Status(code=code, message=message).SerializeToString()
            self._reply(status, body, "application/x-protobuf", headers)

        def _export(self, name: str, body: bytes) -> None:
            fault, retry_after = recorder.begin(name)
            if fault in ("unavailable", "http_503"):
                self._status(503, code_pb2.UNAVAILABLE, "injected", {"Retry-After": f"{retry_after:g}"})
                return
            if fault == "resource_exhausted":
                self._status(413, code_pb2.RESOURCE_EXHAUSTED, "injected: too large")
                return
            if fault:
                self._status(400, code_pb2.INVALID_ARGUMENT, "injected: invalid")
                return
            _, request_type, response_type = SIGNALS[name]
            try:
                message = request_type.FromString(body)
            except Exception:
                self._status(400, code_pb2.INVALID_ARGUMENT, "payload does not decode")
                return
            encoding = f"http:{(self.headers.get('Content-Encoding') or 'identity').lower()}"
            headers = _recorded_headers(self.headers.items())
            accepted, rejected = recorder.record(name, message, len(body), encoding, headers)
            if not accepted:
                self._status(413, code_pb2.RESOURCE_EXHAUSTED, "too many items (max_items)")
                return
            self._reply(200, _response(name, response_type, rejected), "application/x-protobuf")

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--fail-code", choices=FAIL_CODES, default="unavailable")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--retry-after-s", type=float, default=1.0)
    parser.add_argument("--max-items", type=int, default=0, help="'too large' above N items (0: off)")
    parser.add_argument("--fail-every", type=int, default=0, help="fail every K-th request (0: off)")
    parser.add_argument("--partial-reject", type=int, default=0, help="partial_success rejected count")
    parser.add_argument(
        "--record-attributes", action="store_true", help="count every attribute key=value seen (_records)"
    )
    parser.add_argument(
        "--grpc-no-compression",
        action="store_true",
        help="refuse compressed gRPC messages (UNIMPLEMENTED), to prove a client compresses",
    )
    parser.add_argument("--tls-cert", help="serve TLS on both ports with this PEM certificate")
    parser.add_argument("--tls-key", help="the PEM private key of --tls-cert")
    parser.add_argument("--tls-client-ca", help="require client certificates signed by this CA")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_client_ca and not args.tls_cert):
        parser.error("--tls-cert and --tls-key go together; --tls-client-ca needs both")

    recorder = Recorder(
        args.fail_first,
        args.fail_code,
        args.delay_ms,
        args.retry_after_s,
        args.max_items,
        args.fail_every,
        args.partial_reject,
        args.record_attributes,
    )
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            # Bit 0 = identity only: grpc core then answers UNIMPLEMENTED to a gzip message.
            *([("grpc.compression_enabled_algorithms_bitset", 1)] if args.grpc_no_compression else []),
        ],
    )
    grpc_server.add_generic_rpc_handlers((_grpc_handler(recorder),))
    if args.tls_cert:
        with open(args.tls_cert, "rb") as f:
            cert = f.read()
        with open(args.tls_key, "rb") as f:
            key = f.read()
        client_ca = None
        if args.tls_client_ca:
            with open(args.tls_client_ca, "rb") as f:
                client_ca = f.read()
        credentials = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
        grpc_port = grpc_server.add_secure_port("127.0.0.1:0", credentials)
    else:
        grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    http_server = ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(recorder))
    http_server.daemon_threads = True
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        if args.tls_client_ca:
            context.load_verify_locations(cafile=args.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        # The handshake runs in the per-connection thread, not in accept(): a stuck or plaintext
        # client cannot block the listener.
        http_server.socket = context.wrap_socket(
            http_server.socket, server_side=True, do_handshake_on_connect=False
        )
    threading.Thread(target=http_server.serve_forever, daemon=True).start()

    tmp = f"{args.port_file}.tmp"
    with open(tmp, "w") as f:
        json.dump({"grpc_port": grpc_port, "http_port": http_server.server_address[1], "pid": os.getpid()}, f)
    os.replace(tmp, args.port_file)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    http_server.shutdown()
    grpc_server.stop(grace=0.5).wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
