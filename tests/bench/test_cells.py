"""The cell comparison matches parameter counts and reports every cell."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cells import (
    CELLS,
    base_config,
    count_parameters,
    load_result,
    matching_hidden_size,
    run_cells,
    write_report,
)
from charrnn.cli import main
from training.config import TrainingConfig, apply_overrides
from training.model import CharRNN


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(
    "overrides",
    [[], ["model.embedding_size=0", "model.layers=1"], ["model.tie_weights=true", "model.embedding_size=256"]],
)
def test_parameter_formula_matches_the_model(cell: str, overrides: list[str]) -> None:
    config = apply_overrides(TrainingConfig(), [f"model.cell={cell}", *overrides])
    assert count_parameters(config, 97) == CharRNN(config.model, 97).num_parameters()


def test_hidden_sizes_match_the_reference_parameter_count() -> None:
    config = TrainingConfig()
    config.model.hidden_size = 128
    target = count_parameters(config, 65)
    for cell in CELLS:
        hidden = matching_hidden_size(config, cell, 65, target)
        probe = TrainingConfig.from_dict(config.to_dict())
        probe.model.cell, probe.model.hidden_size = cell, hidden
        assert abs(count_parameters(probe, 65) - target) / target < 0.01
    # a tanh RNN needs the most units for the same parameters, an LSTM the fewest
    sizes = {cell: matching_hidden_size(config, cell, 65, target) for cell in CELLS}
    assert sizes["rnn"] > sizes["gru"] > sizes["lstm"] == 128


def test_run_cells_trains_each_and_writes_a_table(tiny_corpus: Path, tmp_path: Path) -> None:
    overrides = ["model.hidden_size=16", "model.layers=1", "optim.batch_size=4", "optim.seq_len=16",
                 "optim.max_steps=3", "run.eval_interval=2", "run.eval_max_chars=300", "run.threads=1"]  # fmt: skip
    base = base_config(str(tiny_corpus), 1.0, tmp_path, overrides)
    results = run_cells(base, tmp_path, ("rnn", "gru"))
    assert [r.cell for r in results] == ["rnn", "gru"]
    assert all(r.steps == 3 and r.best_val_bpc > 0 for r in results)
    table = write_report(results, tmp_path / "report", "charrnn bench cells ...")
    assert table.count("\n") == 4 and "| rnn |" in table and "| gru |" in table
    assert "val bits/char at step 3 " in table  # the last evaluation every cell reached
    assert (tmp_path / "report" / "cells.png").is_file()
    reread = [load_result(tmp_path / cell) for cell in ("rnn", "gru")]
    assert reread == results  # --report-only rebuilds the same results from the run directories


def test_bad_override_is_refused(tiny_corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        base_config(str(tiny_corpus), 1.0, tmp_path, ["model.nope=1"])


def test_bench_cells_refuses_unknown_cells(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "cells", "--corpus", "x", "--minutes", "1", "--cells", "rnn,transformer"]) == 2
    assert "comma list" in capsys.readouterr().err
