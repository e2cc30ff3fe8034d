"""otlp-ingest: an OpenTelemetry (OTLP) ingest gateway."""

__version__ = "0.1.0"
