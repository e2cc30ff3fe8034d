"""Bearer-token authentication end to end: the real server tree, real clients, a real backend.

One server for the module (2 workers) forwards to a recording backend; the OpenTelemetry SDK
exporters (gRPC, HTTP/protobuf, HTTP/JSON, with their `headers` option), grpcio and plain HTTP
clients send with no token, a wrong token and the right one. Other tests start their own servers:
start-up errors, token rotation by SIGHUP under load (reconciled: nothing acknowledged lost, no
connection dropped, no child restarted), and a Kubernetes-style Secret update picked up without a
signal. Tokens must never appear in the server's log.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests
from google.rpc import status_pb2

from otlp_ingest.loadgen import PayloadFactory
from otlp_ingest.otlp.signals import SIGNAL_BY_NAME, SIGNALS
from tests.conftest import ServerProcess, http_get, wait_until
from tests.faults.load import Load
from tests.integration.test_supervisor import _serve as serve_until_exit
from tests.support.backend import RecordingBackend
from tests.support.reconcile import ACKED, FAILED, Ledger, reconcile
from tests.support.sdk import finished_spans, span_keys

SDK_TOKEN = "sdk-token-4f9c1b7e2a6d8e03"
LOAD_TOKEN = "load-token-9d2e7c4a1f6b3e58"
NEW_TOKEN = "new-token-1a2b3c4d5e6f7a8b9c"
WRONG = "wrong-token-0000000000000000"
ALL_TOKENS = (SDK_TOKEN, LOAD_TOKEN, NEW_TOKEN, WRONG)
PB = "application/x-protobuf"


def tokens_text(*lines: str) -> str:
    return "# otlp-ingest test clients\n" + "".join(f"{line}\n" for line in lines)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def assert_no_token_in_log(server: ServerProcess) -> None:
    text = server.log_path.read_text(errors="replace")
    for token in ALL_TOKENS:
        assert token not in text, f"a token appears in the server log:\n{server.log_tail()}"


# --- clients -------------------------------------------------------------------------------------


def grpc_export(server: ServerProcess, signal_name: str, body: bytes, token: str | None) -> grpc.StatusCode:
    method = SIGNALS[SIGNAL_BY_NAME[signal_name]].grpc_method
    metadata = tuple(bearer(token).items()) if token else None
    with grpc.insecure_channel(server.grpc_endpoint) as channel:
        try:
            channel.unary_unary(method)(body, timeout=10, metadata=metadata)
        except grpc.RpcError as error:
            return error.code()  # type: ignore[attr-defined]
    return grpc.StatusCode.OK


def http_export(
    server: ServerProcess, signal_name: str, body: bytes, token: str | None, ctype: str = PB
) -> requests.Response:
    headers = {"Content-Type": ctype, **(bearer(token) if token else {})}
    url = f"{server.http_endpoint}{SIGNALS[SIGNAL_BY_NAME[signal_name]].http_path}"
    return requests.post(url, data=body, headers=headers, timeout=10)


def sdk_exporter(protocol: str, server: ServerProcess, headers: dict[str, str] | None):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

        return Grpc(endpoint=server.grpc_endpoint, insecure=True, timeout=10, headers=headers)
    url = f"{server.http_endpoint}/v1/traces"
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

        return Http(endpoint=url, timeout=10, headers=headers)
    from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter as Json

    return Json(endpoint=url, timeout=10, headers=headers)


def sdk_spans(prefix: str, n: int) -> list[object]:
    return finished_spans(f"{prefix}-{i}" for i in range(n))


# --- the module's server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, RecordingBackend]]:
    tmp = tmp_path_factory.mktemp("auth")
    tokens = tmp / "tokens"
    tokens.write_text(tokens_text(f"sdk: {SDK_TOKEN}", LOAD_TOKEN))
    with RecordingBackend() as backend:
        env = {"OTLP_AUTH_TOKENS_FILE": str(tokens), "OTLP_ENDPOINT": backend.grpc_endpoint}
        server = ServerProcess(tmp / "server", env).start()
        try:
            yield server, backend
        finally:
            code = server.stop()
            assert_no_token_in_log(server)
            assert code == 0, server.log_tail()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf", "http/json"])
def test_sdk_exporters_need_the_right_token(stack, protocol: str) -> None:
    from opentelemetry.sdk.trace.export import SpanExportResult

    server, backend = stack
    delivered = {}
    for case, headers in (("none", None), ("wrong", bearer(WRONG)), ("right", bearer(SDK_TOKEN))):
        spans = sdk_spans(f"{protocol}-{case}", 4)
        client = sdk_exporter(protocol, server, headers)
        try:
            delivered[case] = (client.export(spans), set(span_keys(spans)))
        finally:
            client.shutdown()
    assert delivered["none"][0] == SpanExportResult.FAILURE
    assert delivered["wrong"][0] == SpanExportResult.FAILURE
    assert delivered["right"][0] == SpanExportResult.SUCCESS
    wait_until(
        lambda: delivered["right"][1] <= set(backend.records()["traces"]["keys"]), 15, what="spans delivered"
    )
    keys = set(backend.records()["traces"]["keys"])
    assert not (delivered["none"][1] | delivered["wrong"][1]) & keys


@pytest.mark.parametrize("signal_name", ["traces", "metrics", "logs"])
def test_every_signal_on_both_ports(stack, signal_name: str) -> None:
    server, backend = stack
    factory = PayloadFactory(signal_name, 3)
    before = backend.records()[signal_name]["items"]
    for token, expect_grpc, expect_http in (
        (None, grpc.StatusCode.UNAUTHENTICATED, 401),
        (WRONG, grpc.StatusCode.UNAUTHENTICATED, 401),
        (LOAD_TOKEN, grpc.StatusCode.OK, 200),  # an unnamed token
    ):
        assert grpc_export(server, signal_name, factory.build(os.urandom(16)), token) == expect_grpc
        assert (
            http_export(server, signal_name, factory.build(os.urandom(16)), token).status_code == expect_http
        )
    backend.wait_for_items(signal_name, before + 6, timeout=15)


def test_http_401_body_and_headers_protobuf_and_json(stack) -> None:
    server, _ = stack
    body = PayloadFactory("traces", 2).build(os.urandom(16))
    r = http_export(server, "traces", body, None)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="otlp"'
    assert r.headers["Content-Type"] == PB
    status = status_pb2.Status.FromString(r.content)
    assert status.code == grpc.StatusCode.UNAUTHENTICATED.value[0] and not status.details
    r = http_export(server, "traces", b'{"resourceSpans": []}', WRONG, "application/json")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="otlp", error="invalid_token"'
    assert r.json()["code"] == 16 and "unknown bearer token" in r.json()["message"]


def test_unauthenticated_huge_or_garbage_bodies_get_401(stack) -> None:
    server, _ = stack
    garbage = os.urandom(64 * 1024)
    assert http_export(server, "traces", garbage, None).status_code == 401  # not 400
    assert http_export(server, "traces", garbage, None, "text/plain").status_code == 401  # not 415
    # 30 MiB > the 20 MiB default body limit: 401, not 413 (and the body is not read).
    big = b"\x0a" * (30 * 1024 * 1024)
    try:
        r = http_export(server, "traces", big, WRONG)
        assert r.status_code == 401
    except requests.ConnectionError:  # the server answered and closed before the upload ended
        pass
    assert grpc_export(server, "traces", b"\x0a" * (5 * 1024 * 1024), None) == grpc.StatusCode.UNAUTHENTICATED
    assert grpc_export(server, "traces", garbage, WRONG) == grpc.StatusCode.UNAUTHENTICATED  # not INVALID


def test_refusals_are_counted_per_transport_and_acceptances_by_name(stack) -> None:
    server, _ = stack
    name = "otlp_receiver_unauthenticated_requests_total"
    before = server.metrics()
    body = PayloadFactory("logs", 1).build(os.urandom(16))
    for _ in range(3):
        grpc_export(server, "logs", body, WRONG)
    for _ in range(2):
        http_export(server, "logs", body, None)
    http_export(server, "logs", body, SDK_TOKEN)

    def counted() -> bool:
        m = server.metrics()
        return (
            m.value(name, transport="grpc") - before.value(name, transport="grpc") == 3
            and m.value(name, transport="http") - before.value(name, transport="http") == 2
        )

    wait_until(counted, 10, what="refusals counted per transport")
    accepted = "otlp_receiver_authenticated_requests_total"
    assert server.metrics().value(accepted, transport="http", token_name="sdk") >= 1
    assert server.metrics().value(accepted, transport="grpc", token_name="unnamed") >= 1


def test_admin_endpoints_stay_open(stack) -> None:
    server, _ = stack
    for path in ("/health", "/ready", "/metrics", "/"):
        assert http_get(server.admin_url + path)[0] == 200, path


# --- start-up errors ---------------------------------------------------------------------------


def test_unreadable_or_empty_tokens_file_is_a_clear_start_up_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-file"
    result = serve_until_exit(tmp_path, {"OTLP_AUTH_TOKENS_FILE": str(missing)})
    assert result.returncode == 2, result.stderr
    assert f"OTLP_AUTH_TOKENS_FILE={missing}: cannot read (No such file or directory)" in result.stderr
    empty = tmp_path / "tokens"
    empty.write_text("# the operator forgot to fill this in\n\n")
    result = serve_until_exit(tmp_path, {"OTLP_AUTH_TOKENS_FILE": str(empty)})
    assert result.returncode == 2, result.stderr
    assert f"OTLP_AUTH_TOKENS_FILE={empty}: no tokens" in result.stderr
    assert "started (pid" not in result.stderr  # refused before any child


# --- rotation without restarts -------------------------------------------------------------------


def _children(server: ServerProcess) -> dict[tuple[str, int], int]:
    return {(c.role, c.index): c.process.pid for c in server.children()}


PROBE = "probe"


def _probe(server: ServerProcess, token: str, ledger: Ledger | None) -> tuple[grpc.StatusCode, int]:
    """One request per port with `token`; recorded in `ledger` (sender "probe") when given, so
    the reconciliation knows what the probes delivered."""
    factory = PayloadFactory("traces", 1)
    results = []
    for transport in ("grpc", "http"):
        request_token = os.urandom(16)
        body = factory.build(request_token)
        if transport == "grpc":
            code = grpc_export(server, "traces", body, token)
            ok = code == grpc.StatusCode.OK
            results.append(code)
        else:
            status = http_export(server, "traces", body, token).status_code
            ok = status == 200
            results.append(status)
        if ledger is not None:
            ledger.record(
                request_token.hex(), factory.keys(request_token), ACKED if ok else FAILED, sender=PROBE
            )
    return results[0], results[1]  # type: ignore[return-value]


def _accepted_on_both_ports(server: ServerProcess, token: str, ledger: Ledger | None = None) -> bool:
    return _probe(server, token, ledger) == (grpc.StatusCode.OK, 200)


def _refused_on_both_ports(server: ServerProcess, token: str, ledger: Ledger | None = None) -> bool:
    return _probe(server, token, ledger) == (grpc.StatusCode.UNAUTHENTICATED, 401)


def _settled(backend: RecordingBackend, ledger: Ledger, server: ServerProcess):
    def done():
        result = reconcile(ledger, backend.records())
        if result.lost or server.metrics().value("otlp_exporter_queue_size") > 0:
            return None
        return result

    try:
        return wait_until(done, 30, 0.2, "every acked item delivered")
    except AssertionError:
        return reconcile(ledger, backend.records())


def test_sighup_adds_and_removes_a_token_under_load_without_loss_or_dropped_connections(
    tmp_path: Path, backend: RecordingBackend
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(tokens_text(f"load: {LOAD_TOKEN}"))
    env = {"OTLP_AUTH_TOKENS_FILE": str(tokens), "OTLP_ENDPOINT": backend.grpc_endpoint}
    ledger = Ledger()
    with ServerProcess(tmp_path / "server", env) as server:
        pids = _children(server)
        load = Load(server, ledger, rate=30.0, headers=bearer(LOAD_TOKEN)).start()
        try:
            load.wait_acked(20)
            assert _refused_on_both_ports(server, NEW_TOKEN, ledger)
            # Add a token.
            tokens.write_text(tokens_text(f"load: {LOAD_TOKEN}", f"new: {NEW_TOKEN}"))
            server.proc.send_signal(signal.SIGHUP)
            wait_until(
                lambda: _accepted_on_both_ports(server, NEW_TOKEN, ledger), 15, what="the new token accepted"
            )
            load.wait_acked(20)
            # A broken file: refused, the previous tokens stay.
            tokens.write_text("# emptied by mistake\n")
            server.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "reload refused" in server.log_tail(), 10, what="reload refused logged")
            assert _accepted_on_both_ports(server, NEW_TOKEN, ledger)
            # Remove it again.
            tokens.write_text(tokens_text(f"load: {LOAD_TOKEN}"))
            server.proc.send_signal(signal.SIGHUP)
            wait_until(
                lambda: _refused_on_both_ports(server, NEW_TOKEN, ledger),
                15,
                what="the removed token refused",
            )
            load.wait_acked(20)
        finally:
            load.finish()
        result = _settled(backend, ledger, server)
        result.check("sighup-token-rotation")
        # Nothing restarted, no connection of the load was dropped, nothing it sent failed.
        assert _children(server) == pids
        assert server.metrics().value("otlp_process_restarts_total") == 0
        assert load.errors() == {}, load.errors()
        assert not [e for e in ledger.entries() if e.outcome == FAILED and e.sender != PROBE]
        assert server.log_tail(400).count("only the bearer tokens changed: no restart") == 2
    assert_no_token_in_log(server)


def _k8s_secret_dir(root: Path, version: str, text: str) -> None:
    """Lay out `root` like a Kubernetes Secret volume: tokens -> ..data/tokens, ..data -> ..<v>;
    an update writes a new ..<v> directory and swaps the ..data symlink atomically."""
    root.mkdir(exist_ok=True)
    (root / f"..{version}").mkdir()
    (root / f"..{version}" / "tokens").write_text(text)
    (root / "..data_tmp").symlink_to(f"..{version}")
    os.replace(root / "..data_tmp", root / "..data")
    if not (root / "tokens").is_symlink():
        (root / "tokens").symlink_to("..data/tokens")


def test_secret_update_is_picked_up_without_a_signal_and_survives_a_broken_update(
    tmp_path: Path, backend: RecordingBackend
) -> None:
    secret = tmp_path / "secret"
    _k8s_secret_dir(secret, "v1", tokens_text(f"load: {LOAD_TOKEN}"))
    env = {"OTLP_AUTH_TOKENS_FILE": str(secret / "tokens"), "OTLP_ENDPOINT": backend.grpc_endpoint}
    with ServerProcess(tmp_path / "server", env) as server:
        pids = _children(server)
        _k8s_secret_dir(secret, "v2", tokens_text(f"load: {LOAD_TOKEN}", f"new: {NEW_TOKEN}"))
        wait_until(lambda: _accepted_on_both_ports(server, NEW_TOKEN), 15, what="the Secret update applied")
        assert _children(server) == pids
        # A broken update keeps the tokens in force; so does a worker restarted meanwhile (it
        # reads the supervisor's validated copy, not the broken file).
        _k8s_secret_dir(secret, "v3", "")
        wait_until(
            lambda: "cannot be used, keeping the previous 2" in server.log_tail(),
            15,
            what="bad update logged",
        )
        worker = server.child("worker", 0)
        worker.process.kill()
        wait_until(
            lambda: any(c.role == "worker" and c.index == 0 and c.process.pid != worker.process.pid
                        for c in server.children()) and server.ready(),
            20,
            what="worker 0 restarted",
        )  # fmt: skip
        for _ in range(4):  # both workers, whichever the kernel picks
            assert _accepted_on_both_ports(server, NEW_TOKEN)
            assert _accepted_on_both_ports(server, LOAD_TOKEN)
        # The next good update removes the token again.
        _k8s_secret_dir(secret, "v4", tokens_text(f"load: {LOAD_TOKEN}"))
        wait_until(lambda: _refused_on_both_ports(server, NEW_TOKEN), 15, what="the token removed")
    assert_no_token_in_log(server)
