"""`make load`: run Locust headless against a server (one is started when no --target is given).

The started server serves HTTP too (on a free port), and Locust's HTTP user streams completions from it
beside the gRPC users; against a --target, pass its HTTP root to Locust (`-- --http-host http://HOST:PORT`)
for the same.

Prints a short report (streams, characters per second, time to first character and the gaps between
chunks at p50/p99, errors by gRPC code or HTTP status, the load generator's own CPU) and writes into
--out: the same report in `summary.json` (with request totals and gate results), `results.json` (what
the locustfile measured: Locust's final statistics per call and the streams' statistics), Locust's CSV
files (with full history) and HTML report, and `latency.png` (windowed percentiles over time).

Locust runs in several processes (`--processes`) when the users are too many for one: a saturated load
generator measures itself, so its CPU is reported, and a warning printed when its busiest process
wanted a core 90% of the time or more. Threshold gates (`--check-*`) belong here, not in unit tests:
a shared machine is too noisy for them.

    python bench/load/run.py --users 16 --duration 60s --out load-results/run1 --check-ttfc-p99-ms 250
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger("charrnn.load")
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PLOTTED = ("Generate stream", "Completion stream", "Session generate", "Score")
STREAM_CALLS = ("Generate stream", "Completion stream")  # a whole gRPC stream, a whole HTTP (SSE) stream
PERCENTILES = ("50%", "95%", "99%")
# --processes auto gives each Locust process at most this many users (and each core at most one process):
# one gevent process driving 64 streaming users against an idle server saturated its core. What loads a
# process is its message rate, not its user count, so the measured CPU (below) is what to trust.
USERS_PER_PROCESS = 32
SATURATED_CPU_PERCENT = 90.0  # a load-generator process this busy is measuring itself
RESULTS = "results.json"  # the locustfile's --results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", help="HOST:PORT of a running server (default: start one)")
    p.add_argument("--model", type=Path, default=REPO / "models" / "default", help="artifact for the started server")
    p.add_argument("--server-arg", action="append", default=[], help="extra `charrnn serve` flag (repeatable)")
    p.add_argument("--users", type=int, default=8, help="concurrent Locust users")
    p.add_argument("--spawn-rate", type=float, default=0.0, help="users started per second (default: all at once)")
    p.add_argument("--duration", default="30s", help="Locust --run-time, e.g. 30s, 2m")
    p.add_argument(
        "--processes",
        type=processes_arg,
        default="auto",
        help=f"Locust worker processes, or auto: one per {USERS_PER_PROCESS} users, at most one per core",
    )
    p.add_argument("--out", type=Path, default=Path("load-results") / time.strftime("%Y%m%d-%H%M%S"))
    p.add_argument(
        "--grace",
        type=float,
        default=60.0,
        help="seconds past --duration before Locust's process group is killed and the run fails",
    )
    p.add_argument("--check-fail-ratio", type=float, default=0.0, help="fail if failures/requests exceeds this")
    p.add_argument("--check-ttfc-p99-ms", type=float, help="fail if p99 time to first character exceeds this")
    p.add_argument("--check-stream-p99-ms", type=float, help="fail if p99 whole-stream time exceeds this")
    p.add_argument("--check-min-rps", type=float, help="fail if aggregated requests/s is below this")
    p.add_argument("locust_args", nargs=argparse.REMAINDER, help="after --: passed to locust (e.g. --max-chars 50)")
    return p.parse_args(argv)


def processes_arg(text: str) -> int:
    """--processes: a count >= 1, or "auto" (0 here, resolved against --users by `locust_processes`)."""
    if text == "auto":
        return 0
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number >= 1, got {text!r}")
    return int(text)


def locust_processes(requested: int, users: int) -> int:
    if requested:
        return requested
    return max(1, min(os.cpu_count() or 1, math.ceil(users / USERS_PER_PROCESS)))


class Target(NamedTuple):
    grpc: str  # HOST:PORT (Locust's --host)
    http: str | None  # the HTTP API root of a started server (Locust's --http-host), None for --target


@contextmanager
def server(args: argparse.Namespace, out: Path) -> Iterator[Target]:
    """The target: the given one, or a `charrnn serve --dev` (gRPC and HTTP on free ports) for the run."""
    if args.target:
        yield Target(args.target, None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        port_file, http_port_file = Path(tmp) / "port", Path(tmp) / "http-port"
        cmd = [
            sys.executable,
            "-m",
            "charrnn.cli",
            "serve",
            "--model",
            str(args.model),
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--metrics-port",
            "0",
            "--http-port",
            "0",
            "--http-port-file",
            str(http_port_file),
            "--dev",
            *args.server_arg,
        ]
        with (out / "server.log").open("wb") as logfile:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                deadline = time.monotonic() + 120
                while not port_file.exists():
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"server did not start; see {out / 'server.log'}")
                    time.sleep(0.1)
                # The HTTP port file is written before the gRPC one (once SERVING).
                target = Target(
                    f"127.0.0.1:{int(port_file.read_text())}", f"http://127.0.0.1:{http_port_file.read_text()}"
                )
                log.info("started a server on %s and %s (log: %s)", target.grpc, target.http, out / "server.log")
                yield target
            finally:
                stop(proc, "server", 60.0)


def schedstat_s(pid: int) -> float | None:
    """Seconds the process's main thread has run plus waited to run (Linux /proc/PID/schedstat), or None."""
    try:
        run_ns, wait_ns = (int(x) for x in Path(f"/proc/{pid}/schedstat").read_text().split()[:2])
    except (OSError, ValueError):
        return None
    return (run_ns + wait_ns) / 1e9


