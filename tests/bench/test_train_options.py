from __future__ import annotations

from pathlib import Path

from bench.train_options import OPTIONS, run, synthetic_corpus, trainer_for
from training.config import ModelConfig

TINY = ModelConfig(cell="lstm", layers=1, hidden_size=16, embedding_size=8)


def test_each_option_configures_the_trainer_it_names(tmp_path: Path) -> None:
    corpus = synthetic_corpus(tmp_path / "corpus.txt", batch=2, seq_len=8)
    trainers = {o.name: trainer_for(o, TINY, 2, 8, corpus, tmp_path / str(i)) for i, o in enumerate(OPTIONS)}
    baseline = trainers["fp32 (baseline)"]
    assert baseline.config.model.weight_drop == 0.0 and baseline.average is None
    assert baseline.config.run.precision == "fp32" and trainers["bf16"].config.run.precision == "bf16"
    assert trainers["weight_drop 0.4"].model.config.weight_drop == 0.4
    assert trainers["ema_decay 0.999"].average is not None
    assert baseline.config.model.dropout == 0.0
    step, window = trainers["dropout 0.4, step masks"].config.model, trainers["dropout 0.4, window masks"].config.model
    assert (step.dropout, step.dropout_mask, window.dropout, window.dropout_mask) == (0.4, "step", 0.4, "window")
    fused = {o.name: bool(t.optimizer.defaults["fused"]) for o, t in zip(OPTIONS, trainers.values(), strict=True)}
    assert fused == {o.name: o.name != "AdamW per-tensor loop" for o in OPTIONS}  # training's default is fused
    assert len(baseline.vocab) == 66  # tiny shakespeare's, so the output layer is the lecture's


def test_the_table_has_every_option_against_the_fp32_baseline() -> None:
    rows = run(TINY, batch=2, seq_len=8, rounds=2)
    assert [row["option"] for row in rows] == [option.name for option in OPTIONS]
    assert rows[0]["time / fp32"] == 1.0
    assert all(float(str(row["ms/step"])) > 0 for row in rows)
