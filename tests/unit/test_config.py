"""Settings loading: precedence flags > env > file > defaults, unit parsing, and every error line."""

from __future__ import annotations

import argparse

import pytest

from otlp_ingest.config import (
    ENV_NAMES,
    FILE_ONLY_FIELDS,
    Settings,
    add_settings_flags,
    flag_overrides,
    load_settings,
    load_settings_with_sources,
    parse_duration,
    parse_endpoint,
    parse_size,
    settings_from_json,
    settings_to_json,
)
from otlp_ingest.errors import ConfigError


def problems(flags=None, env=None, config_file=None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_settings(flags or {}, env or {}, config_file)
    return exc.value.problems


def test_defaults_without_any_source():
    settings, sources = load_settings_with_sources({}, {}, None)
    assert settings == Settings()
    assert set(sources.values()) == {"default"}


def test_every_field_has_an_env_name_and_a_flag():
    # The processing sections are nested mappings: only a config file can give them.
    assert set(ENV_NAMES) == set(Settings.__struct_fields__) - set(FILE_ONLY_FIELDS)
    parser = argparse.ArgumentParser()
    add_settings_flags(parser)
    args = parser.parse_args(["--batch-size", "7", "--export-protocol", "http/protobuf"])
    assert flag_overrides(args) == {"batch_size": "7", "export_protocol": "http/protobuf"}


def test_precedence_flag_over_env_over_file_over_default(tmp_path):
    path = tmp_path / "conf.yaml"
    path.write_text("batch_size: 10\nbatch_timeout: 2s\nqueue_size: 77\nlog_level: debug\n")
    env = {"OTLP_BATCH_SIZE": "20", "OTLP_BATCH_TIMEOUT": "300ms"}
    settings, sources = load_settings_with_sources({"batch_size": "30"}, env, str(path))
    assert settings.batch_size == 30 and sources["batch_size"] == "--batch-size"
    assert settings.batch_timeout == 0.3 and sources["batch_timeout"] == "OTLP_BATCH_TIMEOUT"
    assert settings.queue_size == 77 and sources["queue_size"] == f"{path}:queue_size"
    assert settings.log_level == "debug"
    assert settings.exporters == 1 and sources["exporters"] == "default"


def test_toml_file_and_native_types(tmp_path):
    path = tmp_path / "conf.toml"
    path.write_text(
        'endpoint = "collector:4317"\nqueue_bytes = "4MiB"\nexport_insecure = false\n'
        'shutdown_timeout = 1.5\n[export_headers]\nauthorization = "Bearer x"\n'
    )
    settings = load_settings({}, {}, str(path))
    assert settings.endpoint == "collector:4317"
    assert settings.queue_bytes == 4 * 1024 * 1024
    assert settings.export_insecure is False
    assert settings.shutdown_timeout == 1.5
    assert settings.export_headers == {"authorization": "Bearer x"}


def test_env_values_are_parsed():
    env = {
        "OTLP_ENDPOINT": "https://tempo.example:443/otlp",
        "OTLP_EXPORT_PROTOCOL": "HTTP/PROTOBUF",
        "OTLP_EXPORT_HEADERS": "a=1, b = two",
        "OTLP_EXPORT_INSECURE": "no",
        "OTLP_WORKERS": "0",
        "OTLP_LOG_LEVEL": "WARN",
        "OTLP_QUEUE_BYTES": "512KiB",
        "OTLP_FILE_ROTATE_BYTES": "10MB",
        "OTLP_RETRY_MAX_ELAPSED": "0",
        "OTLP_BATCH_SIZE": "",  # empty = unset
    }
    s = load_settings({}, env)
    assert s.endpoint == "https://tempo.example:443/otlp"
    assert s.export_protocol == "http/protobuf"
    assert s.export_headers == {"a": "1", "b": "two"}
    assert s.export_insecure is False
    assert s.log_level == "warning"
    assert s.queue_bytes == 512 * 1024
    assert s.file_rotate_bytes == 10_000_000
    assert s.retry_max_elapsed == 0.0
    assert s.batch_size == 2048


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("200ms", 0.2), ("5s", 5.0), ("1m", 60.0), ("1h", 3600.0), ("2.5", 2.5), (3, 3.0), (" 10 s", 10.0)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "size"),
    [("4MiB", 4 << 20), ("512KiB", 512 << 10), ("1GiB", 1 << 30), ("10MB", 10**7), ("1024", 1024), (5, 5)],
)
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("endpoint", "parsed"),
    [
        ("collector:4317", ("", "collector", 4317, "")),
        ("http://127.0.0.1:4318", ("http", "127.0.0.1", 4318, "")),
        ("https://x.example/otlp", ("https", "x.example", 443, "/otlp")),
        ("[::1]:4317", ("", "::1", 4317, "")),
    ],
)
def test_endpoints(endpoint, parsed):
    assert parse_endpoint(endpoint) == parsed


