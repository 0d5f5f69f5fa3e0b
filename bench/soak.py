"""`charrnn bench soak`: mixed traffic for N minutes (30 in `make bench-soak`), to show that nothing leaks and
that no request disturbs another.

Traffic: `--streams` clients (64), `--http-share` of them over HTTP (whole completions and server-sent
events), the rest over gRPC, each looping: a generation (`--cancel-share` cut after a few chunks: a
cancellation), `--resume-share` of them continuing the client's previous text from its resume token, and,
over gRPC, `--score-share` a Score instead; session-churn clients (bidirectional Session: feed, generate,
token, close or abandon; Generate with create_session, left to expire); one client sending the hostile
catalogue (bench/hostile.py: the fuzz's bad requests) over both edges; and four bystanders
(bench/bystanders.py), seeded streams whose every run must equal their text alone.

Reports RSS every minute (goal: every sample after the warm-up within 10 % of the warm-up figure), errors by
code (the hostile client's refusals are counted apart: only a 5xx or INTERNAL among them is an error), the
bystanders' exactness, and whether the live-stream, queue and session gauges return to zero. Writes
bench-soak.json, bench-soak.txt (the table) and bench-soak-rss.png (RSS over time) to --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.client import HTTPException
from pathlib import Path
from typing import Any

import grpc

from bench.bystanders import Bystanders, standard
from bench.completions import CompletionsClient, HttpRefusal
from bench.hostile import grpc_cases, http_cases
from bench.plotting import axes
from bench.proctree import rss_bytes
from bench.reliability import (
    Tally,
    backoff,
    consume,
    gap_summary,
    run_clients,
    run_settings,
    session_body,
    wait_for_zero,
)
from bench.serve import PROMPT, ServerProcess
from charrnn.client import CharRNNError, Client

log = logging.getLogger(__name__)

SETTINGS = ("minutes", "streams", "http_share", "session_clients", "cancel_share", "resume_share", "score_share",
            "hostile_per_second", "max_chars", "session_ttl", "warm_up_seconds", "sample_seconds")  # fmt: skip
RSS_FLAT = 0.10  # every sample after the warm-up within this share of the warm-up figure
HOSTILE_FAILURES = ("INTERNAL", "UNKNOWN")  # gRPC codes that, like a 5xx, mean the server failed


def _mixed_body(tally: Tally, args: argparse.Namespace, http_url: str) -> Callable[[int, Client, float], None]:
    """Client i's turn: over gRPC for the first (1 - http_share) of the clients, over HTTP for the rest."""
    grpc_clients = round(args.streams * (1 - args.http_share))
    tokens: dict[int, Any] = {}  # each client's last resume token (bytes over gRPC, base64url over HTTP)
    http: dict[int, CompletionsClient] = {}

    def grpc_turn(i: int, client: Client) -> None:
        if random.random() < args.score_share:
            client.score(PROMPT * 4)
            tally.count("grpc scores")
            return
        token = tokens.pop(i, None) if random.random() < args.resume_share else None
        cut = random.randint(1, 4) if random.random() < args.cancel_share else None
        start = {"resume_token": token} if token is not None else {"seed": random.getrandbits(31)}
        gen = client.generate("" if token else PROMPT, max_chars=args.max_chars, temperature=1.0, **start)
        try:
            consume(gen, tally, time.perf_counter(), cut)
        finally:
            gen.cancel()
        if cut is None and gen.result is not None:
            tokens[i] = gen.result.resume_token
        tally.count("grpc cancelled" if cut else "grpc resumed" if token else "grpc streams")

    def http_turn(i: int) -> None:
        if i not in http:
            http[i] = CompletionsClient(http_url, args.minutes * 60 + 60)
        edge = http[i]
        token = tokens.pop(i, None) if random.random() < args.resume_share else None
        cut = random.randint(1, 4) if random.random() < args.cancel_share else None
        body: dict[str, Any] = {"prompt": "" if token else PROMPT, "max_tokens": args.max_chars, "temperature": 1.0}
        body |= {"charrnn": {"resume_token": token}} if token else {"seed": random.getrandbits(31)}
        body["stream"] = cut is not None or random.random() < 0.5
        done = edge.complete(body, cut)
        with tally.lock:
            tally.chars += len(done.text)
        if done.resume_token is not None:
            tokens[i] = done.resume_token
        tally.count("http cancelled" if cut else "http resumed" if token else "http streams")

    def body(i: int, client: Client, end: float) -> None:
        try:
            if i < grpc_clients:
                grpc_turn(i, client)
            else:
                http_turn(i)
        except CharRNNError as exc:
            tally.error(exc)
            backoff(exc.retry_pushback_ms)
        except HttpRefusal as exc:
            tally.failed(exc.code, exc.retry_after_ms)
            backoff(exc.retry_after_ms)
        except (OSError, HTTPException) as exc:  # a connection the server closed or reset
            tally.failed(f"HTTP connection: {type(exc).__name__}", None)
            http.pop(i, None)

    return body


