"""The processors (otlp_ingest.processing) on real OTLP messages: options, actions, matching,
sampling decisions, user functions that fail, and the pipeline's counting."""

from __future__ import annotations

import hashlib
import os
import struct
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otlp_ingest.otlp.signals import Signal
from otlp_ingest.otlp.validate import validate_protobuf
from otlp_ingest.processing import ProcessingConfigError, build_pipelines
from otlp_ingest.processing.sampler import fnv1a32, scaled_rate
from otlp_ingest.telemetry import metrics
from tests.fuzz import EXAMPLES as FUZZ_EXAMPLES


def spans_request(n: int = 10, attributes: dict[str, object] | None = None, name: str = "op") -> bytes:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "checkout"
    ss = rs.scope_spans.add()
    ss.scope.name = "lib"
    for i in range(n):
        span = ss.spans.add(name=f"{name}{i}", trace_id=os.urandom(16), span_id=os.urandom(8))
        for key, value in (attributes or {}).items():
            _set(span.attributes.add(key=key).value, value)
        span.events.add(name="ev").attributes.add(key="user.email").value.string_value = "e@x"
    return request.SerializeToString()


def _set(value: object, raw: object) -> None:
    if isinstance(raw, bool):
        value.bool_value = raw
    elif isinstance(raw, int):
        value.int_value = raw
    elif isinstance(raw, float):
        value.double_value = raw
    else:
        value.string_value = str(raw)


def run(processors: dict, pipeline: list[str], payload: bytes, items: int, signal: Signal = Signal.TRACES):
    pipelines = build_pipelines(processors, {signal.name.lower(): pipeline})
    return pipelines[signal].run(payload, items)


def attrs_of(span) -> dict[str, object]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in span.attributes}


def problems(processors: dict, pipelines: dict | None = None) -> list[str]:
    with pytest.raises(ProcessingConfigError) as exc:
        build_pipelines(processors, pipelines or {})
    return exc.value.problems


# --- attributes / resource ------------------------------------------------------------------------


def test_hash_and_delete_reach_spans_and_span_events():
    payload = spans_request(
        3, {"user.email": "a@b.c", "http.request.header.authorization": "Bearer t", "k": 1}
    )
    out, n = run(
        {
            "attributes/pii": {
                "actions": [
                    {"key": "user.email", "action": "hash"},
                    {"key": "http.request.header.authorization", "action": "delete"},
                ]
            }
        },
        ["attributes/pii"],
        payload,
        3,
    )
    assert n == 3
    for span in ExportTraceServiceRequest.FromString(out).resource_spans[0].scope_spans[0].spans:
        assert attrs_of(span) == {"user.email": hashlib.sha256(b"a@b.c").hexdigest(), "k": 1}
        assert attrs_of(span.events[0]) == {"user.email": hashlib.sha256(b"e@x").hexdigest()}
        assert span.span_id and len(span.trace_id) == 16  # untouched fields survive the view


def test_hash_of_non_strings_follows_the_collector():
    payload = spans_request(1, {"i": 7, "d": 1.5, "b": True, "empty": ""})
    out, _ = run(
        {"attributes": {"actions": [{"pattern": "^(i|d|b|empty)$", "action": "hash"}]}},
        ["attributes"],
        payload,
        1,
    )
    span = ExportTraceServiceRequest.FromString(out).resource_spans[0].scope_spans[0].spans[0]
    assert attrs_of(span) == {
        "i": hashlib.sha256(struct.pack("<q", 7)).hexdigest(),
        "d": hashlib.sha256(struct.pack("<d", 1.5)).hexdigest(),
        "b": hashlib.sha256(b"\x01").hexdigest(),
        "empty": "",  # the Collector hashes nothing into ""
    }


def test_insert_update_upsert_and_from_attribute():
    payload = spans_request(1, {"present": "old", "src": "copied"})
    actions = [
        {"key": "present", "value": "no", "action": "insert"},
        {"key": "new", "value": 5, "action": "insert"},
        {"key": "absent", "value": "no", "action": "update"},
        {"key": "present", "value": "updated", "action": "update"},
        {"key": "up", "value": [1, "a"], "action": "upsert"},
        {"key": "copy", "from_attribute": "src", "action": "upsert"},
        {"key": "ghost", "from_attribute": "missing", "action": "upsert"},
    ]
    out, _ = run({"attributes": {"actions": actions}}, ["attributes"], payload, 1)
    span = ExportTraceServiceRequest.FromString(out).resource_spans[0].scope_spans[0].spans[0]
    got = {kv.key: kv.value for kv in span.attributes}
    assert set(got) == {"present", "src", "new", "up", "copy"}
    assert got["present"].string_value == "updated" and got["new"].int_value == 5
    assert [v.WhichOneof("value") for v in got["up"].array_value.values] == ["int_value", "string_value"]
    assert got["copy"].string_value == "copied"