# One row per rule: (env name, value, expected line). Each line names the setting, the value and
# what is allowed.
ENV_ERRORS = [
    ("OTLP_BATCH_SIZE", "abc", "OTLP_BATCH_SIZE=abc: not an integer (expected a whole number >= 1)"),
    ("OTLP_BATCH_SIZE", "0", "OTLP_BATCH_SIZE=0: out of range (expected a whole number >= 1)"),
    ("OTLP_QUEUE_SIZE", "-5", "OTLP_QUEUE_SIZE=-5: out of range (expected a whole number >= 1)"),
    ("OTLP_WORKERS", "-1", "OTLP_WORKERS=-1: out of range (expected a whole number from 0 to 1024)"),
    ("OTLP_EXPORTERS", "0", "OTLP_EXPORTERS=0: out of range (expected a whole number from 1 to 1024)"),
    (
        "OTLP_EXPORT_CONCURRENCY",
        "x",
        "OTLP_EXPORT_CONCURRENCY=x: not an integer (expected a whole number from 1 to 1024)",
    ),
    (
        "OTLP_GRPC_PORT",
        "65536",
        "OTLP_GRPC_PORT=65536: out of range (expected a whole number from 0 to 65535)",
    ),
    ("OTLP_HTTP_PORT", "-1", "OTLP_HTTP_PORT=-1: out of range (expected a whole number from 0 to 65535)"),
    (
        "OTLP_ADMIN_PORT",
        "http",
        "OTLP_ADMIN_PORT=http: not an integer (expected a whole number from 0 to 65535)",
    ),
    (
        "OTLP_BATCH_TIMEOUT",
        "5x",
        "OTLP_BATCH_TIMEOUT=5x: not a duration (expected e.g. 200ms, 5s, 1m, 1h or seconds)",
    ),
    (
        "OTLP_SHUTDOWN_TIMEOUT",
        "0",
        "OTLP_SHUTDOWN_TIMEOUT=0: must be positive (expected e.g. 200ms, 5s, 1m, 1h or seconds)",
    ),
    (
        "OTLP_EXPORT_TIMEOUT",
        "-1s",
        "OTLP_EXPORT_TIMEOUT=-1s: must be positive (expected e.g. 200ms, 5s, 1m, 1h or seconds)",
    ),
    (
        "OTLP_QUEUE_BYTES",
        "lots",
        "OTLP_QUEUE_BYTES=lots: not a size (expected e.g. 512KiB, 4MiB, 1GiB, 10MB or bytes)",
    ),
    (
        "OTLP_BATCH_MAX_BYTES",
        "0",
        "OTLP_BATCH_MAX_BYTES=0: must be positive (expected e.g. 512KiB, 4MiB, 1GiB, 10MB or bytes)",
    ),
    (
        "OTLP_GRPC_MAX_RECV_BYTES",
        "1.5B",
        "OTLP_GRPC_MAX_RECV_BYTES=1.5B: not a whole number of bytes (expected e.g. 512KiB, 4MiB, 1GiB, "
        "10MB or bytes)",
    ),
    (
        "OTLP_EXPORT_PROTOCOL",
        "http/json",
        "OTLP_EXPORT_PROTOCOL=http/json: not allowed (expected one of grpc, http/protobuf)",
    ),
    (
        "OTLP_LOG_LEVEL",
        "verbose",
        "OTLP_LOG_LEVEL=verbose: not allowed (expected one of debug, info, warning, error)",
    ),
    (
        "OTLP_ENDPOINT",
        "collector",
        "OTLP_ENDPOINT=collector: not an endpoint (expected host:port, http://host:port or https://host:port)",
    ),
    (
        "OTLP_ENDPOINT",
        "ftp://x:21",
        "OTLP_ENDPOINT=ftp://x:21: unsupported scheme (expected host:port, http://host:port or "
        "https://host:port)",
    ),
    ("OTLP_EXPORT_INSECURE", "maybe", "OTLP_EXPORT_INSECURE=maybe: not a boolean (expected true or false)"),
    (
        "OTLP_EXPORT_HEADERS",
        "novalue",
        "OTLP_EXPORT_HEADERS=novalue: not a header list (expected key1=value1,key2=value2 with "
        "URL-encoded values, as OTEL_EXPORTER_OTLP_HEADERS)",
    ),
    ("OTLP_BIND", " ", None),  # blank env = unset, not an error
    ("OTLP_DATA_DIR", "   ", None),
]