def _hostile(args: argparse.Namespace, server: ServerProcess, seconds: float, bystanders: Bystanders,
             answers: Counter[str], failures: Counter[str]) -> None:  # fmt: skip
    """Send the hostile catalogue, picked at random, `hostile_per_second` a second until `seconds` pass."""
    if args.hostile_per_second <= 0:
        return
    over_http, over_grpc = http_cases(), grpc_cases()
    edge = CompletionsClient(server.http_url, 60)
    end = time.perf_counter() + seconds
    with grpc.insecure_channel(server.target) as channel:
        while time.perf_counter() < end:
            bystanders.witness()
            if random.random() < 0.5:
                case = random.choice(over_http)
                name, code = case.name, _http_status(edge, case.body, dict(case.headers))
                failed = code.startswith("HTTP 5")
            else:
                name, method, payload = random.choice(over_grpc)
                code = _grpc_code(channel, method, payload)
                failed = code in HOSTILE_FAILURES
            answers[code] += 1
            if failed:
                failures[f"{name}: {code}"] += 1
            time.sleep(1 / args.hostile_per_second)
    edge.close()


def _http_status(edge: CompletionsClient, body: bytes, headers: dict[str, str]) -> str:
    try:
        return f"HTTP {edge.status(body, headers)}"
    except OSError as exc:  # the server may close a connection whose body it refused
        return f"HTTP connection: {type(exc).__name__}"


def _grpc_code(channel: grpc.Channel, method: str, payload: bytes) -> str:
    """The status code name of one raw call (a stream is read to its end)."""
    path = f"/charrnn.v1.CharRNN/{method}"
    try:
        if method == "Score":
            channel.unary_unary(path, request_serializer=bytes)(payload, timeout=60)
        else:
            list(channel.unary_stream(path, request_serializer=bytes)(payload, timeout=60))
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return "OK"


