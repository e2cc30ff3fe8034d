"""Processing on the way through: processors between the queue and the senders.

The config file's `processors` section names processors (`<type>` or `<type>/<name>`, as in the
OpenTelemetry Collector) with their options; `pipelines` lists, per signal, which run and in
which order (the Collector's `service.pipelines.<signal>.processors`):

    processors:
      attributes/pii:
        actions:
          - {key: user.email, action: hash}
      filter/health:
        spans: {exclude: {match_type: regexp, span_names: ["^GET /healthz"]}}
    pipelines:
      traces: [attributes/pii, filter/health]

Types: `attributes` and `resource` (attributes.py), `filter` (filter.py), `probabilistic_sampler`
(sampler.py), `python` (python_function.py). Every processor also takes `on_error: drop | pass`
(default drop: data leaves the gateway only processed).

Where it runs: in the exporter processes, on each record read from a ring or write-ahead log,
before batching (pipeline.py). Clients are acknowledged when the unprocessed record is queued, as
without processors; a record is processed again if it is re-read after an exporter crash or a
SIGHUP, which the built-in processors make harmless (they are deterministic: the sampler decides
by trace id). docs/architecture.md says what this means for durable mode's data at rest.

`build_pipelines` checks a whole configuration and raises `ProcessingConfigError` with one line
per problem, naming the processor (or pipeline) and the key.
"""

from __future__ import annotations

from collections.abc import Mapping

from otlp_ingest.otlp.signals import SIGNAL_BY_NAME, SIGNALS, Signal
from otlp_ingest.processing.attributes import AttributesProcessor, ResourceProcessor
from otlp_ingest.processing.base import OptionError, Options, Processor
from otlp_ingest.processing.filter import FilterProcessor
from otlp_ingest.processing.pipeline import Pipeline
from otlp_ingest.processing.python_function import PythonProcessor
from otlp_ingest.processing.sampler import ProbabilisticSamplerProcessor

__all__ = ["KINDS", "Pipeline", "ProcessingConfigError", "build_pipelines"]

KINDS: dict[str, type[Processor]] = {
    kind.kind: kind
    for kind in (
        AttributesProcessor,
        ResourceProcessor,
        FilterProcessor,
        ProbabilisticSamplerProcessor,
        PythonProcessor,
    )
}


class ProcessingConfigError(ValueError):
    """Every problem of a processors/pipelines configuration, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def build_pipelines(
    processors: Mapping[str, object], pipelines: Mapping[str, object], origin: str = ""
) -> dict[Signal, Pipeline]:
    """The pipeline of each signal that has processors; `origin` prefixes messages (`file:`)."""
    problems: list[str] = []
    built: dict[str, Processor] = {}
    if not isinstance(processors, Mapping):
        raise ProcessingConfigError([f"{origin}processors: expected a mapping of processor names to options"])
    if not isinstance(pipelines, Mapping):
        raise ProcessingConfigError(
            [f"{origin}pipelines: expected a mapping of signals to lists of processors"]
        )
    for name, raw in processors.items():
        path = f"processors.{name}"
        kind = str(name).partition("/")[0]
        try:
            if kind not in KINDS:
                raise OptionError(
                    path, f"unknown processor type {kind!r} (expected one of {', '.join(KINDS)})"
                )
            built[str(name)] = KINDS[kind](str(name), Options(raw, path))
        except OptionError as exc:
            problems.append(f"{origin}{exc}")
    result: dict[Signal, Pipeline] = {}
    for signal_name, names in pipelines.items():
        path = f"pipelines.{signal_name}"
        signal = SIGNAL_BY_NAME.get(str(signal_name))
        if signal is None:
            problems.append(f"{origin}{path}: unknown signal (expected {', '.join(SIGNAL_BY_NAME)})")
            continue
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            problems.append(f"{origin}{path}: expected a list of processor names")
            continue
        chain: list[Processor] = []
        for i, name in enumerate(names):
            where = f"{origin}{path}[{i}]"
            if name in names[:i]:
                problems.append(f"{where}: {name!r} is listed twice")
            elif name not in processors:
                problems.append(f"{where}: {name!r} is not defined under processors")
            elif name in built:
                processor = built[name]
                if signal not in processor.signals:
                    supported = ", ".join(SIGNALS[s].name for s in sorted(processor.signals))
                    problems.append(f"{where}: {name!r} does not process {signal_name} (only {supported})")
                chain.append(processor)
        if chain:
            result[signal] = Pipeline(signal, chain)
    if problems:
        raise ProcessingConfigError(problems)
    return result
