"""`charrnn bench quantize` runs; speed is measured by the command, never asserted here."""

from __future__ import annotations

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
