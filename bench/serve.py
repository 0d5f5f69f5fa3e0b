"""`charrnn bench serve`: the serving core against the model's own speed, through real gRPC.

For each stream count (default 1, 16, 64, 256) and a fixed duration, an asyncio client (one process, one
event loop: light enough not to be what is measured) drives that many concurrent Generate streams (their
first requests spread over half a second, as independent clients' would be, then back to back) against
servers started as separate processes: `1-worker` (one decode worker: decoding on one core), `default` (the
shipped settings: two decode workers, one ONNX Runtime thread each; --server-flags adds to them) and, with
--unbatched, batching off (--max-live-streams 1). The ceiling is the in-process ONNX Runtime loop (one decode
step for the whole batch, argmax fed back) on one thread, measured in the same run: every figure is a ratio
to it, because absolute speeds drift between runs on shared machines.

The interference case runs 16 streams alone, then beside a client scoring a 60,000-character text over and
over, then beside Session feeds of the same total: the streams' inter-chunk gap p99 must stay within 1.5x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.plotting import axes
from charrnn.v1 import charrnn_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

PROMPT = "def main(argv):\n    "
RAMP_S = 0.5  # the streams' first requests are spread over this long


@dataclass
class LoadResult:
    mode: str
    streams: int
    chars_per_s: float
    ttfc_p50_ms: float
    ttfc_p99_ms: float
    gap_p50_ms: float
    gap_p99_ms: float
    messages: int
    chars_per_message: float
    errors: int = 0


def percentile_ms(values: list[float], q: float) -> float:
    """The q-th percentile of durations in seconds, in milliseconds (NaN for none)."""
    return float(np.percentile(values, q) * 1000) if values else float("nan")


@dataclass
class _Tally:
    ttfc: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    chars: int = 0
    messages: int = 0
    errors: int = 0


async def _streams(stub: Any, n: int, end: float, max_chars: int, tally: _Tally) -> None:
    """`n` concurrent Generate streams, each issuing calls back to back until `end`."""
    from charrnn.v1 import charrnn_pb2 as pb

    async def one(i: int) -> None:
        seed = i * 1_000_003
        await asyncio.sleep(RAMP_S * i / n)  # independent clients arrive spread out, not all in one instant
        while time.perf_counter() < end:
            seed += 1
            request = pb.GenerateRequest(prompt=PROMPT, max_chars=max_chars,
                                         sampling=pb.SamplingParams(temperature=1.0, seed=seed))  # fmt: skip
            sent = time.perf_counter()
            last = None
            call = stub.Generate(request)
            try:
                async for response in call:
                    now = time.perf_counter()
                    if now >= end:
                        call.cancel()
                        break
                    if not response.text:
                        continue
                    tally.chars += len(response.text)
                    tally.messages += 1
                    if last is None:
                        tally.ttfc.append(now - sent)
                    else:
                        tally.gaps.append(now - last)
                    last = now
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    tally.errors += 1
                    log.warning("stream %d failed: %s", i, exc.details())

    await asyncio.gather(*(one(i) for i in range(n)))


async def _background(stub: Any, kind: str, text: str, end: float, max_feed: int) -> int:
    """Score `text` over and over, or feed it to a Session in pieces of `max_feed`; returns texts done."""
    from charrnn.v1 import charrnn_pb2 as pb

    done = 0
    while time.perf_counter() < end:
        if kind == "score":
            await stub.Score(pb.ScoreRequest(text=text))
        else:
            pieces = [text[i : i + max_feed] for i in range(0, len(text), max_feed)]
            call = stub.Session(iter(pb.SessionRequest(feed=pb.FeedAction(text=p)) for p in pieces))
            async for _ in call:
                pass
        done += 1
    return done


def drive(target: str, mode: str, streams: int, duration: float, max_chars: int, background: str = "",
          text: str = "", max_feed: int = 8192) -> LoadResult:  # fmt: skip
    """`streams` concurrent streams for `duration` seconds (beside a `background` Score/feed loop, if set)."""
    tally = _Tally()

    async def main() -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.CharRNNStub(channel)
            end = time.perf_counter() + duration
            jobs: list[Awaitable[object]] = [_streams(stub, streams, end, max_chars, tally)]
            if background:
                jobs.append(_background(stub, background, text, end, max_feed))
            await asyncio.gather(*jobs)

    start = time.perf_counter()
    asyncio.run(main())
    elapsed = time.perf_counter() - start
    return LoadResult(
        mode, streams, tally.chars / min(elapsed, duration), percentile_ms(tally.ttfc, 50),
        percentile_ms(tally.ttfc, 99), percentile_ms(tally.gaps, 50), percentile_ms(tally.gaps, 99),
        tally.messages, tally.chars / max(1, tally.messages), tally.errors,
    )  # fmt: skip


def ceiling(model: Path, threads: int, batch: int, duration: float) -> LoadResult:
    """The in-process ORT loop: one decode step for all rows, argmax fed back; no gRPC, no sampling."""
    from charrnn.engine import Engine, EngineOptions

    engine = Engine(model, EngineOptions(intra_op_threads=threads))
    states = engine.zero_states(batch)
    ids = np.zeros((batch, 1), np.int64)
    for _ in range(10):
        logits, states = engine.run(ids, states)
    steps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < duration:
        logits, states = engine.run(ids, states)
        ids = logits[:, -1].argmax(axis=1)[:, None]
        steps += 1
    elapsed = time.perf_counter() - start
    step_ms = elapsed / steps * 1000
    return LoadResult("ceiling", batch, batch * steps / elapsed, step_ms, step_ms, step_ms, step_ms, 0, 0.0)


class ServerProcess:
    """`charrnn serve --dev` in a subprocess on a free port (shared by the benchmarks; `flags` are extra
    serve flags); with `metrics`, /metrics on a free port too, at `metrics_url`; with `http`, the HTTP API
    on a free port, at `http_url`."""

    def __init__(
        self, model: Path, workdir: Path, name: str, flags: list[str], metrics: bool = False, http: bool = False
    ):
        port_file = workdir / f"port-{name}"
        metrics_file = workdir / f"metrics-port-{name}"
        http_file = workdir / f"http-port-{name}"
        metrics_flags = ["--metrics-port", "0", "--metrics-port-file", str(metrics_file)] if metrics else []
        http_flags = ["--http-port", "0", "--http-port-file", str(http_file)] if http else []
        cmd = [
            sys.executable, "-m", "charrnn.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
            "--port", "0", "--port-file", str(port_file), "--metrics-port", "-1", *metrics_flags, *http_flags,
            "--dev", *flags,
        ]  # fmt: skip
        self.log = open(workdir / f"server-{name}.log", "wb")  # noqa: SIM115 (closed in close)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=os.environ.copy())
        deadline = time.monotonic() + 120
        while not port_file.exists() or (metrics and not metrics_file.exists()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                tail = Path(self.log.name).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"server failed to start; the end of its log:\n{tail}")
            time.sleep(0.05)
        self.target = f"127.0.0.1:{int(port_file.read_text())}"
        self.metrics_url = f"http://127.0.0.1:{int(metrics_file.read_text())}/metrics" if metrics else ""
        self.http_url = f"http://127.0.0.1:{int(http_file.read_text())}" if http else ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _serve_flags(args: argparse.Namespace, max_live: int) -> list[str]:
    return [
        "--max-live-streams", str(max_live), "--max-queued-streams", "4096",
        "--max-request-chars", str(max(args.max_chars, INTERFERENCE_MAX_CHARS)),
        "--flush-interval-ms", str(args.flush_interval_ms),
    ]  # fmt: skip


INTERFERENCE_STREAMS = 16
INTERFERENCE_CHARS = 60_000
INTERFERENCE_MAX_CHARS = 20_000


def interference_text() -> str:
    """60,000 characters of Python source (the standard library's argparse, repeated as needed)."""
    import argparse as module

    source = Path(module.__file__).read_text(encoding="utf-8")
    return (source * (INTERFERENCE_CHARS // len(source) + 1))[:INTERFERENCE_CHARS]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from charrnn.artifact import load_manifest

    model: Path = args.model
    manifest = load_manifest(model)
    streams: list[int] = sorted(set(args.streams))
    top = max([*streams, INTERFERENCE_STREAMS])
    configs = {"1-worker": [*_serve_flags(args, top), "--decode-workers", "1"],
               "default": [*_serve_flags(args, top), *args.server_flags]}  # fmt: skip
    if args.unbatched:
        configs["unbatched"] = _serve_flags(args, 1)
    results: list[LoadResult] = []
    load_start = os.getloadavg()[0]
    # All servers stay up (idle costs nothing) so that, for each stream count, the ceiling and every mode
    # are measured back to back: load from other processes drifts on shared machines.
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-") as tmp:
        servers = {mode: ServerProcess(model, Path(tmp), mode, flags) for mode, flags in configs.items()}
        try:
            for server in servers.values():
                drive(server.target, "warm-up", 1, min(1.0, args.duration), args.max_chars)
            for n in streams:
                results.append(ceiling(model, 1, n, args.duration))
                for mode, server in servers.items():
                    log.info("%s: %d streams for %.1f s", mode, n, args.duration)
                    results.append(drive(server.target, mode, n, args.duration, args.max_chars))
            if not args.skip_interference:
                # Time-based flushes only (chunks never fill): a gap then measures how late a flush is, not how
                # fast 256 characters accumulate, which changes with the share of the machine a Score takes.
                flags = [*_serve_flags(args, INTERFERENCE_STREAMS), "--max-chunk-chars", str(INTERFERENCE_MAX_CHARS)]
                servers["interference"] = ServerProcess(model, Path(tmp), "interference", flags)
                text, target = interference_text(), servers["interference"].target
                drive(target, "warm-up", 1, min(1.0, args.duration), args.max_chars)
                n = INTERFERENCE_STREAMS
                for background in ("", "score", "feeds"):
                    mode = f"16+{background}" if background else "16 alone"
                    log.info("interference: %s for %.1f s", mode, args.duration)
                    # Streams longer than the run: every gap is a steady-state one, none cut short by an end.
                    results.append(drive(target, mode, n, args.duration, INTERFERENCE_MAX_CHARS, background, text))
        finally:
            for server in servers.values():
                server.close()
    by = {(r.mode, r.streams): r for r in results}

    def share(mode: str, n: int) -> float:
        return by[mode, n].chars_per_s / by["ceiling", n].chars_per_s if (mode, n) in by else float("nan")

    targets = []
    for n, mode, goal in ((64, "1-worker", 0.9), (64, "default", 1.2), (1, "default", 0.6), (256, "default", 0.9)):
        if ("ceiling", n) in by:
            targets.append({"what": f"{mode} {n} streams / 1-thread ceiling", "goal": f">= {goal}",
                            "measured": round(share(mode, n), 3), "met": share(mode, n) >= goal})  # fmt: skip
    if ("default", 256) in by:
        p99 = by["default", 256].ttfc_p99_ms
        targets.append({"what": "TTFC p99 at 256 streams (ms)", "goal": "<= 50", "measured": round(p99, 1),
                        "met": p99 <= 50})  # fmt: skip
    alone = by.get(("16 alone", INTERFERENCE_STREAMS))
    for background in ("score", "feeds"):
        beside = by.get((f"16+{background}", INTERFERENCE_STREAMS))
        if alone is not None and beside is not None:
            ratio = beside.gap_p99_ms / alone.gap_p99_ms
            targets.append({"what": f"gap p99 beside 60k-char {background} / alone", "goal": "<= 1.5",
                            "measured": round(ratio, 3), "met": ratio <= 1.5})  # fmt: skip
    return {
        "model": {
            "name": manifest.model.name,
            "cell": manifest.model.cell,
            "layers": manifest.model.layers,
            "hidden": manifest.model.hidden_size,
            "sha256": manifest.onnx.sha256,
        },
        "settings": {
            "duration_s": args.duration,
            "max_chars": args.max_chars,
            "flush_interval_ms": args.flush_interval_ms,
            "server_flags": args.server_flags,
            "cpus": os.cpu_count(),
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg()[0],
        },
        "results": [asdict(r) for r in results],
        "targets": targets,
    }


def table(report: dict[str, Any]) -> str:
    rows = report["results"]
    ceilings = {r["streams"]: r["chars_per_s"] for r in rows if r["mode"] == "ceiling"}
    head = (
        f"{'mode':<12} {'streams':>7} {'chars/s':>9} {'x ceil':>7} {'TTFC p50/p99 ms':>17} "
        f"{'gap p50/p99 ms':>16} {'chars/msg':>9} {'errors':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        base = ceilings.get(r["streams"])
        share = f"{r['chars_per_s'] / base:>7.2f}" if base else f"{'':>7}"
        if r["mode"] == "ceiling":
            lat = f"step {r['ttfc_p50_ms']:.3f} ms"
            lines.append(f"{r['mode']:<12} {r['streams']:>7} {r['chars_per_s']:>9.0f} {share} {lat:>17}")
            continue
        ttfc = f"{r['ttfc_p50_ms']:.1f}/{r['ttfc_p99_ms']:.1f}"
        gap = f"{r['gap_p50_ms']:.1f}/{r['gap_p99_ms']:.1f}"
        lines.append(
            f"{r['mode']:<12} {r['streams']:>7} {r['chars_per_s']:>9.0f} {share} {ttfc:>17} {gap:>16} "
            f"{r['chars_per_message']:>9.1f} {r['errors']:>6}"
        )
    s = report["settings"]
    flags = " ".join(s["server_flags"]) or "none: the shipped defaults"
    lines += ["", f"default server's extra flags: {flags}; load average {s['loadavg_start']:.2f} at the "
                  f"start, {s['loadavg_end']:.2f} at the end ({s['cpus']} CPUs)", ""]  # fmt: skip
    lines.append(f"{'target':<46} {'goal':>8} {'measured':>9}  met")
    for t in report["targets"]:
        lines.append(f"{t['what']:<46} {t['goal']:>8} {t['measured']:>9}  {'yes' if t['met'] else 'NO'}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    with axes(path, (7, 4.5)) as ax:
        for mode, style in (("ceiling", "k--"), ("1-worker", "o-"), ("default", "^-"), ("unbatched", "s-")):
            rows = [r for r in report["results"] if r["mode"] == mode]
            ax.plot([r["streams"] for r in rows], [r["chars_per_s"] for r in rows], style, label=mode)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("aggregate characters / s")
        m = report["model"]
        ax.set_title(f"charrnn serve: {m['name']} ({m['cell']} {m['layers']}x{m['hidden']})")


def main(args: argparse.Namespace) -> int:
    report = run(args)
    print(table(report))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-serve.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, out / "bench-serve.png")
    print(f"\nwrote {out / 'bench-serve.json'} and {out / 'bench-serve.png'}")
    return 0
