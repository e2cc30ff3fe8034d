"""What every processor is, and how its options are read.

A processor acts on a decoded `Export*ServiceRequest` of one signal (built-ins on its view,
views.py) and returns the request to pass on: the same message changed in place, another one, or
None when nothing is left. It raises to say it failed; the pipeline (pipeline.py) then applies its
`on_error`.

Options come from the config file's `processors.<type>/<name>` mapping. `Options` reads them
with the key's full path in every message (`processors.attributes/pii.actions[0].action`), so a
bad config is one line naming the processor and the key (design.md section 5).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from google.protobuf.message import Message

from otlp_ingest.otlp.signals import Signal

ALL_SIGNALS = frozenset(Signal)
ON_ERROR = ("drop", "pass")


class OptionError(ValueError):
    """One bad option; `path` is where it is (`processors.filter/x.spans.exclude`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class Options:
    """A processor's (or a nested) options mapping, read key by key.

    Every getter removes the key it read; `done()` then rejects whatever is left, so a
    misspelt option is an error, never silently ignored (as the Collector's strict decoding).
    """

    def __init__(self, raw: object, path: str) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise OptionError(path, f"expected a mapping of options, got {_kind(raw)}")
        self.path = path
        self._left = {str(k): v for k, v in raw.items()}

    def at(self, key: str) -> str:
        return f"{self.path}.{key}"

    def has(self, key: str) -> bool:
        return key in self._left

    def peek(self, key: str) -> Any:
        """The raw value of `key` without reading it (None when absent)."""
        return self._left.get(key)

    def raw(self, key: str, default: Any = None) -> Any:
        return self._left.pop(key, default)

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        if key not in self._left:
            if required:
                raise OptionError(self.at(key), "required")
            return default
        value = self._left.pop(key)
        if not isinstance(value, str) or (required and not value):
            raise OptionError(self.at(key), f"expected a non-empty string, got {_kind(value)}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None) -> str:
        value = self.text(key, default, required=default is None)
        assert value is not None
        if value.lower() not in choices:
            raise OptionError(
                self.at(key), f"{value!r} is not allowed (expected one of {', '.join(choices)})"
            )
        return value.lower()

    def number(
        self, key: str, default: float | None = None, *, low: float = 0.0, high: float | None = None
    ) -> float:
        if key not in self._left:
            if default is None:
                raise OptionError(self.at(key), "required")
            return default
        value = self._left.pop(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise OptionError(self.at(key), f"expected a number, got {_kind(value)}")
        if value < low or (high is not None and value > high):
            upper = "" if high is None else f" and <= {high:g}"
            raise OptionError(self.at(key), f"{value!r} is out of range (expected >= {low:g}{upper})")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self._left.pop(key, default)
        if not isinstance(value, bool):
            raise OptionError(self.at(key), f"expected true or false, got {_kind(value)}")
        return value

    def strings(self, key: str) -> list[str]:
        value = self._left.pop(key, None)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise OptionError(self.at(key), "expected a list of strings")
        return list(value)

    def mappings(self, key: str) -> list[Options]:
        """A list of mappings (`actions`, `attributes`), each as Options at `key[i]`."""
        value = self._left.pop(key, None)
        if value is None:
            return []
        if not isinstance(value, list):
            raise OptionError(self.at(key), f"expected a list, got {_kind(value)}")
        return [Options(item, f"{self.at(key)}[{i}]") for i, item in enumerate(value)]

    def nested(self, key: str) -> Options | None:
        if key not in self._left:
            return None
        return Options(self._left.pop(key), self.at(key))

    def done(self) -> None:
        if self._left:
            key = sorted(self._left)[0]
            raise OptionError(self.at(key), "unknown option")


def compile_regex(pattern: str, path: str) -> re.Pattern[str]:
    """A Python regular expression, searched (not anchored) like Go's `MatchString`."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise OptionError(path, f"bad regular expression {pattern!r} ({exc})") from None


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return f"{value!r}"
    return f"{type(value).__name__} {value!r}"[:80]


class Processor:
    """Base of every processor. Subclasses set `kind` and `signals` and implement `process`."""

    kind: ClassVar[str]
    signals: ClassVar[frozenset[Signal]] = ALL_SIGNALS
    # Whether `process` may change the number of items: if not, the pipeline does not count them
    # again afterwards (counting walks every scope).
    changes_items: ClassVar[bool] = False
    # With changes_items: the `reason` label of the items it drops (otlp_processor_dropped_items_total).
    drop_reason: ClassVar[str] = ""
    # Built-in processors work on views.py's request views (attributes as maps); False: on the
    # full generated Export*ServiceRequest (a user's function gets the real message).
    uses_view: ClassVar[bool] = True

    def __init__(self, name: str, options: Options) -> None:
        self.name = name
        self.on_error = options.choice("on_error", ON_ERROR, "drop")

    def process(self, signal: Signal, request: Message) -> Message | None:
        raise NotImplementedError
