"""The cost of processing (issue 18), measured by run_e2e.py next to rotel in the same run.

gRPC, 100 spans per request, closed loop, five cases, each its own server tree (two of them the
closed-loop trees run_e2e.py measured before):

| case | what runs on every span |
|---|---|
| `otlp-ingest` | nothing (the baseline) |
| `otlp-ingest attributes` | the built-in processor, `attributes/bench` below |
| `otlp-ingest python` | our `python` processor, processors/ours_delete_hash.py |
| `rotel` | nothing (rotel's baseline) |
| `rotel python` | rotel's Python processor (its SDK), processors/rotel_delete_hash.py |

The work is the same in the three processing cases: delete DELETE_KEY and replace HASH_KEY's value
with its SHA-256 hex. Every span the load generator sends carries both (otlp_ingest/loadgen.py:
`http.request.method` "GET", `url.path` "/api/items", `http.response.status_code` 200), so the
baseline cases send the same bytes.

Every run is checked: the recording backend's first request of the run (`/_first`) must show the
work done on every span (DELETE_KEY gone, HASH_KEY hashed) in the processing cases, and both keys
untouched in the baselines. A failed check is printed, stored and makes run_e2e.py exit 1.

Ratios (issue 18's targets, on spans per server CPU-second, reported, not asserted):
(a) `otlp-ingest attributes` / `rotel python` >= 2, and `otlp-ingest attributes` / `otlp-ingest`
(how close the built-in processor comes to no processing); (b) `otlp-ingest python` /
`rotel python` >= 1.
"""

from __future__ import annotations

from hashlib import sha256
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

PROCESSORS_DIR = Path(__file__).resolve().parent / "processors"
OURS_FUNCTION = PROCESSORS_DIR / "ours_delete_hash.py"
ROTEL_PROCESSOR = PROCESSORS_DIR / "rotel_delete_hash.py"

DELETE_KEY = "http.request.method"
HASH_KEY = "url.path"
HASH_ORIGINAL = "/api/items"  # the load generator's value of HASH_KEY
HASH_EXPECTED = sha256(HASH_ORIGINAL.encode()).hexdigest()

PROTOCOL = "grpc"
SPANS = 100
LABEL = " [processing]"  # appended to the run's name: these runs stay out of the main table

OURS_BASE = "otlp-ingest"
OURS_ATTRIBUTES = "otlp-ingest attributes"
OURS_PYTHON = "otlp-ingest python"
ROTEL_BASE = "rotel"
ROTEL_PYTHON = "rotel python"
CASES = (OURS_ATTRIBUTES, ROTEL_PYTHON, OURS_PYTHON, OURS_BASE, ROTEL_BASE)  # the order they run in
PROCESSED = {OURS_ATTRIBUTES, OURS_PYTHON, ROTEL_PYTHON}
TARGET_A = 2.0  # built-in attributes vs rotel's Python processor
TARGET_B = 1.0  # our python processor vs rotel's Python processor


def config_yaml(case: str) -> str:
    """The `--config` file of one of our processing cases."""
    if case == OURS_ATTRIBUTES:
        return (
            "processors:\n"
            "  attributes/bench:\n"
            "    actions:\n"
            f"      - {{key: {DELETE_KEY}, action: delete}}\n"
            f"      - {{key: {HASH_KEY}, action: hash}}\n"
            "pipelines:\n"
            "  traces: [attributes/bench]\n"
        )
    if case == OURS_PYTHON:
        return (
            "processors:\n"
            "  python/bench:\n"
            f"    function: {OURS_FUNCTION}:process\n"
            "pipelines:\n"
            "  traces: [python/bench]\n"
        )
    raise ValueError(case)


def check_sample(case: str, payload: bytes | None) -> str:
    """ "" when the backend's sampled request shows `case`'s work done on every span (or, for a
    baseline, both attributes untouched); otherwise what is wrong."""
    if payload is None:
        return "the backend recorded no request"
    request = ExportTraceServiceRequest.FromString(payload)
    spans = [span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]
    if not spans:
        return "the sampled request has no spans"
    processed = case in PROCESSED
    expected_hash = HASH_EXPECTED if processed else HASH_ORIGINAL
    for n, span in enumerate(spans):
        attributes = {kv.key: kv.value for kv in span.attributes}
        if processed and DELETE_KEY in attributes:
            return f"span {n} of {len(spans)} still has {DELETE_KEY}"
        if not processed and DELETE_KEY not in attributes:
            return f"span {n} of {len(spans)} has no {DELETE_KEY} (the load generator's spans changed?)"
        value = attributes.get(HASH_KEY)
        if value is None or value.string_value != expected_hash:
            shown = None if value is None else value.string_value
            return f"span {n} of {len(spans)}: {HASH_KEY} is {shown!r}, expected {expected_hash!r}"
    return ""


