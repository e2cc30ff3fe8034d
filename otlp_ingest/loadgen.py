"""Built-in OTLP load generator: `python -m otlp_ingest loadgen ...`.

It must be cheap, so that it does not steal the CPU it measures on the same machine:

- Payloads are built once per run from a template: a serialized `Export*ServiceRequest` (or its
  OTLP/JSON text) is split around a 16-byte placeholder, and each request is `token.join(parts)`,
  one C-level join that stamps a unique per-request token into every item. No protobuf work per
  request.
- gRPC goes through raw grpcio (`unary_unary` with no serializers: bytes in, bytes out), one
  channel (one HTTP/2 connection) per sending thread so SO_REUSEPORT spreads them over workers.
- HTTP uses one keep-alive `http.client.HTTPConnection` per sending thread.
- Every sender connects before the clock starts, so no request's latency includes a handshake.

Item identity (what the recording backend keys items by, see tests/support/recording_backend.py):
each request `k` gets a 16-byte token (8 random run bytes + `k` big-endian). Item `i` of it is

- span: trace_id = token, span_id = i + 1 (8 bytes big-endian)   -> key "<token hex>:<span id hex>"
- log record: body "lg-<token hex>-<i:06d>", time_unix_nano = base + i  -> key "<body>:<time>"
- metric point: gauge "loadgen.gauge", attributes {i: "<i>", req: "<token hex>"}, time = base
  -> key "loadgen.gauge:<time>:i=<i>,req=<token hex>"

`PayloadFactory.keys(token)` returns exactly these keys, so tests can check delivery per request.

Fixed-rate mode (`rate`) follows a schedule: request k is due at t0 + k / rate and its latency is
measured from that due time, not from when a busy sender got round to it (no coordinated
omission).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import http.client
import itertools
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from otlp_ingest.otlp.signals import SIGNAL_BY_NAME, SIGNALS, Signal

PROTOCOLS = ("grpc", "http", "http/json")
REQUEST_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0  # all senders together, before the run starts
METRIC_NAME = "loadgen.gauge"

# Outcomes passed to `LoadgenOptions.on_response`.
OK = "ok"
REFUSED = "refused"  # gRPC UNAVAILABLE, HTTP 503/429: the server asked us to retry later
FAILED = "failed"  # anything else (errors, timeouts, connection failures, permanent rejections)


@dataclass
class LoadgenOptions:
    """What to send, how, and for how long.

    `duration` and `requests` may both be set (whichever ends first); with both None the run lasts
    until `stop_event` is set. `on_response(index, token, outcome, accepted_items)` is called from
    the sending threads after every request (tests use it to know exactly which ids were acked).
    """

    signal: str = "traces"
    protocol: str = "grpc"  # grpc | http (= http/protobuf) | http/json
    endpoint: str = "127.0.0.1:4317"
    items_per_request: int = 100
    concurrency: int = 4
    rate: float | None = None  # requests/s across all senders; None = closed loop
    duration: float | None = 10.0
    requests: int | None = None
    gzip: bool = False
    stop_event: threading.Event | None = None
    on_response: Callable[[int, bytes, str, int], None] | None = None


@dataclass
class LoadgenResult:
    requests_sent: int
    requests_ok: int
    requests_refused: int
    requests_failed: int
    items_sent: int
    items_accepted: int
    elapsed_s: float
    items_per_s: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    errors: dict[str, int] = field(default_factory=dict)  # first words of failure reasons -> count

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Payloads


def _anyvalue(value: str) -> common_pb2.AnyValue:
    return common_pb2.AnyValue(string_value=value)


def _resource() -> resource_pb2.Resource:
    return resource_pb2.Resource(
        attributes=[
            common_pb2.KeyValue(key="service.name", value=_anyvalue("otlp-ingest-loadgen")),
            common_pb2.KeyValue(key="host.name", value=_anyvalue("loadgen")),
        ]
    )


def _template(signal: Signal, items: int, placeholder: bytes, base_ns: int) -> Message:
    """An Export*ServiceRequest with `items` items, every one carrying `placeholder` (16 bytes)
    as raw bytes (trace ids) or as its hex text (log bodies, metric attributes)."""
    info = SIGNALS[signal]
    request = info.request_type()
    hex_ph = placeholder.hex()
    scope = common_pb2.InstrumentationScope(name="otlp_ingest.loadgen", version="1")
    if signal is Signal.TRACES:
        rs = request.resource_spans.add(resource=_resource())
        ss = rs.scope_spans.add(scope=scope)
        for i in range(items):
            ss.spans.add(
                trace_id=placeholder,
                span_id=(i + 1).to_bytes(8, "big"),
                name="loadgen-operation",
                kind=trace_pb2.Span.SPAN_KIND_SERVER,
                start_time_unix_nano=base_ns + i * 1000,
                end_time_unix_nano=base_ns + i * 1000 + 250_000,
                attributes=[
                    common_pb2.KeyValue(key="http.request.method", value=_anyvalue("GET")),
                    common_pb2.KeyValue(key="url.path", value=_anyvalue("/api/items")),
                    common_pb2.KeyValue(
                        key="http.response.status_code", value=common_pb2.AnyValue(int_value=200)
                    ),
                ],
                status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_OK),
            )
    elif signal is Signal.LOGS:
        rl = request.resource_logs.add(resource=_resource())
        sl = rl.scope_logs.add(scope=scope)
        for i in range(items):
            sl.log_records.add(
                time_unix_nano=base_ns + i,
                observed_time_unix_nano=base_ns + i,
                severity_number=logs_pb2.SEVERITY_NUMBER_INFO,
                severity_text="INFO",
                body=_anyvalue(f"lg-{hex_ph}-{i:06d}"),
                attributes=[common_pb2.KeyValue(key="logger", value=_anyvalue("loadgen"))],
            )
    else:
        rm = request.resource_metrics.add(resource=_resource())
        sm = rm.scope_metrics.add(scope=scope)
        metric = sm.metrics.add(name=METRIC_NAME, unit="1", description="load generator gauge")
        for i in range(items):
            metric.gauge.data_points.add(
                time_unix_nano=base_ns,
                as_int=i,
                attributes=[
                    common_pb2.KeyValue(key="i", value=_anyvalue(str(i))),
                    common_pb2.KeyValue(key="req", value=_anyvalue(hex_ph)),
                ],
            )
    return request


def _hex_ids(node: object) -> object:
    """OTLP/JSON wants trace/span ids as hex, where proto3 JSON gives base64."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                _hex_ids(value)
    elif isinstance(node, list):
        for value in node:
            _hex_ids(value)
    return node