def soak(args: argparse.Namespace) -> dict[str, Any]:
    load_start = os.getloadavg()[0]
    seconds = args.minutes * 60
    warm_up = min(args.warm_up_seconds, seconds / 3)
    flags = ["--max-live-streams", str(args.streams), "--max-queued-streams", str(2 * args.streams + 16),
             "--max-request-chars", str(args.max_chars), "--default-max-chars", str(args.max_chars),
             "--session-ttl-seconds", str(args.session_ttl), "--max-sessions", "4096"]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="charrnn-soak-") as tmp:
        server = ServerProcess(args.model, Path(tmp), "soak", flags, metrics=True, http=True)
        try:
            rss: dict[str, float] = {"start_mb": rss_bytes(server.pid) / 2**20}
            bystanders = Bystanders(server.target, server.http_url, standard(args.max_chars)).start()
            samples: list[tuple[float, float]] = []
            streams, sessions = Tally(), Tally()
            answers, failures = Counter[str](), Counter[str]()
            stop = threading.Event()

            def sample() -> None:
                t0 = time.perf_counter()
                while not stop.wait(args.sample_seconds):
                    elapsed, mb = time.perf_counter() - t0, rss_bytes(server.pid) / 2**20
                    if samples and int(elapsed // 60) > int(samples[-1][0] // 60):  # progress, once a minute
                        log.info("soak: minute %d of %d, server RSS %.1f MB", elapsed // 60, args.minutes, mb)
                    samples.append((elapsed, mb))

            drivers = [
                threading.Thread(target=sample, daemon=True),
                threading.Thread(target=run_clients, args=(args.streams, seconds,
                                 _mixed_body(streams, args, server.http_url), server.target)),
                threading.Thread(target=run_clients, args=(args.session_clients, seconds,
                                 session_body(sessions, args.max_chars), server.target)),
                threading.Thread(target=_hostile, args=(args, server, seconds, bystanders, answers, failures)),
            ]  # fmt: skip
            log.info("soak: %d streams + %d session clients for %.0f s", args.streams, args.session_clients, seconds)
            for t in drivers:
                t.start()
            for t in drivers[1:]:
                t.join()
            stop.set()
            drivers[0].join()
            witnessed = bystanders.stop()
            rss["end_mb"] = rss_bytes(server.pid) / 2**20
            gauges = wait_for_zero(server.metrics_url, args.session_ttl + args.drain_seconds)
            rss["after_drain_mb"] = rss_bytes(server.pid) / 2**20
        finally:
            server.close()
    after = [mb for elapsed, mb in samples if elapsed >= warm_up] or [rss["end_mb"]]
    rss["after_warm_up_mb"] = after[0]
    deviation = max(abs(mb / after[0] - 1) for mb in after)
    errors = streams.errors + sessions.errors + Counter({f"hostile {k}": v for k, v in failures.items()})
    errors += Counter({"bystander mismatches": len(witnessed.mismatches), "bystander errors": len(witnessed.errors)})
    return {
        "settings": run_settings(args, SETTINGS, load_start),
        "operations": dict(streams.ok + sessions.ok),
        "errors": {k: v for k, v in errors.items() if v},
        "hostile_answers": dict(answers),
        "bystanders": witnessed.summary(),
        "stream_gaps": gap_summary(streams),
        "rss": rss,
        "rss_by_minute": _by_minute(samples),
        "rss_deviation_after_warm_up": deviation,
        "rss_flat": deviation <= RSS_FLAT,
        "rss_samples": samples,
        "gauges_after": gauges,
        "gauges_zero": bool(gauges) and all(v == 0 for v in gauges.values()),
        "goals": {"rss_deviation_after_warm_up_max": RSS_FLAT, "errors": 0, "bystanders_exact": True,
                  "gauges_after": 0},
    }  # fmt: skip


def _by_minute(samples: list[tuple[float, float]]) -> list[tuple[int, float]]:
    """The last RSS sample of each minute."""
    last: dict[int, float] = {}
    for elapsed, mb in samples:
        last[int(elapsed // 60)] = mb
    return sorted(last.items())


def table(r: dict[str, Any]) -> str:
    s, rss, g, b = r["settings"], r["rss"], r["stream_gaps"], r["bystanders"]
    ops = ", ".join(f"{k} {v}" for k, v in sorted(r["operations"].items()))
    hostile = ", ".join(f"{k} {v}" for k, v in sorted(r["hostile_answers"].items()))
    runs = sum(b["runs"].values())
    lines = [
        f"soak: {s['minutes']} min, {s['streams']} streams ({s['http_share']:.0%} over HTTP, {s['cancel_share']:.0%} "
        f"cancelled, {s['resume_share']:.0%} resumed, {s['score_share']:.0%} Score) + {s['session_clients']} "
        f"session clients + the hostile catalogue at {s['hostile_per_second']}/s; load average "
        f"{s['loadavg_start']:.2f} -> {s['loadavg_end']:.2f} ({s['cpus']} CPUs)",
        f"operations: {ops}",
        f"hostile requests' answers: {hostile or 'none'}",
        f"errors by code: {r['errors'] or 'none'}",
        f"bystanders: {runs} runs, {b['mismatches']} mismatches, {b['errors']} errors "
        f"({'exact' if b['exact'] else 'NOT exact'}); {b['requests_beside_a_bystander']} of "
        f"{b['requests_witnessed']} hostile requests sent while one ran",
        f"stream gap p50/p99: {g['gap_p50_ms']:.1f}/{g['gap_p99_ms']:.1f} ms",
        "",
        f"{'minute':>6} {'RSS MB':>8}",
        *(f"{minute:>6} {mb:>8.1f}" for minute, mb in r["rss_by_minute"]),
        "",
        f"server RSS MB: start {rss['start_mb']:.1f}, after warm-up {rss['after_warm_up_mb']:.1f}, "
        f"end {rss['end_mb']:.1f}, after drain {rss['after_drain_mb']:.1f}; largest deviation after warm-up "
        f"{r['rss_deviation_after_warm_up']:.1%} (goal <= {RSS_FLAT:.0%}: {'met' if r['rss_flat'] else 'NOT met'})",
        f"gauges after: {r['gauges_after']} ({'all zero' if r['gauges_zero'] else 'NOT zero'})",
    ]
    return "\n".join(lines)


def plot(r: dict[str, Any], path: Path) -> None:
    settings, samples = r["settings"], r["rss_samples"]
    with axes(path, (7, 4)) as ax:
        ax.plot([t / 60 for t, _ in samples], [mb for _, mb in samples], "-", label="server RSS")
        warm, base = min(settings["warm_up_seconds"], settings["minutes"] * 20) / 60, r["rss"]["after_warm_up_mb"]
        ax.axvline(warm, color="grey", linestyle=":", label="end of warm-up")
        ax.axhspan(base * (1 - RSS_FLAT), base * (1 + RSS_FLAT), color="green", alpha=0.1, label=f"±{RSS_FLAT:.0%}")
        ax.set_xlabel("minutes")
        ax.set_ylabel("RSS (MB)")
        ax.set_title(f"charrnn bench soak: {settings['streams']} streams, {settings['minutes']} min")


def main(args: argparse.Namespace) -> int:
    report = soak(args)
    text = table(report)
    print(text)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-soak.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "bench-soak.txt").write_text(text + "\n")
    plot(report, out / "bench-soak-rss.png")
    print(f"\nwrote {out / 'bench-soak.json'}, bench-soak.txt and bench-soak-rss.png")
    return 0
