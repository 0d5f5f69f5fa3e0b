"""One stream's failure stays its own: a bad row injected past the validator (a Job built directly) fails alone,
promptly, with its status, while seeded neighbours in the same batch of an engine process finish with the text
they have alone. A failed model call fails its batch (and is counted), not the other engine's streams. Faults
injected into the model or the core run their engines as threads of this process, over the same messages."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from charrnn.engine import Engine
from charrnn.vocab import Vocabulary
from service import core as core_module
from service.context import Context
from service.engines import start_process, thread_launcher
from service.errors import InvalidRequest
from service.metrics import Metrics
from service.observer import ROW_PHASES
from service.sampling import SamplingParams
from service.scheduler import Scheduler
from service.stream import FlushPolicy, Job, Stream
from service.wire import EngineSpec
from tests.service.outcomes import Outcome, read

BAD_SEED = 666
# Generous: the whole run takes well under a second; a hung stream is what this bound catches.
DEADLINE_S = 20.0


@pytest.fixture(scope="module")
def engine(lstm_dir: Path) -> Engine:
    return Engine(lstm_dir)


def encode(engine: Engine, text: str) -> tuple[int, ...]:
    return tuple(Vocabulary.from_spec(engine.manifest.vocabulary).encode(text).tolist())


def job(engine: Engine, seed: int, **changes: Any) -> Job:
    """A seeded 300-character generation after a 4-character prompt (temperature 1, top-k 5 to take the
    filtered sampling path)."""
    base = Job(Context(), encode(engine, "def "), 300, SamplingParams(1.0, 5, 1.0), seed=seed)
    return replace(base, **changes)


def run(
    engine: Engine,
    jobs: list[Job],
    workers: int = 1,
    metrics: Metrics | None = None,
    threads: bool = False,
    started: Callable[[], None] = lambda: None,
) -> list[Outcome]:
    """Submit every job in one event-loop turn (one message: they join the same batches), then read each stream
    to its end: (text, the error it failed with or None). A stream that does not end in DEADLINE_S fails the
    test. The engines are processes, or with `threads` threads over `engine` (for a fault injected into it)."""

    async def main() -> list[Outcome]:
        launch = thread_launcher(engine) if threads else start_process
        sched = Scheduler(spec(engine), workers, metrics.model("tiny") if metrics is not None else None, launch)
        await sched.start()
        started()  # the engines have warmed up
        try:
            streams = [sched.submit(j) for j in jobs]
            return await asyncio.wait_for(asyncio.gather(*(read(s) for s in streams)), DEADLINE_S)
        finally:
            await sched.close()

    return asyncio.run(main())


def spec(engine: Engine) -> EngineSpec:
    return EngineSpec(engine.model_dir, engine.sha256, flush_policy=FlushPolicy(flush_interval_ms=5.0))


def alone(engine: Engine, jobs: list[Job]) -> list[str]:
    """Each job's text with nothing beside it: one engine process, one stream at a time."""

    async def main() -> list[str]:
        sched = Scheduler(spec(engine), 1)
        await sched.start()
        try:
            texts = []
            for j in jobs:
                text, error = await asyncio.wait_for(read(sched.submit(j)), DEADLINE_S)
                assert error is None
                texts.append(text)
            return texts
        finally:
            await sched.close()

    return asyncio.run(main())


def failures(metrics: Metrics, name: str, phase: str) -> float:
    value = metrics.registry.get_sample_value(name, {"model": "tiny", "phase": phase})
    assert value is not None
    return value


NEIGHBOURS = (1, 2, 3)


def check_isolated(engine: Engine, bad: Job, phase: str, threads: bool = False) -> BaseException:
    """`bad` between seeded neighbours: they finish as alone, it fails alone (counted under `phase`)."""
    neighbours = [job(engine, seed) for seed in NEIGHBOURS]
    metrics = Metrics()
    outcomes = run(engine, [neighbours[0], bad, *neighbours[1:]], metrics=metrics, threads=threads)
    bad_text, error = outcomes.pop(1)
    assert error is not None, f"the bad row ended without an error (text {bad_text!r})"
    assert [e for _, e in outcomes] == [None] * len(neighbours)
    assert [t for t, _ in outcomes] == alone(engine, neighbours)
    assert failures(metrics, "charrnn_row_failures_total", phase) == 1
    assert failures(metrics, "charrnn_batch_failures_total", "decode") == 0
    return error


