"""Decode micro-benchmarks: what one receiver worker spends per request before the ring write.

- protobuf: `validate_protobuf` = upb decode + id checks + item count (the hot path), per signal,
  at 10 and 512 items per request;
- OTLP/JSON: `decode_json` + `validate_message` (which serializes the payload for the ring);
- the file sink's cost: `encode_json_from_wire` on a 512-item request.

Requests come from `tests.golden.samples` (SDK-like attributes, events, links, exemplars). Run with
``pytest benchmarks/test_bench_decode.py -s``; each case prints items/s (also stored in
``extra_info``).
"""

from __future__ import annotations

import pytest

from otlp_ingest.otlp.json_codec import decode_json, encode_json, encode_json_from_wire
from otlp_ingest.otlp.signals import SIGNALS, Signal
from otlp_ingest.otlp.validate import validate_message, validate_protobuf
from tests.golden import samples

SIGNAL_IDS = [s.name.lower() for s in Signal]


def _report(benchmark, label: str, items: int, size: int) -> None:
    mean = benchmark.stats.stats.mean
    rate = items / mean
    benchmark.extra_info.update({"items": items, "bytes": size, "items_per_s": round(rate)})
    print(f"\n{label}: {items} items, {size} B: {mean * 1e6:,.1f} us/request, {rate:,.0f} items/s")


@pytest.mark.parametrize("signal", list(Signal), ids=SIGNAL_IDS)
@pytest.mark.parametrize("items", [10, 512])
def test_protobuf_validate(benchmark, signal: Signal, items: int) -> None:
    body = samples.build(signal, items).SerializeToString()
    result = benchmark(validate_protobuf, signal, body)
    assert result.accepted == items and result.payload is body
    _report(benchmark, f"protobuf {SIGNALS[signal].name}", items, len(body))


@pytest.mark.parametrize("signal", list(Signal), ids=SIGNAL_IDS)
@pytest.mark.parametrize("items", [10, 512])
def test_json_decode_validate(benchmark, signal: Signal, items: int) -> None:
    body = encode_json(signal, samples.build(signal, items))

    def decode_and_validate():
        return validate_message(signal, decode_json(signal, body))

    result = benchmark(decode_and_validate)
    assert result.accepted == items
    _report(benchmark, f"json {SIGNALS[signal].name}", items, len(body))


@pytest.mark.parametrize("signal", list(Signal), ids=SIGNAL_IDS)
def test_json_encode_from_wire(benchmark, signal: Signal) -> None:
    body = samples.build(signal, 512).SerializeToString()
    line = benchmark(encode_json_from_wire, signal, body)
    assert line.startswith(b"{")
    _report(benchmark, f"encode json {SIGNALS[signal].name}", 512, len(body))
