"""TLS and mTLS: receivers (gRPC + HTTP) and the exporter's leg to the backend, with real processes.

A throwaway PKI is made per module with the `openssl` CLI (the `cryptography` package is not a
dependency): a CA, a server certificate for 127.0.0.1/localhost, a client certificate, and a
second "rogue" CA with its own client certificate. Two servers run for the module:

- `tls_server`: TLS receivers (no client certificates), exporting OTLP/HTTP over mTLS (https://,
  CA + client certificate) to a recording backend that requires client certificates;
- `mtls_server`: mTLS receivers, exporting OTLP/gRPC over mTLS to such a backend.

So every accepted span in these tests crossed TLS twice; arrival at the backend is checked by key.
Clients are the OpenTelemetry SDK exporters, grpcio and requests. REQUESTS_CA_BUNDLE and
CURL_CA_BUNDLE are removed for the SDK's HTTP exporter: requests lets them override its CA file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import requests
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from otlp_ingest.config import load_settings
from otlp_ingest.errors import ConfigError
from tests.conftest import REPO_ROOT, ServerProcess, wait_until
from tests.support.backend import RecordingBackend
from tests.support.sdk import finished_spans, span_keys

TRACE_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
CA_BUNDLE_VARS = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")

# --- throwaway PKI ---------------------------------------------------------------------------

_OPENSSL_CONF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = otlp-ingest test
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = DNS:otlp-test-client
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed EC P-256 CA: (cert, key)."""
    conf = directory / "openssl.cnf"
    conf.write_text(_OPENSSL_CONF)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-config", str(conf), "-extensions", "ca", "-newkey", "ec",
        "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-keyout", str(key), "-out", str(cert), cwd=directory,
    )  # fmt: skip
    return cert, key


def make_leaf(directory: Path, name: str, ca: tuple[Path, Path], kind: str) -> tuple[Path, Path]:
    """An EC P-256 certificate signed by `ca`; `kind` "server" (SAN 127.0.0.1, localhost) or
    "client". Returns (cert, key)."""
    conf = directory / "openssl.cnf"
    conf.write_text(_OPENSSL_CONF)
    cert, key, csr = directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.csr"
    _openssl(
        "req", "-new", "-config", str(conf), "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr), cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-set_serial",
        str(int.from_bytes(os.urandom(8), "big")), "-days", "2", "-extfile", str(conf),
        "-extensions", kind, "-out", str(cert), cwd=directory,
    )  # fmt: skip
    return cert, key


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: tuple[Path, Path]
    client: tuple[Path, Path]
    rogue_ca: Path
    rogue_client: tuple[Path, Path]  # signed by rogue_ca

    def read(self, path: Path) -> bytes:
        return path.read_bytes()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "ca")
    rogue_ca = make_ca(directory, "rogue-ca")
    return Pki(
        ca=ca[0],
        server=make_leaf(directory, "server", ca, "server"),
        client=make_leaf(directory, "client", ca, "client"),
        rogue_ca=rogue_ca[0],
        rogue_client=make_leaf(directory, "rogue-client", rogue_ca, "client"),
    )


# --- servers ---------------------------------------------------------------------------------


def _tls_backend(pki: Pki) -> RecordingBackend:
    """A recording backend serving mTLS on both ports, trusting our CA's client certificates."""
    return RecordingBackend(
        tls_cert=str(pki.server[0]),
        tls_key=str(pki.server[1]),
        tls_client_ca=str(pki.ca),
        ca_file=str(pki.ca),
        client_cert=(str(pki.client[0]), str(pki.client[1])),
    ).__enter__()


def _export_tls_env(pki: Pki) -> dict[str, str]:
    return {
        "OTLP_EXPORT_CA_FILE": str(pki.ca),
        "OTLP_EXPORT_CERT_FILE": str(pki.client[0]),
        "OTLP_EXPORT_KEY_FILE": str(pki.client[1]),
    }


@dataclass
class Stack:
    server: ServerProcess
    backend: RecordingBackend


def _stack(tmp: Path, backend: RecordingBackend, env: dict[str, str]) -> Iterator[Stack]:
    server = ServerProcess(tmp, {"OTLP_WORKERS": "1", **env})
    try:
        server.start()
        yield Stack(server, backend)
        assert server.stop() == 0, server.log_tail()
    finally:
        server.kill()
        backend.__exit__(None, None, None)