def to_otlp_json(message: Message) -> bytes:
    """OTLP/JSON for a request message (lowerCamelCase keys, integer enums, hex ids)."""
    as_dict = MessageToDict(message, use_integers_for_enums=True)
    return json.dumps(_hex_ids(as_dict), separators=(",", ":")).encode()


class PayloadFactory:
    """Builds request bodies with a unique 16-byte token stamped into every item.

    `build(token)` costs one `bytes.join`; `keys(token)` lists the backend item keys.
    """

    def __init__(self, signal: Signal | str, items: int, content_format: str = "protobuf") -> None:
        self.signal = SIGNAL_BY_NAME[signal] if isinstance(signal, str) else Signal(signal)
        self.items = items
        self.content_format = content_format
        self.base_ns = time.time_ns()
        # Retry until the placeholder occurs exactly where we put it (a random 16-byte string
        # clashing with the rest of the message is astronomically unlikely, but cheap to rule out).
        while True:
            placeholder = os.urandom(16)
            message = _template(self.signal, items, placeholder, self.base_ns)
            if content_format == "json":
                body, needle, self._raw = to_otlp_json(message), placeholder.hex().encode(), False
            elif self.signal is Signal.TRACES:
                body, needle, self._raw = message.SerializeToString(), placeholder, True
            else:
                body, needle, self._raw = message.SerializeToString(), placeholder.hex().encode(), False
            parts = body.split(needle)
            if len(parts) == items + 1:
                break
        self._parts = parts

    def build(self, token: bytes) -> bytes:
        """The request body for `token` (16 bytes)."""
        return (token if self._raw else token.hex().encode()).join(self._parts)

    def keys(self, token: bytes) -> list[str]:
        """Recording-backend item keys of the request built from `token`."""
        hex_token = token.hex()
        if self.signal is Signal.TRACES:
            return [f"{hex_token}:{(i + 1).to_bytes(8, 'big').hex()}" for i in range(self.items)]
        if self.signal is Signal.LOGS:
            return [f"lg-{hex_token}-{i:06d}:{self.base_ns + i}" for i in range(self.items)]
        return [f"{METRIC_NAME}:{self.base_ns}:i={i},req={hex_token}" for i in range(self.items)]


