"""The scheduling policy on its own (service/policy.py) and an engine's loop over a fake model (service/core.py):
cancellation before admission, the prefill share and round robin between texts, stop strings across chunk
boundaries, balance between workers, and a batch whose columns are not reallocated as rows come and go."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from charrnn.artifact import load_manifest
from service.batch import Batch
from service.config import Limits, SchedulingOptions
from service.context import Context
from service.core import EngineCore
from service.feed import TextRun
from service.policy import Policy, Queues, StepOutputs, least_loaded
from service.sampling import SamplingParams
from service.scheduler import Scheduler
from service.stream import Chunk, FinishReason, FlushPolicy, Job, Stream
from service.wire import EngineSpec

CHARS = "abcdxyz_"
LAYERS, HIDDEN = 1, 2


class FakeModel:
    """An engine stand-in whose greedy text is scripted: a row's state counts the characters it has read, and
    its logits put all the weight on `script[count]` (a prompt counts too), so temperature 0 writes the script."""

    layers, hidden, num_states, vocab_size, sha256 = LAYERS, HIDDEN, 1, len(CHARS), "fake"
    manifest = SimpleNamespace(vocabulary=SimpleNamespace(chars=CHARS))

    def __init__(self, script: str):
        self.script = [CHARS.index(c) for c in script]
        self.calls: list[tuple[int, int]] = []  # (rows, time) of every call

    def run(self, tokens: np.ndarray, states: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        rows, steps = tokens.shape
        self.calls.append((rows, steps))
        read = states[0][0, :, 0].astype(int)  # characters each row has read so far
        logits = np.full((rows, steps, len(CHARS)), -30.0, np.float32)
        for t in range(steps):
            for r in range(rows):
                logits[r, t, self.script[min(read[r] + t + 1, len(self.script) - 1)]] = 30.0
        new = np.zeros((LAYERS, rows, HIDDEN), np.float32)
        new[0, :, 0] = read + steps
        return logits, (new,)


def core(model: FakeModel, flush: FlushPolicy | None = None, **options: Any) -> EngineCore:
    limits = Limits(max_live_streams=1000)
    return EngineCore(model, limits, flush or FlushPolicy(), SchedulingOptions(**options))  # type: ignore[arg-type]


def stream(prompt: str = "ab", max_chars: int = 20, stops: tuple[str, ...] = ()) -> Stream:
    ids = tuple(CHARS.index(c) for c in prompt)
    return Stream(Job(Context(), ids, max_chars, SamplingParams(0.0), stops, seed=1), lambda s: None)


def iterate(engine: EngineCore, times: int, free: int = 64) -> bool:
    """Up to `times` iterations (the clock one second apart); True once one had nothing to do."""
    for i in range(times):
        plan = engine.begin(float(i), free)
        engine.finish(plan)
        if not (plan.drop or plan.admit or plan.prefill or plan.decode):
            return True
    return False


def run_to_end(engine: EngineCore, free: int = 64) -> None:
    assert iterate(engine, 1000, free), "the engine never went idle"


def chunks(s: Stream) -> list[Chunk]:
    return list(s._outbox)


def text(s: Stream) -> str:
    return "".join(c.text for c in chunks(s))


# --- admission and cancellation --------------------------------------------------------------------------
def test_a_stream_cancelled_before_admission_never_runs() -> None:
    model = FakeModel("abcd" * 10)
    engine = core(model)
    kept, gone = stream(), stream()
    engine.queues.waiting.extend([kept, gone])
    engine.queues.cancelled.add(gone)
    plan = engine.policy.plan(engine.queues, engine.batch, 0.0, 64)
    assert plan.drop == (gone,) and plan.admit == (kept,)
    assert [t is kept for t in plan.prefill] == [True], "only the kept stream's prompt is prefilled"
    run_to_end(engine)
    [end] = chunks(gone)
    assert end.finished is not None and end.finished.reason is FinishReason.CANCELLED
    assert end.finished.generated_chars == 0 and end.text == ""
    assert all(rows == 1 for rows, _ in model.calls), "no model call ever carried the cancelled stream"
    assert text(kept) == "cdabcdabcdabcdabcdab"


def test_admission_takes_only_the_free_slots_in_order() -> None:
    engine = core(FakeModel("abcd"))
    waiting = [stream() for _ in range(3)]
    engine.queues.waiting.extend(waiting)
    plan = engine.policy.plan(engine.queues, engine.batch, 0.0, 2)
    assert plan.admit == tuple(waiting[:2])
    assert engine.policy.plan(engine.queues, engine.batch, 0.0, 0).admit == ()


# --- prefill: round robin and the share ------------------------------------------------------------------
def fake_run(length: int) -> TextRun:
    return TextRun(np.zeros(length, np.int64), Context(), FakeModel("a"))  # type: ignore[arg-type]


def test_texts_take_turns_and_equal_chunks_go_together() -> None:
    policy = Policy(SchedulingOptions(prefill_chunk_chars=4, max_prefill_rows=8))
    queues = Queues()
    long_a, short, long_b = fake_run(10), fake_run(3), fake_run(9)
    queues.runs.extend([long_a, short, long_b])
    batch = core(FakeModel("a")).batch
    groups = []
    for _ in range(4):
        plan = policy.plan(queues, batch, 0.0, 0)
        groups.append(plan.prefill)
        for run in plan.prefill:
            assert isinstance(run, TextRun)
            run.pos += run.next_length(4)
        policy.apply(plan, queues, batch, StepOutputs(tuple(plan.prefill)))  # type: ignore[arg-type]
    # chunks of 4 for both long texts go together; the short text's turn comes next, then what is left
    assert groups == [(long_a, long_b), (short,), (long_a, long_b), (long_a,)]
    assert list(queues.runs) == [long_b]


@pytest.mark.parametrize("share", [0.2, 0.5, 0.8])
def test_while_rows_decode_prefill_takes_at_most_its_share(share: float) -> None:
    """Prefill chunks cost 3 s, decode steps 1 s (the policy reads what the executor measured): over many
    iterations the prefill time stays within `prefill_share` of the total, one chunk at most beyond it."""
    engine = core(FakeModel("abcd" * 1000), prefill_share=share, prefill_chunk_chars=1)
    engine.queues.waiting.append(stream(max_chars=10_000))
    iterate(engine, 3)  # the stream decodes now
    policy, queues, batch = engine.policy, engine.queues, engine.batch
    assert len(batch) == 1
    text_run = fake_run(1_000_000)
    queues.runs.append(text_run)
    prefill_s = decode_s = 0.0
    step = {"ids": np.zeros(1, np.int64), "logits": batch.logits, "states": batch.states, "decode_s": 1.0}
    for _ in range(2000):
        plan = policy.plan(queues, batch, 0.0, 0)
        assert plan.decode
        outputs = StepOutputs(**step)
        if plan.prefill:
            text_run.pos += 1
            outputs = StepOutputs((text_run,), 3.0, **step)
        policy.apply(plan, queues, batch, outputs)
        prefill_s += outputs.prefill_s
        decode_s += outputs.decode_s
    assert prefill_s / (prefill_s + decode_s) <= share + 3.0 / (prefill_s + decode_s)
    assert prefill_s / (prefill_s + decode_s) >= share * 0.9, "and prefill is not starved"


def test_without_rows_to_decode_prefill_runs_every_iteration() -> None:
    policy = Policy(SchedulingOptions(prefill_chunk_chars=1))
    queues = Queues()
    queues.runs.append(fake_run(5))
    policy.debt = 100.0
    batch = core(FakeModel("a")).batch
    assert policy.plan(queues, batch, 0.0, 0).prefill, "nothing decodes: prefill does not wait"


# --- stop strings across chunk boundaries ------------------------------------------------------------------
@pytest.mark.parametrize("max_chunk", [1, 2, 3, 5, 64])
def test_a_stop_string_split_across_chunks_never_leaks_and_a_false_start_is_sent(max_chunk: int) -> None:
    """Every step may flush (interval 0); "xyz" stops. The false start "xy" (then "a") goes out whole and in
    order; nothing of the real "xyz" does, nor anything after it."""
    script = "ab" + "cdxyabxyz" + "cdcdcd"  # the prompt is "ab": generation starts at "c"
    engine = core(FakeModel(script), FlushPolicy(flush_interval_ms=0.0, max_chunk_chars=max_chunk))
    s = stream(stops=("xyz",), max_chars=50)
    engine.queues.waiting.append(s)
    run_to_end(engine)
    out = chunks(s)
    assert text(s) == "cdxyab"
    finished = out[-1].finished
    assert finished is not None and finished.reason is FinishReason.STOP and finished.stop == "xyz"
    assert not any(c.text.endswith(("x", "xy")) for c in out), "a possible stop's start is held back"


# --- balance between workers ---------------------------------------------------------------------------------
def test_least_loaded_picks_the_first_smallest() -> None:
    assert least_loaded([3, 1, 1]) == 1
    assert least_loaded([0]) == 0


def test_a_burst_of_scores_spreads_over_the_engines(lstm_dir: Path) -> None:
    """Eight texts handed in at once (in one event-loop turn, before any engine has answered) land four and four."""

    async def main() -> list[int]:
        spec = EngineSpec(lstm_dir, load_manifest(lstm_dir).onnx.sha256)
        sched = Scheduler(spec, 2)
        await sched.start()
        try:
            feeds = [asyncio.ensure_future(sched.feed(Context(), np.ones(2000, np.int64))) for _ in range(8)]
            await asyncio.sleep(0)  # every feed has handed its text in
            placed = [len(e.feeds) for e in sched._engines if e is not None]
            for f in feeds:
                f.cancel()
            await asyncio.gather(*feeds, return_exceptions=True)
        finally:
            await sched.close()
        return placed

    assert asyncio.run(main()) == [4, 4]


# --- a batch that does not reallocate --------------------------------------------------------------------------
def test_rows_joining_and_leaving_reuse_the_columns() -> None:
    engine = core(FakeModel("abcd" * 100))
    batch: Batch = engine.batch
    storage = [id(a) for a in batch._storage.arrays()]
    streams = [stream(max_chars=5 + i) for i in range(6)]
    engine.queues.waiting.extend(streams)
    run_to_end(engine)
    assert [id(a) for a in batch._storage.arrays()] == storage, "no column was reallocated"
    assert [len(text(s)) for s in streams] == [5 + i for i in range(6)]
    assert len(batch) == 0 and batch.columns.temperature.base is batch._storage.temperature


def test_the_columns_grow_only_when_rows_outgrow_them() -> None:
    engine = core(FakeModel("abcd" * 100))
    batch = engine.batch
    first = batch.capacity
    engine.queues.waiting.extend(stream(max_chars=3) for _ in range(first + 1))
    run_to_end(engine, free=first + 1)
    assert batch.capacity == 2 * first
    assert batch._storage.pending.shape == (2 * first, batch.width)