class CpuMonitor:
    """Once a second, for each process of a tree (Locust's master and its workers): the CPU it got, and
    how much of the time its main thread wanted a core (ran or waited in the run queue).

    On a machine shared with the server or other work the two differ: a load generator that always has
    work queued is the bottleneck even when it gets only part of a core, so saturation is judged on
    demand where Linux reports it, on the CPU received elsewhere.
    """

    def __init__(self, pid: int, interval: float = 1.0):
        import psutil  # a dependency of locust

        self._psutil = psutil
        self.root = psutil.Process(pid)
        self.interval = interval
        self.cpu: dict[int, list[float]] = defaultdict(list)
        self.demand: dict[int, list[float]] = defaultdict(list)
        self._known: dict[int, tuple[Any, float, float | None]] = {}  # pid -> (process, time, schedstat)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(self._psutil.Error):
                for proc in [self.root, *self.root.children(recursive=True)]:
                    with contextlib.suppress(self._psutil.Error):
                        self._sample(proc)

    def _sample(self, proc: Any) -> None:
        now, sched = time.monotonic(), schedstat_s(proc.pid)
        if proc.pid not in self._known:  # the first reading starts its clocks
            self._known[proc.pid] = (proc, now, sched)
            proc.cpu_percent(None)
            return
        known, then, sched_then = self._known[proc.pid]
        self.cpu[proc.pid].append(known.cpu_percent(None))
        if sched is not None and sched_then is not None and now > then:
            self.demand[proc.pid].append(100.0 * (sched - sched_then) / (now - then))
        self._known[proc.pid] = (known, now, sched)

    def report(self) -> dict[str, Any]:
        """Per process, the mean CPU got and wanted (percent of one core); whether the busiest was saturated."""

        def means(samples: dict[int, list[float]]) -> list[float]:
            return sorted((round(sum(v) / len(v), 1) for v in samples.values() if v), reverse=True)

        cpu, demand = means(self.cpu), means(self.demand)
        busiest = (demand or cpu or [0.0])[0]
        return {
            "processes": len(cpu),
            "cpu_percent_mean": cpu,
            "cpu_percent_peak": round(max((max(v) for v in self.cpu.values() if v), default=0.0), 1),
            "demand_percent_mean": demand or None,
            "busiest_cpu_percent_mean": cpu[0] if cpu else 0.0,
            "busiest_demand_percent_mean": demand[0] if demand else None,
            "saturated": busiest >= SATURATED_CPU_PERCENT,
            "cores": os.cpu_count(),
        }


def run_locust(args: argparse.Namespace, target: Target, out: Path) -> tuple[int, dict[str, Any]]:
    """Locust's exit code and the CPU its processes used."""
    extra = args.locust_args[1:] if args.locust_args[:1] == ["--"] else args.locust_args
    if target.http is not None and not any(a.split("=")[0] == "--http-host" for a in extra):
        extra = ["--http-host", target.http, *extra]
    processes = locust_processes(args.processes, args.users)
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(HERE / "locustfile.py"),
        "--headless",
        "--host",
        target.grpc,
        "-u",
        str(args.users),
        "-r",
        str(args.spawn_rate or args.users),
        "-t",
        args.duration,
        "--csv",
        str(out / "locust"),
        "--csv-full-history",
        "--html",
        str(out / "report.html"),
        "--only-summary",
        "--results",
        str(out / RESULTS),
        *(["--processes", str(processes)] if processes > 1 else []),
        *extra,
    ]
    log.info("%s", " ".join(cmd))
    limit = seconds(args.duration) + args.grace
    with (out / "locust.log").open("wb") as logfile:
        # Its own process group, so a hung Locust and anything it started can be killed together.
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)
        with CpuMonitor(proc.pid) as cpu:
            try:
                code = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                log.error("locust still running %.0f s after the start (duration + grace): killing it", limit)
                code = LOCUST_TIMEOUT
            finally:
                stop(proc, "locust", 10.0)
    return code, cpu.report()


