"""Hypothesis fuzzing of the two request decoders: whatever a client sends, `validate_protobuf` and
`decode_json` either succeed or raise `InvalidArgument` (a 400), never anything else (a 503 and a
logged traceback). Whatever they accept must survive the rest of the pipeline: the payload
re-validates, and OTLP/JSON written from it decodes back to the same request.

Request decompression (gzip, deflate) is fuzzed the same way: mutated, truncated and random
bodies give the data within the limit, `InvalidArgument` or `PayloadTooLarge`, nothing else. Deep
AnyValue nesting (arrays and kvlists, up to 400 levels) must be refused cleanly by both decoders.

Runs in the normal suite with a few examples per test; `make fuzz` sets `OTLP_FUZZ_EXAMPLES`.
"""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otlp_ingest.errors import InvalidArgument, PayloadTooLarge
from otlp_ingest.otlp.json_codec import MAX_DEPTH, decode_json, encode_json, encode_json_from_wire
from otlp_ingest.otlp.signals import Signal
from otlp_ingest.otlp.validate import count_items, validate_message, validate_protobuf
from otlp_ingest.receiver.limits import decompress
from tests.fuzz import FUZZ
from tests.golden import samples
from tests.support.protowire import ld

SIGNALS = st.sampled_from(list(Signal))
SEEDS = {s: [samples.build(s, n).SerializeToString() for n in (1, 3)] for s in Signal}
JSON_SEEDS = {s: [encode_json(s, samples.build(s, n)) for n in (1, 2)] for s in Signal}


def check_protobuf(signal: Signal, body: bytes) -> None:
    try:
        result = validate_protobuf(signal, body)
    except InvalidArgument:
        return
    again = validate_protobuf(signal, result.payload)
    assert (again.accepted, again.rejected) == (result.accepted, 0)
    # The file sink path: what we accepted can always be written as OTLP/JSON and read back.
    line = encode_json_from_wire(signal, result.payload)
    assert count_items(signal, decode_json(signal, line)) == result.accepted


