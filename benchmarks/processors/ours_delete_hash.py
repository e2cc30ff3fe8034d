"""Our `python` processor for the processing benchmark (`processors: {python/bench: {function:
benchmarks/processors/ours_delete_hash.py:process}}`): the work of rotel_delete_hash.py and of
run_e2e.py's `attributes/bench`, on the decoded ExportTraceServiceRequest. On every span, delete
attribute DELETE_KEY and replace the (string) value of HASH_KEY with its SHA-256 hex.
"""

from hashlib import sha256

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

DELETE_KEY = "http.request.method"
HASH_KEY = "url.path"


def process(request: ExportTraceServiceRequest) -> None:
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attributes = span.attributes
                for i in range(len(attributes) - 1, -1, -1):  # backwards: deleting keeps indexes valid
                    kv = attributes[i]
                    key = kv.key
                    if key == DELETE_KEY:
                        del attributes[i]
                    elif key == HASH_KEY:
                        value = kv.value
                        value.string_value = sha256(value.string_value.encode()).hexdigest()