def test_resource_processor_upserts_on_every_resource():
    payload = spans_request(2)
    processors = {
        "resource/env": {
            "attributes": [{"key": "deployment.environment", "value": "prod", "action": "upsert"}]
        }
    }
    out, n = run(processors, ["resource/env"], payload, 2)
    resource = ExportTraceServiceRequest.FromString(out).resource_spans[0].resource
    assert {kv.key: kv.value.string_value for kv in resource.attributes} == {
        "service.name": "checkout",
        "deployment.environment": "prod",
    }
    assert n == 2


def test_log_and_metric_point_attributes():
    logs = ExportLogsServiceRequest()
    record = logs.resource_logs.add().scope_logs.add().log_records.add()
    record.attributes.add(key="user.email").value.string_value = "a@b.c"
    out, _ = run(
        {"attributes": {"actions": [{"key": "user.email", "action": "delete"}]}},
        ["attributes"],
        logs.SerializeToString(),
        1,
        Signal.LOGS,
    )
    assert (
        not ExportLogsServiceRequest.FromString(out).resource_logs[0].scope_logs[0].log_records[0].attributes
    )
    m = ExportMetricsServiceRequest()
    metric = m.resource_metrics.add().scope_metrics.add().metrics.add(name="m")
    metric.histogram.data_points.add().attributes.add(key="user.email").value.string_value = "a@b.c"
    out, n = run(
        {"attributes": {"actions": [{"key": "user.email", "action": "hash"}]}},
        ["attributes"],
        m.SerializeToString(),
        1,
        Signal.METRICS,
    )
    point = (
        ExportMetricsServiceRequest.FromString(out)
        .resource_metrics[0]
        .scope_metrics[0]
        .metrics[0]
        .histogram.data_points[0]
    )
    assert point.attributes[0].value.string_value == hashlib.sha256(b"a@b.c").hexdigest() and n == 1


# --- filter ------------------------------------------------------------------------------------------


def test_filter_excludes_matching_spans_and_counts_them_dropped():
    payload = spans_request(4, name="GET /healthz") + spans_request(6, name="GET /orders")
    before = metrics.PROCESSOR_DROPPED.labels("filter/health", "traces", "filtered")._value.get()
    processors = {
        "filter/health": {"spans": {"exclude": {"match_type": "regexp", "span_names": ["^GET /healthz"]}}}
    }
    out, n = run(processors, ["filter/health"], payload, 10)
    request = ExportTraceServiceRequest.FromString(out)
    assert n == 6 and len(request.resource_spans) == 1  # the emptied resource is gone
    assert metrics.PROCESSOR_DROPPED.labels("filter/health", "traces", "filtered")._value.get() - before == 4


def test_filter_everything_gives_nothing_to_send():
    processors = {"filter": {"spans": {"include": {"match_type": "strict", "services": ["other"]}}}}
    assert run(processors, ["filter"], spans_request(3), 3) == (b"", 0)


def test_filter_properties_and_together():
    payload = spans_request(2, {"http.route": "/a", "n": 3})
    keep_all = {
        "spans": {
            "exclude": {
                "match_type": "strict",
                "span_names": ["op0"],
                "attributes": [{"key": "n", "value": 4}],
            }
        }
    }
    assert run({"filter": keep_all}, ["filter"], payload, 2)[1] == 2
    drop_op0 = {
        "spans": {
            "exclude": {
                "match_type": "strict",
                "span_names": ["op0"],
                "attributes": [{"key": "n", "value": 3}],
            }
        }
    }
    assert run({"filter": drop_op0}, ["filter"], payload, 2)[1] == 1


def test_filter_logs_by_severity_and_metrics_by_name():
    logs = ExportLogsServiceRequest()
    scope = logs.resource_logs.add().scope_logs.add()
    for number in (0, 5, 9, 13, 17):
        scope.log_records.add(severity_number=number)
    processors = {
        "filter": {"logs": {"include": {"match_type": "strict", "severity_number": {"min": "WARN"}}}}
    }
    assert run(processors, ["filter"], logs.SerializeToString(), 5, Signal.LOGS)[1] == 2
    m = ExportMetricsServiceRequest()
    sm = m.resource_metrics.add().scope_metrics.add()
    sm.metrics.add(name="go_gc").gauge.data_points.add()
    keep = sm.metrics.add(name="http.server.duration")
    keep.sum.data_points.add()
    keep.sum.data_points.add()
    processors = {"filter": {"metrics": {"exclude": {"match_type": "regexp", "metric_names": ["^go_"]}}}}
    assert run(processors, ["filter"], m.SerializeToString(), 3, Signal.METRICS)[1] == 2


