"""Spans made by the real OpenTelemetry SDK, for tests that send them with its exporters."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def finished_spans(
    names: Iterable[str],
    attributes: Mapping[str, Any] | None = None,
    service: str | None = None,
    event: tuple[str, Mapping[str, Any]] | None = None,
) -> list[Any]:
    """One finished SDK span per name (`ReadableSpan`s, what an exporter's `export()` takes),
    each with `attributes` and, given `(name, attributes)`, one `event`; `service` sets the
    resource's service.name."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    resource = Resource.create({"service.name": service}) if service else None
    provider = TracerProvider(resource=resource) if resource else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("otlp-ingest-tests")
    for name in names:
        with tracer.start_as_current_span(name, attributes=dict(attributes or {})) as span:
            if event is not None:
                span.add_event(event[0], dict(event[1]))
    return list(memory.get_finished_spans())


def span_keys(spans: Iterable[Any]) -> list[str]:
    """The recording backend's keys of SDK spans (trace_id:span_id in hex)."""
    return [f"{s.context.trace_id:032x}:{s.context.span_id:016x}" for s in spans]
