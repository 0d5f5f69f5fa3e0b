"""CI load smoke: `tests/load/run.py` starts a server, runs Locust (all three users) ~15 s, fails on any failure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
USERS = (
    "Generate ttfc",
    "Generate stream",
    "Generate chars/s",
    "Session feed",
    "Session generate",
    "Session token",
    "Session resume",
    "Score",
)


@pytest.mark.slow
def test_load_smoke(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "load"
    cmd = [
        sys.executable,
        str(REPO / "tests" / "load" / "run.py"),
        "--model",
        str(model_dir),
        "--users",
        "3",
        "--duration",
        "15s",
        "--out",
        str(out),
        "--check-fail-ratio",
        "0",
        "--",
        "--max-chars",
        "20,80",
        "--wait-max",
        "0.2",
    ]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr + (out / "locust.log").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["locust_exit_code"] == 0
    assert summary["failures"]["Aggregated"] == 0
    for name in USERS:
        assert summary["requests"].get(name, 0) > 0, name
    assert summary["gates"] == [{"check": "fail_ratio", "measured": 0.0, "limit": 0.0, "ok": True}]
    assert (out / "report.html").stat().st_size > 0
    assert (out / "latency.png").read_bytes()[:4] == b"\x89PNG"
