"""One engine's scheduling decisions, free of threads, clocks and models: `plan` what an iteration runs,
`apply` what its model calls returned.

An engine's loop (service/core.py) is `plan -> execute -> apply`:

- `plan(queues, batch, clock, free)` drops cancelled streams (before admission a cancelled stream never
  runs), admits waiting streams into `free` slots, picks the prefill group (round robin: the first text in
  line and the others whose next chunk has its length; while rows decode, only when the prefill time is
  paid back, so prefill takes at most `prefill_share` of the engine) and whether rows decode;
- the engine executes the plan (its model calls, with the time each took);
- `apply(plan, queues, batch, outputs)` records the step's characters into the batch, flushes the chunks
  that are due, moves the advanced texts to the back of the line and keeps the prefill account.

Both are deterministic functions of their arguments and the policy's prefill account, so they are tested
with a fake model and a fake clock (tests/service/test_policy.py).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from charrnn.engine import States
from service.batch import Batch
from service.config import SchedulingOptions
from service.feed import TextRun
from service.stream import Stream

# What the prefill group is made of: a run in progress, or a stream admitted this iteration (its prompt's
# run starts when the plan is executed).
Text = TextRun | Stream


@dataclass
class Queues:
    """What an engine holds besides its batch rows."""

    waiting: deque[Stream] = field(default_factory=deque)  # submitted, waiting for a slot
    cancelled: set[Stream] = field(default_factory=set)  # cancelled by their consumers, not yet ended
    runs: deque[TextRun] = field(default_factory=deque)  # texts in progress (prompts included), round robin
    prefilling: dict[TextRun, Stream] = field(default_factory=dict)  # prompt runs of streams that join when done


@dataclass(frozen=True)
class StepPlan:
    """One iteration: what ends, what starts, which texts advance by a chunk, whether the rows decode."""

    now: float  # the clock the plan was made at: flush decisions use it
    drop: tuple[Stream, ...] = ()  # cancelled streams to end now (waiting, prefilling or in the batch)
    admit: tuple[Stream, ...] = ()  # waiting streams taking slots: prompts start prefilling, others join
    prefill: tuple[Text, ...] = ()  # advanced together by one model call, one chunk each
    decode: bool = False  # one decode step for every row (after this iteration's joins)


class StepOutputs(NamedTuple):
    """What executing a plan produced."""

    prefilled: tuple[TextRun, ...] = ()  # the runs the prefill model call advanced
    prefill_s: float = 0.0  # its seconds
    ids: np.ndarray | None = None  # the characters sampled for the batch's rows (None: no decode step)
    logits: np.ndarray | None = None  # [rows, vocab]: the next characters' logits after `ids`
    states: States | None = None  # the rows' states after `ids`
    decode_s: float = 0.0  # the decode step's seconds (sampling and the model call)


class Applied(NamedTuple):
    """What `apply` did: streams given chunks (wake them), streams finished, rows that failed alone."""

    woken: list[Stream]
    finished: list[Stream]
    failed: list[tuple[Stream, str, BaseException]]  # (stream, phase, error): removed from the batch


class Policy:
    """Admission, the prefill group and decoding for one engine; `debt` is prefill time not yet paid back."""

    def __init__(self, options: SchedulingOptions):
        self.chunk_chars = options.prefill_chunk_chars
        self.max_rows = options.max_prefill_rows
        self.payback = options.prefill_share / (1.0 - options.prefill_share)
        self.debt = 0.0

    def next_length(self, text: Text) -> int:
        """The length of `text`'s next prefill chunk."""
        if isinstance(text, TextRun):
            return text.next_length(self.chunk_chars)
        return min(self.chunk_chars, len(text.job.prompt))

    def _completes(self, text: Text, queues: Queues) -> bool:
        """Whether this chunk finishes a stream's prompt (the stream then joins the batch)."""
        if isinstance(text, TextRun):
            return text in queues.prefilling and text.pos + self.next_length(text) >= len(text.ids)
        return self.next_length(text) >= len(text.job.prompt)

    def plan(self, queues: Queues, batch: Batch, clock: float, free: int) -> StepPlan:
        """The next iteration for this engine, which may fill `free` more live slots."""
        gone = queues.cancelled
        in_batch = [r.stream for r in batch.rows if r.stream in gone] if gone else []
        drop = tuple(
            [s for s in queues.waiting if s in gone] + [s for s in queues.prefilling.values() if s in gone] + in_batch
        )
        admit = tuple([s for s in queues.waiting if s not in gone][: max(free, 0)])
        rows = len(batch) - len(in_batch) + sum(1 for s in admit if not s.job.prompt)
        texts: list[Text] = [r for r in queues.runs if not r.cancelled and queues.prefilling.get(r) not in gone]
        texts += [s for s in admit if s.job.prompt]
        prefill: tuple[Text, ...] = ()
        if texts and (self.debt <= 0.0 or rows == 0):
            length = self.next_length(texts[0])
            prefill = tuple([t for t in texts if self.next_length(t) == length][: self.max_rows])
            rows += sum(1 for t in prefill if self._completes(t, queues))
        return StepPlan(clock, drop, admit, prefill, rows > 0)

    def apply(self, plan: StepPlan, queues: Queues, batch: Batch, outputs: StepOutputs) -> Applied:
        """Record an executed plan: the advanced texts go to the back of the line, the decode step's
        characters into the batch, due chunks out; done and failed rows leave the batch."""
        for run in [r for r in queues.runs if r.cancelled]:
            queues.runs.remove(run)
        for run in outputs.prefilled:  # round robin
            queues.runs.remove(run)
            if not run.done:
                queues.runs.append(run)
        self.debt += outputs.prefill_s
        if outputs.ids is None:
            if not len(batch):
                self.debt = 0.0  # nothing decodes: nothing to pay back
            return Applied([], [], [])
        assert outputs.logits is not None and outputs.states is not None
        batch.logits, batch.states = outputs.logits, outputs.states
        done = batch.record(outputs.ids)
        woken = batch.flush(done, plan.now)
        self.debt = max(0.0, self.debt - outputs.decode_s * self.payback)
        failures = batch.take_failures()
        leaving = done.copy()
        finished = [batch.rows[i].stream for i in np.flatnonzero(done).tolist() if i not in failures]
        failed = [(batch.rows[i].stream, phase, exc) for i, (phase, exc) in failures.items()]
        if failures:
            leaving[list(failures)] = True
        if leaving.any():
            batch.filter(~leaving)
        return Applied(woken, finished, failed)


def least_loaded(loads: list[int]) -> int:
    """The index of the smallest load (the first of equals): where the next stream or text goes."""
    return min(range(len(loads)), key=loads.__getitem__)
