"""`charrnn bench train-processes`: training throughput of 1 process against N under torchrun.

Each configuration is a real `charrnn train` run (one torch thread per process) with the same global
batch, so N processes train N shares of the same streams. Throughput is the median of the run's logged
chars/s windows after the first (warm-up); the runs alternate so that drift in the machine's load hits
both sides, and each repeat's ratio is taken against the one-process run of the same repeat.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

LOG_INTERVAL = 5


def train_command(processes: int, corpus: str, out: Path, steps: int, overrides: list[str]) -> list[str]:
    """One plain process (how training runs without torchrun), or torchrun --standalone for several."""
    settings = [
        "--corpus", corpus, "--out", str(out), f"optim.max_steps={steps}", f"run.eval_interval={steps}",
        "run.sample_interval=0", f"run.log_interval={LOG_INTERVAL}", "run.progress=false", "run.threads=1",
        *overrides,
    ]  # fmt: skip
    if processes == 1:
        return [sys.executable, "-m", "charrnn.cli", "train", *settings]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", "--max-restarts=0"]
    return [sys.executable, *launcher, "-m", "charrnn.cli", "train", *settings]


def measure(processes: int, corpus: str, out: Path, steps: int, overrides: list[str]) -> float:
    """Median chars/s over the logged windows of one run, the first (warm-up) window left out."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        train_command(processes, corpus, out, steps, overrides), capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        raise RuntimeError(f"{processes}-process run failed:\n{result.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    rates = [row["chars_per_s"] for row in rows if "chars_per_s" in row][1:]
    if not rates:
        raise RuntimeError(f"{steps} steps log fewer than two windows of {LOG_INTERVAL}; raise --steps")
    return statistics.median(rates)


def run(
    processes: list[int], corpus: str, out: Path, steps: int, repeats: int, overrides: list[str]
) -> list[dict[str, float]]:
    """One row per (repeat, process count); the order of the counts alternates between repeats."""
    rows: list[dict[str, float]] = []
    for repeat in range(repeats):
        order = processes if repeat % 2 == 0 else list(reversed(processes))
        rates = {}
        for count in order:
            rates[count] = measure(count, corpus, out / f"r{repeat}-p{count}", steps, overrides)
            log.info("repeat %d, %d process(es): %.0f chars/s", repeat, count, rates[count])
        for count in processes:
            rows.append(
                {
                    "repeat": repeat,
                    "processes": count,
                    "chars_per_s": round(rates[count]),
                    "vs_1_process": round(rates[count] / rates[processes[0]], 2),
                }
            )
    return rows