@pytest.mark.parametrize(("env_name", "value", "line"), ENV_ERRORS)
def test_each_env_error_line(env_name, value, line):
    if line is None:
        load_settings({}, {env_name: value})
        return
    assert problems(env={env_name: value}) == [line]


def test_all_problems_are_reported_at_once():
    env = {name: value for name, value, line in ENV_ERRORS if line is not None and name != "OTLP_ENDPOINT"}
    lines = problems(env=env)
    assert len(lines) == len(env)
    for name in env:
        assert any(line.startswith(f"{name}=") for line in lines), name


def test_flag_errors_name_the_flag():
    assert sorted(problems(flags={"grpc_port": "99999", "batch_size": "many"})) == [
        "--batch-size=many: not an integer (expected a whole number >= 1)",
        "--grpc-port=99999: out of range (expected a whole number from 0 to 65535)",
    ]


def test_file_errors_name_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("batch_size: abc\nqueue_bytes: -1\nnot_a_setting: 1\nbind: ''\n")
    lines = problems(config_file=str(path))
    assert f"{path}:batch_size=abc: not an integer (expected a whole number >= 1)" in lines
    assert (
        f"{path}:queue_bytes=-1: must be positive (expected e.g. 512KiB, 4MiB, 1GiB, 10MB or bytes)" in lines
    )
    assert f"{path}:not_a_setting: unknown setting (expected a Settings field name)" in lines
    assert f"{path}:bind=: must not be empty" in lines
    assert len(lines) == 4


def test_file_itself_bad(tmp_path):
    missing = tmp_path / "missing.yaml"
    assert problems(config_file=str(missing)) == [
        f"--config={missing}: cannot read (No such file or directory)"
    ]
    ini = tmp_path / "conf.ini"
    ini.write_text("x=1")
    assert problems(config_file=str(ini)) == [
        f"--config={ini}: unknown file type (expected .yaml, .yml or .toml)"
    ]
    broken = tmp_path / "broken.toml"
    broken.write_text("batch_size = [")
    (line,) = problems(config_file=str(broken))
    assert line.startswith(f"--config={broken}: not valid (")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    assert problems(config_file=str(listing)) == [
        f"--config={listing}: not a mapping of setting names to values"
    ]


