"""What crosses between the front and an engine process: batched messages, framed on a socket.

The front sends at most one `Inputs` per event-loop turn (new streams, cancellations, texts to run); an
engine answers with at most one `Outputs` per iteration, and only when it has something to say (chunks,
finished texts) or the heartbeat is due, so per-step happenings (metric observations) ride along in the
next message instead of costing one each. Contexts (hidden states) cross only inside a job, a chunk that
carries a resume point or a result, and a finished text.

A frame is an 8-byte big-endian length and a pickle (protocol 5) of one message. Both ends are this
project's own code on one machine, started by the front (service/engines.py), so pickle carries the
service's own types as they are; nothing from a client is unpickled that it built itself (a client's
input reaches an engine only inside jobs the front validated and built).
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from charrnn.engine import EngineOptions
from service.config import Limits, SchedulingOptions
from service.context import Context
from service.stream import Chunk, FlushPolicy, Job

HEADER = struct.Struct("!Q")


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine process needs to build its core: sent as its first message."""

    model_dir: Path
    sha256: str  # the model file the front loaded: an engine that finds another refuses to start
    engine: EngineOptions = field(default_factory=EngineOptions)
    limits: Limits = field(default_factory=Limits)
    flush_policy: FlushPolicy = field(default_factory=FlushPolicy)
    scheduling: SchedulingOptions = field(default_factory=SchedulingOptions)


class Ready(NamedTuple):
    """An engine loaded its model, warmed it up, and takes work."""

    pid: int
    sha256: str


class StartFailed(NamedTuple):
    """An engine could not load its model: `message` says why (the front refuses the model with it)."""

    message: str


class Submit(NamedTuple):
    sid: int  # the front's name for the stream
    job: Job


class Feed(NamedTuple):
    rid: int  # the front's name for the text run
    ids: np.ndarray
    context: Context
    logprobs: bool


@dataclass
class Inputs:
    """Front → engine: what one event-loop turn handed this engine."""

    submits: list[Submit] = field(default_factory=list)
    cancels: list[int] = field(default_factory=list)  # sids
    feeds: list[Feed] = field(default_factory=list)
    dropped_feeds: list[int] = field(default_factory=list)  # rids whose callers went away

    def __bool__(self) -> bool:
        return bool(self.submits or self.cancels or self.feeds or self.dropped_feeds)


class StreamUpdate(NamedTuple):
    """A stream's new chunks, and the error it ended with (after them), if any."""

    sid: int
    chunks: list[Chunk]
    error: BaseException | None


class FeedResult(NamedTuple):
    """A finished text run: the context after it and its log-probabilities, or the error it failed with."""

    rid: int
    context: Context | None
    logprobs: np.ndarray | None
    first_scored: int  # the first character a log-probability is for (0, or 1 at the start of a text)
    error: BaseException | None


class FedText(NamedTuple):
    """What the front's caller gets for a text it ran: the context after it, and each character's
    log-probability when asked for."""

    context: Context
    logprobs: np.ndarray | None
    first_scored: int

    def after(self) -> Context:
        return self.context


@dataclass
class Outputs:
    """Engine → front: what happened since the engine's last message."""

    streams: list[StreamUpdate] = field(default_factory=list)
    feeds: list[FeedResult] = field(default_factory=list)
    events: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)  # observer calls, in order
    rows: int = 0  # the batch's size now


def frame(message: object) -> bytes:
    payload = pickle.dumps(message, protocol=5)
    return HEADER.pack(len(payload)) + payload


def portable(error: BaseException) -> BaseException:
    """`error` if it survives pickling, else a RuntimeError naming it (some libraries' exceptions don't):
    either way the front maps it to a status as it would have in one process."""
    try:
        pickle.loads(pickle.dumps(error, protocol=5))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error
