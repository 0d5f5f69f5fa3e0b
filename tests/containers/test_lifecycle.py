"""Stopping and losing server containers run like pods of the Deployment: `docker stop` (SIGTERM, then
SIGKILL after terminationGracePeriodSeconds) lets live streams finish, and `kill -9` of one container
mid-stream costs a FailoverClient nothing: the stream finishes on a second container, character-exact."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from charrnn.client import CharRNNError, Client, FailoverClient, GenerationResult
from tests.containers.engine import DOCKER_CLI, Engine
from tests.containers.running import Container

pytestmark = [pytest.mark.containers, pytest.mark.timeout(900)]

PROMPT = "def main(argv):\n"
STREAMS = 4
# Long enough to be live when the stop arrives (several seconds on one CPU), short enough for the grace.
DRAIN_CHARS = 20000


def _stream(target: str, seed: int, first: threading.Event) -> tuple[str, GenerationResult | None]:
    with Client(target, timeout=120) as client:
        gen = client.generate(PROMPT, max_chars=DRAIN_CHARS, temperature=0.9, seed=seed)
        text = next(gen)
        first.set()
        text += "".join(gen)
        return text, gen.result


def test_docker_stop_drains_live_streams_within_the_grace(engine: Engine, launch: Callable[[str], Container]) -> None:
    server = launch("charrnn-drain")
    server.wait_healthy()
    grace = float(server.run.env["CHARRNN_GRACE"])
    started = [threading.Event() for _ in range(STREAMS)]
    with ThreadPoolExecutor(STREAMS) as pool:
        futures = [pool.submit(_stream, server.target, seed, started[seed]) for seed in range(STREAMS)]
        assert all(event.wait(60) for event in started), "the streams did not start"
        assert not any(f.done() for f in futures), "a stream finished before the stop: make them longer"
        # docker stop as the kubelet does it: SIGTERM, SIGKILL after terminationGracePeriodSeconds.
        begin = time.monotonic()
        stop = subprocess.Popen(
            [DOCKER_CLI, "stop", "--time", str(server.run.stop_timeout), server.name],
            env=engine.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        # While it drains: health is NOT_SERVING and a new stream is refused with UNAVAILABLE.
        with Client(server.target, timeout=10) as late:
            deadline = time.monotonic() + 10
            while late.health() != "NOT_SERVING" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert late.health() == "NOT_SERVING"
            with pytest.raises(CharRNNError) as refused:
                late.generate(PROMPT, max_chars=10).text()
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        results = [f.result(timeout=120) for f in futures]
    assert stop.wait(timeout=server.run.stop_timeout + 30) == 0, stop.stderr
    stopped_after = time.monotonic() - begin
    for text, result in results:
        assert result is not None and result.finish_reason == "length" and len(text) == DRAIN_CHARS
    state = server.state
    assert state["ExitCode"] == 0 and not state["OOMKilled"], state  # exited by itself, not by SIGKILL (137)
    assert stopped_after < grace, f"the drain took {stopped_after:.1f} s, over the {grace:.0f} s grace"
    assert f"draining: {STREAMS} live" in server.logs()


def test_kill_9_mid_stream_continues_on_a_second_container(engine: Engine, launch: Callable[[str], Container]) -> None:
    a, b = launch("charrnn-replica-a"), launch("charrnn-replica-b")
    a.wait_healthy()
    b.wait_healthy()
    n = DRAIN_CHARS
    with Client(b.target, timeout=120) as direct:
        expected = direct.generate(PROMPT, max_chars=n, temperature=0.9, seed=11).text()
    with FailoverClient([a.target, b.target], timeout=120) as client:
        gen = client.generate(PROMPT, max_chars=n, temperature=0.9, seed=11, checkpoint_every_chars=64)
        parts = [next(gen), next(gen)]
        engine.docker("kill", "--signal", "KILL", a.name)
        parts.extend(gen)
    assert a.state["ExitCode"] == 137 and b.state["Running"]
    assert gen.failovers == 1 and len(expected) == n
    assert "".join(parts) == expected, "characters were lost or repeated across the failover"
    assert gen.result is not None and gen.result.generated_chars == n
