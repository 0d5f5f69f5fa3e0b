"""CI load smoke: `bench/load/run.py` starts a server, runs Locust (all three users) ~15 s, fails on any failure."""

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
        str(REPO / "bench" / "load" / "run.py"),
        "--model",
        str(model_dir),
        "--users",
        "3",
        "--duration",
        "15s",
        "--out",
        str(out),
        "--grace",
        "90",
        "--check-fail-ratio",
        "0",
        "--",
        "--max-chars",
        "20,80",
        "--wait-max",
        "0.2",
    ]
    # run.py bounds Locust itself (--grace); past our own limit it gets SIGTERM, which stops its children.
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.terminate()
        output, _ = proc.communicate(timeout=90)
        pytest.fail("run.py did not finish in 240 s:\n" + output)
    assert proc.returncode == 0, output + (out / "locust.log").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["locust_exit_code"] == 0
    assert summary["failures"]["Aggregated"] == 0
    for name in USERS:
        assert summary["requests"].get(name, 0) > 0, name
    assert summary["gates"] == [{"check": "fail_ratio", "measured": 0.0, "limit": 0.0, "ok": True}]
    assert (out / "report.html").stat().st_size > 0
    assert (out / "latency.png").read_bytes()[:4] == b"\x89PNG"
