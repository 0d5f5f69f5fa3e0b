"""A generation as its two sides see it: the job going in, the chunks coming out, and when chunks go out.

A stream has two handles of this class. In its engine process, the engine's core puts `Chunk`s on one and the
engine drains them into its next message (`drain`); in the front, the scheduler puts what arrives on the
other, whose consumer (a gRPC or HTTP edge on the event loop) reads them with `await stream.next_chunk()`.
A chunk is immutable once handed over.

`FlushPolicy.due` is the one place that decides when a stream's characters leave: the first character at
once, then whatever accumulated every `flush_interval_ms` or as soon as `max_chunk_chars` wait, and always
at a resume point (`checkpoint_every_chars`) and at the end. A gRPC message costs more server CPU than a
model step, so a stream's characters travel together.
"""

from __future__ import annotations

import asyncio
import enum
import secrets
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from charrnn.settings import setting
from service.context import Context
from service.sampling import SamplingParams


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
    checkpoint_every: int = 0  # a resume point every this many chars (and one at 0); 0 = never

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


class Checkpoint(NamedTuple):
    """A stream's context after exactly `chars` generated characters: a resume point, unsigned (the edge signs it)."""

    chars: int
    context: Context


class Chunk(NamedTuple):
    """What one flush hands the consumer."""

    text: str
    finished: Finished | None
    values: np.ndarray  # watched units' values, float32 [len(text) x units] flat; empty without a watch
    checkpoint: Checkpoint | None = None  # covers exactly the text handed out so far, this chunk's included


NO_VALUES = np.zeros(0, np.float32)


@dataclass(frozen=True)
class FlushPolicy:
    """When a stream's characters go out (settings of `charrnn serve`; the decision is `due`)."""

    flush_interval_ms: float = setting(100.0, "send a stream's accumulated text at most this often")
    max_chunk_chars: int = setting(256, "... or as soon as this many characters wait")

    def due(self, ready: np.ndarray, flushed_once: np.ndarray, last_flush: np.ndarray, now: float) -> np.ndarray:
        """Rows whose `ready` characters go out now: the first at once, then by interval or size."""
        interval = self.flush_interval_ms / 1000.0
        return (ready > 0) & (~flushed_once | (ready >= self.max_chunk_chars) | (now - last_flush >= interval))


class Stream:
    """A generation's handle: its producer puts chunks (an engine's core, or the front's scheduler as they arrive);
    in the front one consumer on the event loop reads them."""

    def __init__(self, job: Job, on_cancel: Callable[[Stream], None]):
        self.job = job
        self.seed, self.position = job.resolved_rng()
        self.submitted = time.monotonic()
        self.cancelled = False
        self.finished: Finished | None = None  # set with the last chunk
        self._on_cancel = on_cancel
        self._outbox: deque[Chunk] = deque()
        self._error: BaseException | None = None
        self._event = asyncio.Event()

    # --- the producer's side ------------------------------------------------------------------------
    def put(self, chunk: Chunk) -> None:
        """Queue a chunk; the caller wakes the consumer (`wake`, on the event loop) afterwards. A failed
        stream takes no more (its engine may have been given up on while it still ran)."""
        if self._error is not None:
            return
        if chunk.finished is not None:
            self.finished = chunk.finished
        self._outbox.append(chunk)

    def fail(self, error: BaseException) -> None:
        """End the stream with `error` after the chunks already queued."""
        self._error = error

    def end_cancelled(self) -> Finished:
        """End as CANCELLED where it stands before its first character (it never ran); returns the result."""
        finished = Finished(FinishReason.CANCELLED, self.job.context, 0, 0, self.seed)
        self.put(Chunk("", finished, NO_VALUES))
        return finished

    def drain(self) -> tuple[list[Chunk], BaseException | None]:
        """In an engine: the chunks queued since the last drain and the error the stream failed with (if any),
        for the message to the front, whose own handle of the stream puts them for its consumer."""
        chunks = list(self._outbox)
        self._outbox.clear()
        return chunks, self._error

    # --- the consumer's side (the event loop) ---------------------------------------------------
    def wake(self) -> None:
        self._event.set()

    def cancel(self) -> None:
        """Ask the scheduler to drop this stream at its next step (it ends as CANCELLED)."""
        if not self.cancelled and self.finished is None:
            self.cancelled = True
            self._on_cancel(self)

    async def chunks(self) -> AsyncGenerator[Chunk, None]:
        """The chunks until the stream ends; a consumer that stops early (it went away) cancels the stream."""
        try:
            while True:
                chunk = await self.next_chunk()
                yield chunk
                if chunk.finished is not None:
                    return
        finally:
            self.cancel()  # a no-op once the stream has finished

    async def next_chunk(self) -> Chunk:
        """The next chunk, waiting for it; raises the error the stream failed with once its chunks are read."""
        while not self._outbox:
            if self._error is not None:
                raise self._error
            await self._event.wait()
            self._event.clear()
        return self._outbox.popleft()


class DeliveryObserver:
    """Hooks for what a client sees, called by the edge as it hands each message to its transport."""

    def on_first_char(self, seconds: float) -> None:
        """A stream's first text went out, `seconds` after its request arrived."""

    def on_chunk(self, gap_s: float) -> None:
        """A stream's next text went out, `gap_s` after its previous one."""


class Delivery:
    """Times one stream at the edge, where the client's own clock starts and stops: from the request's
    arrival to each message with text handed to the transport (queueing, prefill, the model step, waking
    the consumer and building the message all included)."""

    def __init__(self, observer: DeliveryObserver, arrived: float):
        self._observer = observer
        self._last: float | None = None
        self._arrived = arrived

    def sending(self, text: str) -> None:
        if not text:
            return
        now = time.monotonic()
        if self._last is None:
            self._observer.on_first_char(now - self._arrived)
        else:
            self._observer.on_chunk(now - self._last)
        self._last = now
