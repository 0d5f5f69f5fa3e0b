"""Fixtures for the fuzz suite: a real `charrnn serve` process on tiny artifacts, and the case counts.

The counts (request cases, token cases, Session actions) are printed in pytest's terminal summary
and, when CHARRNN_FUZZ_REPORT names a file, written there as JSON.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.harness import ServerProcess
from tests.service.tinymodel import TinySpec, export

COUNTS: Counter[str] = Counter()
# Small limits keep valid requests cheap; the fuzzer still reaches every limit.
FUZZ_LIMITS = {
    "--max-request-chars": 24,
    "--default-max-chars": 4,
    "--max-prompt-chars": 64,
    "--max-score-chars": 64,
    "--max-stop-strings": 4,
    "--max-stop-chars": 8,
    "--max-sessions": 32,
    "--max-live-streams": 8,
    "--max-queued-streams": 64,
}


def examples(default_cases: int, per_example: int) -> int:
    """Hypothesis examples for `default_cases` cases (scaled by CHARRNN_FUZZ_EXAMPLES / 2000)."""
    scale = int(os.environ.get("CHARRNN_FUZZ_EXAMPLES", "2000")) / 2000
    return max(1, -(-int(default_cases * scale) // per_example))


@pytest.fixture(scope="session")
def fuzz_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz-artifacts")
    return {
        "model": export(TinySpec(policy="refuse", seed=1), root / "model"),
        "other": export(TinySpec(policy="refuse", seed=8), root / "other"),  # same shapes, another hash
    }


def _serve(model: Path, tmp: Path) -> ServerProcess:
    args = [str(a) for flag, value in FUZZ_LIMITS.items() for a in (flag, value)]
    return ServerProcess(model, tmp, "--flush-interval-ms", "0", "--metrics-port-file", str(tmp / "metrics"), *args)


@pytest.fixture(scope="module")
def fuzz_server(fuzz_artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("fuzz-server")
    server = _serve(fuzz_artifacts["model"], tmp).wait_ready()
    yield server
    assert server.stop() == 0, server.output()


@pytest.fixture(scope="module")
def other_server(fuzz_artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The same key on another model: its tokens are foreign to `fuzz_server`."""
    server = _serve(fuzz_artifacts["other"], tmp_path_factory.mktemp("other-server")).wait_ready()
    yield server
    server.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not COUNTS:
        return
    terminalreporter.write_sep("-", "fuzz cases")
    for name, count in sorted(COUNTS.items()):
        terminalreporter.write_line(f"{name}: {count}")
    report = os.environ.get("CHARRNN_FUZZ_REPORT")
    if report:
        Path(report).write_text(json.dumps(dict(COUNTS), indent=1) + "\n")
