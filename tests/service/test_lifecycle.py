"""Process lifecycle: health, reflection, warm-up gating, SIGTERM drain, refusal to start, no torch,
and resume across two server processes through the CLI."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from bench.proctree import tree
from charrnn.client import Balancing, CharRNNError, Client, FailoverClient
from charrnn.engine import Engine
from service.engines import thread_launcher
from service.server import CharRNNServer
from tests.service.harness import REPO, ServerProcess, ServerThread, charrnn_cmd, make_config, wait_until

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def test_health_and_reflection(lstm_dir: Path) -> None:
    with ServerThread(make_config(lstm_dir)) as srv, Client(srv.target) as c:
        assert c.health() == "SERVING" and c.health("charrnn.v1.CharRNN") == "SERVING"
        with grpc.insecure_channel(srv.target) as channel:
            db = ProtoReflectionDescriptorDatabase(channel)
            services = set(db.get_services())
            assert {"charrnn.v1.CharRNN", "grpc.health.v1.Health"} <= services
            method = DescriptorPool(db).FindServiceByName("charrnn.v1.CharRNN").FindMethodByName("Generate")
            assert method.output_type.full_name == "charrnn.v1.GenerateResponse"


def test_not_serving_until_warmed_up(lstm_dir: Path) -> None:
    async def scenario() -> list[int]:
        engine = Engine(lstm_dir)  # the engines run as threads over it: its warm-up can be held back
        server = CharRNNServer(make_config(lstm_dir, engines=1), launch=thread_launcher(engine))
        gate = threading.Event()
        real = engine.warm_up
        engine.warm_up = lambda max_batch, steps=3: gate.wait(10) and real(max_batch, steps)  # type: ignore[method-assign]
        starting = asyncio.create_task(server.start())
        while server.port == 0:
            await asyncio.sleep(0.01)
        seen = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="")
            for _ in range(200):
                try:
                    seen.append((await stub.Check(request, timeout=1)).status)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.02)
            gate.set()
            await starting
            seen.append((await stub.Check(request, timeout=1)).status)
        await server.stop(0)
        return seen

    assert asyncio.run(scenario()) == [
        health_pb2.HealthCheckResponse.NOT_SERVING,
        health_pb2.HealthCheckResponse.SERVING,
    ]


def test_sigterm_drains_live_streams_then_exits(lstm_dir: Path, tmp_path: Path) -> None:
    """Live streams run on through the grace period; new ones are refused with UNAVAILABLE and the
    retry hint, and a balanced client, which watches health, sends them to another replica instead."""
    other = ServerProcess(lstm_dir, tmp_path).wait_ready()
    args = ("--grace-seconds", "3", "--max-request-chars", "1000000", "--retry-pushback-ms", "250", "--engines", "2")
    proc = ServerProcess(lstm_dir, tmp_path, *args).wait_ready()
    # pick_first does not watch health: this client still reaches the draining server and sees its answers.
    direct = Balancing(lb_policy="pick_first")
    try:
        with (
            Client(proc.target, timeout=30, balancing=direct) as c,
            Client(proc.target, timeout=30) as balanced,
            FailoverClient([proc.target, other.target], timeout=30) as fc,
        ):
            endless = c.generate("a", max_chars=1_000_000)
            short = c.generate("b", max_chars=4000, seed=1)
            next(endless)
            head = next(short)
            engines = tree(proc.proc.pid)[1:]
            assert len(engines) == 2, "the front runs its two engine processes"
            proc.proc.send_signal(signal.SIGTERM)
            assert wait_until(lambda: _health(c) == "NOT_SERVING", 5)
            assert _health(balanced) == "NOT_SERVING", "a round_robin client still reads the server's own status"
            with pytest.raises(CharRNNError) as err:
                c.generate("c", max_chars=5).text()
            assert err.value.code == grpc.StatusCode.UNAVAILABLE and err.value.retry_pushback_ms == 250
            moved = fc.generate("c", max_chars=50, seed=3)  # the draining replica is out of the rotation
            assert len(moved.text()) == 50 and moved.failovers == 0
            text = head + short.text()  # finishes normally during the grace period
            assert short.result is not None and short.result.finish_reason == "length" and len(text) == 4000
            with pytest.raises(CharRNNError) as err:
                endless.text()  # still running when the grace ran out
            assert err.value.code == grpc.StatusCode.UNAVAILABLE and err.value.retry_pushback_ms == 250
        assert proc.proc.wait(timeout=30) == 0, proc.output()
        assert "draining" in proc.output()
        assert not any(Path(f"/proc/{pid}").exists() for pid in engines), "the front stopped its engines"
    finally:
        proc.stop()
        other.stop()


def _health(c: Client) -> str:
    try:
        return c.health()
    except CharRNNError:
        return "UNREACHABLE"


def _serve_fails(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = charrnn_cmd("serve", "--port", "0", *args)
    result = subprocess.run(cmd, cwd=REPO, env=env or ENV, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    return result


def test_refuses_to_start_on_a_missing_or_corrupt_artifact_or_without_a_key(lstm_dir: Path, tmp_path: Path) -> None:
    missing = _serve_fails(["--model", str(tmp_path / "nope"), "--dev"])
    assert "does not exist" in missing.stderr
    broken = tmp_path / "broken"
    shutil.copytree(lstm_dir, broken)
    with open(broken / "model.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    corrupt = _serve_fails(["--model", str(broken), "--dev"])
    assert "sha256" in corrupt.stderr and "re-export" in corrupt.stderr
    env = {k: v for k, v in ENV.items() if k != "CHARRNN_HMAC_KEY"}
    nokey = _serve_fails(["--model", str(lstm_dir)], env)
    assert "--hmac-key" in nokey.stderr and "CHARRNN_HMAC_KEY" in nokey.stderr


NO_TORCH = """
import asyncio, sys
from pathlib import Path
from charrnn.cli import main
try:
    main(["serve", "--help"])
