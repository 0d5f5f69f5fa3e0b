"""`charrnn bench serve` runs end to end (tiny model, short duration) and writes its outputs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.service.harness import REPO, charrnn_cmd


def test_bench_serve_writes_table_json_and_png(lstm_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    cmd = charrnn_cmd("bench", "serve", "--model", str(lstm_dir), "--duration", "0.5", "--streams", "1", "4",
                      "--max-chars", "300", "--unbatched", "--out", str(out))  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "ceiling" in result.stdout and "gap p99 beside 60k-char score / alone" in result.stdout
    report = json.loads((out / "bench-serve.json").read_text())
    modes = {(r["mode"], r["streams"]) for r in report["results"]}
    expected = {(m, n) for m in ("ceiling", "1-worker", "default", "unbatched") for n in (1, 4)}
    assert modes == expected | {(m, 16) for m in ("16 alone", "16+score", "16+feeds")}
    assert all(r["chars_per_s"] > 0 and r["errors"] == 0 for r in report["results"])
    assert {t["what"].split(" ")[0] for t in report["targets"]} >= {"default", "gap"}
    assert (out / "bench-serve.png").stat().st_size > 1000