@pytest.fixture(scope="module")
def tls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """TLS receivers; exporter OTLP/HTTP over mTLS to the backend."""
    backend = _tls_backend(pki)
    env = {
        "OTLP_TLS_CERT_FILE": str(pki.server[0]),
        "OTLP_TLS_KEY_FILE": str(pki.server[1]),
        "OTLP_ENDPOINT": backend.http_endpoint,  # https://127.0.0.1:port
        "OTLP_EXPORT_PROTOCOL": "http/protobuf",
        **_export_tls_env(pki),
    }
    yield from _stack(tmp_path_factory.mktemp("tls-server"), backend, env)


@pytest.fixture(scope="module")
def mtls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """mTLS receivers; exporter OTLP/gRPC over mTLS to the backend."""
    backend = _tls_backend(pki)
    env = {
        "OTLP_TLS_CERT_FILE": str(pki.server[0]),
        "OTLP_TLS_KEY_FILE": str(pki.server[1]),
        "OTLP_TLS_CLIENT_CA_FILE": str(pki.ca),
        "OTLP_ENDPOINT": f"https://{backend.grpc_endpoint}",
        "OTLP_EXPORT_PROTOCOL": "grpc",
        **_export_tls_env(pki),
    }
    yield from _stack(tmp_path_factory.mktemp("mtls-server"), backend, env)


# --- clients ---------------------------------------------------------------------------------


def sdk_spans(n: int) -> tuple[list[object], set[str]]:
    """`n` finished SDK spans and their backend keys (trace_id:span_id hex)."""
    spans = finished_spans(f"op-{i}" for i in range(n))
    return spans, set(span_keys(spans))


def raw_request(n: int = 3) -> tuple[bytes, set[str]]:
    """A serialized ExportTraceServiceRequest with `n` random spans, and their keys."""
    spans = []
    for i in range(n):
        trace_id, span_id = os.urandom(16), os.urandom(8)
        spans.append(
            trace_pb2.Span(
                trace_id=trace_id,
                span_id=span_id,
                name=f"raw-{i}",
                start_time_unix_nano=1,
                end_time_unix_nano=2,
            )
        )
    request = trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource_pb2.Resource(
                    attributes=[
                        common_pb2.KeyValue(key="service.name", value=common_pb2.AnyValue(string_value="tls"))
                    ]
                ),
                scope_spans=[trace_pb2.ScopeSpans(spans=spans)],
            )
        ]
    )
    return request.SerializeToString(), {f"{s.trace_id.hex()}:{s.span_id.hex()}" for s in spans}


def grpc_export(
    target: str, payload: bytes, credentials: grpc.ChannelCredentials | None, timeout: float = 5.0
) -> bytes:
    """One raw TraceService/Export call; raises grpc.RpcError on failure."""
    channel = (
        grpc.secure_channel(target, credentials) if credentials is not None else grpc.insecure_channel(target)
    )
    with channel:
        export = channel.unary_unary(TRACE_METHOD, request_serializer=None, response_deserializer=None)
        return export(payload, timeout=timeout)


def https_post(
    url: str, payload: bytes, verify: str | bool, cert: tuple[str, str] | None = None
) -> requests.Response:
    """POST protobuf without the environment (REQUESTS_CA_BUNDLE would override `verify`)."""
    with requests.Session() as session:
        session.trust_env = False
        return session.post(
            url,
            data=payload,
            headers={"Content-Type": "application/x-protobuf"},
            verify=verify,
            cert=cert,
            timeout=5,
        )


def wait_for_keys(stack: Stack, keys: set[str], timeout: float = 15.0) -> None:
    def arrived() -> bool:
        return keys <= set(stack.backend.records()["traces"]["keys"])

    try:
        wait_until(arrived, timeout, what=f"{len(keys)} spans at the backend")
    except AssertionError:
        raise AssertionError(
            f"spans did not reach the backend; server log:\n{stack.server.log_tail()}"
        ) from None


def _creds(pki: Pki, client: tuple[Path, Path] | None = None) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=pki.read(pki.ca))
    return grpc.ssl_channel_credentials(
        root_certificates=pki.read(pki.ca),
        private_key=pki.read(client[1]),
        certificate_chain=pki.read(client[0]),
    )


# --- TLS receivers ---------------------------------------------------------------------------


def test_sdk_grpc_exporter_over_tls(tls_server: Stack, pki: Pki) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    spans, keys = sdk_spans(20)
    exporter = OTLPSpanExporter(
        endpoint=f"https://{tls_server.server.grpc_endpoint}", credentials=_creds(pki), timeout=10
    )
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    wait_for_keys(tls_server, keys)