def test_a_top_k_beyond_int64_fails_its_stream_alone_with_invalid_argument(engine: Engine) -> None:
    """The known trigger: top_k 2**70 broke the batch's int64 column (every stream INTERNAL, this one hung)."""
    bad = job(engine, 9, sampling=SamplingParams(1.0, 2**70, 1.0))
    error = check_isolated(engine, bad, "join")
    assert isinstance(error, InvalidRequest) and error.param == "top_k", error
    assert "top_k" in str(error)


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"seed": -1}, "seed"),  # a generator seed below uint64
        ({"max_chars": 2**64}, "max_chars"),
        ({"checkpoint_every": 2**63}, "checkpoint_every"),
    ],
)
def test_a_parameter_the_columns_cannot_hold_fails_alone_and_names_itself(
    engine: Engine, changes: dict[str, Any], param: str
) -> None:
    error = check_isolated(engine, replace(job(engine, 9), **changes), "join")
    assert isinstance(error, InvalidRequest) and error.param == param, error


def test_a_context_of_the_wrong_shape_fails_alone_without_a_prompt_too(engine: Engine) -> None:
    """A continuation (no prompt, no prefill) whose state does not fit the model joins straight away."""
    logits = np.zeros(engine.vocab_size, np.float32)
    states = tuple(np.zeros((engine.layers, engine.hidden + 1), np.float32) for _ in range(engine.num_states))
    bad = job(engine, 9, prompt=(), context=Context(states, logits, 9, 0))
    assert isinstance(check_isolated(engine, bad, "join"), InvalidRequest)


def test_a_prompt_outside_the_vocabulary_fails_alone_before_the_prefill_it_would_share(engine: Engine) -> None:
    bad = job(engine, 9, prompt=(1, 2, engine.vocab_size + 5, 3))  # same length as the neighbours' prompts
    assert isinstance(check_isolated(engine, bad, "join"), InvalidRequest)


def test_a_stop_string_that_breaks_matching_fails_its_row_alone(engine: Engine) -> None:
    bad = job(engine, 9, stops=(b"ab",))  # bytes: str.endswith refuses them at every step
    assert isinstance(check_isolated(engine, bad, "record"), TypeError)


def test_a_row_whose_sampling_fails_leaves_and_the_others_are_sampled_alone(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = core_module.sample

    def sample(*args: np.ndarray) -> np.ndarray:
        seeds = args[4]
        if (seeds == BAD_SEED).any():
            raise FloatingPointError("injected: this row's numbers")
        return real(*args)

    monkeypatch.setattr(core_module, "sample", sample)  # in this process: the engines run as threads
    error = check_isolated(engine, job(engine, BAD_SEED), "sample", threads=True)
    assert isinstance(error, FloatingPointError)


def test_a_row_whose_chunk_cannot_be_handed_over_fails_alone(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Stream.put

    def put(self: Stream, chunk: Any) -> None:
        if self.seed == BAD_SEED and threading.current_thread().name.startswith("engine-"):
            raise RuntimeError("injected: this stream's chunk")
        real(self, chunk)

    monkeypatch.setattr(Stream, "put", put)  # the engine's side of the stream, in its thread
    error = check_isolated(engine, job(engine, BAD_SEED), "flush", threads=True)
    assert isinstance(error, RuntimeError)


def test_a_failed_model_call_fails_its_batch_counted_and_the_other_worker_goes_on(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker 0's decode call fails once: its streams end promptly with the error, worker 1's finish as alone."""
    real = engine.run
    armed, failed = threading.Event(), threading.Event()

    def model(tokens: np.ndarray, states: Any) -> Any:
        engine_0 = threading.current_thread().name == "engine-0"
        if armed.is_set() and tokens.shape[1] == 1 and engine_0 and not failed.is_set():
            failed.set()
            raise RuntimeError("injected: the model call")
        return real(tokens, states)

    monkeypatch.setattr(engine, "run", model)
    jobs = [job(engine, seed) for seed in (1, 2, 3, 4)]  # least-loaded placement: 1, 3 on engine 0; 2, 4 on 1
    metrics = Metrics()
    outcomes = run(engine, jobs, workers=2, metrics=metrics, threads=True, started=armed.set)
    monkeypatch.setattr(engine, "run", real)
    errors = [e for _, e in outcomes]
    assert [type(e) for e in errors] == [RuntimeError, type(None), RuntimeError, type(None)], errors
    assert [outcomes[1][0], outcomes[3][0]] == alone(engine, [jobs[1], jobs[3]])
    assert failures(metrics, "charrnn_batch_failures_total", "decode") == 1
    assert all(failures(metrics, "charrnn_row_failures_total", p) == 0 for p in ROW_PHASES)
    assert run(engine, [jobs[0]], threads=True) == [(alone(engine, [jobs[0]])[0], None)], "the engine serves on"