# --- probabilistic_sampler -------------------------------------------------------------------------


def test_sampler_hash_is_the_collectors_fnv1a_and_threshold():
    # FNV-1a 32-bit reference values (http://www.isthe.com/chongo/tech/comp/fnv/) and the
    # Collector's threshold, computed in float32 and truncated: 10% -> 1638 of 16384 buckets.
    assert fnv1a32(b"") == 0x811C9DC5 and fnv1a32(b"a") == 0xE40C292C and fnv1a32(b"foobar") == 0xBF9CF968
    assert (
        scaled_rate(10) == 1638
        and scaled_rate(100) == 16384
        and scaled_rate(0) == 0
        and scaled_rate(150) == 16384
    )


def test_sampler_keeps_whole_traces_and_about_the_percentage():
    request = ExportTraceServiceRequest()
    ss = request.resource_spans.add().scope_spans.add()
    traces = [os.urandom(16) for _ in range(2000)]
    for trace in traces:
        for _ in range(3):
            ss.spans.add(trace_id=trace, span_id=os.urandom(8))
    processors = {"probabilistic_sampler": {"sampling_percentage": 10}}
    out, n = run(processors, ["probabilistic_sampler"], request.SerializeToString(), 6000)
    kept = ExportTraceServiceRequest.FromString(out).resource_spans[0].scope_spans[0].spans
    per_trace: dict[bytes, int] = {}
    for span in kept:
        per_trace[span.trace_id] = per_trace.get(span.trace_id, 0) + 1
    assert set(per_trace.values()) == {3}, "a trace is kept whole or not at all"
    assert 400 <= n <= 800, n  # 10% of 6000, with room for chance
    # Same settings, another process or pod: the same traces.
    again, _ = run(processors, ["probabilistic_sampler"], request.SerializeToString(), 6000)
    assert again == out


def test_sampling_priority_overrides():
    payload = spans_request(5, {"sampling.priority": 1})
    assert (
        run({"probabilistic_sampler": {"sampling_percentage": 0}}, ["probabilistic_sampler"], payload, 5)[1]
        == 5
    )
    payload = spans_request(5, {"sampling.priority": 0})
    assert (
        run({"probabilistic_sampler": {"sampling_percentage": 100}}, ["probabilistic_sampler"], payload, 5)[1]
        == 0
    )


# --- python ------------------------------------------------------------------------------------------


def _module(tmp_path: Path, body: str) -> str:
    path = tmp_path / f"userproc_{time.monotonic_ns()}.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_python_function_changes_in_place_replaces_or_empties(tmp_path):
    file = _module(
        tmp_path,
        """
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
        def rename(request):
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        span.name = "renamed"
        def replace(request):
            return ExportTraceServiceRequest()
        """,
    )
    out, n = run({"python/r": {"function": f"{file}:rename"}}, ["python/r"], spans_request(2), 2)
    assert n == 2 and {
        s.name for s in ExportTraceServiceRequest.FromString(out).resource_spans[0].scope_spans[0].spans
    } == {"renamed"}
    assert run({"python/x": {"function": f"{file}:replace"}}, ["python/x"], spans_request(2), 2) == (b"", 0)


# A busy loop whose `except Exception` would swallow a plain exception: the timeout still ends it.
SWALLOWS_EXCEPTIONS = """
def f(request):
    while True:
        try:
            sum(range(1000))
        except Exception:
            pass
"""


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("def f(request):\n    raise RuntimeError('boom')\n", "raised"),
        ("def f(request):\n    return 42\n", "invalid_output"),
        (
            "def f(request):\n    request.resource_spans[0].scope_spans[0].spans[0].trace_id = b'short'\n",
            "invalid_output",
        ),
        ("import time\ndef f(request):\n    time.sleep(30)\n", "timeout"),
        (
            SWALLOWS_EXCEPTIONS,
            "timeout",
        ),
    ],
)
@pytest.mark.parametrize("on_error", ["drop", "pass"])
def test_failing_functions_are_counted_and_follow_on_error(tmp_path, body, reason, on_error):
    file = _module(tmp_path, body)
    name = f"python/{reason}-{on_error}-{time.monotonic_ns()}"
    payload = spans_request(3, {"user.email": "a@b.c"})
    processors = {
        "attributes": {"actions": [{"key": "user.email", "action": "hash"}]},
        name: {"function": f"{file}:f", "on_error": on_error, "timeout": "200ms"},
    }
    start = time.monotonic()
    out, n = run(processors, ["attributes", name], payload, 3)
    assert time.monotonic() - start < 5
    assert metrics.PROCESSOR_ERRORS.labels(name, "traces", reason)._value.get() == 1
    if on_error == "drop":
        assert (out, n) == (b"", 0)
        assert metrics.PROCESSOR_DROPPED.labels(name, "traces", "error")._value.get() == 3
    else:  # passed on as the function got it: processed by the processors before it
        spans = ExportTraceServiceRequest.FromString(out).resource_spans[0].scope_spans[0].spans
        assert n == 3 and all(
            attrs_of(s)["user.email"] == hashlib.sha256(b"a@b.c").hexdigest() for s in spans
        )


