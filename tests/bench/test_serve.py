"""`charrnn bench serve` runs end to end (tiny model, tiny windows) and writes its outputs; the process-tree
reader it measures the server with counts the CPU time and memory of the server's children."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.proctree import _TICK, cpu_seconds, rss_bytes, tree, tree_cpu_seconds, tree_memory
from tests.service.harness import REPO, charrnn_cmd

BURN_S = 0.3  # CPU seconds each child spends before it reports
HOLD_BYTES = 64 * 2**20  # memory the live child writes and keeps

# A parent that spends almost no CPU of its own: child A burns BURN_S and exits (the parent waits for it, so
# its time moves to the parent's cutime); child B burns BURN_S, writes HOLD_BYTES, reports and stays alive.
_CHILD = """
import sys, time
while time.process_time() < {burn}:
    pass
hold = bytearray(b"\\1") * {hold} if sys.argv[1] == "stay" else b""
print("burnt", flush=True)
if sys.argv[1] == "stay":
    time.sleep(600)
"""
_PARENT = """
import subprocess, sys
child = [sys.executable, "-c", sys.argv[1]]
subprocess.run([*child, "exit"], check=True, stdout=subprocess.DEVNULL)
stay = subprocess.Popen([*child, "stay"], stdout=subprocess.PIPE, text=True)
stay.stdout.readline()
print("ready", flush=True)
sys.stdin.read()
stay.kill()
"""


def test_tree_readings_count_children_exited_and_alive() -> None:
    child = _CHILD.format(burn=BURN_S, hold=HOLD_BYTES)
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, child], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None and parent.stdout.readline() == "ready\n"
        members = tree(parent.pid)
        assert members[0] == parent.pid and len(members) == 2  # the live child; the exited one is gone
        # Both children's burn counts (one through cutime, one live), less one clock tick each for rounding;
        # the parent's own time is what a reader of the parent alone would see.
        children_cpu = tree_cpu_seconds(parent.pid) - cpu_seconds(parent.pid)
        assert children_cpu >= 2 * (BURN_S - 1 / _TICK), children_cpu
        memory, measure = tree_memory(parent.pid)
        assert measure in ("Pss", "VmRSS") and memory >= HOLD_BYTES, (memory, measure)
        assert rss_bytes(parent.pid) >= HOLD_BYTES  # the documented bounds' measure, over the tree too
    finally:
        parent.communicate("", timeout=30)


def test_bench_serve_writes_table_json_and_png(tiny_artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    cmd = charrnn_cmd("bench", "serve", "--model", str(tiny_artifact), "--streams", "1", "2", "--pairs", "1",
                      "--warmup", "0.3", "--duration", "0.5", "--ceiling-seconds", "0.1", "--max-chars", "300",
                      "--max-live-streams", "2", "--int8-streams", "2", "--out", str(out))  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    columns = ["streams", "served chars/s", "server CPU (cores)", "chars/server CPU-s", "ceiling 1 thread",
               "ceiling 2 threads", "TTFC p50/p99 ms", "CPU-s / ceiling's", "served / ceiling", "int8 gain kept",
               "load gen (cores)", "errors"]  # fmt: skip
    lines = result.stdout.splitlines()
    at = lines.index("| " + " | ".join(columns) + " |")
    rows = [line.strip("| ").split(" | ") for line in lines[at + 2 : at + 4]]
    assert [row[0] for row in rows] == ["1", "2"] and all(len(row) == len(columns) for row in rows), rows
    report = json.loads((out / "bench-serve.json").read_text())
    assert [(p["streams"], [r["mode"] for r in p["served"]]) for p in report["pairs"]] == [
        (1, ["fp32"]),
        (2, ["fp32", "int8"]),
    ]
    for pair in report["pairs"]:
        assert all(r["errors"] == 0 and r["chars_per_s"] > 0 and r["server_cpu_s"] > 0 for r in pair["served"])
        assert {(c["model"], c["threads"]) for c in pair["ceilings"]} >= {("fp32", 1), ("fp32", 2)}
    assert report["summary"]["2"]["int8_gain_kept"]["median"] > 0
    assert [r["mode"] for r in report["interference"]] == ["16 alone", "16+score", "16+feeds"]
    targets = {t["what"] for t in report["targets"]}
    assert any(t.startswith("idle memory of the server tree") for t in targets)
    assert "gap p99 beside 60k-char score / alone" in targets and "| target | goal |" in result.stdout
    assert report["idle_memory"]["after_warmup_mb"] > 0
    assert (out / "bench-serve.png").stat().st_size > 1000


def test_bench_serve_refuses_a_missing_model_in_one_line(tmp_path: Path) -> None:
    cmd = charrnn_cmd("bench", "serve", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("charrnn bench serve: ") and "missing" in line, line
