"""The load report's parts that need no server: the load generator's CPU and the warning it raises.

The CPU monitor watches real processes: one that spins and one that sleeps. On a shared machine a
spinning process gets only part of a core; it is still saturated (it always wants one), which is what
the monitor must see.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("load_run", REPO / "bench" / "load" / "run.py")
assert _spec is not None and _spec.loader is not None
run = importlib.util.module_from_spec(_spec)  # bench/load/run.py is a script, not a package module
_spec.loader.exec_module(run)


def watch(code: str, seconds: float = 3.5) -> dict[str, Any]:
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        with run.CpuMonitor(proc.pid, interval=0.5) as monitor:
            subprocess.run([sys.executable, "-c", f"import time; time.sleep({seconds})"], check=True)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return dict(monitor.report())


def test_a_spinning_generator_is_saturated_and_a_sleeping_one_is_not() -> None:
    busy = watch("while True: pass")
    assert busy["processes"] == 1 and busy["saturated"] is True
    assert busy["busiest_demand_percent_mean"] >= run.SATURATED_CPU_PERCENT
    idle = watch("import time; time.sleep(60)")
    assert idle["saturated"] is False and idle["busiest_demand_percent_mean"] < 10


def test_children_are_watched_too() -> None:
    """Locust's workers are forked children of its master."""
    spin_in_a_child = (
        "import subprocess as s, sys, time; s.Popen([sys.executable, '-c', 'while 1: pass']); time.sleep(60)"
    )
    report = watch(spin_in_a_child)
    assert report["processes"] == 2 and report["saturated"] is True


def test_the_report_warns_when_the_generator_saturated() -> None:
    args = argparse.Namespace(users=64, duration="30s")
    calls = {"Generate stream": {"requests": 300, "failures": 2}, "Session generate": {"requests": 40, "failures": 0}}
    streams = {"seconds": 30.0, "chars": 60000, "ttfc": {"p50_ms": 12, "p99_ms": 90, "count": 300},
               "gap": {"count": 0}, "errors_by_code": {"UNAVAILABLE": 2}}  # fmt: skip
    cpu = {"processes": 1, "cpu_percent_mean": [41.0], "cpu_percent_peak": 60.0, "demand_percent_mean": [98.0],
           "busiest_cpu_percent_mean": 41.0, "busiest_demand_percent_mean": 98.0, "saturated": True,
           "cores": 2}  # fmt: skip
    report = run.load_report(args, calls, streams, cpu)
    assert report["streams"] == 298 and report["session_generations"] == 40 and report["chars_per_s"] == 2000.0
    lines = run.report_table(report)
    assert "TTFC p50 / p99  12 / 90 ms   (300 samples)" in lines
    assert "gap p50 / p99   no data" in lines and "errors          UNAVAILABLE 2" in lines
    assert lines[-1].startswith(
        "WARNING: the load generator was the bottleneck: its busiest process wanted a core 98% of the time (it got 41%)"
    )
    assert not run.report_table(run.load_report(args, calls, streams, {**cpu, "saturated": False}))[-1].startswith(
        "WARNING"
    )


@pytest.mark.parametrize(("requested", "users", "expected"), [(0, 8, 1), (0, 64, 2), (0, 1000, None), (3, 8, 3)])
def test_processes_auto_splits_users_up_to_the_cores(requested: int, users: int, expected: int | None) -> None:
    cores = os.cpu_count() or 1
    want = min(cores, expected) if expected is not None else cores
    assert run.locust_processes(requested, users) == (requested or want)


def test_processes_argument() -> None:
    assert run.processes_arg("auto") == 0 and run.processes_arg("4") == 4
    for bad in ("0", "-1", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected auto or a whole number >= 1"):
            run.processes_arg(bad)