LOCUST_TIMEOUT = 124  # the run's exit code for a Locust that had to be killed (as timeout(1))


def seconds(duration: str) -> float:
    """Locust's --run-time ("90", "30s", "2m", "1h30m") in seconds."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?", duration.strip())
    if not duration.strip() or parts is None:
        raise ValueError(f"bad duration {duration!r}: expected e.g. 30s, 2m, 1h30m")
    h, m, s = (int(x or 0) for x in parts.groups())
    return float(h * 3600 + m * 60 + s)


def stop(proc: subprocess.Popen[bytes], name: str, timeout: float) -> None:
    """End `proc`'s whole process group: SIGTERM, then SIGKILL after `timeout` seconds; no orphans."""
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.error("%s did not stop within %.0f s of SIGTERM: killing its process group", name, timeout)
    _signal_group(proc, signal.SIGKILL)  # whatever is left of the group, even after its leader exited
    proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "N/A" before a name has any requests
        return None


def plot(out: Path, streams: dict[str, Any]) -> Path:
    """Windowed percentiles over time: TTFC and chunk gaps (from the locustfile), then one panel per call."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = streams.get("window_s", 10)
    panels: list[tuple[str, dict[str, list[tuple[float, float]]]]] = []
    for name, title in (("ttfc", "Streams: time to first character"), ("gap", "Streams: gap between chunks")):
        points = {
            f"p{pct}": [(float(h["t"]), float(h[f"{name}_p{pct}"])) for h in streams.get("history", [])
                        if h.get(f"{name}_p{pct}") is not None]
            for pct in (50, 99)
        }  # fmt: skip
        if any(points.values()):
            panels.append((title, points))
    series: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    rows = read_csv(out / "locust_stats_history.csv")
    t0 = streams.get("started_at") or min((float(r["Timestamp"]) for r in rows), default=0.0)
    for row in rows:
        if row["Name"] not in PLOTTED or row["Total Request Count"] == "0":
            continue
        for pct in PERCENTILES:
            value = number(row[pct])
            if value:  # N/A or 0: the window held no finished call, not a 0 ms call
                series[row["Name"]][f"p{pct.rstrip('%')}"].append((float(row["Timestamp"]) - t0, value))
    panels += [(f"{name} (whole call)", series[name]) for name in PLOTTED if name in series]

    fig, axes = plt.subplots(len(panels) or 1, 1, figsize=(9, 2.4 * max(len(panels), 1)), sharex=True, squeeze=False)
    for ax, (title, points) in zip(axes[:, 0], panels, strict=False):
        for label, values in points.items():
            ax.plot([t for t, _ in values], [v for _, v in values], marker=".", markersize=3, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("ms")
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("seconds since the start")
    fig.suptitle(
        f"latency percentiles over a sliding {window} s window (points only where the window holds data)", fontsize=10
    )
    fig.tight_layout()
    path = out / "latency.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def gates(args: argparse.Namespace, calls: dict[str, dict[str, Any]], report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each requested threshold with the measured value and whether it passed."""
    total = calls["Aggregated"]
    fail_ratio = total["failures"] / total["requests"] if total["requests"] else 1.0
    checks: list[tuple[str, float | None, float | None, bool]] = [
        ("fail_ratio", fail_ratio, args.check_fail_ratio, True),
        ("ttfc_p99_ms", report["ttfc_ms"]["p99"], args.check_ttfc_p99_ms, True),
        ("stream_p99_ms", calls.get("Generate stream", {}).get("p99_ms"), args.check_stream_p99_ms, True),
        ("min_rps", total["requests_per_s"], args.check_min_rps, False),
    ]
    results = []
    for name, measured, limit, upper in checks:
        if limit is None:
            continue
        ok = measured is not None and (measured <= limit if upper else measured >= limit)
        results.append({"check": name, "measured": measured, "limit": limit, "ok": ok})
    return results


