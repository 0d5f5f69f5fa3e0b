"""Continuous (iteration-level) batching: one asyncio loop advances every live stream together.

Each step: cancelled streams leave; waiting streams join (their prompts prefilled with the
full-sequence graph, one ONNX Runtime call per distinct prompt length); one character is sampled
for every live row in one vectorised call; finished rows leave carrying their final context;
the rest advance one character in ONE `Engine.run` call. ONNX Runtime runs on a single dedicated
thread so the event loop keeps serving gRPC while the model computes.

Streams coalesce output: the consumer is woken for the first character at once, then when
`flush_interval_ms` has passed since the last wake-up or `max_chunk_chars` are waiting, so one
gRPC message carries many characters (a message costs more CPU than a model step).

A stream that asks for checkpoints (`Job.checkpoint_every`) gets, at the first flush at or after
each multiple of that many characters, its row's context copied out after the step's model call:
exactly the state after the characters handed out with that flush. A flush with a possible stop
string held back is skipped (its state would cover characters the client has not seen); the next
one takes the checkpoint. Signing happens in the consumer, off the scheduler loop.

Streams that watch hidden units get, per generated character, the watched units' values in the
state after the model read that character (gathered in one vectorised call per state kind for
just the watching rows); a batch without watchers does no extra work.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import numpy as np

from charrnn.engine import Engine, States
from service.config import FlushPolicy, Limits
from service.context import Context
from service.errors import LimitExceeded, ShuttingDown
from service.sampling import SamplingParams, sample

log = logging.getLogger(__name__)

T = TypeVar("T")


class FinishReason(enum.Enum):
    LENGTH = "length"
    STOP = "stop"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class WatchedUnit:
    """A hidden unit a stream watches: `state` indexes the engine's states (manifest order: h, then c)."""

    state: int
    layer: int
    index: int


@dataclass(frozen=True)
class Job:
    """One generation, already validated and encoded."""

    context: Context
    prompt: tuple[int, ...]
    max_chars: int
    sampling: SamplingParams
    stops: tuple[str, ...] = ()
    seed: int | None = None  # None: continue the context's generator, else pick one
    watch: tuple[WatchedUnit, ...] = ()  # hidden units whose values go with each generated character
    checkpoint_every: int = 0  # hand out this stream's context about every this many chars; 0 = never

    def resolved_rng(self) -> tuple[int, int]:
        """(seed, position): an explicit seed restarts the generator; else continue the context's."""
        if self.seed is not None:
            return self.seed, 0
        if self.context.seed is not None:
            return self.context.seed, self.context.position
        return secrets.randbits(64), 0


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    context: Context  # where the text stands after this generation
    prompt_chars: int
    generated_chars: int
    seed: int
    stop: str = ""


class SchedulerObserver:
    """Hooks for metrics (service/metrics.py subclasses this); the defaults do nothing."""

    def on_step(self, batch: int, model_s: float, sampling_s: float) -> None:
        """One decode step advanced `batch` rows."""

    def on_prefill(self, streams: int, chars: int, seconds: float) -> None:
        """Waiting streams joined after their prompts ran through the model."""

    def on_first_char(self, seconds: float) -> None:
        """A stream's first character was handed to its consumer, `seconds` after submission."""

    def on_chunk(self, gap_s: float) -> None:
        """A stream's accumulated text was flushed to its consumer, `gap_s` after its previous flush."""

    def on_finish(self, finished: Finished, seconds: float) -> None:
        """A stream left with this result."""

    def on_reject(self, reason: str) -> None:
        """A stream was refused ("queue_full", "shutting_down")."""

    def on_queue(self, live: int, queued: int) -> None:
        """Live and waiting stream counts changed."""


