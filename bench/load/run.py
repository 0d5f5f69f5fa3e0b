"""`make load`: run Locust headless against a server (one is started when no --target is given).

Writes into --out: Locust's CSV files (with full history) and HTML report, `latency.png`
(latency percentiles over time per request name) and `summary.json` (totals and gate results).
Threshold gates (`--check-*`) belong here, not in unit tests: this machine is too noisy for them.

    python bench/load/run.py --users 16 --duration 60s --out load-results/run1 --check-ttfc-p99-ms 250
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger("charrnn.load")
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PLOTTED = ("Generate ttfc", "Generate stream", "Session generate", "Score")
PERCENTILES = ("50%", "95%", "99%")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", help="HOST:PORT of a running server (default: start one)")
    p.add_argument("--model", type=Path, default=REPO / "models" / "default", help="artifact for the started server")
    p.add_argument("--server-arg", action="append", default=[], help="extra `charrnn serve` flag (repeatable)")
    p.add_argument("--users", type=int, default=8, help="concurrent Locust users")
    p.add_argument("--spawn-rate", type=float, default=0.0, help="users started per second (default: all at once)")
    p.add_argument("--duration", default="30s", help="Locust --run-time, e.g. 30s, 2m")
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


@contextmanager
def server(args: argparse.Namespace, out: Path) -> Iterator[str]:
    """The target: the given one, or a `charrnn serve --dev` on a free port for the run's duration."""
    if args.target:
        yield args.target
        return
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
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
                target = f"127.0.0.1:{int(port_file.read_text())}"
                log.info("started a server on %s (log: %s)", target, out / "server.log")
                yield target
            finally:
                stop(proc, "server", 60.0)


def run_locust(args: argparse.Namespace, target: str, out: Path) -> int:
    extra = args.locust_args[1:] if args.locust_args[:1] == ["--"] else args.locust_args
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(HERE / "locustfile.py"),
        "--headless",
        "--host",
        target,
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
        *extra,
    ]
    log.info("%s", " ".join(cmd))
    limit = seconds(args.duration) + args.grace
    with (out / "locust.log").open("wb") as logfile:
        # Its own process group, so a hung Locust and anything it started can be killed together.
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            log.error("locust still running %.0f s after the start (duration + grace): killing it", limit)
            return LOCUST_TIMEOUT
        finally:
            stop(proc, "locust", 10.0)


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


def plot(out: Path) -> Path:
    """Latency percentiles over time, one panel per request name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    rows = read_csv(out / "locust_stats_history.csv")
    t0 = min((float(r["Timestamp"]) for r in rows), default=0.0)
    for row in rows:
        if row["Name"] not in PLOTTED or row["Total Request Count"] == "0":
            continue
        for pct in PERCENTILES:
            value = number(row[pct])
            if value is not None:
                series[row["Name"]][pct].append((float(row["Timestamp"]) - t0, value))
    names = [n for n in PLOTTED if n in series]
    fig, axes = plt.subplots(len(names) or 1, 1, figsize=(9, 2.6 * max(len(names), 1)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=False):
        for pct, points in series[name].items():
            ax.plot([t for t, _ in points], [v for _, v in points], label=f"p{pct.rstrip('%')}")
        ax.set_title(name)
        ax.set_ylabel("ms")
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("seconds since start")
    fig.tight_layout()
    path = out / "latency.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def gates(args: argparse.Namespace, stats: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """Each requested threshold with the measured value and whether it passed."""
    total = stats["Aggregated"]
    requests = float(total["Request Count"])
    checks: list[tuple[str, float | None, float | None, bool]] = [
        ("fail_ratio", float(total["Failure Count"]) / requests if requests else 1.0, args.check_fail_ratio, True),
        ("ttfc_p99_ms", number(stats.get("Generate ttfc", {}).get("99%", "")), args.check_ttfc_p99_ms, True),
        ("stream_p99_ms", number(stats.get("Generate stream", {}).get("99%", "")), args.check_stream_p99_ms, True),
        ("min_rps", number(total["Requests/s"]), args.check_min_rps, False),
    ]
    results = []
    for name, measured, limit, upper in checks:
        if limit is None:
            continue
        ok = measured is not None and (measured <= limit if upper else measured >= limit)
        results.append({"check": name, "measured": measured, "limit": limit, "ok": ok})
    return results


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
        code = run_locust(args, target, out)
    if code == LOCUST_TIMEOUT:
        log.error("locust timed out (killed); see %s", out / "locust.log")
        return 1
    stats_path = out / "locust_stats.csv"
    if not stats_path.exists():
        log.error("locust wrote no statistics (exit %d); see %s", code, out / "locust.log")
        return 1
    stats = {row["Name"]: row for row in read_csv(stats_path)}
    results = gates(args, stats)
    summary = {
        "target": target,
        "users": args.users,
        "duration": args.duration,
        "locust_exit_code": code,
        "requests": {n: int(r["Request Count"]) for n, r in stats.items()},
        "failures": {n: int(r["Failure Count"]) for n, r in stats.items()},
        "gates": results,
        "png": str(plot(out)),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    for gate in results:
        log.info(
            "%-14s %s measured %s, limit %s",
            gate["check"],
            "ok  " if gate["ok"] else "FAIL",
            gate["measured"],
            gate["limit"],
        )
    log.info("reports in %s (report.html, latency.png, locust_*.csv, summary.json)", out)
    return 0 if code == 0 and all(g["ok"] for g in results) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
