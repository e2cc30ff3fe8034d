"""The `attributes` and `resource` processors: insert, update, upsert, delete and hash attributes.

Options follow the OpenTelemetry Collector's (contrib `internal/coreinternal/attraction`):

    attributes/pii:                       resource/env:
      actions:                              attributes:
        - {key: user.email, action: hash}     - {key: deployment.environment, value: prod, action: upsert}
        - {pattern: "^http\\.request\\.header\\.", action: delete}

- `insert`: add `key` when absent; `update`: change it when present; `upsert`: either. The value
  is `value` (string, int, float, bool, list or mapping, typed as written) or the value of
  another attribute, `from_attribute` (no action when that one is absent).
- `delete` / `hash`: by `key`, and/or every key that `pattern` (a regular expression, searched
  like Go's `MatchString`) finds. `hash` replaces the value with the lower-case hex SHA-256 of
  its bytes, as the Collector does: a string's UTF-8, an int's 8 bytes little-endian, a double's
  IEEE 754 bits little-endian, a bool as one byte 1/0; other kinds and the empty string become "".
- Differences from the Collector: no `extract`, `convert` or `from_context` actions, and no
  `include`/`exclude` item selection (a config naming them is refused at start-up); Python's
  regular expressions instead of RE2 (the same for ordinary patterns).
- Attributes are read as maps (views.py): a changed list may come out in another order.

`attributes` acts on span, span event, log record and metric data point attributes
(otlp_items.py); `resource` on resource attributes, with its list under `attributes`.
"""

from __future__ import annotations

import hashlib
import re
import struct

from google.protobuf.message import Message
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from otlp_ingest.otlp.signals import Signal
from otlp_ingest.processing.base import OptionError, Options, Processor, compile_regex
from otlp_ingest.processing.otlp_items import item_attribute_lists, resource_list

ACTIONS = ("insert", "update", "upsert", "delete", "hash")
_SETTERS = ("insert", "update", "upsert")
_UNSUPPORTED = {
    "extract": "the extract action is not supported (use a python processor)",
    "convert": "the convert action is not supported (use a python processor)",
}


def any_value(value: object, path: str) -> AnyValue:
    """An OTLP AnyValue for a value written in the config file, keeping its type."""
    out = AnyValue()
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise OptionError(path, f"{value} does not fit a 64-bit attribute")
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, list):
        array = out.array_value.values
        for i, item in enumerate(value):
            array.add().CopyFrom(any_value(item, f"{path}[{i}]"))
    elif isinstance(value, dict):
        kvlist = out.kvlist_value.values
        for key, item in value.items():
            kv = kvlist.add(key=str(key))
            kv.value.CopyFrom(any_value(item, f"{path}.{key}"))
    else:
        raise OptionError(path, f"cannot be an attribute value ({type(value).__name__})")
    return out


# Hashes of recent string values. The values a gateway hashes (emails, user and session ids)
# repeat across the spans of a request and of a service, and SHA-256 with its hex encoding was a
# fifth of the processor's time; bounded, and simply emptied when full.
HASH_CACHE_SIZE = 4096
_hash_cache: dict[str, str] = {}


