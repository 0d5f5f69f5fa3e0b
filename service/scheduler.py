"""Continuous batching on decode worker threads; the event loop only does I/O, admission and cancellation.

A worker runs one engine's loop (service/core.py) where the model runs: each iteration plans
(service/policy.py: drop cancelled streams, admit waiting ones into free slots, pick the prefill group,
decode or not), executes (one prefill chunk of prompts, Score texts and Session feeds; one decode step:
sample every row, ONE model call, record, flush due chunks) and applies the outputs.

Chunks reach the event loop in batches: one `call_soon_threadsafe` per iteration that flushed anything,
waking those streams' consumers (service/stream.py). ONNX Runtime releases the GIL while it computes, so the
event loop's gRPC work overlaps the model's; with `decode_workers` > 1 each worker steps its own rows (the
engine's session is shared and thread-safe), which lets two model calls run at once.

Every row's result depends only on its own inputs (the model's rows are independent and sampling is
counter-based), so which worker, batch or chunk a stream lands in never changes its text.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from charrnn.engine import Engine
from service.config import FlushPolicy, Limits, SchedulingOptions
from service.context import Context
from service.core import EngineCore
from service.errors import EngineFailed, LimitExceeded, ShuttingDown
from service.feed import TextRun
from service.observer import SchedulerObserver
from service.policy import least_loaded
from service.stream import Job, Stream

log = logging.getLogger(__name__)

__all__ = ["Scheduler", "SchedulerObserver"]


class Scheduler:
    """The streams of one model: admission on the event loop, decoding on `decode_workers` threads."""

    def __init__(
        self,
        engine: Engine,
        limits: Limits,
        flush: FlushPolicy,
        options: SchedulingOptions | None = None,
        observer: SchedulerObserver | None = None,
    ):
        self.engine = engine
        self.limits = limits
        self.flush = flush
        self.options = options or SchedulingOptions()
        self.observer = observer or SchedulerObserver()
        self.slots = threading.Lock()  # held while a worker admits streams into free live slots
        self._workers = [_Worker(self, i) for i in range(self.options.decode_workers)]
        self._accepting = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: asyncio.Task[None] | None = None
        # Told False when a worker died or wedged, True once a new one took its place (health follows it).
        self.on_health: Callable[[bool], None] | None = None

    # --- the event loop's side -------------------------------------------------------------------
    @property
    def live(self) -> int:
        return sum(w.live for w in self._workers)

    @property
    def queued(self) -> int:
        return sum(w.queued for w in self._workers)

    def rows(self) -> list[int]:
        """Each worker's batch size now."""
        return [len(w.core.batch) for w in self._workers]

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for worker in self._workers:
            worker.start()
        self._watchdog = self._loop.create_task(self._watch())

    def _pick(self, loads: Callable[[_Worker], int]) -> _Worker:
        """The least-loaded worker that is running; EngineFailed while none is (one is being replaced)."""
        alive = [w for w in self._workers if not w.down]
        if not alive:
            raise EngineFailed("no decode worker is running; retry shortly", self.limits.retry_pushback_ms)
        return alive[least_loaded([loads(w) for w in alive])]

    def submit(self, job: Job) -> Stream:
        """Queue a generation; ShuttingDown while draining, LimitExceeded when the queue is full."""
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
        worker = self._pick(lambda w: w.live + w.queued)
        stream = Stream(job, worker.cancel)
        worker.inbox.append(stream)
        worker.signal.set()
        return stream

    async def feed(self, context: Context, ids: np.ndarray, logprobs: bool = False) -> TextRun:
        """Run `ids` (non-empty) from `context`, interleaved with decoding; the finished run (its `after()`
        context, and with `logprobs` each character's log-probability)."""
        assert self._loop is not None, "start() the scheduler first"
        run = TextRun(ids, context, self.engine, logprobs)
        future: asyncio.Future[TextRun] = self._loop.create_future()
        run.on_done = lambda r: self._resolve(future, r)
        # Texts handed in and not yet done, counted here: a burst of them spreads before any worker starts one.
        worker = self._pick(lambda w: w.texts)
        worker.texts += 1
        worker.runs_in.append(run)
        worker.signal.set()
        try:
            await future
        except asyncio.CancelledError:
            run.cancelled = True  # the caller went away: the worker drops the run at its next chunk
            raise
        finally:
            worker.texts -= 1
        if run.error is not None:
            raise run.error
        return run

    def _resolve(self, future: asyncio.Future[TextRun], run: TextRun) -> None:
        """From a worker thread: complete `future` on the event loop (unless its caller went away)."""
        assert self._loop is not None

        def resolve() -> None:
            if not future.done():
                future.set_result(run)

        self._loop.call_soon_threadsafe(resolve)

    def wake(self, streams: list[Stream]) -> None:
        """From a worker thread: wake these streams' consumers on the event loop, in one call."""
        if streams and self._loop is not None:
            self._loop.call_soon_threadsafe(_wake_all, streams)

    def slots_freed(self, by: _Worker) -> None:
        """From a worker thread: rows left `by`; workers whose streams wait for a slot try again."""
        for worker in self._workers:
            if worker is not by and worker.queued:
                worker.signal.set()

    # --- workers that die or wedge -------------------------------------------------------------------
    async def _watch(self) -> None:
        """Replace a worker that died (its loop raised) or wedged (work, and no iteration for the stall)."""
        stall = self.options.engine_stall_seconds
        while True:
            await asyncio.sleep(min(stall / 4, 0.25))
            now = time.monotonic()
            for i, worker in enumerate(self._workers):
                if worker.dead:
                    self._replace(i, "died")
                elif worker.wedged(now, stall):
                    log.error("decode worker %d made no iteration for %.1f s: replacing it", i, now - worker.beat)
                    worker.abandon(self.engine_failed())
                    self._replace(i, "wedged")

    def engine_failed(self) -> EngineFailed:
        return EngineFailed(
            "the decode worker running this stream failed; resume from its last checkpoint or retry",
            self.limits.retry_pushback_ms,
        )

    def _replace(self, index: int, reason: str) -> None:
        if self.on_health is not None:
            self.on_health(False)
        worker = _Worker(self, index)
        self._workers[index] = worker
        worker.start()
        self.observer.on_engine_restart(reason)
        if self.on_health is not None:
            self.on_health(True)

    def stop_accepting(self) -> None:
        self._accepting = False

    async def drain(self, grace_s: float) -> bool:
        """Wait up to `grace_s` for live and queued streams to end; True if they all did."""
        deadline = time.monotonic() + grace_s
        while (self.live or self.queued) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not (self.live or self.queued)

    async def close(self) -> None:
        """Fail whatever is left with ShuttingDown and stop the workers."""
        error = ShuttingDown(
            "server shut down before the stream finished; resume from its last checkpoint on another replica",
            self.limits.retry_pushback_ms,
        )
        if self._watchdog is not None:
            self._watchdog.cancel()
        for worker in self._workers:
            worker.close(error)
        for worker in self._workers:
            if worker.is_alive():
                await asyncio.to_thread(worker.join, 10.0)


