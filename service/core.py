"""One engine's loop body, single-threaded: its rows and texts, and an iteration that plans, executes and applies.

`begin` makes the plan (service/policy.py) and carries out its admission (cancelled streams end, waiting
streams take slots); `finish` runs the model calls (one prefill chunk, one decode step) and applies their
outputs. The caller (an engine's loop, service/engine_loop.py) hands streams, cancellations and texts in
between iterations and wakes the streams an iteration gave chunks to.

A failure caused by one row (its parameters, context, text, sampling, stop strings or chunk) fails that
stream alone; a failed model call fails the rows in it. Either way the stream gets its status in the
iteration it failed.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from charrnn.engine import Engine
from service.batch import Batch, Entry
from service.config import Limits, SchedulingOptions
from service.context import Context
from service.feed import TextRun, run_chunk
from service.observer import ROW_PHASES, SchedulerObserver
from service.policy import Policy, Queues, StepOutputs, StepPlan
from service.sampling import sample
from service.stream import NO_VALUES, Checkpoint, Chunk, FlushPolicy, Stream

log = logging.getLogger(__name__)


class EngineCore:
    """One engine's queues, batch and policy, over a model `engine` (an Engine, or a fake in tests)."""

    def __init__(
        self,
        engine: Engine,
        limits: Limits,
        flush: FlushPolicy,
        options: SchedulingOptions,
        observer: SchedulerObserver | None = None,
    ):
        self.engine = engine
        self.batch = Batch(
            engine.layers, engine.hidden, engine.num_states, engine.manifest.vocabulary.chars, engine.sha256, flush,
            limits.max_stop_chars, limits.max_live_streams,
        )  # fmt: skip
        self.queues = Queues()
        self.policy = Policy(options)
        self.observer = observer or SchedulerObserver()
        self.woken: list[Stream] = []  # streams given chunks or failed since the caller last took them

    @property
    def live(self) -> int:
        """Streams holding a slot: rows and prompts being prefilled."""
        return len(self.batch) + len(self.queues.prefilling)

    @property
    def working(self) -> bool:
        """Whether an iteration has anything to do without new input."""
        q = self.queues
        return bool(len(self.batch) or q.runs or q.cancelled or (q.waiting and self.live == 0))

    def take_woken(self) -> list[Stream]:
        woken, self.woken = self.woken, []
        return woken

    # --- an iteration ----------------------------------------------------------------------------
    def begin(self, now: float, free: int) -> StepPlan:
        """Plan the next iteration (with `free` more live slots) and carry out its admission."""
        plan = self.policy.plan(self.queues, self.batch, now, free)
        self._drop(plan.drop)
        self._admit(plan.admit)
        return plan

    def finish(self, plan: StepPlan) -> None:
        """Run the plan's model calls and apply their outputs."""
        prefilled, prefill_s = self._prefill(plan)
        ids = logits = states = None
        decode_s = 0.0
        if plan.decode and len(self.batch):
            t0 = time.perf_counter()
            out = self._decode()
            decode_s = time.perf_counter() - t0
            if out is not None:
                ids, logits, states = out
        applied = self.policy.apply(
            plan, self.queues, self.batch, StepOutputs(prefilled, prefill_s, ids, logits, states, decode_s)
        )
        self.woken += applied.woken
        for stream in applied.finished:
            assert stream.finished is not None
            self.observer.on_finish(stream.finished, time.monotonic() - stream.submitted)
        for stream, phase, exc in applied.failed:
            self._fail(stream, exc, phase)

    def _drop(self, streams: tuple[Stream, ...]) -> None:
        """Cancelled streams end where they are: before joining, where they started; rows, where they stand."""
        q = self.queues
        gone = set(streams)
        q.cancelled.clear()  # the rest had already ended
        if not gone:
            return
        for stream in [s for s in q.waiting if s in gone]:
            q.waiting.remove(stream)
            self._end_cancelled(stream)
        for run, stream in list(q.prefilling.items()):
            if stream in gone:
                del q.prefilling[run]
                run.cancelled = True
                self._end_cancelled(stream)
        keep = np.array([r.stream not in gone for r in self.batch.rows], bool)
        if not keep.all():
            for i in np.flatnonzero(~keep).tolist():
                stream = self.batch.cancel(i)
                assert stream.finished is not None
                self.observer.on_finish(stream.finished, time.monotonic() - stream.submitted)
                self.woken.append(stream)
            self.batch.filter(keep)

    def _end_cancelled(self, stream: Stream) -> None:
        finished = stream.end_cancelled()
        self.observer.on_finish(finished, time.monotonic() - stream.submitted)
        self.woken.append(stream)

    def _admit(self, streams: tuple[Stream, ...]) -> None:
        """Streams take slots: a prompt starts its run; a continuation joins at once (no model call)."""
        q = self.queues
        joining = []
        for stream in streams:
            q.waiting.remove(stream)
            if not stream.job.prompt:
                joining.append(stream)
                continue
            try:
                run = TextRun(stream.job.prompt, stream.job.context, self.engine)
            except Exception as exc:  # this stream's prompt or context: it fails alone
                self._fail(stream, exc, "join")
                continue
            q.prefilling[run] = stream
            q.runs.append(run)
        if joining:
            self._join(joining, [s.job.context for s in joining])

    def _join(self, streams: list[Stream], contexts: list[Context]) -> None:
        """Streams enter the batch from these contexts (states after their prompts, next logits); one that
        cannot (its own parameters or context) fails alone."""
        entries: list[Entry] = []
        for stream, ctx in zip(streams, contexts, strict=True):
            try:
                entries.append(self.batch.prepare(stream, ctx))
            except Exception as exc:
                self._fail(stream, exc, "join")
        if not entries:
            return
        first = len(self.batch)
        self.batch.concatenate(entries)
        for i, stream in enumerate(e.row.stream for e in entries):
            if stream.job.checkpoint_every:  # a resume point at 0 chars: failover works from the start
                stream.put(Chunk("", None, NO_VALUES, Checkpoint(0, self.batch.context(first + i))))
                self.woken.append(stream)

    def _prefill(self, plan: StepPlan) -> tuple[tuple[TextRun, ...], float]:
        """The plan's prefill group through one model call; finished prompts join, finished texts report."""
        q = self.queues
        runs_of = {id(s): r for r, s in q.prefilling.items()}
        group = [t if isinstance(t, TextRun) else runs_of.get(id(t)) for t in plan.prefill]
        runs = tuple(r for r in group if r is not None and not r.cancelled)
        if not runs:
            return (), 0.0
        t0 = time.perf_counter()
        try:
            chars = run_chunk(self.engine, runs, self.policy.chunk_chars)
        except Exception as exc:  # the model call: every run in it fails, nothing else does
            log.exception("a prefill model call failed: %d texts fail", len(runs))
            self.observer.on_batch_failure("prefill")
            for run in runs:
                q.runs.remove(run)
                if run in q.prefilling:
                    self._fail(q.prefilling.pop(run), exc)
                if run.on_done is not None:
                    run.error = exc
                    run.on_done(run)
            return (), 0.0
        elapsed = time.perf_counter() - t0
        self.observer.on_prefill(len(runs), chars, elapsed)
        joining = [run for run in runs if run.done and run in q.prefilling]
        if joining:
            self._join([q.prefilling.pop(r) for r in joining], [r.after() for r in joining])
        for run in runs:
            if run.done and run.on_done is not None:
                run.on_done(run)
        return runs, elapsed

    def _decode(self) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]] | None:
        """Sample every row, then ONE model call; None if it failed (then every row failed with it)."""
        b = self.batch
        t0 = time.perf_counter()
        try:
            c = b.columns
            ids = sample(b.logits, c.temperature, c.top_k, c.top_p, c.seeds, c.positions)
        except Exception:  # some row's numbers: sample row by row (the same bits: rows are independent)
            ids = self._sample_alone()
            if not len(b):
                return None
        t1 = time.perf_counter()
        # Done rows take this step too: their final context is the state after their last character plus
        # the logits for the next one, exactly what a continuation needs.
        try:
            logits, states = self.engine.run(ids[:, None], b.states)
        except Exception as exc:
            log.exception("a decode model call failed: its %d streams fail", len(b))
            self.observer.on_batch_failure("decode")
            streams = [r.stream for r in b.rows]
            b.filter(np.zeros(len(b), bool))
            for stream in streams:
                self._fail(stream, exc)
            return None
        self.observer.on_step(len(b), time.perf_counter() - t1, t1 - t0)
        return ids, logits[:, -1, :], states

    def _sample_alone(self) -> np.ndarray:
        """Each row's id sampled on its own; rows that fail alone leave the batch (their ids dropped)."""
        b, c = self.batch, self.batch.columns
        ids = np.zeros(len(b), np.int64)
        failed: dict[int, BaseException] = {}
        for i in range(len(b)):
            one = slice(i, i + 1)
            try:
                ids[i] = sample(b.logits[one], c.temperature[one], c.top_k[one], c.top_p[one], c.seeds[one],
                                c.positions[one])[0]  # fmt: skip
            except Exception as exc:
                failed[i] = exc
        if not failed:
            return ids
        keep = np.ones(len(b), bool)
        keep[list(failed)] = False
        for i, error in failed.items():
            self._fail(b.rows[i].stream, error, "sample")
        b.filter(keep)
        return ids[keep]

    # --- failures --------------------------------------------------------------------------------
    def _fail(self, stream: Stream, exc: BaseException, alone: str | None = None) -> None:
        """`stream` ends with `exc` now (after the chunks it already has); nothing else does. `alone`: the
        phase in which it failed by itself (counted), else it failed with its model call."""
        if alone is not None:
            log.warning("a stream failed alone while %s: %r", ROW_PHASES[alone], exc)
            self.observer.on_row_failure(alone)
        stream.fail(exc)
        self.woken.append(stream)

    def fail_all(self, error: BaseException) -> None:
        """End every stream and text this engine holds with `error`."""
        q = self.queues
        streams = [r.stream for r in self.batch.rows] + list(q.prefilling.values()) + list(q.waiting)
        self.batch.filter(np.zeros(len(self.batch), bool))
        q.prefilling.clear()
        q.waiting.clear()
        q.cancelled.clear()
        for stream in streams:
            self._fail(stream, error)
        for run in q.runs:
            if run.on_done is not None:
                run.error = error
                run.on_done(run)
        q.runs.clear()