def load_report(
    args: argparse.Namespace, calls: dict[str, dict[str, Any]], streams: dict[str, Any], cpu: dict[str, Any]
) -> dict[str, Any]:
    """How fast and how slow, in one place: what the console table shows and summary.json keeps."""
    elapsed = float(streams.get("seconds") or seconds(args.duration))

    def done(name: str) -> int:
        return int(calls.get(name, {}).get("requests", 0) - calls.get(name, {}).get("failures", 0))

    streams_done = sum(done(name) for name in STREAM_CALLS)

    def pcts(name: str) -> dict[str, Any]:
        d = streams.get(name, {})
        return {"p50": d.get("p50_ms"), "p99": d.get("p99_ms"), "count": d.get("count", 0)}

    warning = None
    if cpu["saturated"]:
        wanted = cpu["busiest_demand_percent_mean"]
        warning = (
            "the load generator was the bottleneck: its busiest process "
            + (f"wanted a core {wanted:.0f}% of the time (it got {cpu['busiest_cpu_percent_mean']:.0f}%)"
               if wanted is not None else f"used {cpu['busiest_cpu_percent_mean']:.0f}% of a core")
            + ", so these latencies include its own queueing; rerun with more --processes (up to one per "
            "core), on a quieter machine, or from another machine"
        )  # fmt: skip
    return {
        "users": args.users,
        "seconds": round(elapsed, 1),
        "streams": streams_done,
        "streams_per_s": round(streams_done / elapsed, 2) if elapsed else None,
        "http_streams": done("Completion stream"),
        "session_generations": calls.get("Session generate", {}).get("requests", 0),
        "chars": streams.get("chars", 0),
        "chars_per_s": round(streams.get("chars", 0) / elapsed, 1) if elapsed else None,
        "ttfc_ms": pcts("ttfc"),
        "gap_ms": pcts("gap"),
        "errors_by_code": streams.get("errors_by_code", {}),
        "load_generator": {**cpu, "warning": warning},
    }


def report_table(report: dict[str, Any]) -> list[str]:
    """The report as the lines the console shows."""

    def ms(d: dict[str, Any]) -> str:
        return "no data" if d["p50"] is None else f"{d['p50']:g} / {d['p99']:g} ms   ({d['count']} samples)"

    errors = ", ".join(f"{code} {n}" for code, n in report["errors_by_code"].items()) or "none"
    gen = report["load_generator"]
    rows = [
        ("users", f"{report['users']} for {report['seconds']:g} s"),
        ("streams", f"{report['streams']} streams ({report['streams_per_s']}/s; {report['http_streams']} of them "
                    f"over HTTP), {report['session_generations']} Session generations"),
        ("chars/s", f"{report['chars_per_s']}  (every streamed character, all users)"),
        ("TTFC p50 / p99", ms(report["ttfc_ms"])),
        ("gap p50 / p99", ms(report["gap_ms"])),
        ("errors", errors),
        ("load generator", f"{gen['processes']} process(es); the busiest got {gen['busiest_cpu_percent_mean']:.0f}% "
                           f"of a core" + ("" if gen["busiest_demand_percent_mean"] is None else
                           f" and wanted one {gen['busiest_demand_percent_mean']:.0f}% of the time")
                           + f"; {gen['cores']} cores"),
    ]  # fmt: skip
    lines = [f"{name:<15} {value}" for name, value in rows]
    if gen["warning"]:
        lines.append(f"WARNING: {gen['warning']}")
    return lines


def _terminated(signum: int, frame: Any) -> None:
    """SIGTERM (e.g. from a test's timeout) unwinds through the `finally`s that stop Locust and the server."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    with server(args, out) as target:
        code, cpu = run_locust(args, target, out)
    if code == LOCUST_TIMEOUT:
        log.error("locust timed out (killed); see %s", out / "locust.log")
        return 1
    results_path = out / RESULTS
    if not results_path.exists():
        log.error("locust wrote no results (exit %d); see %s", code, out / "locust.log")
        return 1
    measured = json.loads(results_path.read_text())
    calls, streams = measured["calls"], measured["streams"]
    report = load_report(args, calls, streams, cpu)
    results = gates(args, calls, report)
    summary = {
        "target": target.grpc,
        "http_target": target.http,
        "users": args.users,
        "duration": args.duration,
        "locust_exit_code": code,
        "report": report,
        "requests": {n: c["requests"] for n, c in calls.items()},
        "failures": {n: c["failures"] for n, c in calls.items()},
        "gates": results,
        "png": str(plot(out, streams)),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    for line in report_table(report):
        (log.warning if line.startswith("WARNING") else log.info)("%s", line)
    for gate in results:
        log.info(
            "%-14s %s measured %s, limit %s",
            gate["check"],
            "ok  " if gate["ok"] else "FAIL",
            gate["measured"],
            gate["limit"],
        )
    log.info("reports in %s (summary.json, results.json, latency.png, report.html, locust_*.csv)", out)
    return 0 if code == 0 and all(g["ok"] for g in results) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
