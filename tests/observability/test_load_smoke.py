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
from datetime import datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CALLS = ("Generate stream", "Completion stream", "Session feed", "Session generate", "Session token",
         "Session resume", "Score")  # fmt: skip
RUN_TIME_S = 15
LOG_RESOLUTION_S = 0.001  # Locust's log lines carry their time to the millisecond
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
        out, "--model", str(model_dir), "--users", "4", "--processes", str(processes), "--duration", f"{RUN_TIME_S}s",
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
    assert_stopped_by_the_run_time_limit(out)
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


def _logged_at(log: str, message: str) -> float:
    """The time (epoch seconds) of Locust's log line that ends with `message`; fails when there is none."""
    match = re.search(rf"^\[(\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}})\] .*{re.escape(message)}$", log, re.MULTILINE)
    assert match, f"no {message!r} in Locust's log:\n{log}"
    return datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def assert_stopped_by_the_run_time_limit(out: Path) -> None:
    """The run ended because --run-time expired, and the report covers the run up to that moment.

    Locust (headless) queues the runner's start, logs "Run time limit set" and arms its clock
    (gevent.spawn_later); test_start, where the report's clock starts, fires only when the queued start
    runs, after a wait a loaded machine makes seconds long, so the report can be shorter than --run-time.
    The clock counts from the event loop's cached time, which can be older than the log line (14.5 s
    between the two lines was seen for 15 s), so their distance is not asserted either. When it fires it
    logs "--run-time limit reached, shutting down" and stops the runner, whose test_stop ends the report.
    """
    log = (out / "locust.log").read_text(errors="replace")
    armed = _logged_at(log, f"Run time limit set to {RUN_TIME_S} seconds")
    reached = _logged_at(log, "--run-time limit reached, shutting down")
    streams = json.loads((out / "results.json").read_text())["streams"]
    started, ended = streams["started_at"], streams["started_at"] + streams["seconds"]
    # The report's ends come from other clocks (time.time, then time.monotonic rounded to 10 ms).
    slack = LOG_RESOLUTION_S + 0.01
    assert armed - slack <= started < reached <= ended + slack, (armed, started, reached, ended)


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
