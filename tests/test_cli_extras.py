"""The `charrnn` command works in an install with only some extras: the training image has no grpc, a
client-only install no torch. Commands whose dependencies are missing say which extra to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

WITHOUT = """
import sys, importlib.abc
missing = set(sys.argv[1].split(","))
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in missing:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
from charrnn.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _charrnn_without(missing: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT, missing, *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("missing", "command", "extra"),
    [
        ("grpc,grpc_health,aiohttp,prometheus_client", ["info"], "client"),  # the training image
        ("torch,onnx,matplotlib", ["train", "--corpus", "README.md"], "train"),  # a serving or client install
    ],
)
def test_commands_say_which_extra_they_need(missing: str, command: list[str], extra: str) -> None:
    assert _charrnn_without(missing, "--help").returncode == 0
    result = _charrnn_without(missing, *command)
    assert result.returncode == 2, result.stderr
    assert f"pip install 'charrnn[{extra}]'" in result.stderr and "Traceback" not in result.stderr