class _StopMatcher:
    """Finds stop strings at the end of the text and how many trailing chars might start one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self.longest = max((len(s) for s in self.stops), default=0)

    def check(self, tail: str) -> tuple[str | None, int]:
        """(matched stop, chars to hold back) for `tail`, the last `longest` characters."""
        hold = 0
        for stop in self.stops:
            if tail.endswith(stop):
                return stop, len(stop)
            for n in range(min(len(stop) - 1, len(tail)), hold, -1):
                if tail.endswith(stop[:n]):
                    hold = n
                    break
        return None, hold


class ResumePoint(NamedTuple):
    """A stream's context after exactly `chars` generated characters (a mid-stream resume token's content)."""

    chars: int
    context: Context


class Chunk(NamedTuple):
    """What one wake-up hands the consumer."""

    text: str
    finished: Finished | None
    values: list[float]  # watched units' values, [len(text) x units] row-major; empty without a watch
    checkpoint: ResumePoint | None = None  # covers exactly the text handed out so far, this chunk's included


class Stream:
    """A generation's handle: the scheduler appends characters; one consumer reads chunks."""

    def __init__(self, job: Job, on_cancel: Callable[[], None] | None = None):
        self.job = job
        self._on_cancel = on_cancel
        self.seed, self.position = job.resolved_rng()
        self.submitted = time.monotonic()
        self.chars: list[str] = []
        self.emitted = 0  # chars safe to hand out (a possible stop-string prefix is held back)
        self.sent = 0  # chars handed out
        self.last_flush = 0.0
        self.finished: Finished | None = None
        self.error: Exception | None = None
        self.cancelled = False
        self.stop = ""  # the stop string that matched
        self.matcher = _StopMatcher(job.stops) if job.stops else None
        self.units = len(job.watch)
        # Watched values of chars `sent`, `sent + 1`, ...: one row per char, appended after the model step
        # (views of the step's gather buffer; a row leaves once its char is handed out).
        self.values: list[np.ndarray] = []
        self.next_checkpoint = job.checkpoint_every or 0  # chars at which the next checkpoint is due
        self.checkpoint: ResumePoint | None = None  # taken, not yet handed out
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    def cancel(self) -> None:
        """Ask the scheduler to drop this stream at its next step (it ends as CANCELLED)."""
        self.cancelled = True
        if self._on_cancel is not None:
            self._on_cancel()

    async def next_chunk(self) -> Chunk:
        """Wait for the next flush: the new text, the result if the stream ended, and watched values."""
        await self._event.wait()
        self._event.clear()
        if self.error is not None:
            raise self.error
        start, end = self.sent, self.emitted
        finished, checkpoint = self.finished, None
        if self.units:  # a char appended in this step gets its values after the model call; it waits for them
            end = min(end, start + len(self.values))
        if self.checkpoint is not None and finished is None:
            # The message carrying a checkpoint ends exactly where the checkpoint does; the rest follows.
            checkpoint, self.checkpoint = self.checkpoint, None
            if checkpoint.chars < end:
                end = checkpoint.chars
                self._event.set()
        values: list[float] = []
        if self.units and end > start:
            values = np.concatenate(self.values[: end - start]).tolist()
            del self.values[: end - start]
        self.sent = end
        return Chunk("".join(self.chars[start:end]), finished, values, checkpoint)


class _Gather:
    """Picks every watched unit of every watching row out of the states: one `np.take` per state kind."""

    def __init__(self, streams: Sequence[Stream], layers: int, hidden: int):
        batch = len(streams)
        picks: dict[int, tuple[list[int], list[int]]] = {}  # state -> (flat indices, output positions)
        self.spans: list[tuple[Stream, int, int]] = []
        pos = 0
        for row, stream in enumerate(streams):
            if not stream.units:
                continue
            self.spans.append((stream, pos, pos + stream.units))
            for unit in stream.job.watch:
                flat, out = picks.setdefault(unit.state, ([], []))
                flat.append((unit.layer * batch + row) * hidden + unit.index)
                out.append(pos)
                pos += 1
        self.size = pos
        self.picks = [(k, np.array(flat, np.int64), np.array(out, np.int64)) for k, (flat, out) in picks.items()]

    def __call__(self, states: States) -> None:
        """Append each watching row's values in `states` (the state after this step's character)."""
        values = np.empty(self.size, np.float32)
        for state, flat, out in self.picks:
            values[out] = np.take(states[state], flat)
        for stream, a, b in self.spans:
            stream.values.append(values[a:b])


