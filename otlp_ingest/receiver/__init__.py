"""Receiver worker: OTLP/gRPC and OTLP/HTTP transports in front of one shared export path.

- `export.ExportService`: the one transport-agnostic path (decode, validate, write to the ring).
- `grpc_service`: grpcio server, raw-bytes handlers for the three `Export` methods.
- `http_app`: thin Starlette app for `POST /v1/{traces,metrics,logs}`, served by uvicorn.
- `limits`: request-body decompression with an output cap (gzip bombs stop early).
- `rpc_status`: `google.rpc.Status` (+ `RetryInfo`) bodies and trailers.
- `worker.run_worker`: the process entry point started by the supervisor.
"""
