"""A decode worker that dies (its loop raises) or wedges (work and no iteration for --engine-stall-seconds) is
noticed: its streams end UNAVAILABLE with the retry hint at once, the other worker's streams go on untouched
(their text as alone), health goes NOT_SERVING until a new worker runs, and the restart is counted."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from charrnn.client import CharRNNError, Client
from charrnn.engine import Engine
from charrnn.vocab import Vocabulary
from service.config import Limits, SchedulingOptions
from service.context import Context
from service.errors import EngineFailed
from service.metrics import Metrics
from service.sampling import SamplingParams
from service.scheduler import Scheduler
from service.stream import FlushPolicy, Job
from tests.service.harness import ServerThread, make_config, wait_until
from tests.service.outcomes import Outcome, read

# Long enough that a loaded machine never starves the healthy worker this long (seen: half a second under a
# load of 15 on two cores), short enough to keep the test quick.
STALL_S = 3.0
PUSHBACK_MS = 321
# Far beyond the stall and the watchdog's tick: what it bounds is a stream that never ends.
DEADLINE_S = 20.0


@pytest.fixture(scope="module")
def engine(lstm_dir: Path) -> Engine:
    return Engine(lstm_dir)


def job(engine: Engine, seed: int, max_chars: int = 400) -> Job:
    ids = tuple(Vocabulary.from_spec(engine.manifest.vocabulary).encode("def ").tolist())
    return Job(Context(), ids, max_chars, SamplingParams(1.0), seed=seed)


def run(engine: Engine, jobs: list[Job], health: list[bool], metrics: Metrics | None = None) -> list[Outcome]:
    """Streams placed alternately on two workers (least loaded: 0, 1, 0, 1), read to their ends; then one
    more stream after the failure, which must run on the replaced worker's successor."""

    async def main() -> list[Outcome]:
        options = SchedulingOptions(decode_workers=2, engine_stall_seconds=STALL_S)
        limits = Limits(retry_pushback_ms=PUSHBACK_MS)
        observer = metrics.model("tiny") if metrics is not None else None
        sched = Scheduler(engine, limits, FlushPolicy(flush_interval_ms=5.0), options, observer)
        sched.on_health = health.append
        streams = [sched.submit(j) for j in jobs]
        sched.start()
        try:
            outcomes = await asyncio.wait_for(asyncio.gather(*(read(s) for s in streams)), DEADLINE_S)
            await asyncio.wait_for(_until(lambda: health == [False, True]), DEADLINE_S)
            after = await asyncio.wait_for(read(sched.submit(jobs[0])), DEADLINE_S)
            return [*outcomes, after]
        finally:
            await sched.close()

    return asyncio.run(main())


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


def alone(engine: Engine, j: Job) -> str:
    async def main() -> str:
        sched = Scheduler(engine, Limits(), FlushPolicy(), SchedulingOptions(decode_workers=1))
        sched.start()
        try:
            text, error = await read(sched.submit(j))
        finally:
            await sched.close()
        assert error is None
        return text

    return asyncio.run(main())


def check(engine: Engine, outcomes: list[Outcome], jobs: list[Job], metrics: Metrics, reason: str) -> None:
    *streams, after = outcomes
    for text, error in (streams[0], streams[2]):  # worker 0's
        assert isinstance(error, EngineFailed), (text, error)
        assert error.retry_pushback_ms == PUSHBACK_MS
    assert [streams[1], streams[3]] == [(alone(engine, jobs[1]), None), (alone(engine, jobs[3]), None)]
    assert after == (alone(engine, jobs[0]), None), "the new worker serves"
    assert metrics.registry.get_sample_value("charrnn_engine_restarts_total", {"model": "tiny", "reason": reason}) == 1


def test_a_wedged_worker_is_given_up_on_and_replaced(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker 0's model call blocks (until the test ends): after the stall its streams fail, a new worker runs."""
    real = engine.run
    release = threading.Event()
    calls = [0]

    def model(tokens: np.ndarray, states: Any) -> Any:
        if threading.current_thread().name == "decode-0" and tokens.shape[1] == 1:
            calls[0] += 1
            if calls[0] == 20:  # mid-stream: some text has gone out
                release.wait(60)
        return real(tokens, states)

    monkeypatch.setattr(engine, "run", model)
    jobs = [replace(job(engine, seed), max_chars=400 if seed % 2 else 5000) for seed in (1, 2, 3, 4)]
    metrics, health = Metrics(), list[bool]()
    try:
        outcomes = run(engine, jobs, health, metrics)
    finally:
        release.set()
    monkeypatch.setattr(engine, "run", real)
    check(engine, outcomes, jobs, metrics, "wedged")


def test_a_worker_whose_loop_raises_dies_and_is_replaced(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug outside any one row's work (here: planning) ends worker 0; its streams fail UNAVAILABLE."""
    from service import core

    real = core.EngineCore.begin
    calls = [0]

    def begin(self: core.EngineCore, now: float, free: int) -> Any:
        if threading.current_thread().name == "decode-0":
            calls[0] += 1
            if calls[0] == 20:
                raise RuntimeError("injected: a bug in the loop")
        return real(self, now, free)

    monkeypatch.setattr(core.EngineCore, "begin", begin)
    jobs = [job(engine, seed) for seed in (1, 2, 3, 4)]
    metrics, health = Metrics(), list[bool]()
    outcomes = run(engine, jobs, health, metrics)
    check(engine, outcomes, jobs, metrics, "died")


def test_a_wedged_worker_reads_unavailable_with_the_retry_hint_and_health_recovers(
    lstm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(lstm_dir, decode_workers=1, engine_stall_seconds=STALL_S, retry_pushback_ms=PUSHBACK_MS)
    with ServerThread(config) as srv, Client(srv.target, timeout=30) as c:
        assert srv.server is not None
        engine = srv.server.scheduler.engine
        real = engine.run
        release = threading.Event()

        def model(tokens: np.ndarray, states: Any) -> Any:
            if tokens.shape[1] == 1 and not release.is_set():
                release.wait(60)
            return real(tokens, states)

        monkeypatch.setattr(engine, "run", model)
        try:
            with pytest.raises(CharRNNError) as err:
                c.generate("def ", max_chars=50, seed=1).text()
        finally:
            release.set()
        assert err.value.code == grpc.StatusCode.UNAVAILABLE and err.value.retry_pushback_ms == PUSHBACK_MS
        assert wait_until(lambda: c.health() == "SERVING", 10)
        assert len(c.generate("def ", max_chars=50, seed=1).text()) == 50