def _wake_all(streams: list[Stream]) -> None:
    for stream in streams:
        stream.wake()


class _Worker(threading.Thread):
    """One decode loop over its own engine core; streams, cancellations and texts come in through inboxes."""

    def __init__(self, scheduler: Scheduler, index: int):
        super().__init__(name=f"decode-{index}", daemon=True)
        self.s = scheduler
        self.core = EngineCore(scheduler.engine, scheduler.limits, scheduler.flush, scheduler.options,
                               scheduler.observer)  # fmt: skip
        self.signal = threading.Event()
        # Handed in from the event loop (deque appends and pops are atomic); the worker moves them to its core.
        self.inbox: deque[Stream] = deque()
        self.cancels: deque[Stream] = deque()
        self.runs_in: deque[TextRun] = deque()
        self.texts = 0  # texts handed in and not yet done (the event loop's count)
        self.error: BaseException | None = None  # set by close(): fail everything, then stop
        self._closed = False
        self.beat = time.monotonic()  # when the loop last began an iteration or went idle
        self.idle = False  # waiting for work (then it cannot be wedged)
        self.dead = False  # its loop raised: its streams failed, the watchdog replaces it
        self.abandoned = False  # wedged: its streams failed, the watchdog replaced it

    @property
    def down(self) -> bool:
        return self.dead or self.abandoned

    def wedged(self, now: float, stall: float) -> bool:
        """Work waiting and no iteration for `stall` seconds."""
        busy = self.live or self.queued or self.texts or self.cancels
        return bool(busy) and not self.idle and not self.down and now - self.beat > stall

    @property
    def live(self) -> int:
        return self.core.live

    @property
    def queued(self) -> int:
        return len(self.inbox) + len(self.core.queues.waiting)

    def cancel(self, stream: Stream) -> None:
        """From the event loop: drop `stream` at the next iteration."""
        self.cancels.append(stream)
        self.signal.set()

    def close(self, error: BaseException) -> None:
        self.error = error
        self._closed = True
        self.signal.set()

    def abandon(self, error: EngineFailed) -> None:
        """From the event loop, for a wedged worker: fail its streams and texts now, and leave it; if its loop
        ever comes back it stops without touching them again (a failed stream takes no more chunks)."""
        self.abandoned = True
        self.close(error)
        core = self.core
        streams = [r.stream for r in core.batch.rows] + [*core.queues.prefilling.values(), *core.queues.waiting]
        for stream in [*streams, *self.inbox]:
            stream.fail(error)
        for run in [*core.queues.runs, *self.runs_in]:
            if run.on_done is not None and run.error is None and not run.done:
                run.error = error
                run.on_done(run)
        self.s.wake([*streams, *self.inbox])

    # --- the loop -------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self._closed:
                self._iterate()
        except Exception:  # a bug: this worker's state is unknown, so it ends; a new worker takes its place
            log.exception("decode worker %s died: its streams fail UNAVAILABLE", self.name)
            self.error = self.s.engine_failed()
            self.dead = True
        if self.abandoned:
            return
        assert self.error is not None
        self._take_inbox()
        self.core.fail_all(self.error)
        self.s.wake(self.core.take_woken())

    def _take_inbox(self) -> None:
        q = self.core.queues
        while self.inbox:
            q.waiting.append(self.inbox.popleft())
        while self.cancels:
            q.cancelled.add(self.cancels.popleft())
        while self.runs_in:
            q.runs.append(self.runs_in.popleft())

    def _iterate(self) -> None:
        self.beat = time.monotonic()
        self._take_inbox()
        core = self.core
        before = core.live
        try:
            now = time.monotonic()
            if core.queues.waiting:
                with self.s.slots:  # the live-stream limit is the server's, shared by every worker
                    plan = core.begin(now, self.s.limits.max_live_streams - self.s.live)
            else:
                plan = core.begin(now, 0)
            core.finish(plan)
        finally:
            self.s.wake(core.take_woken())
        if core.live < before:
            self.s.slots_freed(self)
        if not (plan.drop or plan.admit or plan.prefill or plan.decode):
            self._idle()

    def _idle(self) -> None:
        self.signal.clear()
        if self.inbox or self.runs_in or self.cancels or self._closed:
            return
        self.idle = True
        self.signal.wait()
        self.beat = time.monotonic()
        self.idle = False