def hashed(value: Message) -> str:
    """The Collector's `hash` of an AnyValue: hex SHA-256 of its bytes ("" when it has none)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        text = value.string_value
        digest = _hash_cache.get(text)
        if digest is None:
            digest = hashlib.sha256(text.encode("utf-8")).hexdigest() if text else ""
            if len(_hash_cache) >= HASH_CACHE_SIZE:
                _hash_cache.clear()
            _hash_cache[text] = digest
        return digest
    if kind == "bool_value":
        data = b"\x01" if value.bool_value else b"\x00"
    elif kind == "int_value":
        data = struct.pack("<q", value.int_value)
    elif kind == "double_value":
        data = struct.pack("<d", value.double_value)
    else:
        data = b""
    return hashlib.sha256(data).hexdigest() if data else ""


class _Action:
    """One parsed action; `run` applies it to one attribute map (views.py)."""

    __slots__ = ("action", "from_attribute", "key", "pattern", "value")

    def __init__(self, options: Options) -> None:
        action = (options.text("action", required=True) or "").lower()
        if action in _UNSUPPORTED:
            raise OptionError(options.at("action"), _UNSUPPORTED[action])
        if action not in ACTIONS:
            raise OptionError(
                options.at("action"), f"{action!r} is not allowed (expected one of {', '.join(ACTIONS)})"
            )
        self.action = action
        self.key = options.text("key")
        pattern = options.text("pattern")
        self.pattern: re.Pattern[str] | None = None
        self.value: bytes | None = None  # a serialized AnyValue
        self.from_attribute: str | None = None
        if options.has("from_context"):
            raise OptionError(
                options.at("from_context"), "not supported (no client context reaches processors)"
            )
        if self.action in _SETTERS:
            if not self.key:
                raise OptionError(options.at("key"), f"required for {self.action}")
            if pattern is not None:
                raise OptionError(options.at("pattern"), f"not used by {self.action} (only delete and hash)")
            has_value = options.has("value")
            if has_value:
                self.value = any_value(options.raw("value"), options.at("value")).SerializeToString()
            self.from_attribute = options.text("from_attribute")
            if has_value == (self.from_attribute is not None):
                raise OptionError(
                    options.path, f"{self.action} needs exactly one of value and from_attribute"
                )
        else:
            if not self.key and pattern is None:
                raise OptionError(options.path, f"{self.action} needs key or pattern")
            if pattern is not None:
                self.pattern = compile_regex(pattern, options.at("pattern"))
            for unused in ("value", "from_attribute"):
                if options.has(unused):
                    raise OptionError(options.at(unused), f"not used by {self.action}")
        options.done()

    def run(self, attrs: Message) -> None:
        action, key = self.action, self.key
        if action == "delete":
            for target in self._targets(attrs):
                del attrs[target]
        elif action == "hash":
            for target in self._targets(attrs):
                value = attrs[target]
                value.string_value = hashed(value)
        else:
            source = self.value
            if source is None:
                if self.from_attribute not in attrs:
                    return
                source = attrs[self.from_attribute].SerializeToString()
            present = key in attrs
            if (present and action != "insert") or (not present and action != "update"):
                attrs[key].ParseFromString(source)  # a missing key's entry is created here

    def _targets(self, attrs: Message) -> list[str]:
        key, pattern = self.key, self.pattern
        if pattern is None:
            return [key] if key in attrs else []  # type: ignore[list-item]
        search = pattern.search
        return [k for k in attrs if k == key or search(k)]


class AttributeActions:
    """A list of actions applied in order to one attribute map at a time."""

    def __init__(self, actions: list[Options], path: str) -> None:
        if not actions:
            raise OptionError(path, "at least one action is required")
        self.actions = [_Action(options) for options in actions]
        # The common actions (delete or hash one named key) run inline in `apply`: a call per
        # action and attribute map was a third of the processor's time on 100-span requests.
        self._plan = [
            (a.action if a.pattern is None and a.action in ("delete", "hash") else "", a.key, a)
            for a in self.actions
        ]
        # When every action is that kind, their order does not matter (a key both hashed and
        # deleted ends deleted either way), so `exact` holds the keys to delete and to hash for
        # callers that loop over many maps themselves (AttributesProcessor's span loop).
        self.exact: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        if all(inline for inline, _key, _action in self._plan):
            deletes = tuple(dict.fromkeys(k for inline, k, _a in self._plan if inline == "delete"))
            hashes = tuple(
                dict.fromkeys(k for inline, k, _a in self._plan if inline == "hash" and k not in deletes)
            )
            self.exact = (deletes, hashes)  # type: ignore[assignment]

    def apply(self, attrs: Message) -> None:
        for inline, key, action in self._plan:
            if inline == "delete":
                if key in attrs:
                    del attrs[key]
            elif inline == "hash":
                if key in attrs:
                    value = attrs[key]
                    value.string_value = hashed(value)
            else:
                action.run(attrs)


class AttributesProcessor(Processor):
    """`attributes`: actions on item attributes (spans and their events, log records, points)."""

    kind = "attributes"

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options)
        for selector in ("include", "exclude"):
            if options.has(selector):
                raise OptionError(
                    options.at(selector), "item selection is not supported (use a filter before, or python)"
                )
        self.actions = AttributeActions(options.mappings("actions"), options.at("actions"))
        options.done()

    def process(self, signal: Signal, request: Message) -> Message:
        apply = self.actions.apply
        exact = self.actions.exact
        if signal == Signal.TRACES and exact is not None:
            # The hot case (delete and hash named keys on spans) with no call per span.
            deletes, hashes = exact
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        attrs = span.attributes
                        for key in deletes:
                            if key in attrs:
                                del attrs[key]
                        for key in hashes:
                            if key in attrs:
                                value = attrs[key]
                                value.string_value = hashed(value)
                        events = span.events
                        if events:
                            for event in events:
                                apply(event.attributes)
            return request
        for attrs in item_attribute_lists(signal, request):
            apply(attrs)
        return request


class ResourceProcessor(Processor):
    """`resource`: the same actions on resource attributes (its list is named `attributes`)."""

    kind = "resource"

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options)
        self.actions = AttributeActions(options.mappings("attributes"), options.at("attributes"))
        options.done()

    def process(self, signal: Signal, request: Message) -> Message:
        apply = self.actions.apply
        for resource in resource_list(signal, request):
            apply(resource.resource.attributes)
        return request