class _Batch:
    """Live rows: streams plus their stacked states, next-char logits and sampling parameters."""

    _COLUMNS = ("logits", "temperature", "top_k", "top_p", "seeds", "positions", "generated", "max_chars")

    def __init__(self, engine: Engine):
        self.layers, self.hidden = engine.layers, engine.hidden
        self.model_sha256 = engine.sha256
        self.gather: _Gather | None = None  # None while no live row watches units
        self.streams: list[Stream] = []
        self.states: States = engine.zero_states(0)
        self.logits = np.zeros((0, engine.vocab_size), np.float32)
        self.temperature = np.zeros(0, np.float64)
        self.top_k = np.zeros(0, np.int64)
        self.top_p = np.zeros(0, np.float64)
        self.seeds = np.zeros(0, np.uint64)
        self.positions = np.zeros(0, np.uint64)
        self.generated = np.zeros(0, np.int64)
        self.max_chars = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.streams)

    def add(self, streams: list[Stream], states: States, logits: np.ndarray) -> None:
        self.streams.extend(streams)
        self.states = tuple(np.concatenate([a, b], axis=1) for a, b in zip(self.states, states, strict=True))
        new = {
            "logits": logits,
            "temperature": np.array([s.job.sampling.temperature for s in streams], np.float64),
            "top_k": np.array([s.job.sampling.top_k for s in streams], np.int64),
            "top_p": np.array([s.job.sampling.top_p for s in streams], np.float64),
            "seeds": np.array([s.seed for s in streams], np.uint64),
            "positions": np.array([s.position for s in streams], np.uint64),
            "generated": np.zeros(len(streams), np.int64),
            "max_chars": np.array([s.job.max_chars for s in streams], np.int64),
        }
        for name in self._COLUMNS:
            setattr(self, name, np.concatenate([getattr(self, name), new[name]]))
        self._regather()

    def keep(self, mask: np.ndarray) -> None:
        self.streams = [s for s, k in zip(self.streams, mask, strict=True) if k]
        self.states = tuple(s[:, mask] for s in self.states)
        for name in self._COLUMNS:
            setattr(self, name, getattr(self, name)[mask])
        self._regather()

    def _regather(self) -> None:
        """Rows moved: rebuild the gather indices (only when rows join or leave, never per step)."""
        watching = any(s.units for s in self.streams)
        self.gather = _Gather(self.streams, self.layers, self.hidden) if watching else None

    def context(self, i: int) -> Context:
        """Row i's context: its state, next-char logits and generator position, copied out."""
        return Context(
            tuple(s[:, i].copy() for s in self.states),
            self.logits[i].copy(),
            self.streams[i].seed,
            int(self.positions[i]),
            self.model_sha256,
        )


