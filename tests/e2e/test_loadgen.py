"""The load generator against a real OTLP receiver (the recording backend): what it sends is
what arrives, item keys match `PayloadFactory.keys`, refusals and failures are classified, the
fixed-rate schedule holds, and the CLI's exit code and JSON output are right."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from otlp_ingest.loadgen import (
    FAILED,
    OK,
    REFUSED,
    LoadgenOptions,
    PayloadFactory,
    main,
    parse_duration,
    run_loadgen,
    token_for,
)
from otlp_ingest.otlp.signals import SIGNAL_BY_NAME, SIGNALS


@pytest.fixture(scope="module")
def shared_backend() -> Iterator[object]:
    from tests.support.backend import RecordingBackend

    with RecordingBackend() as backend:
        yield backend


@pytest.fixture
def backend(shared_backend: object) -> object:
    """One backend process for the module (starting one costs seconds); clean for every test."""
    shared_backend.control(fail_next=0, delay_ms=0)
    shared_backend.reset()
    return shared_backend


def _endpoint(backend: object, protocol: str) -> str:
    return backend.grpc_endpoint if protocol == "grpc" else backend.http_endpoint


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("signal_name", ["traces", "metrics", "logs"])
def test_every_item_arrives_under_its_key(backend, signal_name: str, protocol: str, gzip: bool) -> None:
    tokens: list[bytes] = []
    options = LoadgenOptions(
        signal=signal_name,
        protocol=protocol,
        endpoint=_endpoint(backend, protocol),
        items_per_request=7,
        concurrency=2,
        duration=None,
        requests=12,
        gzip=gzip,
        on_response=lambda _i, token, outcome, _n: tokens.append(token) if outcome == OK else None,
    )
    result = run_loadgen(options)
    assert (result.requests_sent, result.requests_ok, result.items_accepted) == (12, 12, 84)
    records = backend.wait_for_items(signal_name, 84, 10.0)
    assert records["items"] == 84 and len(records["keys"]) == 84
    # Traces keys depend on the token alone; logs and metrics also on the factory's base time,
    # so for those check the shape: every request's token appears in exactly 7 keys.
    if signal_name == "traces":
        factory = PayloadFactory(SIGNAL_BY_NAME[signal_name], 7)
        assert set(records["keys"]) == {k for t in tokens for k in factory.keys(t)}
    else:
        for token in tokens:
            assert sum(token.hex() in key for key in records["keys"]) == 7


def test_payload_factory_keys_match_the_decoded_request() -> None:
    """The keys a factory promises are the keys of the request it builds, for both formats."""
    from otlp_ingest.otlp.json_codec import decode_json
    from tests.e2e.test_pipeline import item_keys

    for signal in SIGNALS:
        token = token_for(b"keycheck", 42)
        factory = PayloadFactory(signal, 5)
        request = SIGNALS[signal].request_type.FromString(factory.build(token))
        assert item_keys(signal, request) == factory.keys(token)
        json_factory = PayloadFactory(signal, 5, "json")
        assert item_keys(signal, decode_json(signal, json_factory.build(token))) == json_factory.keys(token)


@pytest.mark.parametrize(
    ("protocol", "fail_code", "outcome"),
    [
        ("grpc", "unavailable", REFUSED),
        ("grpc", "invalid", FAILED),
        ("http", "http_503", REFUSED),
        ("http", "http_400", FAILED),
    ],
)
def test_refusals_and_failures_are_counted(backend, protocol: str, fail_code: str, outcome: str) -> None:
    backend.control(fail_next=3, fail_code=fail_code, retry_after_s=0.1)
    result = run_loadgen(
        LoadgenOptions(
            protocol=protocol, endpoint=_endpoint(backend, protocol), items_per_request=5,
            concurrency=1, duration=None, requests=10,
        )
    )  # fmt: skip
    bad = result.requests_refused if outcome == REFUSED else result.requests_failed
    assert (result.requests_sent, result.requests_ok, bad) == (10, 7, 3)
    assert result.items_sent == 50 and result.items_accepted == 35
    assert sum(result.errors.values()) == 3


def test_fixed_rate_follows_the_schedule(backend) -> None:
    result = run_loadgen(
        LoadgenOptions(
            endpoint=backend.grpc_endpoint, items_per_request=10, concurrency=2, rate=100, duration=1.0
        )
    )
    # 100 requests are due in the first second (indices 0..99); a slow machine sends them late
    # rather than fewer of them.
    assert result.requests_sent == 100 == result.requests_ok
    assert result.elapsed_s >= 0.98
    assert 0 < result.latency_p50_ms <= result.latency_p99_ms


def test_cli_exit_codes_and_json(backend, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--endpoint", backend.grpc_endpoint, "--requests", "5", "--items-per-request", "3", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["requests_ok"] == 5 and result["items_accepted"] == 15
    backend.control(fail_next=1, fail_code="unavailable", retry_after_s=0.1)
    assert main(argv[:-1]) == 1  # one refusal: not every request succeeded
    text = capsys.readouterr().out
    assert "refused   1 requests" in text and "latency" in text


def test_parse_duration() -> None:
    assert parse_duration("10s") == 10.0
    assert parse_duration("250ms") == 0.25
    assert parse_duration("2m") == 120.0
    assert parse_duration("1.5") == 1.5
