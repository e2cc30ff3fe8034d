"""Real OTLP clients for the fault suite: gRPC and HTTP senders in threads that record every
request into a `tests.support.reconcile.Ledger`.

Each sender owns one connection (a gRPC channel with its own subchannel pool, or one keep-alive
HTTP/1.1 connection), so SO_REUSEPORT spreads the senders over the receiver workers. Requests are
`PayloadFactory` bodies with a fresh 16-byte token each: every item has a key the recording
backend reports. A refused or failed request is not resent with the same ids: the next request is
a new one, so the ledger stays a plain list of independent requests.

Outcomes are classified strictly (see reconcile.py): a refusal counts as `REFUSED` only when it
carries a retry hint (RetryInfo / Retry-After); a bare UNAVAILABLE from a dying worker or a reset
connection is `FAILED`, because the client cannot know whether the server kept the data.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import threading
import time
from dataclasses import dataclass, field

import grpc

from otlp_ingest.exporter.retry import grpc_retry_delay
from otlp_ingest.loadgen import PayloadFactory, token_for
from otlp_ingest.otlp.signals import SIGNAL_BY_NAME, SIGNALS
from tests.conftest import ServerProcess, wait_until
from tests.support.reconcile import ACKED, FAILED, REFUSED, Ledger

TIMEOUT_S = 10.0
# Default mix: both transports, all three signals, two connections per transport.
MIX = (("grpc", "traces"), ("http", "traces"), ("grpc", "logs"), ("http", "metrics"))


@dataclass
class SenderStats:
    hints: list[float] = field(default_factory=list)  # retry hints of the refusals, in seconds
    errors: dict[str, int] = field(default_factory=dict)  # failure reason -> count


class _Sender:
    """One connection sending `signal` requests of `items` items; `send` -> (outcome, hint, reason)."""

    def __init__(
        self, transport: str, signal: str, server: ServerProcess, headers: dict[str, str] | None = None
    ) -> None:
        self.transport = transport
        self.signal = signal
        self._headers = {"Content-Type": "application/x-protobuf", **(headers or {})}
        self._metadata = tuple((k.lower(), v) for k, v in (headers or {}).items()) or None
        info = SIGNALS[SIGNAL_BY_NAME[signal]]
        if transport == "grpc":
            self._channel = grpc.insecure_channel(
                server.grpc_endpoint,
                options=[("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", 1 << 26)],
            )
            self._call = self._channel.unary_unary(
                info.grpc_method, request_serializer=None, response_deserializer=None
            )
        else:
            host, port = server.http_endpoint.removeprefix("http://").rsplit(":", 1)
            self._host, self._port, self._path = host, int(port), info.http_path
            self._conn: http.client.HTTPConnection | None = None

    def send(self, body: bytes) -> tuple[str, float | None, str]:
        if self.transport == "grpc":
            try:
                self._call(body, timeout=TIMEOUT_S, metadata=self._metadata)
            except grpc.RpcError as e:
                code = e.code()  # type: ignore[attr-defined]
                hint = grpc_retry_delay(e.trailing_metadata())  # type: ignore[attr-defined]
                if code == grpc.StatusCode.UNAVAILABLE and hint is not None:
                    return REFUSED, hint, ""
                return FAILED, None, f"grpc {code.name}"
            return ACKED, None, ""
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self._host, self._port, timeout=TIMEOUT_S)
        try:
            # The server may answer before reading the body (503 while over the memory limit)
            # and close: like urllib3, read that early answer before calling it a failure.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._conn.request("POST", self._path, body, self._headers)
            response = self._conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as e:
            self._conn.close()
            self._conn = None
            return FAILED, None, f"http {type(e).__name__}"
        if (response.getheader("Connection") or "").lower() == "close":
            self._conn.close()
            self._conn = None
        if response.status == 200:
            return ACKED, None, ""
        retry_after = response.getheader("Retry-After") or ""
        if response.status in (429, 503) and retry_after.replace(".", "", 1).isdigit():
            return REFUSED, float(retry_after), ""
        return FAILED, None, f"http {response.status}"

    def close(self) -> None:
        if self.transport == "grpc":
            self._channel.close()
        elif self._conn is not None:
            self._conn.close()


class Load:
    """Senders in background threads against one server, recording into `ledger`.

    `rate` is requests/s per sender (None: closed loop). After a refusal or failure a sender waits
    `pause` s (much less than the hint: the suite keeps the pressure on and checks the hints)."""

    def __init__(
        self,
        server: ServerProcess,
        ledger: Ledger,
        mix: tuple[tuple[str, str], ...] = MIX,
        items: int = 10,
        rate: float | None = 40.0,
        pause: float = 0.05,
        name: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.server = server
        self.ledger = ledger
        self.mix = mix
        self.items = items
        self.rate = rate
        self.pause = pause
        self.name = name
        self.headers = headers  # sent with every request (gRPC metadata, lower-cased keys)
        self.stop_event = threading.Event()
        self.stats: dict[str, SenderStats] = {}
        self._threads: list[threading.Thread] = []
        self._acked = 0
        self._lock = threading.Lock()

    def start(self) -> Load:
        for i, (transport, signal) in enumerate(self.mix):
            sender_name = f"{self.name}{transport}-{signal}-{i}"
            self.stats[sender_name] = SenderStats()
            t = threading.Thread(
                target=self._run, args=(sender_name, transport, signal), name=sender_name, daemon=True
            )
            t.start()
            self._threads.append(t)
        return self

    def _run(self, sender_name: str, transport: str, signal: str) -> None:
        factory = PayloadFactory(signal, self.items)
        run_id = os.urandom(8)
        stats = self.stats[sender_name]
        sender = _Sender(transport, signal, self.server, self.headers)
        interval = 1.0 / self.rate if self.rate else 0.0
        next_due = time.monotonic()
        try:
            for index in range(1 << 62):
                if interval:
                    wait = next_due - time.monotonic()
                    if wait > 0 and self.stop_event.wait(wait):
                        return
                    next_due = max(next_due + interval, time.monotonic() - 1.0)
                if self.stop_event.is_set():
                    return
                token = token_for(run_id, index)
                outcome, hint, reason = sender.send(factory.build(token))
                self.ledger.record(
                    token.hex(),
                    lambda token=token: factory.keys(token),
                    outcome,
                    signal,
                    sender_name,
                    items=factory.items,
                )
                if outcome == ACKED:
                    with self._lock:
                        self._acked += 1
                    continue
                if hint is not None:
                    stats.hints.append(hint)
                if reason:
                    stats.errors[reason] = stats.errors.get(reason, 0) + 1
                if self.stop_event.wait(self.pause):
                    return
        finally:
            sender.close()

    def acked(self) -> int:
        """Requests acked by this load so far."""
        with self._lock:
            return self._acked

    def wait_acked(self, more: int, timeout: float = 20.0) -> None:
        """Wait until `more` further requests were acked (the load flows now)."""
        target = self.acked() + more
        wait_until(lambda: self.acked() >= target, timeout, 0.02, f"{more} more acks ({self.name or 'load'})")

    def hints(self) -> list[float]:
        return [h for s in self.stats.values() for h in s.hints]

    def errors(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.stats.values():
            for reason, n in s.errors.items():
                out[reason] = out.get(reason, 0) + n
        return out

    def finish(self, timeout: float = 30.0) -> None:
        """Stop the senders and wait for their last requests (each has a 10 s deadline)."""
        self.stop_event.set()
        for t in self._threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self._threads), "a sender did not stop"

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.finish()
