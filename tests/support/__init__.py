"""Shared test helpers: the recording OTLP backend and its pytest-friendly wrapper."""