def token_for(run_id: bytes, index: int) -> bytes:
    """16-byte request token: 8 run bytes + the request index (never all-zero: valid trace id)."""
    return run_id + index.to_bytes(8, "big")


# ---------------------------------------------------------------------------------------------
# Senders: send(body) -> (outcome, rejected_items, reason)


def _rejected_from_protobuf(signal: Signal, data: bytes) -> int:
    if not data:
        return 0
    response = SIGNALS[signal].response_type.FromString(data)
    return getattr(response.partial_success, SIGNALS[signal].rejected_field)


def _rejected_from_json(signal: Signal, data: bytes) -> int:
    if not data.strip():
        return 0
    partial = json.loads(data).get("partialSuccess") or {}
    camel = re.sub(r"_(\w)", lambda m: m.group(1).upper(), SIGNALS[signal].rejected_field)
    return int(partial.get(camel, 0) or 0)


class GrpcSender:
    def __init__(self, endpoint: str, signal: Signal, use_gzip: bool) -> None:
        self.signal = signal
        self.channel = grpc.insecure_channel(
            endpoint,
            options=[
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                # Each sender gets its own TCP connection, as separate clients would: grpc
                # otherwise shares one subchannel per target, and SO_REUSEPORT then hands all
                # the load to a single receiver worker.
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )
        self.call = self.channel.unary_unary(
            SIGNALS[signal].grpc_method, request_serializer=None, response_deserializer=None
        )
        self.compression = grpc.Compression.Gzip if use_gzip else None

    def connect(self, timeout: float) -> None:
        """Open the connection now (not in the first request); a failure shows in send()."""
        with contextlib.suppress(grpc.FutureTimeoutError):
            grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def send(self, body: bytes) -> tuple[str, int, str]:
        try:
            data = self.call(body, timeout=REQUEST_TIMEOUT_S, compression=self.compression)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            outcome = REFUSED if code == grpc.StatusCode.UNAVAILABLE else FAILED
            return outcome, 0, f"grpc {code.name if code else 'error'}"
        return OK, _rejected_from_protobuf(self.signal, data), ""

    def close(self) -> None:
        self.channel.close()


class HttpSender:
    def __init__(self, endpoint: str, signal: Signal, use_gzip: bool, json_format: bool) -> None:
        self.signal = signal
        host_port = endpoint.split("://", 1)[-1].rstrip("/")
        host, _, port = host_port.rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)
        self.path = SIGNALS[signal].http_path
        self.json_format = json_format
        self.use_gzip = use_gzip
        self.headers = {
            "Content-Type": "application/json" if json_format else "application/x-protobuf",
            "Connection": "keep-alive",
        }
        if use_gzip:
            self.headers["Content-Encoding"] = "gzip"
        self.conn: http.client.HTTPConnection | None = None

    def connect(self, timeout: float) -> None:
        """Open the connection now (not in the first request); a failure shows in send()."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.connect()
        except OSError:
            conn.close()
            return
        conn.sock.settimeout(REQUEST_TIMEOUT_S)
        self.conn = conn

    def send(self, body: bytes) -> tuple[str, int, str]:
        if self.use_gzip:
            body = gzip.compress(body, compresslevel=1)  # level 1: the sender must stay cheap
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=REQUEST_TIMEOUT_S)
            try:
                self.conn.request("POST", self.path, body, self.headers)
                response = self.conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as e:
                self.conn.close()
                self.conn = None
                # A keep-alive connection the server closed in between is not a failed request:
                # retry once on a fresh connection (the request was never processed).
                if attempt == 0 and isinstance(e, http.client.RemoteDisconnected | BrokenPipeError):
                    continue
                return FAILED, 0, f"http {type(e).__name__}"
            if response.getheader("Connection", "").lower() == "close":
                self.conn.close()
                self.conn = None
            if response.status == 200:
                parse = _rejected_from_json if self.json_format else _rejected_from_protobuf
                try:
                    return OK, parse(self.signal, data), ""
                except (ValueError, TypeError):
                    return OK, 0, ""
            outcome = REFUSED if response.status in (429, 503) else FAILED
            return outcome, 0, f"http {response.status}"
        return FAILED, 0, "http retry"  # pragma: no cover - loop always returns

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _make_sender(options: LoadgenOptions, signal: Signal) -> GrpcSender | HttpSender:
    if options.protocol == "grpc":
        return GrpcSender(options.endpoint.split("://", 1)[-1], signal, options.gzip)
    return HttpSender(options.endpoint, signal, options.gzip, options.protocol == "http/json")


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class _Tally:
    """Per-thread counters, merged at the end (no locks on the hot path)."""

    sent: int = 0
    ok: int = 0
    refused: int = 0
    failed: int = 0
    items_sent: int = 0
    items_accepted: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


def run_loadgen(options: LoadgenOptions) -> LoadgenResult:
    """Send load as `options` says and return what happened. Blocks until the run ends."""
    if options.protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {options.protocol!r}")
    signal = SIGNAL_BY_NAME[options.signal]
    factory = PayloadFactory(
        signal, options.items_per_request, "json" if options.protocol == "http/json" else "protobuf"
    )
    run_id = os.urandom(8)
    counter = itertools.count()  # next() on it is atomic under the GIL: the shared request index
    stop = options.stop_event or threading.Event()
    tallies = [_Tally() for _ in range(max(1, options.concurrency))]
    interval = 1.0 / options.rate if options.rate else 0.0
    # Every sender connects before the clock starts: latencies are of requests, not of the TCP
    # (and HTTP/2) handshakes, which would otherwise be the first request of each sender.
    senders = [_make_sender(options, signal) for _ in tallies]
    connect_by = time.monotonic() + CONNECT_TIMEOUT_S  # for all of them: a dead server costs it once
    for sender in senders:
        sender.connect(max(0.01, connect_by - time.monotonic()))
    start = time.perf_counter()
    deadline = start + options.duration if options.duration is not None else None
    limit = options.requests

    def sender_loop(tally: _Tally, sender: GrpcSender | HttpSender) -> None:
        try:
            while not stop.is_set():
                index = next(counter)
                if limit is not None and index >= limit:
                    return
                due = start + index * interval if interval else time.perf_counter()
                if deadline is not None and due >= deadline:
                    return
                if interval:
                    wait = due - time.perf_counter()
                    if wait > 0 and stop.wait(wait):
                        return
                token = token_for(run_id, index)
                body = factory.build(token)
                if not interval:
                    due = time.perf_counter()
                outcome, rejected, reason = sender.send(body)
                tally.latencies.append(time.perf_counter() - due)
                tally.sent += 1
                tally.items_sent += factory.items
                accepted = 0
                if outcome == OK:
                    tally.ok += 1
                    accepted = factory.items - rejected
                    tally.items_accepted += accepted
                else:
                    if outcome == REFUSED:
                        tally.refused += 1
                    else:
                        tally.failed += 1
                    tally.errors[reason] = tally.errors.get(reason, 0) + 1
                if options.on_response is not None:
                    options.on_response(index, token, outcome, accepted)
        finally:
            sender.close()

    threads = [
        threading.Thread(target=sender_loop, args=(t, sender), name=f"loadgen-{i}", daemon=True)
        for i, (t, sender) in enumerate(zip(tallies, senders, strict=True))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start

    latencies = sorted(x for t in tallies for x in t.latencies)
    errors: dict[str, int] = {}
    for t in tallies:
        for reason, n in t.errors.items():
            errors[reason] = errors.get(reason, 0) + n
    items_accepted = sum(t.items_accepted for t in tallies)
    return LoadgenResult(
        requests_sent=sum(t.sent for t in tallies),
        requests_ok=sum(t.ok for t in tallies),
        requests_refused=sum(t.refused for t in tallies),
        requests_failed=sum(t.failed for t in tallies),
        items_sent=sum(t.items_sent for t in tallies),
        items_accepted=items_accepted,
        elapsed_s=round(elapsed, 4),
        items_per_s=round(items_accepted / elapsed, 1) if elapsed > 0 else 0.0,
        latency_p50_ms=round(_percentile(latencies, 0.50) * 1000, 3),
        latency_p95_ms=round(_percentile(latencies, 0.95) * 1000, 3),
        latency_p99_ms=round(_percentile(latencies, 0.99) * 1000, 3),
        errors=errors,
    )


# ---------------------------------------------------------------------------------------------
# CLI

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """`200ms`, `10s`, `1m`, `1h` or plain seconds -> float seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (use e.g. 500ms, 10s, 1m)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otlp-ingest loadgen", description="Send OTLP load to an endpoint and report what happened."
    )
    parser.add_argument("--signal", choices=sorted(SIGNAL_BY_NAME), default="traces")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="http = OTLP/HTTP protobuf")
    parser.add_argument("--endpoint", default=None, help="host:port (default 127.0.0.1:4317 / :4318)")
    parser.add_argument("--items-per-request", type=_positive_int, default=100)
    parser.add_argument("--concurrency", type=_positive_int, default=4)
    parser.add_argument("--rate", type=float, default=None, help="requests/s in total; absent = closed loop")
    parser.add_argument("--duration", type=parse_duration, default=None, help="e.g. 10s (default 10s)")
    parser.add_argument("--requests", type=_positive_int, default=None, help="stop after N requests")
    parser.add_argument("--gzip", action="store_true", help="gzip-compress requests")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def options_from_args(args: argparse.Namespace) -> LoadgenOptions:
    endpoint = args.endpoint or ("127.0.0.1:4317" if args.protocol == "grpc" else "127.0.0.1:4318")
    duration = args.duration
    if duration is None and args.requests is None:
        duration = 10.0
    return LoadgenOptions(
        signal=args.signal,
        protocol=args.protocol,
        endpoint=endpoint,
        items_per_request=args.items_per_request,
        concurrency=args.concurrency,
        rate=args.rate,
        duration=duration,
        requests=args.requests,
        gzip=args.gzip,
    )


