"""`charrnn bench train-processes` end to end: real torchrun launches on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.train import load_checkpoint


@pytest.mark.slow
def test_bench_train_processes_prints_the_ratio_table(tiny_corpus: Path, tmp_path: Path) -> None:
    tiny = ["model.hidden_size=24", "model.layers=1", "model.embedding_size=8", "optim.batch_size=8",
            "optim.seq_len=32", "optim.warmup_steps=5"]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "charrnn.cli", "bench", "train-processes", "--corpus", str(tiny_corpus),
         "--steps", "15", "--repeats", "1", "--out", str(tmp_path), *tiny],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "load average" in lines[0] and lines[1] == "| repeat | processes | chars_per_s | vs_1_process |"
    rows = json.loads((tmp_path / "bench-train-processes.json").read_text())["rows"]
    assert [r["processes"] for r in rows] == [1, 2] and rows[0]["vs_1_process"] == 1.0
    assert all(r["chars_per_s"] > 0 for r in rows)
    assert load_checkpoint(tmp_path / "r0-p2" / "last.pt")["world_size"] == 2


@pytest.mark.parametrize(
    ("corpus", "message"),
    [
        ("{tmp}/missing.txt", "corpus path '{tmp}/missing.txt' does not exist"),
        ("{tmp}/*.nothing", "corpus '{tmp}/*.nothing' matched no files"),
        ("prepared:{tmp}", "{tmp} is not a prepared corpus (no prepared.json): run charrnn prepare first"),
    ],
)
def test_a_corpus_the_runs_cannot_read_is_one_line_before_any_run(tmp_path: Path, corpus: str, message: str) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "charrnn.cli", "bench", "train-processes", "--corpus", corpus.format(tmp=tmp_path),
         "--steps", "5", "--repeats", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == "", result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("charrnn bench train-processes: ") and message.format(tmp=tmp_path) in line, line
    assert not out.exists(), "no run starts"