def _ratio(top: dict | None, bottom: dict | None, key: str = "spans_per_cpu_s") -> float | None:
    if not top or not bottom or not bottom.get(key):
        return None
    return round(top[key] / bottom[key], 3)


def report(cases: dict[str, dict]) -> dict:
    """Ratios and targets from the cases' figures ({case: {"spans_per_s", "spans_per_cpu_s",
    "requests_refused", "check"}}); cases that did not run are left out."""
    get = cases.get
    ratios = {
        "a_attributes_vs_rotel_python": _ratio(get(OURS_ATTRIBUTES), get(ROTEL_PYTHON)),
        "attributes_vs_ours_unprocessed": _ratio(get(OURS_ATTRIBUTES), get(OURS_BASE)),
        "b_python_vs_rotel_python": _ratio(get(OURS_PYTHON), get(ROTEL_PYTHON)),
        "python_vs_ours_unprocessed": _ratio(get(OURS_PYTHON), get(OURS_BASE)),
        "rotel_python_vs_rotel_unprocessed": _ratio(get(ROTEL_PYTHON), get(ROTEL_BASE)),
        "unprocessed_ours_vs_rotel": _ratio(get(OURS_BASE), get(ROTEL_BASE)),
    }
    throughput = {
        "a_attributes_vs_rotel_python": _ratio(get(OURS_ATTRIBUTES), get(ROTEL_PYTHON), "spans_per_s"),
        "b_python_vs_rotel_python": _ratio(get(OURS_PYTHON), get(ROTEL_PYTHON), "spans_per_s"),
    }
    targets = []
    per_cpu = "rotel's Python processor's spans per CPU-s"
    a, b = ratios["a_attributes_vs_rotel_python"], ratios["b_python_vs_rotel_python"]
    if a is not None:
        targets.append((f"(a) built-in attributes >= {TARGET_A:g}x {per_cpu}", f"{a:.2f}x", a >= TARGET_A))
    if b is not None:
        targets.append((f"(b) our python processor >= {TARGET_B:g}x {per_cpu}", f"{b:.2f}x", b >= TARGET_B))
    failed = {case: figures["check"] for case, figures in cases.items() if figures["check"]}
    return {
        "protocol": PROTOCOL,
        "spans_per_request": SPANS,
        "work": f"delete {DELETE_KEY}, hash (SHA-256 hex) {HASH_KEY}, on every span",
        "cases": cases,
        "ratios_spans_per_cpu_s": ratios,
        "ratios_spans_per_s": throughput,
        "targets": targets,
        "checks_failed": failed,
    }  # fmt: skip


def markdown(result: dict) -> list[str]:
    """latest.md's section for `report`'s result."""
    cases = result["cases"]
    base = {name: cases.get(OURS_BASE if name.startswith("otlp") else ROTEL_BASE) for name in cases}
    shape = f"{result['protocol']} {result['spans_per_request']} spans/request, closed loop"
    lines = [
        "",
        f"## Processing (issue 18): {shape}",
        "",
        f"Work: {result['work']}; each run's first request at the backend checked (work done on every"
        " span, or both attributes untouched for a baseline).",
        "",
        "| case | spans/s | spans/CPU-s | vs its own unprocessed | requests refused | check |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name in CASES:
        figures = cases.get(name)
        if figures is None:
            continue
        own = _ratio(figures, base[name])
        shown = "" if own is None or name in (OURS_BASE, ROTEL_BASE) else f"{own:.0%}"
        check = "ok" if not figures["check"] else f"FAILED: {figures['check']}"
        rate, per_cpu = figures["spans_per_s"], figures["spans_per_cpu_s"]
        refused = figures.get("requests_refused", "")
        lines.append(f"| {name} | {rate:,.0f} | {per_cpu:,.0f} | {shown} | {refused} | {check} |")
    ratios = result["ratios_spans_per_cpu_s"]
    close = ratios["attributes_vs_ours_unprocessed"]
    if close is not None:
        lines += ["", f"Built-in attributes vs ours without processing: {close:.0%} of the spans per CPU-s."]
    throughput = result["ratios_spans_per_s"]
    if throughput["a_attributes_vs_rotel_python"] is not None:
        lines.append(
            "Throughput (spans/s) vs rotel's Python processor:"
            f" built-in attributes {throughput['a_attributes_vs_rotel_python']:.2f}x,"
            f" our python processor {throughput['b_python_vs_rotel_python']:.2f}x."
        )
    if result["targets"]:
        lines += ["", "Targets (issue 18; reported, not asserted):", ""]
        for what, measured, met in result["targets"]:
            lines.append(f"- {'MET' if met else 'BELOW'}: {what} (measured {measured})")
    return lines
