"""rotel's Python processor for the processing benchmark (`rotel-agent start
--otlp-with-trace-processor benchmarks/processors/rotel_delete_hash.py`), written with rotel's
processor SDK (`rotel_sdk`, built into `rotel-agent`; not importable outside it).

The same work as ours_delete_hash.py and run_e2e.py's `attributes/bench`: on every span, delete
attribute DELETE_KEY and replace the (string) value of HASH_KEY with its SHA-256 hex.
"""

from hashlib import sha256

from rotel_sdk.open_telemetry.common.v1 import AnyValue

DELETE_KEY = "http.request.method"
HASH_KEY = "url.path"


def process_spans(resource_spans):
    for scope_spans in resource_spans.scope_spans:
        for span in scope_spans.spans:
            attributes = span.attributes
            for i in range(len(attributes) - 1, -1, -1):  # backwards: deleting keeps indexes valid
                kv = attributes[i]
                key = kv.key
                if key == DELETE_KEY:
                    del attributes[i]
                elif key == HASH_KEY:
                    kv.value = AnyValue(sha256(kv.value.value.encode()).hexdigest())
