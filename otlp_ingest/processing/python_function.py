"""The `python` processor: the user's own function, called with each decoded request.

    python/scrub:
      function: my_processors:scrub        # a module on PYTHONPATH, or path/to/file.py:scrub
      on_error: drop                       # or pass (default drop)
      timeout: 1s                          # per call (default 1s)

The function gets the `Export{Trace,Metrics,Logs}ServiceRequest` (opentelemetry-proto's
protobuf message) and may change it in place and return None, return another request of the same
type, or leave it with no items to drop them all. It is called once per received request, in the
exporter process, before batching.

What can go wrong and what happens (the pipeline applies `on_error` and counts each in
`otlp_processor_errors_total{reason}`):
- it raises: reason `raised`;
- it runs past `timeout`: reason `timeout`. A SIGALRM timer raises `ProcessorTimeout` (a
  BaseException, so a bare `except Exception` in the user's code does not swallow it; the timer
  fires again every 50 ms should it be swallowed anyway) inside the function, which works for
  Python loops, sleeps and blocking socket calls; a C extension that never returns to the
  interpreter cannot be interrupted this way;
- it returns something that is not None or a request of this signal: reason `invalid_output`;
- it leaves items the receiver would have refused (ids of the wrong length): reason
  `invalid_output`. So a processor never emits an invalid OTLP request.

The module is imported when the config is checked (start-up, `check-config`, SIGHUP) and again
in each exporter process, which is started fresh (fork+exec): a changed file takes effect at the
next SIGHUP.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import signal as signal_mod
import sys
import threading
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

from otlp_ingest.otlp.signals import SIGNALS, Signal
from otlp_ingest.processing.base import OptionError, Options, Processor

DEFAULT_TIMEOUT = 1.0
REFIRE_INTERVAL = 0.05


class ProcessorTimeout(BaseException):
    """Raised inside a user function that ran past its processor's timeout."""


class InvalidOutput(Exception):
    """A user function returned something that is not a valid request of its signal."""


def load_function(spec: str, path: str) -> Callable[[Message], Any]:
    """`module:function` or `file.py:function` -> the callable; OptionError naming `path`."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name.isidentifier():
        raise OptionError(path, f"{spec!r} is not module:function or path/to/file.py:function")
    try:
        if target.endswith(".py"):
            file = os.path.abspath(target)
            if not os.path.isfile(file):
                raise OptionError(path, f"{target}: no such file")
            module_name = f"otlp_ingest_user.{os.path.splitext(os.path.basename(file))[0]}"
            loader_spec = importlib.util.spec_from_file_location(module_name, file)
            assert loader_spec is not None and loader_spec.loader is not None
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except OptionError:
        raise
    except BaseException as exc:  # the user's module may raise anything, SystemExit included
        raise OptionError(path, f"cannot import {target} ({type(exc).__name__}: {exc})") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise OptionError(path, f"{target} has no function {name}")
    return function


class _Alarm:
    """A per-call deadline on the main thread, by SIGALRM (see the module docstring)."""

    armed = False

    @classmethod
    def install(cls) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False  # signals are only delivered to the main thread: no deadline
        if signal_mod.getsignal(signal_mod.SIGALRM) is not cls._fire:
            signal_mod.signal(signal_mod.SIGALRM, cls._fire)
        return True

    @classmethod
    def _fire(cls, signum: int, frame: object) -> None:
        if cls.armed:
            raise ProcessorTimeout()

    @classmethod
    def call(cls, function: Callable[[Message], Any], request: Message, timeout: float) -> Any:
        if not cls.install():
            return function(request)
        cls.armed = True
        signal_mod.setitimer(signal_mod.ITIMER_REAL, timeout, REFIRE_INTERVAL)
        try:
            return function(request)
        finally:
            cls.armed = False
            signal_mod.setitimer(signal_mod.ITIMER_REAL, 0)


class PythonProcessor(Processor):
    kind = "python"
    changes_items = True
    drop_reason = "function"
    uses_view = False

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options)
        spec = options.text("function", required=True)
        assert spec is not None
        timeout = options.raw("timeout", DEFAULT_TIMEOUT)
        from otlp_ingest.config import parse_duration  # config imports processing: import late

        try:
            self.timeout = parse_duration(timeout)
        except ValueError as exc:
            raise OptionError(options.at("timeout"), str(exc)) from None
        if self.timeout <= 0:
            raise OptionError(options.at("timeout"), "must be positive (e.g. 200ms, 1s)")
        options.done()
        self.function = load_function(spec, f"{options.path}.function")

    def process(self, signal: Signal, request: Message) -> Message:
        result = _Alarm.call(self.function, request, self.timeout)
        if result is None:
            result = request
        elif not isinstance(result, SIGNALS[signal].request_type):
            raise InvalidOutput(
                f"returned {type(result).__name__}, expected None or {SIGNALS[signal].request_type.__name__}"
            )
        return result  # the pipeline checks it is a request the receiver would accept