def format_result(options: LoadgenOptions, result: LoadgenResult) -> str:
    noun = SIGNALS[SIGNAL_BY_NAME[options.signal]].item_noun.replace("_", " ")
    lines = [
        f"loadgen {options.signal} over {options.protocol} to {options.endpoint}"
        f" ({options.items_per_request} {noun}/request, concurrency {options.concurrency},"
        f" {'rate ' + str(options.rate) + ' req/s' if options.rate else 'closed loop'})",
        f"  sent      {result.requests_sent} requests, {result.items_sent} {noun}",
        f"  accepted  {result.requests_ok} requests, {result.items_accepted} {noun}",
        f"  refused   {result.requests_refused} requests (retry later)",
        f"  failed    {result.requests_failed} requests",
        f"  elapsed   {result.elapsed_s:.2f} s, {result.items_per_s:,.0f} {noun}/s",
        f"  latency   p50 {result.latency_p50_ms:.2f} ms, p95 {result.latency_p95_ms:.2f} ms,"
        f" p99 {result.latency_p99_ms:.2f} ms",
    ]
    for reason, n in sorted(result.errors.items()):
        lines.append(f"  error     {reason}: {n}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`loadgen` sub-command. Exit 0 if every request succeeded, 1 otherwise."""
    args = build_parser().parse_args(argv)
    options = options_from_args(args)
    result = run_loadgen(options)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(format_result(options, result))
    ok = result.requests_sent > 0 and result.requests_ok == result.requests_sent
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