# --- configuration -----------------------------------------------------------------------------------


def test_bad_configs_name_the_processor_and_the_key(tmp_path):
    assert problems({"attributes/pii": {"actions": [{"key": "a", "action": "hsh"}]}}) == [
        "processors.attributes/pii.actions[0].action: 'hsh' is not allowed "
        "(expected one of insert, update, upsert, delete, hash)"
    ]
    assert problems({"nope/x": {}})[0].startswith("processors.nope/x: unknown processor type 'nope'")
    assert (
        "processors.filter/f.spans.exclude.span_names[0]: bad regular expression"
        in problems({"filter/f": {"spans": {"exclude": {"match_type": "regexp", "span_names": ["("]}}}})[0]
    )
    assert problems({"python/p": {"function": "no_such_module_xyz:f"}}) == [
        "processors.python/p.function: cannot import no_such_module_xyz "
        "(ModuleNotFoundError: No module named 'no_such_module_xyz')"
    ]
    file = _module(tmp_path, "def g(r):\n    pass\n")
    assert problems({"python/p": {"function": f"{file}:f"}}) == [
        f"processors.python/p.function: {file} has no function f"
    ]
    assert problems({"attributes": {"actions": [{"key": "a", "action": "hash", "typo": 1}]}}) == [
        "processors.attributes.actions[0].typo: unknown option"
    ]
    assert problems({}, {"traces": ["attributes/missing"]}) == [
        "pipelines.traces[0]: 'attributes/missing' is not defined under processors"
    ]
    assert problems(
        {"probabilistic_sampler": {"sampling_percentage": 5}}, {"metrics": ["probabilistic_sampler"]}
    ) == ["pipelines.metrics[0]: 'probabilistic_sampler' does not process metrics (only traces, logs)"]
    assert problems({}, {"profiles": []})[0].startswith("pipelines.profiles: unknown signal")
    ottl = "the OTTL conditions form is not supported (use spans/logs/metrics with include/exclude)"
    assert problems({"filter": {"logs": {"log_record": ["severity_number < 9"]}}}) == [
        f"processors.filter.logs.log_record: {ottl}"
    ]
    assert problems({"filter": {"traces": {"span": ['name == "x"']}}}) == [
        f"processors.filter.traces: {ottl}"
    ]


def test_no_pipeline_no_processing():
    assert build_pipelines({"attributes": {"actions": [{"key": "a", "action": "delete"}]}}, {}) == {}


# --- never an invalid request --------------------------------------------------------------------

ALL_BUILT_INS = {
    "attributes": {
        "actions": [
            {"key": "a", "action": "hash"},
            {"pattern": "^b", "action": "delete"},
            {"key": "c", "value": {"k": [1, 2.5, True]}, "action": "upsert"},
            {"key": "d", "from_attribute": "a", "action": "insert"},
        ]
    },
    "resource": {"attributes": [{"key": "service.name", "action": "hash"}]},
    "filter": {"spans": {"exclude": {"match_type": "regexp", "span_names": ["x$"]}}},
    "probabilistic_sampler": {"sampling_percentage": 50},
}


@given(
    spans=st.lists(
        st.tuples(
            st.text(max_size=4),
            st.dictionaries(
                st.sampled_from(["a", "b", "bb", "c", "d", "e"]),
                st.one_of(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1), st.booleans(), st.floats()),
                max_size=5,
            ),
        ),
        max_size=8,
    ),
    order=st.permutations(list(ALL_BUILT_INS)),
)
@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
def test_processors_never_emit_an_invalid_request(spans, order):
    request = ExportTraceServiceRequest()
    ss = request.resource_spans.add().scope_spans.add()
    for name, attributes in spans:
        span = ss.spans.add(name=name, trace_id=os.urandom(16), span_id=os.urandom(8))
        for key, value in attributes.items():
            _set(span.attributes.add(key=key).value, value)
    out, n = run(ALL_BUILT_INS, list(order), request.SerializeToString(), len(spans))
    if not n:
        assert out == b""
        return
    checked = validate_protobuf(Signal.TRACES, out)  # the receiver's own check
    assert (checked.accepted, checked.rejected) == (n, 0)
    for span in ExportTraceServiceRequest.FromString(out).resource_spans[0].scope_spans[0].spans:
        keys = [kv.key for kv in span.attributes]
        assert len(keys) == len(set(keys)) and not {"b", "bb"} & set(keys)
