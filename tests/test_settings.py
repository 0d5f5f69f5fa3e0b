"""Settings: one dataclass field → flag, environment variable and default; malformed values are one line."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from charrnn.settings import SettingError, add_flags, build, setting
from service.config import ServerConfig

REPO = Path(__file__).resolve().parent.parent
# What Kubernetes injects into every pod of a namespace that has a Service named `charrnn`.
SERVICE_LINKS = {
    "CHARRNN_PORT": "tcp://10.96.0.17:50051",
    "CHARRNN_PORT_50051_TCP": "tcp://10.96.0.17:50051",
    "CHARRNN_PORT_50051_TCP_ADDR": "10.96.0.17",
    "CHARRNN_PORT_50051_TCP_PORT": "50051",
    "CHARRNN_PORT_50051_TCP_PROTO": "tcp",
    "CHARRNN_SERVICE_HOST": "10.96.0.17",
    "CHARRNN_SERVICE_PORT": "50051",
    "CHARRNN_SERVICE_PORT_GRPC": "50051",
}


@dataclass(frozen=True)
class Example:
    count: int = setting(3, "how many", aliases=("--n",))
    ratio: float | None = setting(None, "a ratio")
    loud: bool = setting(False, "shout")
    path: Path = setting(Path("x"), "where")


def _build(argv: list[str], env: dict[str, str]) -> Example:
    parser = argparse.ArgumentParser()
    add_flags(parser, Example)
    return build(Example, parser.parse_args(argv), env)


def test_flag_beats_variable_beats_default() -> None:
    assert _build([], {}) == Example()
    assert _build([], {"CHARRNN_COUNT": "5"}).count == 5
    assert _build(["--count", "7"], {"CHARRNN_COUNT": "5"}).count == 7
    assert _build(["--n", "8"], {}).count == 8, "an alias sets the same field"
    assert _build([], {"CHARRNN_N": "9"}).count == 9, "an alias's variable too"
    assert _build(["--loud"], {}).loud and _build([], {"CHARRNN_LOUD": "yes"}).loud
    assert _build([], {"CHARRNN_RATIO": "0.5", "CHARRNN_PATH": "/a"}) == Example(ratio=0.5, path=Path("/a"))


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {"CHARRNN_COUNT": "tcp://1.2.3.4:5"}, "CHARRNN_COUNT='tcp://1.2.3.4:5' is not an integer (--count)"),
        (["--count", "x"], {}, "--count='x' is not an integer (--count)"),
        ([], {"CHARRNN_RATIO": "half"}, "CHARRNN_RATIO='half' is not a number (--ratio)"),
        ([], {"CHARRNN_LOUD": "maybe"}, "CHARRNN_LOUD='maybe': expected 1/true/yes/on or 0/false/no/off"),
    ],
)
def test_malformed_values_name_their_source(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingError) as info:
        _build(argv, env)
    assert str(info.value) == message


def test_a_long_value_is_quoted_only_in_part() -> None:
    with pytest.raises(SettingError) as info:
        _build([], {"CHARRNN_COUNT": "9" * 10_000 + "x"})
    assert len(str(info.value)) < 120


def test_every_server_field_with_a_default_is_a_setting() -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser, ServerConfig)
    assert build(ServerConfig, parser.parse_args([]), {}) == ServerConfig()


def _charrnn(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CHARRNN_")} | env
    full["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "charrnn.cli", *args], cwd=REPO, env=full, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("command", ["train", "export", "sample", "serve", "generate", "score", "info", "analyze"])
def test_kubernetes_service_links_do_not_break_any_command(command: str) -> None:
    result = _charrnn(command, "--help", env=SERVICE_LINKS)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_a_malformed_variable_stops_serve_with_one_line() -> None:
    result = _charrnn("serve", "--dev", env={"CHARRNN_PORT": "tcp://10.96.0.17:50051"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "charrnn serve: CHARRNN_PORT='tcp://10.96.0.17:50051' is not an integer (--port)"
    ), result.stderr
