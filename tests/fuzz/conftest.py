"""Fixtures for the fuzz suite: a real `charrnn serve` process on tiny artifacts (gRPC and HTTP, one decode
worker), the bystanders that run through each fuzz module on it, and the case counts.

The counts (request cases, token cases, Session actions, bystander runs) are printed in pytest's terminal
summary and, when CHARRNN_FUZZ_REPORT names a file, written there as JSON.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.bystanders import PROMPT, Bystanders, standard
from charrnn.client import Client
from tests.reference import PlainOnnxStepper
from tests.service.harness import ServerProcess, wait_until
from tests.service.tinymodel import TinySpec, export

COUNTS: Counter[str] = Counter()
FUZZ_SPEC = TinySpec(policy="refuse", seed=1)  # the fuzzed server's model
FUZZ_MODEL = "model"  # its served name (its folder's)
# Small limits keep valid requests cheap; the fuzzer still reaches every limit. Requests the fuzz draws as
# valid ask for at most CHEAP_CHARS; the request limit is higher so that the bystanders' streams are long.
CHEAP_CHARS = 24
BYSTANDER_CHARS = 200  # long enough that, back to back, one of the four is nearly always mid-stream
# A valid fuzz request ends within a flush interval or two; a bystander sends a message every interval, not
# every character (which would take the cores the fuzz needs).
FLUSH_MS = 10
FUZZ_LIMITS = {
    "--max-request-chars": 2 * BYSTANDER_CHARS,
    "--default-max-chars": 4,
    "--max-prompt-chars": 64,
    "--max-score-chars": 64,
    "--max-stop-strings": 4,
    "--max-stop-chars": 8,
    "--max-sessions": 32,
    "--max-live-streams": 8,
    "--max-queued-streams": 64,
    "--max-watched-units": 3,
    "--min-checkpoint-chars": 8,
    "--http-max-body-kb": 8,
    "--http-max-string-chars": 4096,  # a resume token of the fuzz model is ~1,200 characters of base64
}
MIN_BYSTANDER_RUNS = 2  # each bystander finishes at least this many runs during a fuzz module


def examples(default_cases: int, per_example: int) -> int:
    """Hypothesis examples for `default_cases` cases (scaled by CHARRNN_FUZZ_EXAMPLES / 2000)."""
    scale = int(os.environ.get("CHARRNN_FUZZ_EXAMPLES", "2000")) / 2000
    return max(1, -(-int(default_cases * scale) // per_example))


@pytest.fixture(scope="session")
def fuzz_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz-artifacts")
    return {
        "model": export(FUZZ_SPEC, root / FUZZ_MODEL),
        "other": export(TinySpec(policy="refuse", seed=8), root / "other"),  # same shapes, another hash
    }


def _serve(model: Path, tmp: Path) -> ServerProcess:
    args = [str(a) for flag, value in FUZZ_LIMITS.items() for a in (flag, value)]
    args += ["--http-port", "0", "--http-port-file", str(tmp / "http"), "--metrics-port-file", str(tmp / "metrics")]
    # One engine: every stream, the bystanders' and the fuzz's, shares its steps.
    return ServerProcess(model, tmp, "--flush-interval-ms", str(FLUSH_MS), "--engines", "1", *args)


def http_url(server: ServerProcess) -> str:
    """The server's HTTP root (its port file is written once it serves)."""
    port_file = server.port_file.parent / "http"
    assert wait_until(port_file.exists, 30), server.output()
    return f"http://127.0.0.1:{int(port_file.read_text())}"


def rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+)", status)
    assert match is not None
    return int(match.group(1))


def metric(server: ServerProcess, name: str) -> float:
    port = int((server.port_file.parent / "metrics").read_text())
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", body, re.MULTILINE)  # summed over its models
    assert values, f"no series {name} on /metrics"
    return sum(float(v) for v in values)


def scored_tokens(target: str, texts: list[str]) -> list[bytes]:
    with Client(target, timeout=10) as client:
        return [client.score(text).resume_token for text in texts]


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


@pytest.fixture(scope="module")
def bystanders(fuzz_server: ServerProcess, fuzz_artifacts: dict[str, Path]) -> Iterator[Bystanders]:
    """Seeded streams over gRPC and HTTP on the fuzzed server, running from before its module's fuzz to
    `check_bystanders` (the greedy one's reference is also checked against an independent ONNX session)."""
    running = Bystanders(fuzz_server.target, http_url(fuzz_server), standard(BYSTANDER_CHARS)).start()
    greedy = PlainOnnxStepper(fuzz_artifacts["model"]).greedy(PROMPT, BYSTANDER_CHARS)
    assert [running.references[b.name] for b in running.cast if b.temperature == 0] == [greedy]
    yield running
    running.stop()


def check_bystanders(running: Bystanders, module: str) -> None:
    """Stop the bystanders: every run ended with exactly its reference text, and they shared the fuzz's batches."""
    report = running.stop()
    COUNTS[f"bystander runs ({module})"] += sum(report.runs.values())
    COUNTS[f"fuzz requests ({module})"] += report.witnessed
    COUNTS[f"fuzz requests beside a live bystander ({module})"] += report.beside
    assert report.exact, report.summary()
    assert min(report.runs[b.name] for b in running.cast) >= MIN_BYSTANDER_RUNS, report.summary()
    # Back to back, one of the four is in flight nearly always; half is a generous floor.
    assert report.witnessed and report.beside >= report.witnessed / 2, report.summary()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not COUNTS:
        return
    terminalreporter.write_sep("-", "fuzz cases")
    for name, count in sorted(COUNTS.items()):
        terminalreporter.write_line(f"{name}: {count}")
    report = os.environ.get("CHARRNN_FUZZ_REPORT")
    if report:
        Path(report).write_text(json.dumps(dict(COUNTS), indent=1) + "\n")
