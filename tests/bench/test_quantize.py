"""`charrnn bench quantize` runs; speed is measured by the command, never asserted here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_bench_quantize_smoke(lstm_dir: Path) -> None:
    """All three forms run, and the per-row form's rows are reported batch invariant."""
    from bench.quantize import FORMS, kernel_table, run, table

    rows = run(lstm_dir, [1, 4], seconds=0.02, rounds=1, threads=1)
    assert [(r.form, r.batch) for r in rows] == [(form, b) for b in (1, 4) for form in FORMS]
    per_row = next(r for r in rows if r.form == FORMS[1] and r.batch == 4)
    assert per_row.alone_vs_batched_max_abs == 0 and per_row.chars_per_cpu_s > 0
    assert table(rows).count("\n") == len(rows) + 1
    assert "bfloat16" in kernel_table(batch=2, k=8, n=8, repeats=1)


def _bench_quantize(model: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "charrnn.cli", "bench", "quantize", "--model", str(model), "--seconds", "0.01",
         "--rounds", "1", "--batch", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _one_line_exit_2(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == "", result.stderr
    (line,) = result.stderr.splitlines()
    return line


def test_bench_quantize_refuses_a_missing_or_int8_model_in_one_line(tiny_artifact: Path, tmp_path: Path) -> None:
    from training.config import QualityGate
    from training.quantize import quantize_artifact

    line = _one_line_exit_2(_bench_quantize(tmp_path / "missing"))
    assert line.startswith("charrnn bench quantize: ") and "does not exist" in line, line
    # Any int8 artifact will do: written whatever its loss increase (the gate is tests/training's).
    quantize_artifact(tiny_artifact, tmp_path / "int8", QualityGate(allow_loss_increase=True))
    line = _one_line_exit_2(_bench_quantize(tmp_path / "int8"))
    expected = f"{tmp_path / 'int8'} is already int8; quantize its fp32 artifact"
    assert line == f"charrnn bench quantize: {expected}"
