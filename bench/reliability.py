"""`charrnn bench overload`, and the client loops the soak (bench/soak.py) shares with it.

overload: measure the inter-chunk gap p99 of a few streams on an idle server, then drive `--factor`
times (live + queue limit) concurrent clients. The excess must be refused with RESOURCE_EXHAUSTED
(and a retry hint), admitted streams must keep their pace (gap p99 within 2x of the unloaded figure)
and the server's RSS must stay flat. Refused clients honour the hint before trying again, as a real
client should; that is what keeps the overload from turning into a busy loop on the client side.

A benchmark, not a test: it reports measured figures and the goals next to them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.proctree import rss_bytes
from bench.serve import PROMPT, ServerProcess, percentile_ms
from charrnn.client import CharRNNError, Client, Generation

log = logging.getLogger(__name__)

GAUGES = ("charrnn_live_streams", "charrnn_queued_streams", "charrnn_sessions")
OVERLOAD_SETTINGS = ("max_live_streams", "max_queued_streams", "factor", "seconds", "max_chars", "flush_interval_ms")
MAX_BACKOFF_S = 2.0  # cap on a refused client's wait, whatever the hint says


def scrape(url: str, names: tuple[str, ...] = GAUGES) -> dict[str, float]:
    """The samples `names` from a Prometheus text page, each summed over its label sets (every model's)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    values = {}
    for name in names:
        found = re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
        if found:
            values[name] = sum(float(v) for v in found)
    return values


@dataclass
class Tally:
    """What a phase's clients saw, merged under one lock (threads append; the report reads at the end)."""

    gaps: list[float] = field(default_factory=list)
    ttfc: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    ok: Counter[str] = field(default_factory=Counter)  # completed operations by kind
    refused_with_pushback: int = 0
    chars: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def error(self, exc: CharRNNError) -> None:
        self.failed(exc.code.name, exc.retry_pushback_ms)

    def failed(self, code: str, retry_pushback_ms: int | None) -> None:
        """A refusal or failure under `code` (a gRPC code's name, or the HTTP status the edge answered)."""
        with self.lock:
            self.errors[code] += 1
            if code in (grpc.StatusCode.RESOURCE_EXHAUSTED.name, "HTTP 429") and retry_pushback_ms is not None:
                self.refused_with_pushback += 1

    def count(self, kind: str) -> None:
        with self.lock:
            self.ok[kind] += 1


def consume(gen: Generation, tally: Tally, sent: float, cancel_after: int | None = None) -> None:
    """Read a stream, recording time to first chunk and the gaps between chunks; cancel after that many
    chunks when `cancel_after` is set (the rest of the stream is then CANCELLED on the server)."""
    last: float | None = None
    gaps: list[float] = []
    chars = 0
    for chunks, chunk in enumerate(gen, 1):
        now = time.perf_counter()
        if last is None:
            with tally.lock:
                tally.ttfc.append(now - sent)
        else:
            gaps.append(now - last)
        last = now
        chars += len(chunk)
        if cancel_after is not None and chunks >= cancel_after:
            gen.cancel()
            break
    with tally.lock:
        tally.gaps.extend(gaps)
        tally.chars += chars


def run_clients(n: int, seconds: float, body: Callable[[int, Client, float], None], target: str) -> None:
    """`n` threads sharing one channel, each calling `body(i, client, end)` in a loop until `end`."""
    end = time.perf_counter() + seconds

    def loop(i: int, client: Client) -> None:
        while time.perf_counter() < end:
            try:
                body(i, client, end)
            except Exception:  # a bug in a client thread must show, not silently end the thread
                log.exception("client %d failed", i)
                time.sleep(0.5)

    with Client(target, timeout=seconds + 60) as client:
        threads = [threading.Thread(target=loop, args=(i, client), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 120)


def backoff(retry_pushback_ms: int | None) -> None:
    """Wait out a refusal's retry hint, capped and jittered (as a real client should); nothing without one."""
    if retry_pushback_ms is not None:
        time.sleep(min(retry_pushback_ms / 1000, MAX_BACKOFF_S) * random.uniform(0.5, 1.0))


def stream_body(tally: Tally, max_chars: int, cancel_share: float = 0.0) -> Callable[[int, Client, float], None]:
    """One Generate per call; refusals wait out the server's retry hint (capped, jittered)."""

    def body(i: int, client: Client, end: float) -> None:
        sent = time.perf_counter()
        cancel_after = random.randint(1, 4) if random.random() < cancel_share else None
        gen = client.generate(PROMPT, max_chars=max_chars, temperature=1.0, seed=random.getrandbits(31))
        try:
            consume(gen, tally, sent, cancel_after)
            tally.count("cancelled" if cancel_after is not None else "streams")
        except CharRNNError as exc:
            tally.error(exc)
            backoff(exc.retry_pushback_ms)
        finally:
            gen.cancel()

    return body


def gap_summary(tally: Tally) -> dict[str, float | int]:
    return {
        "streams_completed": sum(tally.ok.values()),
        "chunks": len(tally.gaps),
        "gap_p50_ms": percentile_ms(tally.gaps, 50),
        "gap_p99_ms": percentile_ms(tally.gaps, 99),
        "ttfc_p99_ms": percentile_ms(tally.ttfc, 99),
    }


def run_settings(args: argparse.Namespace, names: tuple[str, ...], load_start: float) -> dict[str, Any]:
    """The run's parameters plus the machine's 1-minute load at the start and end (shared machines drift)."""
    machine = {"cpus": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": os.getloadavg()[0]}
    return {"model": str(args.model)} | machine | {n: getattr(args, n) for n in names}


def overload(args: argparse.Namespace) -> dict[str, Any]:
    load_start = os.getloadavg()[0]
    capacity = args.max_live_streams + args.max_queued_streams
    clients = args.factor * capacity
    flags = ["--max-live-streams", str(args.max_live_streams), "--max-queued-streams", str(args.max_queued_streams),
             "--max-request-chars", str(args.max_chars), "--default-max-chars", str(args.max_chars),
             "--flush-interval-ms", str(args.flush_interval_ms)]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="charrnn-overload-") as tmp:
        server = ServerProcess(args.model, Path(tmp), "overload", flags)
        try:
            log.info("unloaded: %d streams for %.0f s", args.baseline_streams, args.baseline_seconds)
            baseline = Tally()
            body = stream_body(baseline, args.max_chars)
            run_clients(args.baseline_streams, args.baseline_seconds, body, server.target)
            rss_start = rss_bytes(server.pid)
            log.info("overload: %d clients against %d slots for %.0f s", clients, capacity, args.seconds)
            loaded = Tally()
            run_clients(clients, args.seconds, stream_body(loaded, args.max_chars), server.target)
            rss_end = rss_bytes(server.pid)
        finally:
            server.close()
    unloaded, under = gap_summary(baseline), gap_summary(loaded)
    refused = loaded.errors.get("RESOURCE_EXHAUSTED", 0)
    ratio = float(under["gap_p99_ms"]) / float(unloaded["gap_p99_ms"])
    return {
        "settings": run_settings(args, OVERLOAD_SETTINGS, load_start) | {"clients": clients, "capacity": capacity},
        "unloaded": unloaded | {"streams": args.baseline_streams, "errors": dict(baseline.errors)},
        "overloaded": under | {"errors": dict(loaded.errors)},
        "refused": refused,
        "refused_with_pushback": loaded.refused_with_pushback,
        "other_errors": sum(v for k, v in loaded.errors.items() if k != "RESOURCE_EXHAUSTED"),
        "gap_p99_ratio": ratio,
        "rss_start_mb": rss_start / 2**20,
        "rss_end_mb": rss_end / 2**20,
        "rss_growth": rss_end / rss_start - 1,
        "goals": {"gap_p99_ratio_max": 2.0, "refused_code": "RESOURCE_EXHAUSTED"},
    }


def session_body(tally: Tally, max_chars: int) -> Callable[[int, Client, float], None]:
    """Session churn: a bidirectional Session (feed, generate, token; closed, or abandoned mid-generation
    one time in four), then a Generate that creates a server-side session left to expire by TTL."""

    def body(i: int, client: Client, end: float) -> None:
        try:
            with client.session() as s:
                s.feed(PROMPT)
                gen = s.generate(max_chars=max_chars, temperature=1.0)
                if random.random() < 0.25:
                    next(gen, None)
                    s.abort()
                    tally.count("sessions_abandoned")
                    return
                gen.text()
                s.token()
            tally.count("sessions_closed")
            made = client.generate(PROMPT, max_chars=20, create_session=True)
            made.text()
            tally.count("sessions_left_to_expire")
        except CharRNNError as exc:
            tally.error(exc)
            time.sleep(0.2)

    return body


def wait_for_zero(url: str, seconds: float) -> dict[str, float]:
    """Poll the gauges until all are zero or `seconds` pass (sessions need their TTL to expire)."""
    deadline = time.monotonic() + seconds
    while True:
        gauges = scrape(url)
        if (gauges and all(v == 0 for v in gauges.values())) or time.monotonic() > deadline:
            return gauges
        time.sleep(1.0)


def overload_table(r: dict[str, Any]) -> str:
    s, u, o = r["settings"], r["unloaded"], r["overloaded"]
    lines = [
        f"overload: {s['clients']} clients vs {s['capacity']} slots (max-live-streams {s['max_live_streams']}, "
        f"max-queued-streams {s['max_queued_streams']}), {s['seconds']:.0f} s",
        f"{'phase':<12} {'streams done':>12} {'gap p50 ms':>11} {'gap p99 ms':>11} {'TTFC p99 ms':>12}",
    ]
    for name, g in (("unloaded", u), ("overloaded", o)):
        lines.append(
            f"{name:<12} {g['streams_completed']:>12} {g['gap_p50_ms']:>11.1f} {g['gap_p99_ms']:>11.1f} "
            f"{g['ttfc_p99_ms']:>12.1f}"
        )
    lines += [
        f"gap p99 overloaded/unloaded: {r['gap_p99_ratio']:.2f}x (goal <= 2x)",
        f"refused RESOURCE_EXHAUSTED: {r['refused']} ({r['refused_with_pushback']} with grpc-retry-pushback-ms); "
        f"other errors: {r['other_errors']} {o['errors']}",
        f"server RSS: {r['rss_start_mb']:.1f} MB -> {r['rss_end_mb']:.1f} MB ({r['rss_growth']:+.1%})",
    ]
    return "\n".join(lines)


def _write(report: dict[str, Any], text: str, out: Path, name: str) -> int:
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{name}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {path}")
    return 0


def main_overload(args: argparse.Namespace) -> int:
    report = overload(args)
    return _write(report, overload_table(report), args.out, "overload")
