"""`charrnn bench fairness` runs end to end on two tiny models: a round of B alone and beside A, its table,
its JSON and the target line; a folder that is no model is refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.service.harness import REPO, charrnn_cmd

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def test_bench_fairness_writes_its_rounds_and_target(artifacts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = charrnn_cmd("bench", "fairness", "--a-model", str(artifacts["lstm"]), "--b-model", str(artifacts["gru"]),
                      "--a-name", "a", "--b-name", "b", "--a-streams", "4", "--b-chars", "50", "--rounds", "1",
                      "--warmup", "0.3", "--duration", "1", "--out", str(out))  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "bench-fairness.json").read_text())
    (row,) = report["rounds"]
    assert row["b_alone"]["chars_per_s"] > 0 and row["b_loaded"]["chars_per_s"] > 0 and row["a"]["chars_per_s"] > 0
    assert row["b_alone"]["errors"] == row["b_loaded"]["errors"] == row["a"]["errors"] == 0
    assert report["target"]["goal"] == "<= 2" and "B's TTFC p99 beside A / alone: median" in result.stdout


def test_bench_fairness_refuses_a_folder_that_is_no_model(tmp_path: Path) -> None:
    cmd = charrnn_cmd("bench", "fairness", "--a-model", str(tmp_path), "--out", str(tmp_path / "out"))
    result = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "no manifest.json" in result.stderr
