"""`charrnn bench serve`: what the server delivers against what the model alone can do, through real gRPC.

For each stream count (default 1, 16, 64, 256) an asyncio client (one process, one event loop: light enough
not to be what is measured; its own CPU is recorded) drives that many concurrent Generate streams (2,000
characters, temperature 1, a 20-character prompt; first requests spread over half a second, then back to
back) against `charrnn serve` in a separate process (the server's defaults plus --max-live-streams 256 and
any --server-flags). Only a window after a warm-up counts: characters, time to first character and the
CPU time of the server's whole process tree (bench/proctree.py) over exactly that window.

The ceiling is the in-process ONNX Runtime loop (one decode step for the whole batch, argmax fed back; no
gRPC, no sampling) on one thread and on two. A shared machine's speed drifts by up to 2x within minutes, so
ceiling and server are measured in interleaved pairs (ceiling, served, ceiling, served ...) and every target
is the median of the pairs' ratios, shown with its spread. Efficiency compares chars per server CPU-second
with the one-thread ceiling's chars per CPU-second; throughput compares served chars/s with the one-thread
ceiling's chars/s. At --int8-streams the pairs also run the int8 artifact, alone and served: int8's gain
through the server is compared with its gain in the model alone.

The interference case runs 16 streams alone, then beside a client scoring a 60,000-character text over and
over, then beside Session feeds of the same total: the streams' inter-chunk gap p99 must stay within 1.5x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import statistics
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
from bench.proctree import tree_cpu_seconds, tree_memory
from charrnn.v1 import charrnn_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

PROMPT = "def main(argv):\n    "  # 20 characters
RAMP_S = 0.5  # the streams' first requests are spread over this long
IDLE_SETTLE_S = 1.0  # after the warm-up, before the idle memory reading: the last flushes and frees are done


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
    window_s: float = 0.0  # the measured window
    server_cpu_s: float = math.nan  # CPU time of the server's process tree over the window (when given its pid)
    client_cpu_s: float = math.nan  # CPU time of this process (the load generator) over the window


def percentile_ms(values: list[float], q: float) -> float:
    """The q-th percentile of durations in seconds, in milliseconds (NaN for none)."""
    return float(np.percentile(values, q) * 1000) if values else float("nan")


@dataclass
class _Tally:
    """What the streams saw while the window was open; `done` tells them to stop."""

    ttfc: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    chars: int = 0
    messages: int = 0
    errors: int = 0
    open: bool = False
    done: bool = False


async def _streams(stub: Any, n: int, max_chars: int, tally: _Tally, model: str = "") -> None:
    """`n` concurrent Generate streams on `model` (the default: ""), each issuing calls back to back until the
    tally is done."""
    from charrnn.v1 import charrnn_pb2 as pb

    async def one(i: int) -> None:
        seed = i * 1_000_003
        await asyncio.sleep(RAMP_S * i / n)  # independent clients arrive spread out, not all in one instant
        while not tally.done:
            seed += 1
            request = pb.GenerateRequest(prompt=PROMPT, max_chars=max_chars, model=model,
                                         sampling=pb.SamplingParams(temperature=1.0, seed=seed))  # fmt: skip
            sent, sent_open = time.perf_counter(), tally.open
            last = None
            call = stub.Generate(request)
            try:
                async for response in call:
                    if tally.done:
                        call.cancel()
                        break
                    if not response.text:
                        continue
                    now = time.perf_counter()
                    if tally.open:
                        tally.chars += len(response.text)
                        tally.messages += 1
                        if last is None and sent_open:
                            tally.ttfc.append(now - sent)
                        elif last is not None:
                            tally.gaps.append(now - last)
                    last = now
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    tally.errors += 1
                    log.warning("stream %d failed: %s", i, exc.details())

    await asyncio.gather(*(one(i) for i in range(n)))


async def _background(stub: Any, kind: str, text: str, tally: _Tally, max_feed: int) -> int:
    """Score `text` over and over, or feed it to a Session in pieces of `max_feed`; returns texts done."""
    from charrnn.v1 import charrnn_pb2 as pb

    done = 0
    while not tally.done:
        if kind == "score":
            await stub.Score(pb.ScoreRequest(text=text))
        else:
            pieces = [text[i : i + max_feed] for i in range(0, len(text), max_feed)]
            call = stub.Session(iter(pb.SessionRequest(feed=pb.FeedAction(text=p)) for p in pieces))
            async for _ in call:
                pass
        done += 1
    return done


def _cpu_now(server_pid: int | None) -> tuple[float, float]:
    """(server tree CPU seconds or NaN, this process' CPU seconds)."""
    return (tree_cpu_seconds(server_pid) if server_pid else math.nan), time.process_time()


async def _window(tally: _Tally, warmup: float, duration: float, server_pid: int | None) -> tuple[float, ...]:
    """Open the tally after `warmup`, close it `duration` later; (wall, server CPU, client CPU) in between.
    The event loop runs one callback at a time, so exactly the responses handled while open are counted."""
    await asyncio.sleep(warmup)
    server0, client0 = _cpu_now(server_pid)
    start = time.perf_counter()
    tally.open = True
    await asyncio.sleep(duration)
    tally.open, tally.done = False, True
    wall = time.perf_counter() - start
    server1, client1 = _cpu_now(server_pid)
    return wall, server1 - server0, client1 - client0


def drive(target: str, mode: str, streams: int, duration: float, max_chars: int, background: str = "",
          text: str = "", max_feed: int = 8192, *, warmup: float = 0.0, server_pid: int | None = None,
          model: str = "") -> LoadResult:  # fmt: skip
    """`streams` concurrent streams on `model` (beside a `background` Score/feed loop, if set) for `warmup` +
    `duration` seconds, measured over the last `duration`; with `server_pid`, the server tree's CPU time over
    it too."""
    tally = _Tally()
    measured: tuple[float, ...] = ()

    async def main() -> None:
        nonlocal measured
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.CharRNNStub(channel)
            window = asyncio.ensure_future(_window(tally, warmup, duration, server_pid))
            jobs: list[Awaitable[object]] = [_streams(stub, streams, max_chars, tally, model)]
            if background:
                jobs.append(_background(stub, background, text, tally, max_feed))
            await asyncio.gather(*jobs)
            measured = await window

    asyncio.run(main())
    wall, server_cpu, client_cpu = measured
    return LoadResult(
        mode, streams, tally.chars / wall, percentile_ms(tally.ttfc, 50), percentile_ms(tally.ttfc, 99),
        percentile_ms(tally.gaps, 50), percentile_ms(tally.gaps, 99), tally.messages,
        tally.chars / max(1, tally.messages), tally.errors, wall, server_cpu, client_cpu,
    )  # fmt: skip


@dataclass
class Ceiling:
    """The model alone: decode steps of `batch` rows on `threads` ONNX Runtime threads, in this process."""

    model: str  # "fp32" or "int8"
    threads: int
    batch: int
    chars_per_s: float
    chars_per_cpu_s: float
    step_ms: float


def ceiling(engine: Any, model: str, threads: int, batch: int, duration: float) -> Ceiling:
    """The in-process ORT loop: one decode step for all rows, argmax fed back; no gRPC, no sampling."""
    states = engine.zero_states(batch)
    ids = np.zeros((batch, 1), np.int64)
    for _ in range(10):
        logits, states = engine.run(ids, states)
    steps = 0
    start, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < duration:
        logits, states = engine.run(ids, states)
        ids = logits[:, -1].argmax(axis=1)[:, None]
        steps += 1
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    chars = batch * steps
    return Ceiling(model, threads, batch, chars / elapsed, chars / max(cpu, 1e-9), elapsed / steps * 1000)


class ServerProcess:
    """`charrnn serve --dev` in a subprocess on a free port (shared by the benchmarks; `flags` are extra
    serve flags); with `metrics`, /metrics on a free port too, at `metrics_url`; with `http`, the HTTP API
    on a free port, at `http_url`."""

    def __init__(
        self,
        model: Path,
        workdir: Path,
        name: str,
        flags: list[str],
        metrics: bool = False,
        http: bool = False,
        repository: bool = False,
    ):
        port_file = workdir / f"port-{name}"
        metrics_file = workdir / f"metrics-port-{name}"
        http_file = workdir / f"http-port-{name}"
        metrics_flags = ["--metrics-port", "0", "--metrics-port-file", str(metrics_file)] if metrics else []
        http_flags = ["--http-port", "0", "--http-port-file", str(http_file)] if http else []
        cmd = [
            sys.executable, "-m", "charrnn.cli", "serve", "--model-repository" if repository else "--model",
            str(model), "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file), "--metrics-port", "-1",
            *metrics_flags, *http_flags, "--dev", *flags,
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


INTERFERENCE_STREAMS = 16
INTERFERENCE_CHARS = 60_000
INTERFERENCE_MAX_CHARS = 20_000


def interference_text() -> str:
    """60,000 characters of Python source (the standard library's argparse, repeated as needed)."""
    import argparse as module

    source = Path(module.__file__).read_text(encoding="utf-8")
    return (source * (INTERFERENCE_CHARS // len(source) + 1))[:INTERFERENCE_CHARS]


INT8_VAL_CHARS = 20_000  # the quantizer's quality check on a sample: this benchmark measures speed, not loss


def _int8_model(args: argparse.Namespace, tmp: Path) -> Path:
    """--int8-model, or --model quantized into `tmp` (whatever its loss: the quality gate is not this
    benchmark's; `charrnn quantize` enforces it)."""
    from training.config import QualityGate
    from training.quantize import quantize_artifact

    if args.int8_model:
        return Path(args.int8_model)
    log.info("quantizing %s to int8", args.model)
    quantize_artifact(args.model, tmp / "int8", QualityGate(allow_loss_increase=True, val_chars=INT8_VAL_CHARS))
    return tmp / "int8"


@dataclass
class Pair:
    """One round at one stream count: the ceilings, then the server(s), back to back."""

    streams: int
    round: int
    ceilings: list[Ceiling]
    served: list[LoadResult]  # mode "fp32", and "int8" at --int8-streams

    def ceiling(self, model: str, threads: int) -> Ceiling:
        return next(c for c in self.ceilings if c.model == model and c.threads == threads)

    def load(self, model: str) -> LoadResult:
        return next(r for r in self.served if r.mode == model)

    def figures(self) -> dict[str, float]:
        """The pair's derived figures: one source for the table, the targets and the JSON."""
        fp32, ceil1 = self.load("fp32"), self.ceiling("fp32", 1)
        chars = fp32.chars_per_s * fp32.window_s
        per_cpu = chars / fp32.server_cpu_s if fp32.server_cpu_s > 0 else math.nan
        out = {
            "served_chars_per_s": fp32.chars_per_s,
            "server_cores": fp32.server_cpu_s / fp32.window_s,
            "client_cores": fp32.client_cpu_s / fp32.window_s,
            "chars_per_server_cpu_s": per_cpu,
            "ceiling_1_thread": ceil1.chars_per_s,
            "ceiling_1_thread_per_cpu_s": ceil1.chars_per_cpu_s,
            "ceiling_2_threads": self.ceiling("fp32", 2).chars_per_s,
            "ttfc_p50_ms": fp32.ttfc_p50_ms,
            "ttfc_p99_ms": fp32.ttfc_p99_ms,
            "cpu_efficiency": per_cpu / ceil1.chars_per_cpu_s,
            "served_share": fp32.chars_per_s / ceil1.chars_per_s,
        }
        if any(r.mode == "int8" for r in self.served):
            served = self.load("int8").chars_per_s / fp32.chars_per_s
            alone = self.ceiling("int8", 1).chars_per_s / ceil1.chars_per_s
            out |= {"int8_served_gain": served, "int8_alone_gain": alone, "int8_gain_kept": served / alone}
        return out


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(pairs: list[Pair]) -> dict[int, dict[str, dict[str, float]]]:
    """Per stream count: each figure's median over the pairs and its spread (min, max)."""
    out: dict[int, dict[str, dict[str, float]]] = {}
    for n in sorted({p.streams for p in pairs}):
        figures = [p.figures() for p in pairs if p.streams == n]
        out[n] = {key: _spread([f[key] for f in figures]) for key in figures[0]}
    return out


# (figure, stream count, comparison, goal, what it says)
TARGETS: tuple[tuple[str, int, str, float, str], ...] = (
    ("cpu_efficiency", 64, ">=", 0.85, "chars per server CPU-s / 1-thread ceiling's, 64 streams"),
    ("cpu_efficiency", 256, ">=", 0.85, "chars per server CPU-s / 1-thread ceiling's, 256 streams"),
    ("cpu_efficiency", 1, ">=", 0.75, "chars per server CPU-s / 1-thread ceiling's, 1 stream"),
    ("served_share", 64, ">=", 1.4, "served chars/s / 1-thread ceiling, 64 streams"),
    ("served_share", 256, ">=", 1.4, "served chars/s / 1-thread ceiling, 256 streams"),
    ("ttfc_p99_ms", 256, "<=", 50.0, "TTFC p99, 256 streams (ms)"),
    ("ttfc_p99_ms", 1, "<=", 10.0, "TTFC p99, 1 stream (ms)"),
    ("int8_gain_kept", 64, ">=", 0.85, "int8/fp32 served as a share of int8/fp32 alone, 64 streams"),
)


def _target(what: str, op: str, goal: float, measured: float, spread: tuple[float, float] | None) -> dict[str, Any]:
    met = measured >= goal if op == ">=" else measured <= goal
    return {"what": what, "goal": f"{op} {goal:g}", "measured": round(measured, 3),
            "spread": [round(x, 3) for x in spread] if spread else None, "met": bool(met)}  # fmt: skip


def targets(summary: dict[int, dict[str, dict[str, float]]], idle_mb: float, memory_measure: str,
            interference: dict[str, LoadResult], max_idle_mb: float) -> list[dict[str, Any]]:  # fmt: skip
    """Each target the run measured, against its goal (medians over the pairs; spread = min, max)."""
    out = []
    for key, n, op, goal, what in TARGETS:
        if key in summary.get(n, {}):
            s = summary[n][key]
            out.append(_target(what, op, goal, s["median"], (s["min"], s["max"])))
    if 64 in summary and 256 in summary:
        ratio = summary[256]["served_share"]["median"] / summary[64]["served_share"]["median"]
        out.append(_target("served share at 256 streams / at 64", ">=", 1.0, ratio, None))
    out.append(_target(f"idle memory of the server tree (MB, {memory_measure})", "<=", max_idle_mb, idle_mb, None))
    alone = interference.get("16 alone")
    for background in ("score", "feeds"):
        beside = interference.get(f"16+{background}")
        if alone is not None and beside is not None:
            ratio = beside.gap_p99_ms / alone.gap_p99_ms
            out.append(_target(f"gap p99 beside 60k-char {background} / alone", "<=", 1.5, ratio, None))
    return out


MAX_IDLE_MB = 300.0


def _interference(args: argparse.Namespace, tmp: Path) -> dict[str, LoadResult]:
    """16 streams alone, beside a Score loop, beside Session feeds (time-based flushes only: chunks never
    fill, so a gap measures how late a flush is, not how fast 256 characters accumulate)."""
    flags = ["--max-live-streams", str(INTERFERENCE_STREAMS), "--max-chunk-chars", str(INTERFERENCE_MAX_CHARS)]
    server = ServerProcess(args.model, tmp, "interference", [*flags, *args.server_flags])
    results = {}
    try:
        text = interference_text()
        for background in ("", "score", "feeds"):
            mode = f"16+{background}" if background else "16 alone"
            log.info("interference: %s for %.1f s", mode, args.duration)
            # Streams longer than the run: every gap is a steady-state one, none cut short by an end.
            results[mode] = drive(server.target, mode, INTERFERENCE_STREAMS, args.duration, INTERFERENCE_MAX_CHARS,
                                  background, text, warmup=args.warmup)  # fmt: skip
    finally:
        server.close()
    return results


def _pairs(args: argparse.Namespace, servers: dict[str, ServerProcess], models: dict[str, Path]) -> list[Pair]:
    """For each stream count, --pairs rounds of: ceilings (1 and 2 threads; int8's too at --int8-streams),
    then the fp32 server (and the int8 one there)."""
    from charrnn.engine import Engine, EngineOptions

    engines: dict[tuple[str, int], Any] = {}

    def engine(model: str, threads: int) -> Any:
        if (model, threads) not in engines:
            engines[model, threads] = Engine(models[model], EngineOptions(intra_op_threads=threads))
        return engines[model, threads]

    pairs = []
    for n in sorted(set(args.streams)):
        forms = [m for m in servers if m == "fp32" or n == args.int8_streams]
        for r in range(args.pairs):
            ceilings, served = [], []
            for model in forms:
                for threads in (1, 2) if model == "fp32" else (1,):
                    ceilings.append(ceiling(engine(model, threads), model, threads, n, args.ceiling_seconds))
                log.info("%s: %d streams, round %d of %d", model, n, r + 1, args.pairs)
                served.append(drive(servers[model].target, model, n, args.duration, args.max_chars,
                                    warmup=args.warmup, server_pid=servers[model].pid))  # fmt: skip
            pairs.append(Pair(n, r, ceilings, served))
    return pairs


def run(args: argparse.Namespace) -> dict[str, Any]:
    from charrnn.artifact import load_manifest

    manifest = load_manifest(args.model)
    load_start = os.getloadavg()[0]
    flags = ["--max-live-streams", str(args.max_live_streams), *args.server_flags]
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-") as tmp_name:
        tmp = Path(tmp_name)
        models = {"fp32": Path(args.model)}
        if args.int8_streams:
            models["int8"] = _int8_model(args, tmp)
        servers: dict[str, ServerProcess] = {}
        try:
            for model, directory in models.items():
                servers[model] = ServerProcess(directory, tmp, model, flags)
                drive(servers[model].target, "warm-up", 1, args.warmup, args.max_chars)
            time.sleep(IDLE_SETTLE_S)
            idle_bytes, measure = tree_memory(servers["fp32"].pid)
            pairs = _pairs(args, servers, models)
            time.sleep(IDLE_SETTLE_S)
            after_bytes, _ = tree_memory(servers["fp32"].pid)
        finally:
            for server in servers.values():
                server.close()
        interference = {} if args.skip_interference else _interference(args, tmp)
    summary = summarise(pairs)
    idle_mb = idle_bytes / 1e6
    return {
        "model": {
            "name": manifest.model.name,
            "cell": manifest.model.cell,
            "layers": manifest.model.layers,
            "hidden": manifest.model.hidden_size,
            "sha256": manifest.onnx.sha256,
        },
        "settings": {
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "ceiling_s": args.ceiling_seconds,
            "pairs": args.pairs,
            "max_chars": args.max_chars,
            "server_flags": flags,
            "int8_model": str(args.int8_model or ("quantized from --model" if args.int8_streams else "none")),
            "cpus": os.cpu_count(),
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg()[0],
        },
        "idle_memory": {"measure": measure, "after_warmup_mb": idle_mb, "after_run_mb": after_bytes / 1e6},
        "summary": {str(n): figures for n, figures in summary.items()},
        "pairs": [
            {
                "streams": p.streams,
                "round": p.round,
                "figures": p.figures(),
                "ceilings": [asdict(c) for c in p.ceilings],
                "served": [asdict(r) for r in p.served],
            }
            for p in pairs
        ],
        "interference": [asdict(r) for r in interference.values()],
        "targets": targets(summary, idle_mb, measure, interference, MAX_IDLE_MB),
    }


def _median_spread(figure: dict[str, float], digits: int = 2) -> str:
    return f"{figure['median']:.{digits}f} ({figure['min']:.{digits}f}-{figure['max']:.{digits}f})"


def table_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """One row per stream count: medians over the pairs (the ratios with their min-max spread)."""
    rows = []
    for n, f in report["summary"].items():
        row = {
            "streams": n,
            "served chars/s": f"{f['served_chars_per_s']['median']:.0f}",
            "server CPU (cores)": f"{f['server_cores']['median']:.2f}",
            "chars/server CPU-s": f"{f['chars_per_server_cpu_s']['median']:.0f}",
            "ceiling 1 thread": f"{f['ceiling_1_thread']['median']:.0f}",
            "ceiling 2 threads": f"{f['ceiling_2_threads']['median']:.0f}",
            "TTFC p50/p99 ms": f"{f['ttfc_p50_ms']['median']:.1f}/{f['ttfc_p99_ms']['median']:.1f}",
            "CPU-s / ceiling's": _median_spread(f["cpu_efficiency"]),
            "served / ceiling": _median_spread(f["served_share"]),
            "int8 gain kept": _median_spread(f["int8_gain_kept"]) if "int8_gain_kept" in f else "",
            "load gen (cores)": f"{f['client_cores']['median']:.2f}",
            "errors": sum(r["errors"] for p in report["pairs"] if str(p["streams"]) == n for r in p["served"]),
        }
        rows.append({key: str(value) for key, value in row.items()})
    return rows


def plot(report: dict[str, Any], path: Path) -> None:
    summary = report["summary"]
    streams = [int(n) for n in summary]
    with axes(path, (7, 4.5)) as ax:
        for key, style, label in (("ceiling_1_thread", "k--", "ceiling, 1 thread"),
                                  ("ceiling_2_threads", "k:", "ceiling, 2 threads"),
                                  ("served_chars_per_s", "^-", "served (median of pairs)")):  # fmt: skip
            ax.plot(streams, [f[key]["median"] for f in summary.values()], style, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("aggregate characters / s")
        m = report["model"]
        ax.set_title(f"charrnn serve: {m['name']} ({m['cell']} {m['layers']}x{m['hidden']})")


def _check(args: argparse.Namespace) -> None:
    """Settings that cannot run, and a model that cannot load, before anything starts: ValueError."""
    from charrnn.artifact import ArtifactError, load_manifest

    if min(args.streams) < 1 or args.pairs < 1 or args.max_chars < 1 or args.int8_streams < 0:
        raise ValueError("--streams, --pairs and --max-chars must be >= 1, --int8-streams >= 0")
    if args.warmup < 0 or args.duration <= 0 or args.ceiling_seconds <= 0:
        raise ValueError("--duration and --ceiling-seconds must be > 0, --warmup >= 0")
    if max(args.streams) > args.max_live_streams:
        raise ValueError(f"--streams above --max-live-streams {args.max_live_streams} would queue")
    if args.int8_streams and args.int8_streams not in args.streams:
        raise ValueError(f"--int8-streams {args.int8_streams} is not one of --streams (0 skips int8)")
    try:
        if load_manifest(args.model).precision != "fp32":
            raise ValueError(f"{args.model} is not an fp32 artifact (an int8 one is measured beside it: --int8-model)")
        if args.int8_model and load_manifest(args.int8_model).precision != "int8":
            raise ValueError(f"{args.int8_model} is not an int8 artifact (`charrnn quantize` writes one)")
    except ArtifactError as exc:
        raise ValueError(str(exc)) from exc


def main(args: argparse.Namespace) -> int:
    from bench.cli import print_table
    from training.quantize_graph import QuantizeError

    try:
        _check(args)
        report = run(args)
    except (ValueError, QuantizeError) as exc:
        print(f"charrnn bench serve: {exc}", file=sys.stderr)
        return 2
    s = report["settings"]
    print(
        f"{report['model']['name']}: {s['pairs']} interleaved pairs per stream count, {s['warmup_s']:g} s "
        f"warm-up + {s['duration_s']:g} s measured; load average {s['loadavg_start']:.2f} at the start, "
        f"{s['loadavg_end']:.2f} at the end ({s['cpus']} CPUs); server flags: {' '.join(s['server_flags'])}"
    )
    print_table(table_rows(report))
    if report["interference"]:
        print()
        print_table([{"mode": r["mode"], "streams": r["streams"], "chars/s": f"{r['chars_per_s']:.0f}",
                      "gap p50/p99 ms": f"{r['gap_p50_ms']:.1f}/{r['gap_p99_ms']:.1f}", "errors": r["errors"]}
                     for r in report["interference"]])  # fmt: skip
    print()
    print_table([{"target": t["what"], "goal": t["goal"], "median": t["measured"],
                  "min-max": "-".join(map(str, t["spread"])) if t["spread"] else "", "met": "yes" if t["met"] else "NO"}
                 for t in report["targets"]])  # fmt: skip
    directory: Path = args.out
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bench-serve.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, directory / "bench-serve.png")
    print(f"\nwrote {directory / 'bench-serve.json'} and {directory / 'bench-serve.png'}")
    return 0
