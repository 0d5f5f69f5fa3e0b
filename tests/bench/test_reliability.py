"""`charrnn bench overload` and `charrnn bench soak` run end to end (tiny model, seconds) and report what
they promise: refusals are RESOURCE_EXHAUSTED with a retry hint; the soak's every kind of traffic ran, the
hostile requests got 4xx and never a 5xx, the bystanders stayed exact, gauges return to zero. No latency or
memory goals are asserted here: those are benchmark figures (docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.service.harness import REPO, charrnn_cmd


def bench(*args: str, out: Path, name: str) -> tuple[str, dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = charrnn_cmd("bench", *args, "--out", str(out))
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, json.loads((out / f"bench-{name}.json").read_text())


def test_bench_overload_refuses_the_excess_with_resource_exhausted(lstm_dir: Path, tmp_path: Path) -> None:
    stdout, report = bench("overload", "--model", str(lstm_dir), "--max-live-streams", "1", "--max-queued-streams", "1",
                           "--factor", "5", "--seconds", "2", "--baseline-streams", "1", "--baseline-seconds", "1",
                           "--max-chars", "300", out=tmp_path, name="overload")  # fmt: skip
    assert "refused RESOURCE_EXHAUSTED" in stdout
    assert report["settings"]["clients"] == 10 and report["settings"]["capacity"] == 2
    assert report["refused"] > 0
    assert report["overloaded"]["errors"] == {"RESOURCE_EXHAUSTED": report["refused"]}
    assert report["refused_with_pushback"] == report["refused"]
    assert report["other_errors"] == 0
    for phase in ("unloaded", "overloaded"):
        assert report[phase]["streams_completed"] > 0
        assert set(report[phase]) >= {"gap_p50_ms", "gap_p99_ms", "ttfc_p99_ms", "chunks"}
    assert report["rss_start_mb"] > 0 and report["rss_end_mb"] > 0
    assert {"gap_p99_ratio", "rss_growth", "goals"} <= set(report)


def test_bench_soak_mixes_every_kind_of_traffic_and_reports_rss_errors_and_bystanders(
    lstm_dir: Path, tmp_path: Path
) -> None:
    stdout, report = bench("soak", "--model", str(lstm_dir), "--minutes", "0.15", "--streams", "6",
                           "--session-clients", "2", "--cancel-share", "0.3", "--resume-share", "0.5",
                           "--score-share", "0.2", "--hostile-per-second", "20", "--session-ttl", "1",
                           "--sample-seconds", "0.5", "--warm-up-seconds", "2", "--drain-seconds", "30",
                           "--max-chars", "200", out=tmp_path, name="soak")  # fmt: skip
    assert "bystanders:" in stdout and "RSS MB" in stdout
    assert report["errors"] == {}, report["errors"]
    ops = report["operations"]
    for kind in ("grpc streams", "grpc cancelled", "grpc resumed", "grpc scores", "http streams", "http cancelled",
                 "http resumed", "sessions_closed", "sessions_left_to_expire"):  # fmt: skip
        assert ops.get(kind, 0) > 0, (kind, ops)
    answers = report["hostile_answers"]
    assert answers.get("HTTP 400", 0) > 0 and answers.get("INVALID_ARGUMENT", 0) > 0, answers
    assert not any(code.startswith("HTTP 5") or code == "INTERNAL" for code in answers), answers
    bystanders = report["bystanders"]
    assert bystanders["exact"] and min(bystanders["runs"].values()) > 0, bystanders
    assert bystanders["requests_beside_a_bystander"] > 0
    assert report["gauges_after"] == {"charrnn_live_streams": 0, "charrnn_queued_streams": 0, "charrnn_sessions": 0}
    assert set(report["rss"]) == {"start_mb", "after_warm_up_mb", "end_mb", "after_drain_mb"}
    assert report["rss_samples"] and report["rss_by_minute"] and "rss_flat" in report
    assert (tmp_path / "bench-soak.txt").read_text().startswith("soak: 0.15 min")
    assert (tmp_path / "bench-soak-rss.png").read_bytes().startswith(b"\x89PNG")
