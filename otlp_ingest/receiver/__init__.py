"""Receiver worker: OTLP/gRPC and OTLP/HTTP transports in front of one shared export path.

- `export.ExportService`: the one transport-agnostic path (decode, validate, write to the ring).
- `dispatch.ExportRunner`: runs it inline for small bodies, off the event loop for big ones.
- `grpc_service`: the three gRPC `Export` methods on `otlp_ingest.transport.h2` connections.
- `http_app`: `POST /v1/{traces,metrics,logs}` on `otlp_ingest.transport.http1` connections.
- `limits`: request-body decompression with an output cap (gzip bombs stop early).
- `inflight`: how many request bodies a worker holds at once; `tls`: the listeners' TLS contexts.
- `rpc_status`: `google.rpc.Status` (+ `RetryInfo`) bodies and trailers.
- `worker.run_worker`: the process entry point started by the supervisor (one event loop).
"""
