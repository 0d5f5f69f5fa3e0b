"""A second server on a busy port (gRPC or /metrics) or an address it cannot take: one line naming the
address and the flag to change, exit code 2, no traceback; real processes on loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import service.server
from service.config import ConfigError
from service.ports import check_bindable
from service.server import CharRNNServer
from tests.service.harness import REPO, TEST_KEY, ServerProcess, charrnn_cmd, make_config


@pytest.fixture(scope="module")
def first(lstm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, int, int]]:
    """A running server, its /metrics port and its HTTP port."""
    tmp = tmp_path_factory.mktemp("first")
    extra = ["--metrics-port-file", str(tmp / "metrics"), "--http-port", "0", "--http-port-file", str(tmp / "http")]
    server = ServerProcess(lstm_dir, tmp, *extra).wait_ready()
    yield server, int((tmp / "metrics").read_text()), int((tmp / "http").read_text())
    server.stop()


def _second(model: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    args = ["serve", "--model", str(model), "--host", "127.0.0.1", "--hmac-key", TEST_KEY, *flags]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(charrnn_cmd(*args), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single user-facing error line; no traceback, no gRPC core log line, exit code 2."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output and "add_port" not in output and "Failed to bind" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.startswith("charrnn serve:")]
    assert len(lines) == 1, output
    return lines[0]


def test_busy_grpc_port_names_the_address_and_port_flag(lstm_dir: Path, first: tuple[ServerProcess, int, int]) -> None:
    server, _, _ = first
    line = _one_line(_second(lstm_dir, "--port", str(server.port), "--metrics-port", "-1"))
    assert f"127.0.0.1:{server.port}" in line and "address already in use" in line, line
    assert "choose another --port" in line, line
    assert server.proc.poll() is None, "the first server keeps serving"


def test_busy_metrics_port_names_the_address_and_metrics_flag(
    lstm_dir: Path, first: tuple[ServerProcess, int, int]
) -> None:
    server, metrics_port, _ = first
    line = _one_line(_second(lstm_dir, "--port", "0", "--metrics-port", str(metrics_port)))
    assert f"/metrics on 127.0.0.1:{metrics_port}" in line and "address already in use" in line, line
    assert "choose another --metrics-port" in line, line
    assert server.proc.poll() is None


def test_busy_http_port_names_the_address_and_http_flag(lstm_dir: Path, first: tuple[ServerProcess, int, int]) -> None:
    server, _, http_port = first
    line = _one_line(_second(lstm_dir, "--port", "0", "--metrics-port", "-1", "--http-port", str(http_port)))
    assert f"HTTP on 127.0.0.1:{http_port}" in line and "address already in use" in line, line
    assert "choose another --http-port (0 = any free port, -1 = off)" in line, line
    assert server.proc.poll() is None


@pytest.mark.parametrize(
    ("host", "words"),
    [
        ("192.0.2.1", "not one of this host's; choose another --host"),  # TEST-NET-1: never a local address
        ("no-such-host.invalid", "does not resolve; choose another --host"),
    ],
)
def test_an_address_the_host_cannot_take_names_the_host_flag(host: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_bindable("gRPC", host, 50051, ("--port", "--host"))
    message = str(info.value)
    assert message.startswith(f"cannot listen for gRPC on {host}:50051: ") and words in message, message
    assert "\n" not in message


def test_an_http_port_taken_after_the_check_stops_what_had_started(
    lstm_dir: Path, first: tuple[ServerProcess, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The port is taken between the early check and the bind (the check is skipped here to make that
    happen): the one line, and the gRPC server and engine processes already started are stopped again."""
    _, _, http_port = first
    monkeypatch.setattr(service.server, "check_bindable", lambda what, *rest: None)

    async def scenario() -> tuple[str, CharRNNServer]:
        server = CharRNNServer(make_config(lstm_dir, http_port=http_port))
        with pytest.raises(ConfigError) as info:
            await server.start()
        return str(info.value), server

    message, server = asyncio.run(scenario())
    assert f"HTTP on 127.0.0.1:{http_port}" in message and "choose another --http-port" in message, message
    engines = [e for e in server.scheduler._engines if e is not None]
    assert engines and all(e.join(0) for e in engines), "engine processes left running"
    with socket.socket() as probe:  # the gRPC port it had bound is closed again
        assert probe.connect_ex(("127.0.0.1", server.port)) != 0