class Scheduler:
    """Owns the engine's thread and the one loop that advances all streams."""

    def __init__(self, engine: Engine, limits: Limits, flush: FlushPolicy, observer: SchedulerObserver | None = None):
        self.engine = engine
        self.limits = limits
        self.flush = flush
        self.observer = observer or SchedulerObserver()
        self.chars = engine.manifest.vocabulary.chars
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ort")
        self._waiting: deque[Stream] = deque()
        self._batch = _Batch(engine)
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._accepting = True
        self.steps = 0

    # --- public API -----------------------------------------------------------------------
    @property
    def live(self) -> int:
        return len(self._batch)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="scheduler")

    def submit(self, job: Job) -> Stream:
        """Queue a generation; ShuttingDown while draining, LimitExceeded when the queue is full."""
        if not self._accepting:
            self.observer.on_reject("shutting_down")
            raise ShuttingDown("server is shutting down; retry on another replica", self.limits.retry_pushback_ms)
        c = self.limits
        if self.live + len(self._waiting) >= c.max_live_streams + c.max_queued_streams:
            self.observer.on_reject("queue_full")
            raise LimitExceeded(
                f"all {c.max_live_streams} stream slots (max_live_streams) are busy and the queue of "
                f"{c.max_queued_streams} (max_queued_streams) is full; retry later",
                c.retry_pushback_ms,
            )
        stream = Stream(job, self.notify)
        self._waiting.append(stream)
        self.notify()
        return stream

    async def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the engine thread (serialised with the scheduler's own model calls)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def stop_accepting(self) -> None:
        self._accepting = False

    async def drain(self, grace_s: float) -> bool:
        """Wait up to `grace_s` for live and queued streams to end; True if they all did."""
        deadline = time.monotonic() + grace_s
        while (self.live or self.queued) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not (self.live or self.queued)

    async def close(self) -> None:
        """Fail whatever is left with ShuttingDown, stop the loop and the engine thread."""
        error = ShuttingDown(
            "server shut down before the stream finished; resume from its last checkpoint on another replica",
            self.limits.retry_pushback_ms,
        )
        for stream in [*self._batch.streams, *self._waiting]:
            stream.error = error
            stream.wake()
        self._batch.keep(np.zeros(self.live, bool))
        self._waiting.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    # --- the loop ---------------------------------------------------------------------------
    def notify(self) -> None:
        """Wake the loop (new work or a cancellation)."""
        if self._wakeup is not None:
            self._wakeup.set()

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            try:
                if not self._batch.streams and not self._waiting:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug: fail the streams in flight rather than hang them
                log.exception("scheduler step failed")
                for stream in [*self._batch.streams]:
                    stream.error = exc
                    stream.wake()
                self._batch.keep(np.zeros(self.live, bool))

    async def step(self) -> None:
        """One iteration: leave, join, sample, emit, advance; finished rows leave after the advance."""
        self._drop_cancelled()
        await self._admit()
        batch = self._batch
        if not batch.streams:
            return
        t0 = time.perf_counter()
        ids = sample(batch.logits, batch.temperature, batch.top_k, batch.top_p, batch.seeds, batch.positions)
        batch.positions += np.uint64(1)
        batch.generated += 1
        t1 = time.perf_counter()
        deferred: list[Stream] = []
        checkpoints: list[int] = []
        done = self._emit(ids, deferred, checkpoints)
        # Finished rows take this step too: their final context is the state after their last
        # character plus the logits for the next one, exactly what a continuation needs.
        states = batch.states
        logits, batch.states = await self.call(lambda: self.engine.run(ids[:, None], states))
        batch.logits = logits[:, -1, :]
        if batch.gather is not None:
            batch.gather(batch.states)  # the state after reading this step's character
        for row in checkpoints:
            self._checkpoint(row)
        for stream in deferred:
            stream.wake()
        self.steps += 1
        self.observer.on_step(len(batch), time.perf_counter() - t1, t1 - t0)
        if done.any():
            for i in np.flatnonzero(done):
                self._end_row(int(i))
            batch.keep(~done)
            self.observer.on_queue(self.live, self.queued)

    def _drop_cancelled(self) -> None:
        if any(s.cancelled for s in self._waiting):
            for s in self._waiting:
                if s.cancelled:
                    self._end(s, Finished(FinishReason.CANCELLED, s.job.context, 0, 0, s.seed))
            self._waiting = deque(s for s in self._waiting if not s.cancelled)
        batch = self._batch
        cancelled = np.fromiter((s.cancelled for s in batch.streams), bool, len(batch))
        if cancelled.any():
            for i in np.flatnonzero(cancelled):
                self._end_row(int(i))
            batch.keep(~cancelled)
            self.observer.on_queue(self.live, self.queued)

    async def _admit(self) -> None:
        free = self.limits.max_live_streams - len(self._batch)
        if free <= 0 or not self._waiting:
            return
        joining = [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]
        t0 = time.perf_counter()
        states, logits = await self.call(lambda: self._prefill(joining))
        self._batch.add(joining, states, logits)
        chars = sum(len(s.job.prompt) for s in joining)
        self.observer.on_prefill(len(joining), chars, time.perf_counter() - t0)
        self.observer.on_queue(self.live, self.queued)

    def _prefill(self, streams: list[Stream]) -> tuple[States, np.ndarray]:
        """Run each stream's prompt from its state; one model call per distinct length (pad-free).

        A stream with no prompt continues from its context's logits without a model call.
        """
        engine = self.engine
        n = len(streams)
        out_states = engine.zero_states(n)
        out_logits = np.empty((n, engine.vocab_size), np.float32)
        for i, stream in enumerate(streams):
            ctx = stream.job.context
            if ctx.states is not None:
                for dst, src in zip(out_states, ctx.states, strict=True):
                    dst[:, i] = src
            if not stream.job.prompt:
                assert ctx.logits is not None, "validated at the edge: an empty prompt needs a state"
                out_logits[i] = ctx.logits
        groups: dict[int, list[int]] = {}
        for i, stream in enumerate(streams):
            if stream.job.prompt:
                groups.setdefault(len(stream.job.prompt), []).append(i)
        for rows in groups.values():
            tokens = np.array([streams[i].job.prompt for i in rows], np.int64)
            logits, states = engine.run(tokens, tuple(s[:, rows] for s in out_states))
            out_logits[rows] = logits[:, -1, :]
            for dst, src in zip(out_states, states, strict=True):
                dst[:, rows] = src
        return out_states, out_logits

    def _emit(self, ids: np.ndarray, deferred: list[Stream], checkpoints: list[int]) -> np.ndarray:
        """Append each row's character, wake consumers per the coalescing policy; returns rows that are done.

        A stream watching units, or due a checkpoint (its row goes on `checkpoints`), is put on `deferred`
        instead of woken: its values and its context come after the model step.
        """
        batch = self._batch
        chars = self.chars
        now = time.monotonic()
        interval = self.flush.interval_s
        max_chunk = self.flush.max_chunk_chars
        done = batch.generated >= batch.max_chars
        for i, (stream, token) in enumerate(zip(batch.streams, ids.tolist(), strict=True)):
            stream.chars.append(chars[token])
            if stream.matcher is None:
                stream.emitted += 1
            else:
                matched, hold = stream.matcher.check("".join(stream.chars[-stream.matcher.longest :]))
                stream.emitted = len(stream.chars) - hold
                if matched is not None:
                    stream.stop = matched
                    done[i] = True
            if stream.last_flush == 0.0:
                if stream.emitted == 0:
                    continue
                self.observer.on_first_char(now - stream.submitted)
            elif stream.emitted - stream.sent >= max_chunk or now - stream.last_flush >= interval:
                self.observer.on_chunk(now - stream.last_flush)
            else:
                continue
            stream.last_flush = now
            due = stream.next_checkpoint > 0 and stream.emitted >= stream.next_checkpoint
            if due and stream.emitted == len(stream.chars) and not done[i]:
                checkpoints.append(i)
                deferred.append(stream)
            elif stream.units:
                deferred.append(stream)
            else:
                stream.wake()
        return done

    def _checkpoint(self, i: int) -> None:
        """Row i's context after this step's model call: it covers every character it has emitted."""
        stream = self._batch.streams[i]
        chars, every = len(stream.chars), stream.job.checkpoint_every
        stream.checkpoint = ResumePoint(chars, self._batch.context(i))
        stream.next_checkpoint = (chars // every + 1) * every

    def _end_row(self, i: int) -> None:
        stream = self._batch.streams[i]
        if stream.cancelled:
            reason = FinishReason.CANCELLED
        elif stream.stop:
            reason = FinishReason.STOP
        else:
            reason = FinishReason.LENGTH
            stream.emitted = len(stream.chars)  # a held-back partial stop string is plain text after all
        finished = Finished(
            reason, self._batch.context(i), len(stream.job.prompt), len(stream.chars), stream.seed, stream.stop
        )
        self._end(stream, finished)

    def _end(self, stream: Stream, finished: Finished) -> None:
        stream.finished = finished
        stream.wake()
        self.observer.on_finish(finished, time.monotonic() - stream.submitted)


def run_text(engine: Engine, ctx: Context, ids: np.ndarray) -> tuple[np.ndarray, Context]:
    """Run `ids` (non-empty) from `ctx` at batch 1: (logits [len(ids), vocab], context after them).

    For Score and Session feeds; call it on the engine thread (`Scheduler.call`).
    """
    states = engine.zero_states(1)
    if ctx.states is not None:
        states = tuple(s[:, None, :].copy() for s in ctx.states)
    logits, new_states = engine.run(ids[None, :], states)
    after = Context(
        tuple(s[:, 0].copy() for s in new_states), logits[0, -1].copy(), ctx.seed, ctx.position, engine.sha256
    )
    return logits[0], after