def test_cross_field_rules():
    assert problems(env={"OTLP_GRPC_PORT": "5000", "OTLP_HTTP_PORT": "5000"}) == [
        "OTLP_HTTP_PORT=5000: same port as OTLP_GRPC_PORT (expected distinct ports, or 0)"
    ]
    # Port 0 (ephemeral) may repeat.
    load_settings({}, {"OTLP_GRPC_PORT": "0", "OTLP_HTTP_PORT": "0", "OTLP_ADMIN_PORT": "0"})
    assert problems(flags={"retry_initial_interval": "2s", "retry_max_interval": "1s"}) == [
        "--retry-max-interval=1s: below --retry-initial-interval=2s (expected >= it)"
    ]
    assert problems(env={"OTLP_WORKERS": "2", "OTLP_EXPORTERS": "3"}) == [
        "OTLP_EXPORTERS=3: more exporters than workers (2) (expected exporters <= workers: each exporter "
        "drains whole worker rings)"
    ]


def test_exporters_are_checked_against_the_resolved_worker_count_when_workers_is_auto(monkeypatch):
    # workers=0 means usable CPUs; exporters beyond them would have no ring to read.
    monkeypatch.setattr("otlp_ingest.config.usable_cpus", lambda: 2)
    assert problems(env={"OTLP_EXPORTERS": "3"}) == [
        "OTLP_EXPORTERS=3: more exporters than workers (2, auto = usable CPUs) (expected exporters <= "
        "workers: each exporter drains whole worker rings)"
    ]
    assert load_settings({}, {"OTLP_EXPORTERS": "2"}).exporters == 2
    assert load_settings({}, {"OTLP_WORKERS": "4", "OTLP_EXPORTERS": "3"}).exporters == 3


def test_retry_max_elapsed_defaults_to_zero_retry_forever_and_takes_a_duration():
    assert Settings().retry_max_elapsed == 0.0
    assert load_settings({}, {"OTLP_RETRY_MAX_ELAPSED": "5m"}).retry_max_elapsed == 300.0


def test_settings_round_trip_through_json():
    settings = load_settings({"endpoint": "h:1", "export_headers": "a=b"}, {"OTLP_BATCH_TIMEOUT": "1m"})
    assert settings_from_json(settings_to_json(settings)) == settings


# --- export headers, compression, bearer tokens file ------------------------------------------

# OTEL_EXPORTER_OTLP_HEADERS values as users write them; each must parse exactly like the
# OpenTelemetry Python SDK's own parser (which the SDK exporters call with liberal=True).
SDK_HEADER_CASES = [
    "a=b",
    "Authorization=Bearer%20abc",  # URL-encoded blank: decoded
    "authorization=Bearer abc",  # a plain blank: the SDKs' liberal form
    " k1 = v1 , k2=v%2C2 ",  # an encoded comma inside a value
    "x-tenant=t%3Dx=y",  # "=" inside a value, encoded or not
    "api-key=abc==",
    "a=",
    "A%2DB=c",  # encoded key, lower-cased
    "x-scope-orgid=tenant-1,authorization=Basic%20dXNlcjpwYXNz",
]


@pytest.mark.parametrize("value", SDK_HEADER_CASES)
def test_export_headers_parse_like_the_sdk(value):
    from opentelemetry.util.re import parse_env_headers

    assert load_settings({}, {"OTLP_EXPORT_HEADERS": value}).export_headers == dict(
        parse_env_headers(value, liberal=True)
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("novalue", "not a header list"),
        ("a b=c", "not a header list"),
        ("x-a=1%0D%0Ax-injected=2", "control or non-ASCII"),  # would split into two header lines
        ("x-a=caf%C3%A9", "control or non-ASCII"),
        ("content-type=text/plain", "set by the exporter itself"),
        ("grpc-timeout=1S", "set by the exporter itself"),
        ("a%20b=c", "not an HTTP token"),
    ],
)
def test_bad_export_headers_are_errors_not_skipped(value, reason):
    # The SDKs skip a bad entry with a warning; a missing auth header would only surface as 401s.
    [line] = problems(env={"OTLP_EXPORT_HEADERS": value})
    assert line.startswith(f"OTLP_EXPORT_HEADERS={value}: ") and reason in line, line


