"""Self-telemetry: Prometheus metrics and logging."""
