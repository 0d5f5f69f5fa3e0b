from __future__ import annotations

from bench.train_options import OPTIONS, Stepper, run
from training.config import ModelConfig

TINY = ModelConfig(cell="lstm", layers=1, hidden_size=16, embedding_size=8)


def test_each_option_times_the_step_it_names() -> None:
    steppers = {option.name: Stepper(option, TINY, batch=2, seq_len=8) for option in OPTIONS}
    baseline = steppers["fp32 (baseline)"]
    assert baseline.model.config.weight_drop == 0.0 and baseline.average is None
    assert steppers["weight_drop 0.4"].model.config.weight_drop == 0.4
    averaged = steppers["ema_decay 0.999"]
    assert averaged.average is not None
    averaged.step()
    assert averaged.steps == 1  # the average was updated after the optimiser step
    assert not all(
        bool((a == p).all()) for a, p in zip(averaged.average.averaged, averaged.model.parameters(), strict=True)
    )


def test_the_table_has_every_option_against_the_fp32_baseline() -> None:
    rows = run(TINY, batch=2, seq_len=8, rounds=2)
    assert [row["option"] for row in rows] == [option.name for option in OPTIONS]
    assert rows[0]["time / fp32"] == 1.0
    assert all(float(str(row["ms/step"])) > 0 for row in rows)
