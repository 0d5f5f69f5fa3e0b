"""`charrnn bench fairness`: one model's load must not starve another's.

One server serves a repository of two models, A and B. Each round measures B's time to first character
with one stream on B alone, then again while A carries `--a-streams` streams (driven from a second process,
so B's client measures only B). Rounds interleave alone and loaded, because this machine's speed drifts;
the figure is the median over rounds of B's loaded TTFC p99 over its alone p99, and the goal is at most 2.

B's requests are short (`--b-chars`), so a window holds hundreds of first characters; A's are the serve
benchmark's 2,000.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.serve import LoadResult, ServerProcess, drive

log = logging.getLogger(__name__)

GOAL = 2.0  # B's TTFC p99 loaded / alone, at most


def _repository(args: argparse.Namespace, tmp: Path) -> Path:
    """A repository holding copies of A and B under their names."""
    repo = tmp / "repository"
    repo.mkdir()
    for name, folder in ((args.a_name, args.a_model), (args.b_name, args.b_model)):
        if not (folder / "manifest.json").is_file():
            raise ValueError(f"{folder} is not a model artifact directory (no manifest.json)")
        shutil.copytree(folder, repo / name)
    return repo


def run(args: argparse.Namespace) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="charrnn-fairness-") as tmp_name:
        tmp = Path(tmp_name)
        repo = _repository(args, tmp)
        flags = ["--default-model", args.a_name, "--max-live-streams", str(max(64, args.a_streams + 1)),
                 *args.server_flags]  # fmt: skip
        server = ServerProcess(repo, tmp, "fairness", flags, repository=True)
        try:
            b = (server.target, "B", 1, args.duration, args.b_chars)
            drive(*b, warmup=0.0, model=args.b_name)  # warm both models' first calls
            for i in range(args.rounds):
                alone = drive(*b, warmup=args.warmup, model=args.b_name)
                loaded, a = _beside_a(args, server.target)
                ratio = loaded.ttfc_p99_ms / alone.ttfc_p99_ms
                rounds.append({"round": i + 1, "b_alone": asdict(alone), "b_loaded": asdict(loaded), "a": a,
                               "ratio_p99": ratio})  # fmt: skip
                log.info("round %d: B alone p99 %.1f ms, beside A %.1f ms (x%.2f)", i + 1, alone.ttfc_p99_ms,
                         loaded.ttfc_p99_ms, ratio)  # fmt: skip
        finally:
            server.close()
    ratios = [r["ratio_p99"] for r in rounds]
    median = statistics.median(ratios)
    return {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "handler"},
        "loadavg": os.getloadavg(),
        "rounds": rounds,
        "target": {"what": "B's TTFC p99 beside A / alone", "goal": f"<= {GOAL:g}", "median": round(median, 2),
                   "spread": [round(min(ratios), 2), round(max(ratios), 2)], "met": median <= GOAL},
    }  # fmt: skip


def _beside_a(args: argparse.Namespace, target: str) -> tuple[LoadResult, dict[str, Any]]:
    """B measured while A's streams run in another process (started first, stopped after)."""
    ctx = multiprocessing.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    seconds = args.warmup + args.duration + 2 * args.warmup  # A runs before, through and after B's window
    process = ctx.Process(target=_a_child, args=(writer, target, args.a_name, args.a_streams, seconds, 2000))
    process.start()
    try:
        time.sleep(args.warmup)  # A reaches its steady load before B's warm-up starts
        loaded = drive(target, "B", 1, args.duration, args.b_chars, warmup=args.warmup, model=args.b_name)
        a = reader.recv() if reader.poll(seconds + 60) else {}
    finally:
        process.join(seconds + 60)
        if process.is_alive():
            process.kill()
    return loaded, a


def _a_child(writer: Any, target: str, model: str, streams: int, seconds: float, max_chars: int) -> None:
    writer.send(asdict(drive(target, "A", streams, seconds, max_chars, model=model)))


def main(args: argparse.Namespace) -> int:
    from bench.cli import print_table

    try:
        report = run(args)
    except ValueError as exc:
        print(f"charrnn bench fairness: {exc}", file=sys.stderr)
        return 2
    print_table([{
        "round": r["round"],
        "B alone TTFC p50/p99 ms": f"{r['b_alone']['ttfc_p50_ms']:.1f}/{r['b_alone']['ttfc_p99_ms']:.1f}",
        f"B beside {args.a_streams} A streams p50/p99 ms":
            f"{r['b_loaded']['ttfc_p50_ms']:.1f}/{r['b_loaded']['ttfc_p99_ms']:.1f}",
        "p99 ratio": f"{r['ratio_p99']:.2f}",
        "A chars/s": f"{r['a'].get('chars_per_s', float('nan')):.0f}",
        "errors": r["b_alone"]["errors"] + r["b_loaded"]["errors"] + r["a"].get("errors", 0),
    } for r in report["rounds"]])  # fmt: skip
    t = report["target"]
    print(f"\n{t['what']}: median {t['median']} (rounds {t['spread'][0]}-{t['spread'][1]}), goal {t['goal']}: "
          f"{'met' if t['met'] else 'NOT met'}")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench-fairness.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out / 'bench-fairness.json'}")
    return 0
