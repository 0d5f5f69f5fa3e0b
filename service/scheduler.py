"""Continuous batching on decode worker threads; the event loop only does I/O, admission and cancellation.

A worker owns a `Batch` of live rows and loops where the model runs:

    take new streams (free slots permitting) and text runs → drop cancelled rows →
    one prefill chunk (prompts, Score texts, Session feeds; service/feed.py) →
    one decode step: sample every row, ONE model call for all rows, record, flush due chunks

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

import numpy as np

from charrnn.engine import Engine
from service.batch import Batch, Entry
from service.config import FlushPolicy, Limits, SchedulingOptions
from service.context import Context
from service.errors import LimitExceeded, ShuttingDown
from service.feed import TextRun, next_group, run_chunk
from service.sampling import sample
from service.stream import NO_VALUES, Chunk, Finished, FinishReason, Job, ResumePoint, Stream

log = logging.getLogger(__name__)

# Where one stream can fail by itself (its own parameters, context or text), and what the log says.
_DOING = {"join": "joining", "sample": "sampling", "record": "recording", "flush": "flushing"}
ROW_PHASES = tuple(_DOING)
BATCH_PHASES = ("decode", "prefill")  # model calls: they fail every row in them


class SchedulerObserver:
    """Hooks for metrics (service/metrics.py subclasses this); called from worker threads; defaults do nothing."""

    def on_step(self, batch: int, model_s: float, sampling_s: float) -> None:
        """One decode step advanced `batch` rows."""

    def on_prefill(self, rows: int, chars: int, seconds: float) -> None:
        """One prefill chunk: `rows` texts advanced by `chars` characters in all."""

    def on_finish(self, finished: Finished, seconds: float) -> None:
        """A stream left with this result, `seconds` after submission."""

    def on_reject(self, reason: str) -> None:
        """A stream was refused ("queue_full", "shutting_down")."""

    def on_row_failure(self, phase: str) -> None:
        """One stream failed alone (a ROW_PHASES phase); its neighbours went on."""

    def on_batch_failure(self, phase: str) -> None:
        """A model call failed (a BATCH_PHASES phase): every row in it failed."""


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
        self.vocab = engine.manifest.vocabulary.chars
        self.slots = threading.Lock()  # held while a worker admits streams into free live slots
        self._workers = [_Worker(self, i) for i in range(self.options.decode_workers)]
        self._accepting = True
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- the event loop's side -------------------------------------------------------------------
    @property
    def live(self) -> int:
        return sum(w.live for w in self._workers)

    @property
    def queued(self) -> int:
        return sum(len(w.waiting) for w in self._workers)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for worker in self._workers:
            worker.start()

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
        worker = min(self._workers, key=lambda w: w.live + len(w.waiting))
        stream = Stream(job, worker.cancel)
        worker.waiting.append(stream)
        worker.signal.set()
        return stream

    async def feed(self, context: Context, ids: np.ndarray, logprobs: bool = False) -> TextRun:
        """Run `ids` (non-empty) from `context`, interleaved with decoding; the finished run (its `after()`
        context, and with `logprobs` each character's log-probability)."""
        assert self._loop is not None, "start() the scheduler first"
        run = TextRun(ids, context, self.engine, logprobs)
        future: asyncio.Future[TextRun] = self._loop.create_future()
        run.on_done = lambda r: self._resolve(future, r)
        worker = min(self._workers, key=lambda w: len(w.runs))
        worker.runs_in.append(run)
        worker.signal.set()
        try:
            await future
        except asyncio.CancelledError:
            run.cancelled = True  # the caller went away: the worker drops the run at its next chunk
            raise
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
        for worker in self._workers:
            worker.close(error)
        for worker in self._workers:
            if worker.is_alive():
                await asyncio.to_thread(worker.join, 10.0)


def _wake_all(streams: list[Stream]) -> None:
    for stream in streams:
        stream.wake()


class _Worker(threading.Thread):
    """One decode loop: its own batch, its own waiting streams and text runs, the shared engine."""

    def __init__(self, scheduler: Scheduler, index: int):
        super().__init__(name=f"decode-{index}", daemon=True)
        self.s = scheduler
        engine = scheduler.engine
        self.batch = Batch(
            engine.layers, engine.hidden, engine.num_states, scheduler.vocab, engine.sha256, scheduler.flush,
            scheduler.limits.max_stop_chars,
        )  # fmt: skip
        self.signal = threading.Event()
        self.waiting: deque[Stream] = deque()  # submitted, waiting for a slot
        self.cancelled: deque[Stream] = deque()  # cancelled by their consumers, not yet dropped
        self.runs_in: deque[TextRun] = deque()  # Score texts and Session feeds, handed in
        self.runs: deque[TextRun] = deque()  # text runs in progress (prompts included), round robin
        self.prefilling: dict[TextRun, Stream] = {}  # prompt runs of streams that join once they are done
        self.error: BaseException | None = None  # set by close(): fail everything, then stop
        self._closed = False
        # Prefill time not yet paid back by decoding: while streams decode, prefill runs only when it is
        # paid back, so it takes at most `prefill_share` of the worker's time.
        self._prefill_debt = 0.0
        share = scheduler.options.prefill_share
        self._payback = share / (1.0 - share)

    @property
    def live(self) -> int:
        return len(self.batch) + len(self.prefilling)

    def cancel(self, stream: Stream) -> None:
        """From the event loop: drop `stream` at the next iteration."""
        self.cancelled.append(stream)
        self.signal.set()

    def close(self, error: BaseException) -> None:
        self.error = error
        self._closed = True
        self.signal.set()

    # --- the loop -------------------------------------------------------------------------------------
    def run(self) -> None:
        while not self._closed:
            try:
                self._iterate()
            except Exception as exc:  # a bug: fail the streams in flight rather than hang them
                log.exception("decode worker failed")
                self._fail_all(exc)
        assert self.error is not None
        self._fail_all(self.error)

    def _iterate(self) -> None:
        woken: list[Stream] = []  # every stream this iteration gave a chunk or failed: woken together at its end
        try:
            self._admit(woken)
            self._drop_cancelled(woken)
            if self.runs and (self._prefill_debt <= 0.0 or not len(self.batch)):
                self._prefill(woken)
            if len(self.batch):
                self._decode(woken)
            else:
                self._prefill_debt = 0.0
        finally:
            self.s.wake(woken)
        if not (self.runs or len(self.batch)):
            self._idle()

    def _idle(self) -> None:
        self.signal.clear()
        if self.waiting or self.runs_in or self.cancelled or self._closed:
            return
        self.signal.wait()

    def _admit(self, woken: list[Stream]) -> None:
        """Waiting streams take free slots (their prompts start prefilling); handed-in runs join the runs."""
        while self.runs_in:
            self.runs.append(self.runs_in.popleft())
        if not self.waiting:
            return
        with self.s.slots:  # the live-stream limit is the server's, shared by every worker
            free = self.s.limits.max_live_streams - self.s.live
            joining: list[Stream] = []
            while free > 0 and self.waiting:
                stream = self.waiting.popleft()
                free -= 1
                job = stream.job
                if not job.prompt:
                    joining.append(stream)  # continues its context: no model call needed
                    continue
                try:
                    run = TextRun(job.prompt, job.context, self.s.engine)
                except Exception as exc:  # this stream's prompt or context: it fails alone
                    self._fail_rows([(stream, exc)], woken, "join")
                    continue
                self.prefilling[run] = stream
                self.runs.append(run)
            if joining:
                self._join(joining, [s.job.context for s in joining], woken)

    def _join(self, streams: list[Stream], contexts: list[Context], woken: list[Stream]) -> None:
        """Streams enter the decode batch from these contexts (states after their prompts, next logits); a
        stream that cannot (its own parameters or context) fails alone."""
        entries: list[Entry] = []
        failed: list[tuple[Stream, BaseException]] = []
        for stream, ctx in zip(streams, contexts, strict=True):
            try:
                entries.append(self.batch.prepare(stream, ctx))
            except Exception as exc:
                failed.append((stream, exc))
        self._fail_rows(failed, woken, "join")
        if not entries:
            return
        first = len(self.batch)
        self.batch.concatenate(entries)
        for i, stream in enumerate(e.row.stream for e in entries):
            if stream.job.checkpoint_every:  # a resume point at 0 chars: failover works from the start
                stream.put(Chunk("", None, NO_VALUES, ResumePoint(0, self.batch.context(first + i))))
                woken.append(stream)

    def _drop_cancelled(self, woken: list[Stream]) -> None:
        if not self.cancelled:
            return
        gone = set()
        while self.cancelled:
            gone.add(self.cancelled.popleft())
        for stream in [s for s in self.waiting if s in gone]:
            self.waiting.remove(stream)
            woken.append(self._end_cancelled(stream))
        for run, stream in list(self.prefilling.items()):
            if stream in gone:
                del self.prefilling[run]
                run.cancelled = True
                woken.append(self._end_cancelled(stream))
        keep = np.array([r.stream not in gone for r in self.batch.rows], bool)
        if not keep.all():
            for i in np.flatnonzero(~keep):
                stream = self.batch.cancel(int(i))
                assert stream.finished is not None
                self.s.observer.on_finish(stream.finished, time.monotonic() - stream.submitted)
                woken.append(stream)
            self.batch.filter(keep)

    def _end_cancelled(self, stream: Stream) -> Stream:
        """A stream cancelled before it joined the batch ends where it started."""
        finished = Finished(FinishReason.CANCELLED, stream.job.context, 0, 0, stream.seed)
        stream.put(Chunk("", finished, NO_VALUES))
        self.s.observer.on_finish(finished, time.monotonic() - stream.submitted)
        return stream

    def _prefill(self, woken: list[Stream]) -> None:
        """One model call: the next chunk of the first waiting run and of every run whose chunk matches it."""
        while self.runs and self.runs[0].cancelled:
            self.runs.popleft()
        if not self.runs:
            return
        options = self.s.options
        group = next_group([r for r in self.runs if not r.cancelled], options.prefill_chunk_chars,
                           options.max_prefill_rows)  # fmt: skip
        for run in group:  # round robin: advanced runs go to the back
            self.runs.remove(run)
        t0 = time.perf_counter()
        try:
            chars = run_chunk(self.s.engine, group, options.prefill_chunk_chars)
        except Exception as exc:  # the model call: every run in it fails, nothing else does
            log.exception("a prefill model call failed: %d texts fail", len(group))
            self.s.observer.on_batch_failure("prefill")
            self._fail_runs(group, exc, woken)
            return
        elapsed = time.perf_counter() - t0
        self._prefill_debt += elapsed
        self.s.observer.on_prefill(len(group), chars, elapsed)
        self.runs.extend(run for run in group if not run.done)
        joining = [run for run in group if run.done and run in self.prefilling]
        if joining:
            self._join([self.prefilling.pop(r) for r in joining], [r.after() for r in joining], woken)
        for run in group:
            if run.done and run.on_done is not None:
                run.on_done(run)

    def _fail_runs(self, runs: list[TextRun], error: BaseException, woken: list[Stream]) -> None:
        """These runs end with `error`: a prompt's stream fails, a Score or feed caller gets the error."""
        self._fail_rows([(self.prefilling.pop(r), error) for r in runs if r in self.prefilling], woken)
        for run in runs:
            if run.on_done is not None:
                run.error = error
                run.on_done(run)

    def _decode(self, woken: list[Stream]) -> None:
        """One step for every live row: sample, ONE model call, record, flush; done rows leave.

        A row that fails alone (sampling, recording, flushing) leaves with its error and its neighbours go on;
        a failed model call fails every row of the batch (it is the batch's)."""
        b = self.batch
        t0 = time.perf_counter()
        try:
            ids = sample(b.logits, b.temperature, b.top_k, b.top_p, b.seeds, b.positions)
        except Exception:  # some row's numbers: sample row by row (the same bits: rows are independent)
            ids = self._sample_alone(woken)
            if not len(b):
                return
        t1 = time.perf_counter()
        # Done rows take this step too: their final context is the state after their last character plus
        # the logits for the next one, exactly what a continuation needs.
        try:
            logits, b.states = self.s.engine.run(ids[:, None], b.states)
        except Exception as exc:
            log.exception("a decode model call failed: its %d streams fail", len(b))
            self.s.observer.on_batch_failure("decode")
            streams = [r.stream for r in b.rows]
            b.filter(np.zeros(len(b), bool))
            self._fail_rows([(stream, exc) for stream in streams], woken)
            return
        t2 = time.perf_counter()
        b.logits = logits[:, -1, :]
        done = b.record(ids)
        woken.extend(b.flush(done, time.monotonic()))
        self._prefill_debt = max(0.0, self._prefill_debt - (time.perf_counter() - t0) * self._payback)
        self.s.observer.on_step(len(b), t2 - t1, t1 - t0)
        failures = b.take_failures()
        leaving = done.copy()
        for i in np.flatnonzero(done).tolist():
            stream = b.rows[i].stream
            if i not in failures and stream.finished is not None:
                self.s.observer.on_finish(stream.finished, time.monotonic() - stream.submitted)
        if failures:
            leaving[list(failures)] = True
            for phase in {phase for phase, _ in failures.values()}:
                failed = [(b.rows[i].stream, exc) for i, (p, exc) in failures.items() if p == phase]
                self._fail_rows(failed, woken, phase)
        if leaving.any():
            b.filter(~leaving)

    def _sample_alone(self, woken: list[Stream]) -> np.ndarray:
        """Each row's id sampled on its own; rows that fail alone leave the batch (their ids dropped)."""
        b = self.batch
        ids = np.zeros(len(b), np.int64)
        failed: dict[int, BaseException] = {}
        for i in range(len(b)):
            one = slice(i, i + 1)
            try:
                ids[i] = sample(b.logits[one], b.temperature[one], b.top_k[one], b.top_p[one], b.seeds[one],
                                b.positions[one])[0]  # fmt: skip
            except Exception as exc:
                failed[i] = exc
        if not failed:
            return ids
        keep = np.ones(len(b), bool)
        keep[list(failed)] = False
        self._fail_rows([(b.rows[i].stream, exc) for i, exc in failed.items()], woken, "sample")
        b.filter(keep)
        return ids[keep]

    def _fail_rows(
        self, failed: list[tuple[Stream, BaseException]], woken: list[Stream], alone: str | None = None
    ) -> None:
        """These streams end with their errors now (after the chunks they already have); nothing else does.
        `alone`: the phase in which each failed by itself (counted), else they failed with their model call."""
        for stream, exc in failed:
            if alone is not None:
                log.warning("a stream failed alone while %s: %r", _DOING[alone], exc)
                self.s.observer.on_row_failure(alone)
            stream.fail(exc)
            woken.append(stream)

    def _fail_all(self, error: BaseException) -> None:
        """End every stream this worker holds with `error`, and every text run."""
        streams = [r.stream for r in self.batch.rows] + list(self.prefilling.values()) + list(self.waiting)
        self.batch.filter(np.zeros(len(self.batch), bool))
        self.prefilling.clear()
        self.waiting.clear()
        for stream in streams:
            stream.fail(error)
        for run in [*self.runs, *self.runs_in]:
            if run.on_done is not None:
                run.error = error
                run.on_done(run)
        self.runs.clear()
        self.runs_in.clear()
        self.s.wake(streams)
