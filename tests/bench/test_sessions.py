"""`charrnn bench sessions` runs end to end on a tiny model and reports the RSS per session."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.service.harness import REPO, charrnn_cmd


def test_bench_sessions_reports_rss_per_session(lstm_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sessions"
    cmd = charrnn_cmd("bench", "sessions", "--model", str(lstm_dir), "--sessions", "300", "--out", str(out))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "RSS B/session" in result.stdout
    report = json.loads((out / "bench-sessions.json").read_text())
    assert report["sessions"] == 300 and report["state_bytes"] > 0 and "ratio" in report
