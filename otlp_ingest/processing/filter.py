"""The `filter` processor: drop spans, log records and metrics that match, in the Collector's
include/exclude form (contrib `internal/filter/filterconfig`, the filter processor's "legacy"
configuration):

    filter/health:
      spans:
        exclude:
          match_type: regexp            # or strict
          span_names: ["^GET /healthz"]
      logs:
        include:
          match_type: strict
          severity_number: {min: WARN, match_undefined: false}
      metrics:
        exclude:
          match_type: regexp
          metric_names: ["^go_.*"]

With `include`, only matching items stay; with `exclude`, matching items go; with both, include
runs first. Inside one include/exclude block every property given must match (AND); inside one
property's list any entry may match (OR), except `attributes`/`resources`/`resource_attributes`/
`record_attributes`, whose entries must all match. `strict` compares for equality (attribute
values typed as written; an entry without `value` only asks that the key exists); `regexp`
searches Python regular expressions (not anchored, like Go's `MatchString`) in names and in the
string form of attribute values.

Properties: spans: `services` (resource `service.name`), `span_names`, `span_kinds`
(`SPAN_KIND_SERVER`...), `attributes`, `resources`, `libraries` (`{name, version}`); logs:
`resource_attributes`, `record_attributes`, `severity_texts`, `severity_number` (`min` as a name
such as `WARN`, `INFO2`, or a number; `match_undefined`), `bodies` (string bodies); metrics:
`metric_names`, `resource_attributes` (a whole metric is kept or dropped; `expr` matching is not
supported). The OTTL form (`traces: span: [...]`) is not supported: a config using it is refused
at start-up with a message saying so.

Scopes and resources left with no items are removed.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from google.protobuf.message import Message
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otlp_ingest.otlp.signals import Signal
from otlp_ingest.processing.attributes import any_value
from otlp_ingest.processing.base import OptionError, Options, Processor, compile_regex
from otlp_ingest.processing.otlp_items import keep_items, value_text

Matcher = Callable[[Message, Message, Message], bool]  # (resource entry, scope entry, item)

_SEVERITIES = {"TRACE": 1, "DEBUG": 5, "INFO": 9, "WARN": 13, "ERROR": 17, "FATAL": 21}
_SECTIONS = {"spans": Signal.TRACES, "logs": Signal.LOGS, "metrics": Signal.METRICS}
_OTTL = ("log_record", "metric", "datapoint")  # the OTTL form's lists under logs/metrics


class _Names:
    """A list of names matched strictly or by regular expressions (any entry)."""

    def __init__(self, names: list[str], regexp: bool, path: str) -> None:
        self.exact = frozenset(names) if not regexp else frozenset()
        self.patterns = (
            [compile_regex(n, f"{path}[{i}]").search for i, n in enumerate(names)] if regexp else []
        )

    def __call__(self, name: str) -> bool:
        if name in self.exact:
            return True
        return any(search(name) for search in self.patterns)


class _Attributes:
    """Entries `{key, value}` that must all match an attribute list."""

    def __init__(self, entries: list[Options], regexp: bool) -> None:
        self.checks: list[tuple[str, Callable[[Message], bool] | None]] = []
        for entry in entries:
            key = entry.text("key", required=True)
            assert key is not None
            check: Callable[[Message], bool] | None = None
            if entry.has("value"):
                raw = entry.raw("value")
                if regexp:
                    if not isinstance(raw, str):
                        raise OptionError(
                            entry.at("value"),
                            "expected a regular expression (a string) with match_type regexp",
                        )
                    search = compile_regex(raw, entry.at("value")).search

                    def check(value: Message, search: Callable[[str], object] = search) -> bool:
                        return search(value_text(value)) is not None
                else:
                    wanted = any_value(raw, entry.at("value")).SerializeToString(deterministic=True)

                    def check(value: Message, wanted: bytes = wanted) -> bool:
                        return value.SerializeToString(deterministic=True) == wanted

            entry.done()
            self.checks.append((key, check))

    def __call__(self, attrs: Message) -> bool:
        for key, check in self.checks:
            if key not in attrs or (check is not None and not check(attrs[key])):
                return False
        return True


def _service_name(resource_entry: Message) -> str:
    attrs = resource_entry.resource.attributes
    return value_text(attrs["service.name"]) if "service.name" in attrs else ""


def _severity_min(value: object, path: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 24:
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"(TRACE|DEBUG|INFO|WARN|ERROR|FATAL)([234]?)", value.strip().upper())
        if match:
            return _SEVERITIES[match.group(1)] + (int(match.group(2)) - 1 if match.group(2) else 0)
    raise OptionError(path, f"{value!r} is not a severity (expected TRACE..FATAL4, e.g. WARN, or 0-24)")


def _match_properties(signal: Signal, options: Options) -> Matcher:
    """One include or exclude block as a matcher of (resource, scope, item)."""
    match_type = options.choice("match_type", ("strict", "regexp", "expr"))
    if match_type == "expr":
        raise OptionError(options.at("match_type"), "expr matching is not supported (use strict or regexp)")
    regexp = match_type == "regexp"
    checks: list[Matcher] = []

    def names(key: str, get: Callable[[Message, Message, Message], str]) -> None:
        listed = options.strings(key)
        if listed:
            match = _Names(listed, regexp, options.at(key))
            checks.append(lambda r, s, i: match(get(r, s, i)))

    def attributes(key: str, get: Callable[[Message, Message, Message], Message]) -> None:
        entries = options.mappings(key)
        if entries:
            match = _Attributes(entries, regexp)
            checks.append(lambda r, s, i: match(get(r, s, i)))

    if signal == Signal.TRACES:
        services = options.strings("services")
        if services:
            service = _Names(services, regexp, options.at("services"))
            checks.append(lambda r, s, i: service(_service_name(r)))
        names("span_names", lambda r, s, i: i.name)
        kinds = options.strings("span_kinds")
        if kinds:
            try:
                wanted = frozenset(Span.SpanKind.Value(k) for k in kinds)
            except ValueError:
                raise OptionError(
                    options.at("span_kinds"), f"expected names such as SPAN_KIND_SERVER, got {kinds}"
                ) from None
            checks.append(lambda r, s, i: i.kind in wanted)
        attributes("attributes", lambda r, s, i: i.attributes)
        attributes("resources", lambda r, s, i: r.resource.attributes)
        libraries = options.mappings("libraries")
        if libraries:
            wanted_libraries = []
            for library in libraries:
                name = library.text("name", required=True)
                version = library.text("version")
                library.done()
                wanted_libraries.append((_Names([name], regexp, library.at("name")), version))  # type: ignore[list-item]
            checks.append(
                lambda r, s, i: any(
                    n(s.scope.name) and (v is None or v == s.scope.version) for n, v in wanted_libraries
                )
            )
    elif signal == Signal.LOGS:
        attributes("resource_attributes", lambda r, s, i: r.resource.attributes)
        attributes("record_attributes", lambda r, s, i: i.attributes)
        names("severity_texts", lambda r, s, i: i.severity_text)
        names("bodies", lambda r, s, i: i.body.string_value)
        severity = options.nested("severity_number")
        if severity is not None:
            if not severity.has("min"):
                raise OptionError(severity.at("min"), "required")
            low = _severity_min(severity.raw("min"), severity.at("min"))
            undefined = severity.flag("match_undefined", False)
            severity.done()
            checks.append(lambda r, s, i: i.severity_number >= low if i.severity_number else undefined)
    else:
        names("metric_names", lambda r, s, i: i.name)
        attributes("resource_attributes", lambda r, s, i: r.resource.attributes)
    options.done()
    if not checks:
        raise OptionError(options.path, "at least one property to match is required (e.g. span_names)")
    return lambda r, s, i: all(check(r, s, i) for check in checks)


class FilterProcessor(Processor):
    """`filter`: drops matching items (see the module docstring)."""

    kind = "filter"
    changes_items = True
    drop_reason = "filtered"

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options)
        ottl = _ottl_key(options)
        if ottl is not None:
            raise OptionError(
                options.at(ottl),
                "the OTTL conditions form is not supported (use spans/logs/metrics with include/exclude)",
            )
        self.keep: dict[Signal, Matcher] = {}
        for section, signal in _SECTIONS.items():
            block = options.nested(section)
            if block is None:
                continue
            include = block.nested("include")
            exclude = block.nested("exclude")
            block.done()
            if include is None and exclude is None:
                raise OptionError(block.path, "include or exclude is required")
            inc = _match_properties(signal, include) if include is not None else None
            exc = _match_properties(signal, exclude) if exclude is not None else None
            self.keep[signal] = _keeper(inc, exc)
        options.done()
        if not self.keep:
            raise OptionError(options.path, "nothing to filter (expected spans, logs or metrics)")
        self.signals = frozenset(self.keep)  # type: ignore[misc]

    def process(self, signal: Signal, request: Message) -> Message:
        keep = self.keep.get(signal)
        if keep is not None:
            keep_items(signal, request, keep)
        return request


def _ottl_key(options: Options) -> str | None:
    """Where a config uses the Collector's OTTL form: `traces:`, or `logs:`/`metrics:` (section
    names in both forms) holding the OTTL lists."""
    if options.has("traces"):
        return "traces"
    for section in ("logs", "metrics"):
        inner = options.peek(section)
        for key in _OTTL:
            if isinstance(inner, dict) and key in inner:
                return f"{section}.{key}"
    return None


def _keeper(include: Matcher | None, exclude: Matcher | None) -> Matcher:
    if include is None:
        assert exclude is not None
        return lambda r, s, i: not exclude(r, s, i)
    if exclude is None:
        return include
    return lambda r, s, i: include(r, s, i) and not exclude(r, s, i)
