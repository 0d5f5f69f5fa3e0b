"""Front and engine exchange batched messages: one message per event-loop turn towards an engine, one per
iteration that flushed something (or a heartbeat) back, so per-step happenings never cost a message each.
Frames arrive whole however the socket splits them, and an error that cannot cross still says what it was."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

from charrnn.artifact import load_manifest
from charrnn.vocab import Vocabulary
from service.config import SchedulingOptions
from service.context import Context
from service.engine_loop import Channel
from service.engines import EngineHandle
from service.sampling import SamplingParams
from service.scheduler import Scheduler
from service.stream import FlushPolicy, Job
from service.wire import EngineSpec, Inputs, Outputs, frame, portable
from tests.service.outcomes import read

FLUSH_MS = 100.0
MAX_CHUNK_CHARS = FlushPolicy().max_chunk_chars
HEARTBEAT_S = 0.1  # the engine's heartbeat while busy (min(0.1, stall / 8) with the default stall)


def test_a_frame_split_over_many_reads_arrives_whole() -> None:
    front, engine = socket.socketpair()
    message = Inputs(cancels=list(range(5000)))  # tens of kilobytes: many reads
    data = frame(message) + frame(Inputs(cancels=[7]))

    def trickle() -> None:
        for i in range(0, len(data), 997):
            front.sendall(data[i : i + 997])
            time.sleep(0.0005)

    writer = threading.Thread(target=trickle)
    writer.start()
    channel, got = Channel(engine), []
    deadline = time.monotonic() + 10
    while len(got) < 2 and time.monotonic() < deadline:
        channel.wait(0.1)
        got += channel.receive()
    writer.join()
    front.close()
    engine.close()
    assert [m.cancels for m in got] == [list(range(5000)), [7]]  # type: ignore[attr-defined]


class Unpicklable(Exception):
    def __reduce__(self) -> object:
        raise TypeError("not across processes")


def test_an_error_that_cannot_cross_becomes_one_that_names_it() -> None:
    crossed = portable(Unpicklable("bad row"))
    assert isinstance(crossed, RuntimeError) and str(crossed) == "Unpicklable: bad row"
    fine = ValueError("x")
    assert portable(fine) is fine


def spec(model_dir: Path) -> EngineSpec:
    return EngineSpec(model_dir, load_manifest(model_dir).onnx.sha256, flush_policy=FlushPolicy(FLUSH_MS))


def job(model_dir: Path, seed: int, max_chars: int) -> Job:
    ids = tuple(Vocabulary.from_spec(load_manifest(model_dir).vocabulary).encode("def ").tolist())
    return Job(Context(), ids, max_chars, SamplingParams(1.0), seed=seed)


def test_one_message_per_event_loop_turn_to_an_engine(lstm_dir: Path) -> None:
    async def main() -> list[int]:
        sched = Scheduler(spec(lstm_dir), 1)
        await sched.start()
        engine = sched._engines[0]
        assert engine is not None
        frames: list[int] = []
        real = engine.writer.write

        def write(data: bytes) -> None:
            frames.append(len(data))
            real(data)

        engine.writer.write = write  # type: ignore[method-assign]
        try:
            streams = [sched.submit(job(lstm_dir, seed, 100_000)) for seed in range(20)]
            await asyncio.sleep(0.05)
            sent_for_submits = len(frames)
            for stream in streams:
                stream.cancel()
            results = await asyncio.gather(*(read(s) for s in streams))
        finally:
            await sched.close()
        assert all(error is None for _, error in results)
        return [sent_for_submits, len(frames)]

    assert asyncio.run(main()) == [1, 2], "20 submissions in one turn: one message; 20 cancels in one turn: one more"


def test_steps_ride_along_instead_of_costing_a_message_each(lstm_dir: Path) -> None:
    """One stream of 3,000 characters: thousands of decode steps, and messages only for flushes (one per flush
    interval or full chunk, the first character and the end) and heartbeats (one per HEARTBEAT_S at most)."""

    async def main() -> tuple[int, int, float]:
        sched = Scheduler(spec(lstm_dir), 1)
        await sched.start()
        messages, steps = [0], [0]
        real = sched._apply

        def apply(engine: EngineHandle, out: Outputs) -> None:
            messages[0] += 1
            steps[0] += sum(1 for name, _ in out.events if name == "on_step")
            real(engine, out)

        sched._apply = apply  # type: ignore[method-assign]
        try:
            started = time.monotonic()
            text, error = await read(sched.submit(job(lstm_dir, 1, 3000)))
            elapsed = time.monotonic() - started
        finally:
            await sched.close()
        assert error is None and len(text) == 3000
        return messages[0], steps[0], elapsed

    messages, steps, elapsed = asyncio.run(main())
    intervals = elapsed / (FLUSH_MS / 1000) + 1
    flushes = intervals + 3000 / MAX_CHUNK_CHARS + 2  # by time, by size, the first character and the end
    heartbeats = elapsed / HEARTBEAT_S + 1
    assert steps >= 3000, steps
    assert messages <= flushes + heartbeats, (messages, steps, elapsed)
    assert messages < steps / 10, "a message per step would be thousands"


def test_the_steps_reported_match_the_characters(lstm_dir: Path) -> None:
    """What rides along is complete: every decode step an engine ran reaches the front's metrics."""

    async def main() -> int:
        sched = Scheduler(spec(lstm_dir), 2)
        await sched.start()
        rows = [0]
        real = sched._apply

        def apply(engine: EngineHandle, out: Outputs) -> None:
            rows[0] += sum(int(args[0]) for name, args in out.events if name == "on_step")  # type: ignore[call-overload]
            real(engine, out)

        sched._apply = apply  # type: ignore[method-assign]
        try:
            results = await asyncio.gather(*(read(sched.submit(job(lstm_dir, s, 500 + s))) for s in range(6)))
        finally:
            await sched.close()
        assert all(error is None for _, error in results)
        return rows[0]

    # Each row takes one step per character (sampled, then run through the model with the others).
    assert asyncio.run(main()) == sum(500 + s for s in range(6))


def test_engine_processes_run_nicer_than_the_front(lstm_dir: Path) -> None:
    """The front's I/O must not queue behind model steps: its engines yield to it (engine_niceness)."""

    async def main() -> list[int]:
        options = SchedulingOptions(engine_niceness=5)
        sched = Scheduler(replace(spec(lstm_dir), scheduling=options), 2)
        await sched.start()
        try:
            return [os.getpriority(os.PRIO_PROCESS, pid) for pid in sched.pids()]
        finally:
            await sched.close()

    front = os.getpriority(os.PRIO_PROCESS, 0)
    assert asyncio.run(main()) == [min(19, front + 5)] * 2