def check_json(signal: Signal, body: bytes) -> None:
    try:
        message = decode_json(signal, body)
    except InvalidArgument:
        return
    result = validate_message(signal, message)
    assert validate_protobuf(signal, result.payload).accepted == result.accepted
    assert decode_json(signal, encode_json(signal, message)) == message


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, value) edits: overwrite a byte, insert one, or delete one."""
    buf = bytearray(data)
    for kind, pos, value in edits:
        if not buf:
            buf.append(value)
            continue
        pos %= len(buf)
        if kind == 0:
            buf[pos] = value
        elif kind == 1:
            buf.insert(pos, value)
        else:
            del buf[pos]
    return bytes(buf)


EDITS = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8
)


@FUZZ
@given(SIGNALS, st.binary(max_size=512))
def test_random_bytes_into_validate_protobuf(signal: Signal, body: bytes) -> None:
    check_protobuf(signal, body)


@FUZZ
@given(SIGNALS, st.integers(0, 1), EDITS, st.integers(0, 1 << 20))
def test_mutated_protobuf(signal: Signal, seed: int, edits: list, cut: int) -> None:
    body = mutate(SEEDS[signal][seed], edits)
    check_protobuf(signal, body)
    check_protobuf(signal, body[: cut % (len(body) + 1)])  # truncated anywhere


@FUZZ
@given(SIGNALS, st.binary(max_size=256))
def test_random_bytes_into_decode_json(signal: Signal, body: bytes) -> None:
    check_json(signal, body)


@FUZZ
@given(SIGNALS, st.integers(0, 1), EDITS)
def test_mutated_json_bytes(signal: Signal, seed: int, edits: list) -> None:
    check_json(signal, mutate(JSON_SEEDS[signal][seed], edits))


# Arbitrary JSON values, and values put where OTLP expects something specific.
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.sampled_from(["", "NaN", "Infinity", "-Infinity", "1e3", "0x10", "5b8efff798038103d269b633813fc60c"])
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


def _paths(node, prefix=()):
    """Every (path, value) in a JSON document, for replacing one value."""
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _replace(doc, path, value):
    if not path:
        return value
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return doc


@FUZZ
@given(SIGNALS, st.data())
def test_structured_json_mutations(signal: Signal, data: st.DataObject) -> None:
    doc = json.loads(JSON_SEEDS[signal][0])
    paths = [p for p, _ in _paths(doc)]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        try:
            doc = _replace(doc, path, data.draw(JSON_VALUES))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier replacement removed this path
    check_json(signal, json.dumps(doc).encode())


@FUZZ
@given(SIGNALS, JSON_VALUES)
def test_arbitrary_json_documents(signal: Signal, doc) -> None:
    check_json(signal, json.dumps(doc).encode())


@pytest.mark.parametrize("signal", list(Signal), ids=lambda s: s.name.lower())
def test_seeds_are_valid(signal: Signal) -> None:
    # The mutation tests only mean something if the seeds themselves decode.
    for body in SEEDS[signal]:
        assert validate_protobuf(signal, body).rejected == 0
    for body in JSON_SEEDS[signal]:
        assert count_items(signal, decode_json(signal, body)) > 0


# Nesting: AnyValue inside arrays and kvlists, in protobuf and JSON, at depths around the limits.


def _nested_bodies(kinds: list[bool]) -> tuple[bytes, bytes]:
    """(protobuf, OTLP/JSON) one-span request whose attribute nests AnyValues per `kinds`:
    True = a kvlist level (3 messages), False = an array level (2 messages)."""
    value_pb = ld(3, b"leaf")
    value_js = '{"stringValue":"leaf"}'
    for kvlist in kinds:
        if kvlist:
            value_pb = ld(6, ld(1, ld(1, b"k") + ld(2, value_pb)))
            value_js = '{"kvlistValue":{"values":[{"key":"k","value":' + value_js + "}]}}"
        else:
            value_pb = ld(5, ld(1, value_pb))
            value_js = '{"arrayValue":{"values":[' + value_js + "]}}"
    span = samples.build(Signal.TRACES, 1).resource_spans[0].scope_spans[0].spans[0]
    span_pb = span.SerializeToString() + ld(9, ld(1, b"deep") + ld(2, value_pb))
    doc = (
        '{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c",'
        '"spanId":"eee19b7ec3c1b174","attributes":[{"key":"deep","value":' + value_js + "}]}]}]}]}"
    )
    return ld(1, ld(2, ld(2, span_pb))), doc.encode()


@FUZZ
@given(st.lists(st.booleans(), max_size=400))
def test_nested_anyvalues_decode_or_are_refused(kinds: list[bool]) -> None:
    # upb and MAX_DEPTH must refuse deep ones cleanly, and agree on what they accept.
    body_pb, body_json = _nested_bodies(kinds)
    check_protobuf(Signal.TRACES, body_pb)
    check_json(Signal.TRACES, body_json)


def _accepts(decode, body: bytes) -> bool:
    try:
        decode(body)
    except InvalidArgument:
        return False
    return True


def test_protobuf_and_json_nesting_limits_are_the_same() -> None:
    # Request > ResourceSpans > ScopeSpans > Span > KeyValue > AnyValue is 6 messages; every mix of
    # levels reaching 95..106 messages in total: the two decoders accept exactly the same depths.
    # (Mixing matters: pure kvlist or pure array nesting skipped the boundary that once differed.)
    seen = set()
    for kvlists in range(0, 34):
        for arrays in range(0, 51):
            total = 6 + 3 * kvlists + 2 * arrays
            if not 95 <= total <= 106:
                continue
            body_pb, body_json = _nested_bodies([True] * kvlists + [False] * arrays)
            pb = _accepts(lambda b: validate_protobuf(Signal.TRACES, b), body_pb)
            js = _accepts(lambda b: decode_json(Signal.TRACES, b), body_json)
            assert pb == js, (kvlists, arrays, total, pb, js)
            assert pb == (total <= MAX_DEPTH)
            seen.add(total)
    assert seen == set(range(95, 107))


# Decompression: whatever the bytes, `decompress` returns at most the limit or raises a client error.
DECOMPRESS_LIMIT = 64 * 1024
COMPRESSED_SEEDS = {
    "gzip": [gzip.compress(SEEDS[Signal.TRACES][1]), gzip.compress(b"\0" * (DECOMPRESS_LIMIT + 1))],
    "deflate": [zlib.compress(SEEDS[Signal.LOGS][1]), zlib.compress(b"\0" * (DECOMPRESS_LIMIT + 1))],
}


def check_decompress(encoding: str, data: bytes) -> None:
    try:
        out = decompress(encoding, data, DECOMPRESS_LIMIT)
    except (InvalidArgument, PayloadTooLarge):
        return
    assert len(out) <= DECOMPRESS_LIMIT


@FUZZ
@given(st.sampled_from(["gzip", "deflate"]), st.integers(0, 1), EDITS, st.integers(0, 1 << 20))
def test_mutated_compressed_bodies(encoding: str, seed: int, edits: list, cut: int) -> None:
    data = mutate(COMPRESSED_SEEDS[encoding][seed], edits)
    check_decompress(encoding, data)
    check_decompress(encoding, data[: cut % (len(data) + 1)])


@FUZZ
@given(st.sampled_from(["gzip", "deflate"]), st.binary(max_size=256))
def test_random_bytes_into_decompress(encoding: str, data: bytes) -> None:
    check_decompress(encoding, data)
