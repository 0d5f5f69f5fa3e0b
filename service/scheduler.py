"""Continuous batching across engine processes; the front's event loop does only I/O, admission and cancellation.

Each engine (service/engine_loop.py) owns a model session, its rows and its loop: every iteration plans
(service/policy.py: drop cancelled streams, admit new ones, pick the prefill group, decode or not),
executes (one prefill chunk, one decode step: sample every row, ONE model call, record, flush due chunks)
and applies the outputs. The engines run on their own cores, so the front's gRPC and HTTP work never
takes turns with a model step on one interpreter lock.

The front and an engine exchange batched messages (service/wire.py): everything one event-loop turn gave
an engine goes in one message, and an engine answers once per iteration that flushed chunks or finished a
text. The live-stream limit is the server's: streams wait in the front's queue until a slot is free and
then go to the least-loaded engine; texts go to the engine with the fewest in flight.

An engine that dies (its socket closes: kill -9, a crash) or wedges (work, and no message for
`engine_stall_seconds`) is killed and replaced: its streams end UNAVAILABLE with the retry hint at once,
health is NOT_SERVING until the new engine is ready, and the restart is counted; the other engines'
streams never notice.

Every row's result depends only on its own inputs (the model's rows are independent and sampling is
counter-based), so which engine, batch or chunk a stream lands in never changes its text.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np

from service.context import Context
from service.engines import EngineHandle, Launcher, read_message, start_process
from service.errors import EngineFailed, LimitExceeded, ShuttingDown
from service.observer import SchedulerObserver
from service.policy import least_loaded
from service.stream import Job, Stream
from service.wire import EngineSpec, FedText, Feed, Outputs, Submit

log = logging.getLogger(__name__)

__all__ = ["Scheduler", "SchedulerObserver"]

RESTART_BACKOFF_S = 1.0  # between attempts to start a replacement engine that failed to start


class Scheduler:
    """The streams of one model: admission on the event loop, decoding in `engines` engine processes."""

    def __init__(self, spec: EngineSpec, engines: int, observer: SchedulerObserver | None = None,
                 launch: Launcher = start_process):  # fmt: skip
        self.spec = spec
        self.limits = spec.limits
        self.options = spec.scheduling
        self.observer = observer or SchedulerObserver()
        self._launch = launch
        self._engines: list[EngineHandle | None] = [None] * engines
        self._waiting: deque[Stream] = deque()  # submitted, waiting for a live slot
        self._placed: dict[Stream, tuple[EngineHandle, int]] = {}  # sent to an engine: (engine, sid)
        self._ids = itertools.count()
        self._accepting = True
        self._closing = False
        self._send_due = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Told False when an engine died or wedged, True once every engine runs again (health follows it).
        self.on_health: Callable[[bool], None] | None = None

    # --- what the event loop reads -----------------------------------------------------------------
    @property
    def live(self) -> int:
        """Streams holding a slot: sent to an engine and not ended."""
        return len(self._placed)

    @property
    def queued(self) -> int:
        """Streams waiting in the front for a slot."""
        return len(self._waiting)

    def rows(self) -> list[int]:
        """Each engine's batch size, as its last message said."""
        return [0 if e is None or e.down else e.rows for e in self._engines]

    def pids(self) -> list[int]:
        """The running engines' process ids."""
        return [e.pid for e in self._engines if e is not None and not e.down]

    def _running(self) -> list[EngineHandle]:
        return [e for e in self._engines if e is not None and not e.down]

    # --- start and stop ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every engine (each loads and warms up the model); ArtifactError if one cannot."""
        self._loop = asyncio.get_running_loop()
        results = await asyncio.gather(
            *(self._launch(self.spec, i) for i in range(len(self._engines))), return_exceptions=True
        )
        for result in results:
            if isinstance(result, EngineHandle):
                self._attach(result)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self.close()
            raise failed[0]
        self._spawn(self._watch())

    def _attach(self, engine: EngineHandle) -> None:
        self._engines[engine.index] = engine
        engine.reading = self._spawn(self._read(engine))

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        assert self._loop is not None
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def stop_accepting(self) -> None:
        self._accepting = False

    async def drain(self, grace_s: float) -> bool:
        """Wait up to `grace_s` for live and queued streams to end; True if they all did."""
        deadline = time.monotonic() + grace_s
        while (self.live or self.queued) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not (self.live or self.queued)

    async def close(self) -> None:
        """Fail whatever is left with ShuttingDown and stop the engines."""
        self._closing = True
        error = ShuttingDown(
            "server shut down before the stream finished; resume from its last checkpoint on another replica",
            self.limits.retry_pushback_ms,
        )
        for task in list(self._tasks):
            task.cancel()
        while self._waiting:
            self._waiting.popleft().fail(error)
        engines = [e for e in self._engines if e is not None]
        for engine in engines:
            self._abandon(engine, error)
            engine.close()
        for engine in engines:
            if not await asyncio.to_thread(engine.join, 10.0):
                log.warning("engine %d did not exit within 10 s of closing: killing it", engine.index)
                engine.kill()
                await asyncio.to_thread(engine.join, 10.0)

    # --- streams -----------------------------------------------------------------------------------
    def submit(self, job: Job) -> Stream:
        """Queue a generation; ShuttingDown while draining, LimitExceeded when the queue is full, EngineFailed
        while no engine runs."""
        if not self._accepting:
            self.observer.on_reject("shutting_down")
            raise ShuttingDown("server is shutting down; retry on another replica", self.limits.retry_pushback_ms)
        lim = self.limits
        if self.live + self.queued >= lim.max_live_streams + lim.max_queued_streams:
            self.observer.on_reject("queue_full")
            raise LimitExceeded(
                f"all {lim.max_live_streams} stream slots (max_live_streams) are busy and the queue of "
                f"{lim.max_queued_streams} (max_queued_streams) is full; retry later",
                lim.retry_pushback_ms,
            )
        if not self._running():
            raise self._no_engine()
        stream = Stream(job, self._cancel)
        self._waiting.append(stream)
        self._admit()
        return stream

    def _admit(self) -> None:
        """Waiting streams take free slots, each on the engine with the fewest streams."""
        while self._waiting and self.live < self.limits.max_live_streams:
            running = self._running()
            if not running:
                return
            engine = running[least_loaded([len(e.streams) for e in running])]
            stream = self._waiting.popleft()
            sid = next(self._ids)
            self._give(engine)
            engine.streams[sid] = stream
            self._placed[stream] = (engine, sid)
            engine.pending.submits.append(Submit(sid, stream.job))

    def _cancel(self, stream: Stream) -> None:
        """From the consumer: a waiting stream ends here without ever running; a placed one, at its engine."""
        if stream in self._waiting:
            self._waiting.remove(stream)
            finished = stream.end_cancelled()
            self.observer.on_finish(finished, time.monotonic() - stream.submitted)
            stream.wake()
            return
        placed = self._placed.get(stream)
        if placed is not None:
            engine, sid = placed
            engine.pending.cancels.append(sid)
            self._schedule_send()

    async def feed(self, context: Context, ids: np.ndarray, logprobs: bool = False) -> FedText:
        """Run `ids` (non-empty) from `context`, interleaved with decoding on the engine with the fewest texts
        in flight: the context after it (and with `logprobs` each character's log-probability)."""
        assert self._loop is not None, "start() the scheduler first"
        running = self._running()
        if not running:
            raise self._no_engine()
        engine = running[least_loaded([len(e.feeds) for e in running])]
        rid = next(self._ids)
        future: asyncio.Future[FedText] = self._loop.create_future()
        self._give(engine)
        engine.feeds[rid] = future
        engine.pending.feeds.append(Feed(rid, ids, context, logprobs))
        try:
            return await future
        except asyncio.CancelledError:  # the caller went away: the engine drops the text before its next chunk
            if engine.feeds.pop(rid, None) is not None:
                engine.pending.dropped_feeds.append(rid)
                self._schedule_send()
            raise

    def _give(self, engine: EngineHandle) -> None:
        """About to hand `engine` work: an idle engine's silence so far was not a stall."""
        if not engine.busy:
            engine.last_heard = time.monotonic()
        self._schedule_send()

    def _schedule_send(self) -> None:
        if not self._send_due and self._loop is not None:
            self._send_due = True
            self._loop.call_soon(self._send_all)

    def _send_all(self) -> None:
        """Once per event-loop turn: each engine gets what the turn gave it as one message."""
        self._send_due = False
        for engine in self._running():
            engine.send_pending()

    # --- what engines say --------------------------------------------------------------------------
    async def _read(self, engine: EngineHandle) -> None:
        try:
            while True:
                message = await read_message(engine.reader)
                assert isinstance(message, Outputs), f"engines send Outputs, not {type(message).__name__}"
                self._apply(engine, message)
        except asyncio.CancelledError:
            raise
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            if not engine.down:
                log.error("engine %d (pid %d) died: %r", engine.index, engine.pid, exc)
                self._lost(engine, "died")
        except Exception:  # a message this front cannot take: the engine's state is unknown
            log.exception("engine %d (pid %d) sent a message the front cannot take", engine.index, engine.pid)
            self._lost(engine, "died")

    def _apply(self, engine: EngineHandle, out: Outputs) -> None:
        now = time.monotonic()
        engine.last_heard = now
        engine.rows = out.rows
        for name, args in out.events:
            getattr(self.observer, name)(*args)
        freed = False
        for update in out.streams:
            stream = engine.streams.get(update.sid)
            if stream is None:
                continue
            for chunk in update.chunks:
                stream.put(chunk)
            if update.error is not None:
                stream.fail(update.error)
            if update.error is not None or stream.finished is not None:
                del engine.streams[update.sid], self._placed[stream]
                freed = True
                if stream.finished is not None:
                    self.observer.on_finish(stream.finished, now - stream.submitted)
            stream.wake()
        for result in out.feeds:
            future = engine.feeds.pop(result.rid, None)
            if future is None or future.done():
                continue
            if result.error is not None:
                future.set_exception(result.error)
            else:
                assert result.context is not None
                future.set_result(FedText(result.context, result.logprobs, result.first_scored))
        if freed:
            self._admit()

    # --- engines that die or wedge -----------------------------------------------------------------
    async def _watch(self) -> None:
        """Replace an engine that has work and sent nothing for the stall (it heartbeats while busy)."""
        stall = self.options.engine_stall_seconds
        while True:
            await asyncio.sleep(min(stall / 4, 0.25))
            now = time.monotonic()
            for engine in self._running():
                if engine.busy and now - engine.last_heard > stall:
                    log.error("engine %d (pid %d) sent nothing for %.1f s with work: replacing it",
                              engine.index, engine.pid, now - engine.last_heard)  # fmt: skip
                    self._lost(engine, "wedged")

    def engine_failed(self) -> EngineFailed:
        return EngineFailed(
            "the engine running this stream failed; resume from its last checkpoint or retry",
            self.limits.retry_pushback_ms,
        )

    def _no_engine(self) -> EngineFailed:
        return EngineFailed("no engine is running; retry shortly", self.limits.retry_pushback_ms)

    def _abandon(self, engine: EngineHandle, error: BaseException) -> None:
        """Fail everything `engine` holds with `error`, now; it takes no more."""
        engine.down = True
        for stream in engine.streams.values():
            del self._placed[stream]
            stream.fail(error)
            stream.wake()
        engine.streams.clear()
        for future in engine.feeds.values():
            if not future.done():
                future.set_exception(error)
        engine.feeds.clear()

    def _lost(self, engine: EngineHandle, reason: str) -> None:
        if self._closing or engine.down:
            return
        self._abandon(engine, self.engine_failed())
        engine.kill()
        self._spawn(asyncio.to_thread(engine.join, 10.0))  # reap it
        self.observer.on_engine_restart(reason)
        if self.on_health is not None:
            self.on_health(False)
        self._spawn(self._replace(engine.index))
        self._admit()  # its slots are free: waiting streams go to the engines that run

    async def _replace(self, index: int) -> None:
        while not self._closing:
            try:
                engine = await self._launch(self.spec, index)
            except Exception as exc:
                log.error("engine %d could not be restarted (retrying in %.0f s): %s", index, RESTART_BACKOFF_S, exc)
                await asyncio.sleep(RESTART_BACKOFF_S)
                continue
            if self._closing:
                engine.close()
                return
            self._attach(engine)
            log.info("engine %d restarted (pid %d)", index, engine.pid)
            if self.on_health is not None and len(self._running()) == len(self._engines):
                self.on_health(True)
            self._admit()
            return
