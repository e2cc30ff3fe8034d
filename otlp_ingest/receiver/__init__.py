"""Receiver worker: OTLP/gRPC and OTLP/HTTP transports in front of one shared export path.

- `export.ExportService`: the one transport-agnostic path (decode, validate, write to the ring).
- `dispatch.ExportRunner`: runs it inline for small bodies, off the event loop for big ones.
- `h2` + `hpack`: HTTP/2 server connections; `grpc_service`: the three gRPC `Export` methods on them.
- `http1`: HTTP/1.1 server connections (httptools); `http_app`: `POST /v1/{traces,metrics,logs}`.
- `limits`: request-body decompression with an output cap (gzip bombs stop early).
- `inflight`: how many request bodies a worker holds at once; `tls`: the listeners' TLS contexts.
- `rpc_status`: `google.rpc.Status` (+ `RetryInfo`) bodies and trailers.
- `worker.run_worker`: the process entry point started by the supervisor (one event loop).
"""
