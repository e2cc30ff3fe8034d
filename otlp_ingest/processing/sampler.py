"""The `probabilistic_sampler` processor: keep a percentage of traces (and of logs), the same
traces on every gateway that has the same settings.

The decision is the OpenTelemetry Collector's `hash_seed` mode (contrib
`processor/probabilisticsamplerprocessor`), bit for bit, so a fleet mixing Collectors in that
mode and otlp-ingest pods keeps the same traces:

    hash  = FNV-1a 32-bit over (hash_seed as 4 bytes little-endian) + (the 16-byte trace id)
    keep  = (hash & 0x3FFF) < uint32(float32(sampling_percentage) * float32(16384 / 100))

Every span of a trace has the same trace id, so every pod keeps or drops all of them. A span
with the attribute `sampling.priority` is kept when it is non-zero and dropped when it is zero,
whatever the percentage (as the Collector does for traces).

Logs: a record with a trace id is decided by it (its trace's spans and logs go together); one
without is decided by the value of the attribute `from_attribute` when configured (hashed the
same way: a string's bytes), else by `random.random()` at the same percentage (the Collector's
hash_seed mode would hash an all-zero trace id there, keeping all such logs or none). With
`attribute_source: record` the attribute is used even when a trace id is present. The logs
attribute named by `sampling_priority` works as the Collector's: 0 drops, a number >= 100 keeps,
anything else is the record's own percentage.

Options: `sampling_percentage` (required, 0-100; above 100 means 100), `hash_seed` (0),
`mode` (`hash_seed` only: the Collector's `proportional` and `equalizing` modes, which write
`th`/`rv` into the tracestate, are not supported), `attribute_source` (`traceID` | `record`),
`from_attribute`, `sampling_priority`. Unlike the Collector, nothing is written into the kept
items (no tracestate `ot=th:...`, no `sampling.*` log attributes).
"""

from __future__ import annotations

import random
import struct

from google.protobuf.message import Message

from otlp_ingest.otlp.signals import Signal
from otlp_ingest.processing.base import OptionError, Options, Processor
from otlp_ingest.processing.otlp_items import keep_items, value_text

BUCKETS = 0x4000  # 14 bits of the hash decide
_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def _float32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def scaled_rate(percentage: float) -> int:
    """The Collector's threshold: the product taken in float32 and truncated."""
    return int(_float32(_float32(min(percentage, 100.0)) * _float32(BUCKETS / 100.0)))


def fnv1a32(data: bytes, state: int = _FNV_OFFSET) -> int:
    for byte in data:
        state = ((state ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return state


class Sampler:
    """The keep/drop decision for bytes (a trace id or an attribute value)."""

    def __init__(self, percentage: float, seed: int) -> None:
        self.rate = scaled_rate(percentage)
        self.percentage = min(percentage, 100.0)
        # The seed's 4 bytes always come first: hash them once.
        self._seeded = fnv1a32(struct.pack("<I", seed))

    def keep(self, data: bytes) -> bool:
        return (fnv1a32(data, self._seeded) & (BUCKETS - 1)) < self.rate


def _priority(attrs: Message, key: str) -> float | None:
    """A numeric sampling priority attribute (int, double or a number in a string), else None."""
    if key not in attrs:
        return None
    value = attrs[key]
    kind = value.WhichOneof("value")
    if kind in ("int_value", "double_value"):
        return float(getattr(value, kind))
    if kind == "string_value":
        try:
            return float(value.string_value)
        except ValueError:
            return None
    return None


class ProbabilisticSamplerProcessor(Processor):
    kind = "probabilistic_sampler"
    signals = frozenset({Signal.TRACES, Signal.LOGS})
    changes_items = True
    drop_reason = "sampled"

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options)
        percentage = options.number("sampling_percentage", low=0.0)
        seed = int(options.number("hash_seed", 0.0, high=2**32 - 1))
        options.choice("mode", ("hash_seed",), "hash_seed")
        self.record_first = options.choice("attribute_source", ("traceid", "record"), "traceid") == "record"
        self.from_attribute = options.text("from_attribute")
        self.priority_attribute = options.text("sampling_priority")
        if self.record_first and not self.from_attribute:
            raise OptionError(options.at("from_attribute"), "required with attribute_source: record")
        options.done()
        self.seed = seed
        self.sampler = Sampler(percentage, seed)

    def process(self, signal: Signal, request: Message) -> Message:
        if signal == Signal.TRACES:
            keep_items(signal, request, self._keep_span)
        else:
            keep_items(signal, request, self._keep_log)
        return request

    def _keep_span(self, resource: Message, scope: Message, span: Message) -> bool:
        priority = _priority(span.attributes, "sampling.priority")
        if priority is not None:
            return priority != 0
        return self.sampler.keep(span.trace_id)

    def _keep_log(self, resource: Message, scope: Message, record: Message) -> bool:
        sampler = self.sampler
        if self.priority_attribute:
            priority = _priority(record.attributes, self.priority_attribute)
            if priority is not None:
                if priority <= 0:
                    return False
                if priority < 100:
                    sampler = Sampler(priority, self.seed)
                else:
                    return True
        if record.trace_id and not self.record_first:
            return sampler.keep(record.trace_id)
        if self.from_attribute and self.from_attribute in record.attributes:
            value = record.attributes[self.from_attribute]
            data = value.bytes_value if value.HasField("bytes_value") else value_text(value).encode()
            return sampler.keep(data)
        return random.random() * 100.0 < sampler.percentage
