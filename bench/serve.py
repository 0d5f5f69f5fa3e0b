"""`charrnn bench serve`: what continuous batching buys through real gRPC, against the ceiling.

For each stream count (default 1, 16, 64) and for a fixed duration, one client process drives
that many concurrent Generate streams through `charrnn.client` against a server started as a
separate process, twice: batching on (--max-live-streams = the largest stream count) and batching off
(--max-live-streams 1, the rest queue). The ceiling is the in-process ONNX Runtime loop (one decode
step for the whole batch, argmax fed back) on the same model and thread count, measured in the
same run. Every figure is reported next to those baselines, because absolute speeds drift
between runs on shared machines.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from charrnn.client import CharRNNError, Client

log = logging.getLogger(__name__)

PROMPT = "def main(argv):\n    "


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


def percentile_ms(values: list[float], q: float) -> float:
    """The q-th percentile of durations in seconds, in milliseconds (NaN for none)."""
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def drive(target: str, mode: str, streams: int, duration: float, max_chars: int) -> LoadResult:
    """`streams` threads, each issuing Generate calls back to back until `duration` is over."""
    ttfc: list[float] = []
    gaps: list[float] = []
    counts = [0] * streams
    messages = [0] * streams
    lock = threading.Lock()
    start = time.perf_counter()
    end = start + duration

    def worker(i: int, client: Client) -> None:
        seed = i * 1_000_003
        while time.perf_counter() < end:
            seed += 1
            sent = time.perf_counter()
            gen = client.generate(PROMPT, max_chars=max_chars, temperature=1.0, seed=seed)
            last = None
            my_gaps = []
            try:
                for chunk in gen:
                    now = time.perf_counter()
                    if now >= end:
                        gen.cancel()
                        break
                    counts[i] += len(chunk)
                    messages[i] += 1
                    if last is None:
                        with lock:
                            ttfc.append(now - sent)
                    else:
                        my_gaps.append(now - last)
                    last = now
            except CharRNNError as exc:
                if time.perf_counter() < end:
                    log.warning("stream %d failed: %s", i, exc)
            with lock:
                gaps.extend(my_gaps)

    with Client(target) as client:
        threads = [threading.Thread(target=worker, args=(i, client), daemon=True) for i in range(streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(duration + 30)
    elapsed = time.perf_counter() - start
    total = sum(counts)
    n_messages = sum(messages)
    return LoadResult(
        mode, streams, total / min(elapsed, duration), percentile_ms(ttfc, 50), percentile_ms(ttfc, 99),
        percentile_ms(gaps, 50), percentile_ms(gaps, 99), n_messages, total / max(1, n_messages),
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


def _serve_flags(args: argparse.Namespace, max_batch: int) -> list[str]:
    return [
        "--max-live-streams", str(max_batch), "--max-queued-streams", "4096",
        "--max-request-chars", str(max(args.max_chars, 1)),
        "--intra-op-threads", str(args.intra_op_threads), "--flush-interval-ms", str(args.flush_interval_ms),
    ]  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    from charrnn.artifact import load_manifest

    model: Path = args.model
    manifest = load_manifest(model)
    streams: list[int] = sorted(set(args.streams))
    results: list[LoadResult] = []
    # Both servers stay up (idle costs nothing) so that, for each stream count, the ceiling and
    # both modes are measured back to back: load from other processes drifts on shared machines.
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-") as tmp:
        servers = {mode: ServerProcess(model, Path(tmp), mode, _serve_flags(args, max_batch)) for mode, max_batch in
                   (("batched", max(streams)), ("unbatched", 1))}  # fmt: skip
        try:
            for server in servers.values():
                drive(server.target, "warm-up", 1, min(1.0, args.duration), args.max_chars)
            for n in streams:
                results.append(ceiling(model, args.intra_op_threads, n, args.duration))
                for mode, server in servers.items():
                    log.info("%s: %d streams for %.1f s", mode, n, args.duration)
                    results.append(drive(server.target, mode, n, args.duration, args.max_chars))
        finally:
            for server in servers.values():
                server.close()
    order = {"ceiling": 0, "batched": 1, "unbatched": 2}
    results.sort(key=lambda r: (order[r.mode], r.streams))
    by = {(r.mode, r.streams): r for r in results}
    top, one = max(streams), min(streams)
    summary = {
        "streams": top,
        "batched_over_unbatched": by["batched", top].chars_per_s / by["unbatched", top].chars_per_s,
        "batched_over_ceiling": by["batched", top].chars_per_s / by["ceiling", top].chars_per_s,
        "model_batching_gain_bound": by["ceiling", top].chars_per_s / by["ceiling", one].chars_per_s,
    }
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
            "intra_op_threads": args.intra_op_threads,
            "flush_interval_ms": args.flush_interval_ms,
            "cpus": os.cpu_count(),
        },
        "results": [asdict(r) for r in results],
        "summary": summary,
    }


def table(report: dict[str, Any]) -> str:
    rows = report["results"]
    ceilings = {r["streams"]: r["chars_per_s"] for r in rows if r["mode"] == "ceiling"}
    head = (
        f"{'mode':<10} {'streams':>7} {'chars/s':>9} {'x ceil':>7} {'TTFC p50/p99 ms':>17} "
        f"{'gap p50/p99 ms':>16} {'chars/msg':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        share = r["chars_per_s"] / ceilings[r["streams"]]
        if r["mode"] == "ceiling":
            lat = f"step {r['ttfc_p50_ms']:.3f} ms"
            lines.append(
                f"{r['mode']:<10} {r['streams']:>7} {r['chars_per_s']:>9.0f} {share:>7.2f} {lat:>17} {'':>16} {'':>9}"
            )
            continue
        ttfc = f"{r['ttfc_p50_ms']:.1f}/{r['ttfc_p99_ms']:.1f}"
        gap = f"{r['gap_p50_ms']:.1f}/{r['gap_p99_ms']:.1f}"
        lines.append(
            f"{r['mode']:<10} {r['streams']:>7} {r['chars_per_s']:>9.0f} {share:>7.2f} {ttfc:>17} {gap:>16} "
            f"{r['chars_per_message']:>9.1f}"
        )
    s = report["summary"]
    lines.append("")
    lines.append(
        f"at {s['streams']} streams: batched/unbatched = {s['batched_over_unbatched']:.1f}x "
        f"(model's own batching gain, ceiling {s['streams']}/1: {s['model_batching_gain_bound']:.1f}x); "
        f"batched/ceiling = {s['batched_over_ceiling']:.0%}"
    )
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, style in (("ceiling", "k--"), ("batched", "o-"), ("unbatched", "s-")):
        rows = [r for r in report["results"] if r["mode"] == mode]
        ax.plot([r["streams"] for r in rows], [r["chars_per_s"] for r in rows], style, label=mode)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("aggregate characters / s")
    m = report["model"]
    ax.set_title(f"charrnn serve: {m['name']} ({m['cell']} {m['layers']}x{m['hidden']})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    report = run(args)
    print(table(report))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-serve.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, out / "bench-serve.png")
    print(f"\nwrote {out / 'bench-serve.json'} and {out / 'bench-serve.png'}")
    return 0