except SystemExit:
    pass
assert "torch" not in sys.modules, "charrnn serve --help imported torch"
from service.config import ServerConfig
from service.server import CharRNNServer
async def run():
    server = CharRNNServer(ServerConfig(model_dir=Path(sys.argv[1]), port=0, metrics_port=-1, hmac_key="k"))
    await server.start()
    await server.stop(0)
asyncio.run(run())
print("torch" in sys.modules, "grpc" in sys.modules)
"""


def test_serving_never_imports_torch(lstm_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(lstm_dir)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["False", "True"], "torch was imported while serving"
    assert "--hmac-key" in result.stdout  # the help really printed


def test_resume_on_a_second_server_process_through_the_cli(lstm_dir: Path, tmp_path: Path) -> None:
    a = ServerProcess(lstm_dir, tmp_path).wait_ready()
    b = ServerProcess(lstm_dir, tmp_path, env={"CHARRNN_MAX_LIVE_STREAMS": "8"}).wait_ready()
    try:

        def generate(*args: str) -> str:
            out = subprocess.run(
                charrnn_cmd("generate", *args), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60
            )
            assert out.returncode == 0, out.stderr
            return out.stdout

        sampling = ["--temperature", "0.8", "--top-k", "40"]
        full = generate("import sys\n", "--target", a.target, "--max-chars", "240", "--seed", "9", *sampling)
        assert len(full) == 240
        state = tmp_path / "state.bin"
        head = generate("import sys\n", "--target", a.target, "--max-chars", "120", "--seed", "9", *sampling,
                        "--save-state", str(state))  # fmt: skip
        tail = generate("--target", b.target, "--max-chars", "120", "--resume", str(state), *sampling)
        assert head + tail == full
    finally:
        assert a.stop() == 0
        assert b.stop() == 0


def test_a_failure_mid_stream_ends_internal_and_the_server_keeps_serving(lstm_dir: Path) -> None:
    engine = Engine(lstm_dir)  # the engines run as threads over it: a failure can be injected into its calls
    with ServerThread(make_config(lstm_dir), engine=engine) as srv, Client(srv.target, timeout=30) as c:
        real_run = engine.run
        calls = [0]

        def failing_run(tokens: Any, states: Any) -> Any:
            calls[0] += 1
            if calls[0] == 30:
                raise RuntimeError("injected failure in the model step")
            return real_run(tokens, states)

        engine.run = failing_run  # type: ignore[method-assign]
        gen = c.generate("def ", max_chars=5000, seed=1)
        with pytest.raises(CharRNNError) as err:
            gen.text()
        engine.run = real_run  # type: ignore[method-assign]
        assert err.value.code == grpc.StatusCode.INTERNAL, err.value
        assert "injected" not in err.value.details, "the client gets a generic message; the log has the traceback"
        assert len(c.generate("def ", max_chars=50, seed=1).text()) == 50
