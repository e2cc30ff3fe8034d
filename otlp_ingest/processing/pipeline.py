"""A signal's processors in order, run on one ring record: bytes in, bytes out.

The exporter calls `Pipeline.run(payload, items)` for each record it reads, before the record
joins a batch (exporter/main.py). With no processors for a signal there is no Pipeline and the
record goes to the batch untouched (no decode: wire-level concatenation as before).

    decode -> processor 1 -> ... -> processor n -> encode

Built-in processors work on a view of the request (views.py: attributes as maps, everything else
kept as raw fields), python functions on the full generated message; adjacent processors of the
same kind share one decode, and a change of kind costs one encode and decode.

Each processor's items in and out, drops, errors and time are counted per processor and signal
(telemetry/metrics.py PROCESSOR_*). When a processor fails (it raised, timed out or returned an
invalid request), its `on_error` decides: `drop` drops the record's items (counted as dropped with
reason `error`), `pass` passes on what the processor was given, restored from bytes (a function
that failed half-way may have changed the message). Failures are logged at most every 10 s per
processor, with its name. Nothing here raises: a record always comes out processed or dropped.
"""

from __future__ import annotations

import logging
import time

from google.protobuf.message import Message

from otlp_ingest.otlp.signals import SIGNALS, Signal
from otlp_ingest.otlp.validate import validate_protobuf
from otlp_ingest.processing.base import Processor
from otlp_ingest.processing.otlp_items import count_items
from otlp_ingest.processing.python_function import InvalidOutput, ProcessorTimeout
from otlp_ingest.processing.views import REQUEST_VIEW
from otlp_ingest.telemetry import metrics
from otlp_ingest.telemetry.logging import RateLimitedLogger

log = logging.getLogger(__name__)
limited = RateLimitedLogger(log, interval=10.0)


class _Stage:
    """One processor and its metric series for one signal."""

    __slots__ = ("dropped", "errors", "incoming", "outgoing", "processor", "seconds", "signal_name")

    def __init__(self, processor: Processor, signal: Signal) -> None:
        name = SIGNALS[signal].name
        self.processor = processor
        self.signal_name = name
        self.incoming = metrics.PROCESSOR_INCOMING.labels(processor.name, name)
        self.outgoing = metrics.PROCESSOR_OUTGOING.labels(processor.name, name)
        self.seconds = metrics.PROCESSOR_SECONDS.labels(processor.name, name)
        # Only processors that can drop items get a series for it (attributes never drop).
        self.dropped = (
            metrics.PROCESSOR_DROPPED.labels(processor.name, name, processor.drop_reason)
            if processor.changes_items
            else None
        )
        self.errors = {
            reason: metrics.PROCESSOR_ERRORS.labels(processor.name, name, reason)
            for reason in ("raised", "timeout", "invalid_output")
        }
        self.incoming.inc(0)  # the series exist (at 0) from the start, for the status page
        self.outgoing.inc(0)
        self.seconds.inc(0)


class Pipeline:
    """The processors of one signal (built by `otlp_ingest.processing.build_pipelines`)."""

    def __init__(self, signal: Signal, processors: list[Processor]) -> None:
        self.signal = signal
        self.processors = processors
        self._types = {True: REQUEST_VIEW[signal], False: SIGNALS[signal].request_type}
        self._stages = [_Stage(p, signal) for p in processors]

    def _checked(self, request: Message) -> tuple[bytes, int]:
        """A user function's output as bytes and its item count, if it is a request the receiver
        would accept whole (the C wire proof, else the item-by-item check); else InvalidOutput."""
        data = request.SerializeToString()
        verdict = validate_protobuf(self.signal, data)
        if verdict.rejected:
            raise InvalidOutput(f"left {verdict.rejected} invalid items: {verdict.error_message}")
        return data, verdict.accepted

    def run(self, payload: bytes, items: int) -> tuple[bytes, int]:
        """The processed record and its item count; (b"", 0) when nothing is left."""
        signal = self.signal
        request: Message | None = None
        in_view = False
        snapshot: bytes | None = payload  # bytes `request` still equals, while nothing changed it
        for stage in self._stages:
            processor = stage.processor
            if request is None or in_view != processor.uses_view:
                # Adjacent built-ins share one decode; a python function gets the full message.
                data = snapshot if snapshot is not None else request.SerializeToString()  # type: ignore[union-attr]
                snapshot = data
                in_view = processor.uses_view
                request = self._types[in_view].FromString(data)
            elif processor.on_error == "pass" and snapshot is None:
                snapshot = request.SerializeToString()
            stage.incoming.inc(items)
            start = time.perf_counter()
            failure = ""
            checked: bytes | None = None  # the output's bytes, when they were checked
            try:
                result = processor.process(signal, request)
                if not processor.uses_view:
                    checked, left = self._checked(result if result is not None else request)
            except ProcessorTimeout:
                failure, detail = "timeout", f"ran past {getattr(processor, 'timeout', 0):g}s"
            except InvalidOutput as exc:
                failure, detail = "invalid_output", str(exc)
            except Exception as exc:
                failure, detail = "raised", f"{type(exc).__name__}: {exc}"
            stage.seconds.inc(time.perf_counter() - start)
            if failure:
                stage.errors[failure].inc()
                if processor.on_error == "drop":
                    limited.error(
                        f"{processor.name}-{failure}",
                        "processor %s failed on %s (%s): dropped %d items (on_error: drop)",
                        processor.name,
                        stage.signal_name,
                        detail,
                        items,
                    )
                    metrics.PROCESSOR_DROPPED.labels(processor.name, stage.signal_name, "error").inc(items)
                    return b"", 0
                limited.error(
                    f"{processor.name}-{failure}",
                    "processor %s failed on %s (%s): passed %d items on unchanged (on_error: pass)",
                    processor.name,
                    stage.signal_name,
                    detail,
                    items,
                )
                assert snapshot is not None
                request = self._types[in_view].FromString(snapshot)
                stage.outgoing.inc(items)
                continue
            if result is not None:
                request = result
            if checked is None:
                left = count_items(signal, request) if processor.changes_items else items
            stage.outgoing.inc(left)
            if left < items and stage.dropped is not None:
                stage.dropped.inc(items - left)
            items = left
            snapshot = checked
            if not items:
                return b"", 0
        if snapshot is not None:
            return snapshot, items
        assert request is not None
        return request.SerializeToString(), items
