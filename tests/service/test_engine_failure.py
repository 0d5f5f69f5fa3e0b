"""An engine process that dies (kill -9) or wedges (SIGSTOP: work, and no message for --engine-stall-seconds) is
noticed: its streams end UNAVAILABLE with the retry hint at once, the other engine's streams go on untouched
(their text as alone), health goes NOT_SERVING until a new engine runs, the restart is counted, and a client
with checkpoints continues exactly. Killing the front leaves no engine behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from bench.proctree import tree
from charrnn.artifact import load_manifest
from charrnn.client import CharRNNError, Client, FailoverClient
from charrnn.vocab import Vocabulary
from service.config import Limits, SchedulingOptions
from service.context import Context
from service.errors import EngineFailed
from service.metrics import Metrics
from service.sampling import SamplingParams
from service.scheduler import Scheduler
from service.stream import FlushPolicy, Job, Stream
from service.wire import EngineSpec
from tests.service.harness import REPO, ServerThread, make_config, wait_until
from tests.service.outcomes import Outcome, read

# Long enough that a loaded machine never starves the healthy engine this long (seen: half a second under a
# load of 15 on two cores), short enough to keep the test quick.
STALL_S = 3.0
PUSHBACK_MS = 321
# Far beyond the stall and the watchdog's tick: what it bounds is a stream that never ends.
DEADLINE_S = 30.0


def job(model_dir: Path, seed: int, max_chars: int) -> Job:
    ids = tuple(Vocabulary.from_spec(load_manifest(model_dir).vocabulary).encode("def ").tolist())
    return Job(Context(), ids, max_chars, SamplingParams(1.0), seed=seed)


def spec(model_dir: Path, **scheduling: float) -> EngineSpec:
    return EngineSpec(
        model_dir,
        load_manifest(model_dir).onnx.sha256,
        limits=Limits(retry_pushback_ms=PUSHBACK_MS),
        flush_policy=FlushPolicy(flush_interval_ms=5.0),
        scheduling=SchedulingOptions(**scheduling),  # type: ignore[arg-type]
    )


def alone(model_dir: Path, j: Job) -> str:
    async def main() -> str:
        sched = Scheduler(spec(model_dir), 1)
        await sched.start()
        try:
            text, error = await read(sched.submit(j))
        finally:
            await sched.close()
        assert error is None
        return text

    return asyncio.run(main())


async def _first_text(stream: Stream) -> str:
    """Read until some text has arrived (the stream is mid-way), without ending it."""
    return (await stream.next_chunk()).text


def run(model_dir: Path, jobs: list[Job], fault: Callable[[int], None], health: list[bool], metrics: Metrics
        ) -> list[Outcome]:  # fmt: skip
    """Streams placed alternately on two engine processes (least loaded: 0, 1, 0, 1); once engine 0's first
    stream has text, `fault(pid of engine 0)`; every stream read to its end, then one more stream, which must
    run after health came back."""

    async def main() -> list[Outcome]:
        sched = Scheduler(spec(model_dir, engine_stall_seconds=STALL_S), 2, metrics.model("tiny"))
        sched.on_health = health.append
        await sched.start()
        try:
            streams = [sched.submit(j) for j in jobs]
            first = await asyncio.wait_for(_first_text(streams[0]), DEADLINE_S)
            fault(sched.pids()[0])
            rest = await asyncio.wait_for(asyncio.gather(*(read(s) for s in streams)), DEADLINE_S)
            outcomes = [(first + rest[0][0], rest[0][1]), *rest[1:]]
            await asyncio.wait_for(_until(lambda: health == [False, True]), DEADLINE_S)
            after = await asyncio.wait_for(read(sched.submit(jobs[0])), DEADLINE_S)
            return [*outcomes, after]
        finally:
            await sched.close()

    return asyncio.run(main())


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


def check(model_dir: Path, outcomes: list[Outcome], jobs: list[Job], metrics: Metrics, reason: str) -> None:
    *streams, after = outcomes
    for text, error in (streams[0], streams[2]):  # engine 0's
        assert isinstance(error, EngineFailed), (text, error)
        assert error.retry_pushback_ms == PUSHBACK_MS
    assert [streams[1], streams[3]] == [(alone(model_dir, jobs[1]), None), (alone(model_dir, jobs[3]), None)]
    assert after == (alone(model_dir, jobs[0]), None), "the engine's successor serves"
    assert metrics.registry.get_sample_value("charrnn_engine_restarts_total", {"model": "tiny", "reason": reason}) == 1


def jobs_for(model_dir: Path) -> list[Job]:
    """Engine 0's streams are long (they are still running when it fails), engine 1's short."""
    return [job(model_dir, seed, 400 if seed % 2 == 0 else 20000) for seed in (1, 2, 3, 4)]


def test_a_killed_engine_fails_its_streams_alone_and_is_replaced(lstm_dir: Path) -> None:
    jobs = jobs_for(lstm_dir)
    metrics, health = Metrics(), list[bool]()
    outcomes = run(lstm_dir, jobs, lambda pid: os.kill(pid, signal.SIGKILL), health, metrics)
    check(lstm_dir, outcomes, jobs, metrics, "died")


def test_a_stopped_engine_is_wedged_given_up_on_and_replaced(lstm_dir: Path) -> None:
    """SIGSTOP: the process exists and its socket stays open, but it sends nothing: after the stall it is
    killed and replaced, exactly like a dead one."""
    jobs = jobs_for(lstm_dir)
    metrics, health = Metrics(), list[bool]()
    stopped: list[int] = []

    def stop(pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)

    started = time.monotonic()
    try:
        outcomes = run(lstm_dir, jobs, stop, health, metrics)
    finally:
        for pid in stopped:  # it was killed; a continue is harmless if it was already reaped
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    assert time.monotonic() - started >= STALL_S, "it was given up on only after the stall"
    check(lstm_dir, outcomes, jobs, metrics, "wedged")


def test_a_killed_engine_reads_unavailable_health_recovers_and_a_checkpointed_stream_fails_over_exactly(
    lstm_dir: Path,
) -> None:
    config = make_config(lstm_dir, engines=1, retry_pushback_ms=PUSHBACK_MS)
    sampling = {"max_chars": 3000, "seed": 5, "temperature": 1.0}
    with ServerThread(config) as srv, Client(srv.target, timeout=30) as c:
        assert srv.server is not None
        scheduler = srv.server.scheduler
        expected = c.generate("def ", **sampling).text()  # type: ignore[arg-type]

        gen = c.generate("def ", **sampling)  # type: ignore[arg-type]
        next(gen)
        os.kill(scheduler.pids()[0], signal.SIGKILL)
        with pytest.raises(CharRNNError) as err:
            gen.text()
        assert err.value.code == grpc.StatusCode.UNAVAILABLE and err.value.retry_pushback_ms == PUSHBACK_MS
        assert wait_until(lambda: c.health() == "SERVING", 30)

        failover = FailoverClient([srv.target], timeout=30)
        try:
            parts = []
            stream = failover.generate("def ", checkpoint_every_chars=256, **sampling)  # type: ignore[arg-type]
            for i, piece in enumerate(stream):
                parts.append(piece)
                if i == 2:
                    os.kill(scheduler.pids()[0], signal.SIGKILL)
            assert "".join(parts) == expected, "resumed from its checkpoint: the same text as unbroken"
        finally:
            failover.close()
        restarts = {"model": lstm_dir.name, "reason": "died"}
        assert srv.registry.get_sample_value("charrnn_engine_restarts_total", restarts) == 2


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"  # a zombie is dead, waiting for its parent to read it
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and relies on PR_SET_PDEATHSIG")
def test_killing_the_front_leaves_no_engine_behind(lstm_dir: Path, tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    front = subprocess.Popen(
        [sys.executable, "-m", "charrnn.cli", "serve", "--model", str(lstm_dir), "--dev", "--host", "127.0.0.1",
         "--port", "0", "--port-file", str(port_file), "--metrics-port", "-1", "--engines", "2"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert wait_until(port_file.exists, 60), "the server came up"
        engines = tree(front.pid)[1:]
        assert len(engines) == 2, engines
        for pid in engines:  # stopped, they cannot see their sockets close: only the kernel's signal reaches them
            os.kill(pid, signal.SIGSTOP)
    finally:
        front.kill()
        front.wait(10)
    try:
        # SIGKILL from the parent-death signal ends even a stopped process, within milliseconds: generous.
        assert wait_until(lambda: not any(_alive(p) for p in engines), 10), "engines outlived the front"
    finally:
        for pid in engines:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
