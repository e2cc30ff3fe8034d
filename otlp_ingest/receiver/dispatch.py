"""How both transports run `ExportService.export` from the worker's event loop.

    runner.run(work, offload, done)

`work(done)` decompresses, decodes and queues one request (it calls `ExportService.export`,
passing `done` on) and returns its `ExportResult`, or None when the request was staged;
`done(result, error)` answers the client, on the event loop, exactly once. Small requests run
`work` inline: their payloads are staged and written together, one ring record per signal, by a
flush the runner schedules once per loop turn (`ExportService.flush_staged`), which then calls
their `done`: no task, no thread hop, and one record for every small request the loop handled
in that turn. Big bodies (`offload=True`) run `work(None)` in a small thread pool so the loop
keeps serving other connections meanwhile; in durable mode the answer waits for the record's
fsync (`ExportService.durable`) without blocking the loop. Only those slow paths create a task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from otlp_ingest.auth import TokenStore
from otlp_ingest.config import Settings
from otlp_ingest.receiver.export import ExportResult, ExportService

Done = Callable[[ExportResult | None, BaseException | None], None]
Work = Callable[[Done | None], ExportResult | None]

# Two threads: big bodies hold the GIL anyway, more threads would only share it further; the
# transports' in-flight bounds limit how many wait for them.
OFFLOAD_THREADS = 2
# Bodies (raw, or compressed above OFFLOAD_COMPRESSED_BYTES: they may inflate up to the body limit)
# whose decompress + decode + validate run off the event loop. Measured: a 22 MiB OTLP/JSON body
# held the loop ~2 s; 256 KiB of protobuf takes ~1-2 ms, about the cost of the thread hop.
OFFLOAD_BYTES = 256 * 1024
OFFLOAD_COMPRESSED_BYTES = 32 * 1024


def should_offload(body_bytes: int, compressed: bool) -> bool:
    """True when a body of this size is decoded off the event loop."""
    return body_bytes > (OFFLOAD_COMPRESSED_BYTES if compressed else OFFLOAD_BYTES)


class ExportRunner:
    """Runs export work for one worker's event loop (see the module docstring)."""

    def __init__(self, service: ExportService, loop: asyncio.AbstractEventLoop) -> None:
        self.service = service
        self.loop = loop
        self._flush_scheduled = False
        self._pool = ThreadPoolExecutor(max_workers=OFFLOAD_THREADS, thread_name_prefix="export-offload")
        self._tasks: set[asyncio.Task[None]] = set()  # the loop holds tasks weakly

    def run(self, work: Work, offload: bool, done: Done) -> bool:
        """Run `work`; True when its answer comes from a slow path (a task: offloaded, or a
        durable-mode fsync), False when `done` was called already or is called by this loop
        turn's flush, before the loop reads from any socket again."""
        if offload:
            self._spawn(self._slow(work, None, done))
            return True
        try:
            result = work(done)
        except Exception as exc:  # every failure becomes a status: the transport maps it
            done(None, exc)
            return False
        if result is None:  # staged: answered by the flush
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self.loop.call_soon(self._flush)
        elif result.ticket is None:
            done(result, None)
        else:
            self._spawn(self._slow(work, result, done))
            return True
        return False

    def _flush(self) -> None:
        self._flush_scheduled = False
        self.service.flush_staged()

    def _spawn(self, coro: object) -> None:
        task = self.loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _slow(self, work: Work, result: ExportResult | None, done: Done) -> None:
        try:
            if result is None:
                result = await self.loop.run_in_executor(self._pool, work, None)
                assert result is not None  # not staged: no `done` was given
            if result.ticket is not None:  # durable mode: answer once the record is fsynced
                result = await self.service.durable(result)
        except Exception as exc:
            done(None, exc)
            return
        done(result, None)

    @property
    def busy(self) -> int:
        """Requests still on a slow path (offloaded or waiting for durability)."""
        return len(self._tasks)

    def close(self) -> None:
        self.service.flush_staged()
        self._pool.shutdown(wait=True, cancel_futures=False)


@dataclass(frozen=True, slots=True)
class Receiving:
    """What both transports of one worker share: the export path and its runner, the settings,
    and the bearer tokens (None: authentication off)."""

    service: ExportService
    runner: ExportRunner
    settings: Settings
    tokens: TokenStore | None = None