def test_sdk_http_exporter_over_tls(tls_server: Stack, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    for name in CA_BUNDLE_VARS:
        monkeypatch.delenv(name, raising=False)
    spans, keys = sdk_spans(20)
    exporter = OTLPSpanExporter(
        endpoint=f"https://127.0.0.1:{tls_server.server.http_port}/v1/traces",
        certificate_file=str(pki.ca),
        timeout=10,
    )
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    wait_for_keys(tls_server, keys)


def test_direct_clients_over_tls_and_localhost_name(tls_server: Stack, pki: Pki) -> None:
    payload, keys = raw_request()
    grpc_export(tls_server.server.grpc_endpoint, payload, _creds(pki))
    response = https_post(f"https://localhost:{tls_server.server.http_port}/v1/traces", payload, str(pki.ca))
    assert response.status_code == 200, response.text
    wait_for_keys(tls_server, keys)


def test_plaintext_clients_are_refused_by_tls_ports(tls_server: Stack, pki: Pki) -> None:
    payload, _ = raw_request()
    with pytest.raises(grpc.RpcError) as refused:
        grpc_export(tls_server.server.grpc_endpoint, payload, None)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    with pytest.raises(requests.exceptions.ConnectionError):
        https_post(f"http://127.0.0.1:{tls_server.server.http_port}/v1/traces", payload, False)
    # A TLS client that does not trust our CA refuses the server, too.
    with pytest.raises(requests.exceptions.SSLError):
        https_post(f"https://127.0.0.1:{tls_server.server.http_port}/v1/traces", payload, str(pki.rogue_ca))
    # Still serving after the refusals.
    assert tls_server.server.ready()
    assert https_post(f"https://127.0.0.1:{tls_server.server.http_port}/v1/traces", payload, str(pki.ca)).ok


# --- mTLS receivers --------------------------------------------------------------------------


def test_mtls_sdk_exporters_with_client_certificate(
    mtls_server: Stack, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    for name in CA_BUNDLE_VARS:
        monkeypatch.delenv(name, raising=False)
    spans, keys = sdk_spans(20)
    grpc_exporter = GrpcExporter(
        endpoint=f"https://{mtls_server.server.grpc_endpoint}",
        credentials=_creds(pki, pki.client),
        timeout=10,
    )
    http_spans, http_keys = sdk_spans(20)
    http_exporter = HttpExporter(
        endpoint=f"https://127.0.0.1:{mtls_server.server.http_port}/v1/traces",
        certificate_file=str(pki.ca),
        client_certificate_file=str(pki.client[0]),
        client_key_file=str(pki.client[1]),
        timeout=10,
    )
    try:
        assert grpc_exporter.export(spans) is SpanExportResult.SUCCESS
        assert http_exporter.export(http_spans) is SpanExportResult.SUCCESS
    finally:
        grpc_exporter.shutdown()
        http_exporter.shutdown()
    wait_for_keys(mtls_server, keys | http_keys)


def test_mtls_refuses_clients_without_a_trusted_certificate(mtls_server: Stack, pki: Pki) -> None:
    payload, keys = raw_request()
    target = mtls_server.server.grpc_endpoint
    url = f"https://127.0.0.1:{mtls_server.server.http_port}/v1/traces"
    for credentials in (_creds(pki), _creds(pki, pki.rogue_client), None):
        with pytest.raises(grpc.RpcError) as refused:
            grpc_export(target, payload, credentials)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    for cert in (None, (str(pki.rogue_client[0]), str(pki.rogue_client[1]))):
        with pytest.raises(requests.exceptions.ConnectionError):  # SSLError is one
            https_post(url, payload, str(pki.ca), cert)
    # The right certificate gets through on both ports, and nothing refused was accepted.
    client = (str(pki.client[0]), str(pki.client[1]))
    grpc_export(target, payload, _creds(pki, pki.client))
    assert https_post(url, payload, str(pki.ca), client).status_code == 200
    wait_for_keys(mtls_server, keys)

    def once_per_transport() -> bool:
        counts = mtls_server.backend.records()["traces"]["keys"]
        return all(counts.get(k) == 2 for k in keys)

    wait_until(once_per_transport, 15, what="each span twice (gRPC + HTTP), refused ones never")


# --- rotation --------------------------------------------------------------------------------


def test_sighup_picks_up_rotated_certificates(tmp_path: Path, pki: Pki) -> None:
    """cert-manager replaces the mounted files; a SIGHUP rolling restart serves the new ones."""
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "tls.crt", live / "tls.key"
    cert.write_bytes(pki.server[0].read_bytes())
    key.write_bytes(pki.server[1].read_bytes())
    env = {"OTLP_WORKERS": "1", "OTLP_TLS_CERT_FILE": str(cert), "OTLP_TLS_KEY_FILE": str(key)}
    payload, _ = raw_request(1)
    with ServerProcess(tmp_path / "server", env) as server:
        url = f"https://127.0.0.1:{server.http_port}/v1/traces"
        assert https_post(url, payload, str(pki.ca)).status_code == 200
        # Rotate to a certificate from a new CA (a CA switch makes old and new distinguishable).
        new_ca = make_ca(tmp_path, "new-ca")
        new_cert, new_key = make_leaf(tmp_path, "new-server", new_ca, "server")
        key.write_bytes(new_key.read_bytes())
        cert.write_bytes(new_cert.read_bytes())

        def serves_new_cert() -> bool:
            try:
                return https_post(url, payload, str(new_ca[0])).status_code == 200
            except requests.exceptions.ConnectionError:
                return False

        # Not before the reload: certificates are read when a worker starts.
        with pytest.raises(requests.exceptions.SSLError):
            https_post(url, payload, str(new_ca[0]))
        server.proc.send_signal(signal.SIGHUP)
        wait_until(serves_new_cert, 30, what="the new certificate after SIGHUP")
        grpc_export(server.grpc_endpoint, payload, grpc.ssl_channel_credentials(new_ca[0].read_bytes()))


# --- settings --------------------------------------------------------------------------------


def _problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_settings({}, env)
    return exc.value.problems


def test_settings_accept_a_full_tls_configuration(pki: Pki) -> None:
    settings = load_settings(
        {},
        {
            "OTLP_TLS_CERT_FILE": str(pki.server[0]),
            "OTLP_TLS_KEY_FILE": str(pki.server[1]),
            "OTLP_TLS_CLIENT_CA_FILE": str(pki.ca),
            "OTLP_ENDPOINT": "backend:4317",
            "OTLP_EXPORT_INSECURE": "false",
            **_export_tls_env(pki),
        },
    )
    assert settings.tls_client_ca_file == str(pki.ca)
    assert settings.export_cert_file == str(pki.client[0])


def test_settings_name_the_bad_tls_file(pki: Pki, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.crt")
    [problem] = _problems({"OTLP_TLS_CERT_FILE": missing, "OTLP_TLS_KEY_FILE": str(pki.server[1])})
    assert problem.startswith(f"OTLP_TLS_CERT_FILE={missing}: cannot read"), problem
    [problem] = _problems({"OTLP_TLS_CERT_FILE": str(pki.server[0])})
    assert problem.startswith("OTLP_TLS_CERT_FILE=") and "without OTLP_TLS_KEY_FILE" in problem, problem
    [problem] = _problems({"OTLP_EXPORT_KEY_FILE": str(pki.client[1]), "OTLP_ENDPOINT": "https://b:4317"})
    assert "without OTLP_EXPORT_CERT_FILE" in problem, problem
    [problem] = _problems({"OTLP_TLS_CLIENT_CA_FILE": str(pki.ca)})
    assert problem.startswith("OTLP_TLS_CLIENT_CA_FILE=") and "OTLP_TLS_CERT_FILE" in problem, problem
    # A key that does not belong to the certificate, and a CA file that holds no certificate.
    [problem] = _problems({"OTLP_TLS_CERT_FILE": str(pki.server[0]), "OTLP_TLS_KEY_FILE": str(pki.client[1])})
    assert problem.startswith("OTLP_TLS_CERT_FILE=") and "does not load" in problem, problem
    [problem] = _problems({"OTLP_EXPORT_CA_FILE": str(pki.client[1]), "OTLP_ENDPOINT": "https://b:4317"})
    assert problem.startswith("OTLP_EXPORT_CA_FILE=") and "not a CA bundle" in problem, problem
    # TLS files for the backend with a plaintext endpoint would silently not be used.
    [problem] = _problems({"OTLP_EXPORT_CA_FILE": str(pki.ca), "OTLP_ENDPOINT": "backend:4317"})
    assert "OTLP_ENDPOINT=backend:4317 is plaintext" in problem, problem


def test_check_config_and_serve_exit_2_naming_the_missing_file(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTLP_", "OTEL_"))}
    env.update(
        {
            "PYTHONPATH": str(REPO_ROOT),
            "OTLP_TLS_CERT_FILE": str(tmp_path / "tls.crt"),
            "OTLP_TLS_KEY_FILE": str(tmp_path / "tls.key"),
        }
    )
    for command in ("check-config", "serve"):
        result = subprocess.run(
            [sys.executable, "-m", "otlp_ingest", command],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2, result.stderr
        assert f"OTLP_TLS_CERT_FILE={tmp_path / 'tls.crt'}: cannot read" in result.stderr
        assert f"OTLP_TLS_KEY_FILE={tmp_path / 'tls.key'}: cannot read" in result.stderr
