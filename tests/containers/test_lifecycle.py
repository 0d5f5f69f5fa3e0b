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
from grpc_health.v1 import health_pb2, health_pb2_grpc

from charrnn.client import Client, FailoverClient, GenerationResult
from charrnn.client.balancing import Balancing
from charrnn.v1 import charrnn_pb2 as pb
from charrnn.v1 import charrnn_pb2_grpc as pb_grpc
from tests.containers.engine import DOCKER_CLI, Engine
from tests.containers.running import Container

pytestmark = [pytest.mark.containers, pytest.mark.timeout(900)]

PROMPT = "def main(argv):\n"
STREAMS = 4
# Long enough to be live when the stop or the kill arrives (about 2 s for one stream on one CPU), short
# enough for the grace; the largest a request may ask for by default.
LONG_CHARS = 20000
CHECKPOINT_EVERY = 64


def _stream(target: str, seed: int, first: threading.Event) -> tuple[str, GenerationResult | None]:
    with Client(target, timeout=120) as client:
        gen = client.generate(PROMPT, max_chars=LONG_CHARS, temperature=0.9, seed=seed)
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
        # While it drains, seen on a plain channel (the project's client would stop sending to a replica that
        # reports NOT_SERVING): health is NOT_SERVING, and the server refuses a new stream with UNAVAILABLE and
        # a retry hint (a refusal, not a connection failure).
        with grpc.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 10
            status = health_pb2.HealthCheckResponse.SERVING
            while status != health_pb2.HealthCheckResponse.NOT_SERVING and time.monotonic() < deadline:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                time.sleep(0.05)
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as refused:
                list(pb_grpc.CharRNNStub(channel).Generate(pb.GenerateRequest(prompt=PROMPT, max_chars=10), timeout=10))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "grpc-retry-pushback-ms" in dict(refused.value.trailing_metadata() or ())
        results = [f.result(timeout=120) for f in futures]
    assert stop.wait(timeout=server.run.stop_timeout + 30) == 0, stop.stderr
    stopped_after = time.monotonic() - begin
    for text, result in results:
        assert result is not None and result.finish_reason == "length" and len(text) == LONG_CHARS
    state = server.state
    assert state["ExitCode"] == 0 and not state["OOMKilled"], state  # exited by itself, not by SIGKILL (137)
    assert stopped_after < grace, f"the drain took {stopped_after:.1f} s, over the {grace:.0f} s grace"
    assert f"draining: {STREAMS} live" in server.logs()


def test_kill_9_mid_stream_continues_on_a_second_container(engine: Engine, launch: Callable[[str], Container]) -> None:
    a, b = launch("charrnn-replica-a"), launch("charrnn-replica-b")
    a.wait_healthy()
    b.wait_healthy()
    n = LONG_CHARS
    with Client(b.target, timeout=120) as direct:
        expected = direct.generate(PROMPT, max_chars=n, temperature=0.9, seed=11).text()
    # pick_first: the stream starts on the first address, the container this test kills.
    with FailoverClient([a.target, b.target], timeout=120, balancing=Balancing(lb_policy="pick_first")) as client:
        gen = client.generate(PROMPT, max_chars=n, temperature=0.9, seed=11, checkpoint_every_chars=CHECKPOINT_EVERY)
        parts = [next(gen)]
        while len("".join(parts)) <= 2 * CHECKPOINT_EVERY:  # past a mid-stream resume point
            parts.append(next(gen))
        engine.docker("kill", "--signal", "KILL", a.name)
        parts.extend(gen)
    assert a.state["ExitCode"] == 137 and b.state["Running"]
    assert gen.failovers == 1 and len(expected) == n, "the stream did not move to the second container"
    assert gen.resumed_at[0] >= CHECKPOINT_EVERY, gen.resumed_at
    assert "".join(parts) == expected, "characters were lost or repeated across the failover"
    assert gen.result is not None and gen.result.generated_chars == n