def test_export_headers_from_a_config_file_are_taken_as_written(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("export_headers:\n  Authorization: Bearer a%20b\n")
    assert load_settings({}, {}, str(path)).export_headers == {"authorization": "Bearer a%20b"}


def test_export_compression():
    assert load_settings({}, {}).export_compression == "none"
    for value in ("none", "gzip", "GZIP"):
        assert load_settings({}, {"OTLP_EXPORT_COMPRESSION": value}).export_compression == value.lower()
    http = {"OTLP_EXPORT_PROTOCOL": "http/protobuf", "OTLP_EXPORT_COMPRESSION": "zstd"}
    assert load_settings({}, http).export_compression == "zstd"
    assert problems(env={"OTLP_EXPORT_COMPRESSION": "br"}) == [
        "OTLP_EXPORT_COMPRESSION=br: not allowed (expected one of none, gzip, zstd)"
    ]
    [line] = problems(env={"OTLP_EXPORT_COMPRESSION": "zstd"})
    assert line.startswith("OTLP_EXPORT_COMPRESSION=zstd: zstd is only sent over http/protobuf"), line
    assert "OTLP_EXPORT_PROTOCOL=http/protobuf" in line


def test_auth_tokens_file_is_checked_at_load(tmp_path):
    good = tmp_path / "tokens"
    good.write_text("# clients\nteam-a: " + "a" * 32 + "\n")
    assert load_settings({}, {"OTLP_AUTH_TOKENS_FILE": str(good)}).auth_tokens_file == str(good)
    missing = tmp_path / "nope"
    assert problems(env={"OTLP_AUTH_TOKENS_FILE": str(missing)}) == [
        f"OTLP_AUTH_TOKENS_FILE={missing}: cannot read (No such file or directory) "
        "(expected a readable tokens file)"
    ]
    empty = tmp_path / "empty"
    empty.write_text("\n# only a comment\n\n")
    assert problems(env={"OTLP_AUTH_TOKENS_FILE": str(empty)}) == [
        f"OTLP_AUTH_TOKENS_FILE={empty}: no tokens (expected one bearer token per line; blank lines "
        "and # comments are ignored)"
    ]
    [line] = problems(flags={"auth_tokens_file": str(tmp_path)})
    assert line == f"--auth-tokens-file={tmp_path}: is a directory (expected a readable tokens file)"
    bad = tmp_path / "bad"
    bad.write_text("short-secret-1\n")
    [line] = problems(env={"OTLP_AUTH_TOKENS_FILE": str(bad)})
    assert line.startswith(f"OTLP_AUTH_TOKENS_FILE={bad}: line 1: the token has 14 characters"), line
    assert "short-secret-1" not in line  # never the token itself


def test_processors_from_yaml_and_toml_and_their_errors(tmp_path):
    yaml_file = tmp_path / "otlp.yaml"
    yaml_file.write_text(
        "processors:\n  attributes/pii:\n    actions:\n      - {key: user.email, action: hash}\n"
        "pipelines:\n  traces: [attributes/pii]\n"
    )
    toml_file = tmp_path / "otlp.toml"
    toml_file.write_text(
        '[[processors."attributes/pii".actions]]\nkey = "user.email"\naction = "hash"\n\n'
        '[pipelines]\ntraces = ["attributes/pii"]\n'
    )
    for path in (yaml_file, toml_file):
        settings, sources = load_settings_with_sources({}, {}, str(path))
        assert settings.pipelines == {"traces": ["attributes/pii"]}
        assert settings.processors["attributes/pii"]["actions"] == [{"key": "user.email", "action": "hash"}]
        assert sources["pipelines"] == f"{path}:pipelines"
        assert settings_from_json(settings_to_json(settings)) == settings  # how children get them
    toml_file.write_text('[pipelines]\ntraces = ["attributes/missing"]\n')
    assert problems({}, {}, str(toml_file)) == [
        f"{toml_file}:pipelines.traces[0]: 'attributes/missing' is not defined under processors"
    ]
