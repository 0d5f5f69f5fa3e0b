"""CI load smoke: `bench/load/run.py` starts a server (gRPC and HTTP), runs Locust (all four users: three
over gRPC, one streaming server-sent events over HTTP) ~15 s, fails on any failure.

Run in one process and in Locust's multi-process mode (two workers), whose stream statistics reach the
report only through the locustfile's worker-to-master merge. The report's figures are checked against
what Locust counted on its own (its CSV), not against the locustfile's counters alone. A third run sends
HTTP requests only, with a model mix of the served model and one it does not serve: each request names
one, and the server refuses the other by name.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CALLS = ("Generate stream", "Completion stream", "Session feed", "Session generate", "Session token",
         "Session resume", "Score")  # fmt: skip
TABLE = ("users", "streams", "chars/s", "TTFC p50 / p99", "gap p50 / p99", "errors", "load generator")


def run_load(out: Path, *args: str) -> str:
    """bench/load/run.py with `args`, reports in `out`; its console output (it must exit 0)."""
    cmd = [sys.executable, str(REPO / "bench" / "load" / "run.py"), "--out", str(out), "--grace", "90", *args]
    # run.py bounds Locust itself (--grace); past our own limit it gets SIGTERM, which stops its children.
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.terminate()
        output, _ = proc.communicate(timeout=90)
        pytest.fail("run.py did not finish in 240 s:\n" + output)
    assert proc.returncode == 0, output + (out / "locust.log").read_text()
    return output


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_load_smoke(model_dir: Path, tmp_path: Path, processes: int) -> None:
    out = tmp_path / "load"
    output = run_load(
        out, "--model", str(model_dir), "--users", "4", "--processes", str(processes), "--duration", "15s",
        "--check-fail-ratio", "0", "--", "--max-chars", "20,80", "--wait-max", "0.2",
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["locust_exit_code"] == 0 and summary["http_target"].startswith("http://127.0.0.1:")
    assert summary["failures"]["Aggregated"] == 0
    # Locust's table holds calls only: the Aggregated row is their sum, no pseudo-request in it.
    assert set(summary["requests"]) == {*CALLS, "Aggregated"}
    assert summary["requests"]["Aggregated"] == sum(summary["requests"][n] for n in CALLS)
    assert all(summary["requests"][n] > 0 for n in CALLS)
    assert summary["gates"] == [{"check": "fail_ratio", "measured": 0.0, "limit": 0.0, "ok": True}]

    report = summary["report"]
    calls = json.loads((out / "results.json").read_text())["calls"]
    streams = calls["Generate stream"]["requests"] + calls["Completion stream"]["requests"]
    assert report["streams"] == streams and report["users"] == 4
    assert report["http_streams"] == calls["Completion stream"]["requests"] > 0
    assert report["streams_per_s"] == pytest.approx(streams / report["seconds"], rel=0.01)
    assert 13 <= report["seconds"] <= 17
    # Every completed stream had a first character; streams cut by the end of the run may add a few.
    assert streams <= report["ttfc_ms"]["count"] <= streams + 3
    assert 0 < report["ttfc_ms"]["p50"] <= report["ttfc_ms"]["p99"]
    assert report["gap_ms"]["count"] > 0 and report["gap_ms"]["p50"] <= report["gap_ms"]["p99"]
    # The characters the report counts as they arrive, against the lengths Locust recorded per finished call.
    streaming = ("Generate stream", "Completion stream", "Session generate", "Session resume")
    received = sum(calls[n]["mean_chars"] * calls[n]["requests"] for n in streaming)
    assert received <= report["chars"] <= received + 4 * 80
    assert report["chars_per_s"] == pytest.approx(report["chars"] / report["seconds"], rel=0.01)
    assert report["errors_by_code"] == {}
    generator = report["load_generator"]
    assert generator["processes"] == (1 if processes == 1 else processes + 1)  # a master and its workers
    assert 0 <= generator["busiest_cpu_percent_mean"] <= generator["cpu_percent_peak"]
    assert generator["saturated"] is False and generator["warning"] is None

    for label in TABLE:
        assert re.search(rf"^{re.escape(label)} +\S", output, re.MULTILINE), f"no {label!r} line in:\n{output}"
    assert (out / "report.html").stat().st_size > 0
    assert (out / "latency.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_the_model_mix_names_a_model_in_each_http_request(model_dir: Path, tmp_path: Path) -> None:
    """HTTP users only, half their requests for the served model and half for one it does not serve: the
    first stream, the others are refused with 404 (the field reached the server), and nothing else fails."""
    served = model_dir.name  # a model is served under its folder's name
    out = tmp_path / "load"
    run_load(
        out, "--model", str(model_dir), "--users", "2", "--processes", "1", "--duration", "8s",
        "--check-fail-ratio", "1", "--", "--stream-weight", "0", "--session-weight", "0", "--score-weight", "0",
        "--model-weights", f"{served}=1,not-served=1", "--max-chars", "20,80", "--wait-max", "0.1",
        "--exit-code-on-error", "0",  # the refusals are expected
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["requests"]) == {"Completion stream", "Aggregated"}
    requests, failures = summary["requests"]["Completion stream"], summary["failures"]["Completion stream"]
    assert 0 < failures < requests, summary
    assert summary["report"]["errors_by_code"] == {"HTTP 404": failures}
