"""`charrnn bench sse` and `charrnn bench http-frameworks` run end to end (tiny model, short runs)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.service.harness import REPO, charrnn_cmd


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(charrnn_cmd("bench", *args), cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def test_bench_sse_measures_both_edges(lstm_dir: Path, tmp_path: Path) -> None:
    result = _run("sse", "--model", str(lstm_dir), "--duration", "0.5", "--streams", "1", "4", "--max-chars", "300",
                  "--flush-interval-ms", "10", "--repeats", "1", "--out", str(tmp_path))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "SSE overhead us/char" in result.stdout and "load average" in result.stdout
    report = json.loads((tmp_path / "bench-sse.json").read_text())
    assert {(r["edge"], r["streams"]) for r in report["results"]} == {(e, n) for e in ("grpc", "sse") for n in (1, 4)}
    assert all(r["chars_per_s"] > 0 and r["server_cpu_us_per_char"] > 0 for r in report["results"])


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("starlette", "uvicorn")),
    reason="starlette and uvicorn (the dev extra) are what aiohttp is measured against",
)
def test_bench_http_frameworks_measures_both(tmp_path: Path) -> None:
    result = _run("http-frameworks", "--duration", "0.3", "--streams", "2", "--events", "5", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "bench-http-frameworks.json").read_text())
    assert [r["framework"] for r in report["results"]] == ["aiohttp", "starlette"]
    assert all(r["events"] == 5 * r["requests"] > 0 for r in report["results"])
