from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from training.config import TrainingConfig, apply_overrides
from training.train import Trainer, dropout_at, load_checkpoint, lr_at

ConfigFactory = Callable[..., TrainingConfig]


def test_overrides_refuse_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValueError, match=r"unknown setting 'model\.hiden_size'"):
        apply_overrides(TrainingConfig(), ["model.hiden_size=3"])
    with pytest.raises(ValueError, match=r"unknown setting 'modl\.layers'"):
        apply_overrides(TrainingConfig(), ["modl.layers=3"])
    with pytest.raises(ValueError, match="expects int"):
        apply_overrides(TrainingConfig(), ["model.layers=two"])
    with pytest.raises(ValueError, match=r"model\.cell"):
        apply_overrides(TrainingConfig(), ["model.cell=transformer"])
    config = apply_overrides(TrainingConfig(), ["model.cell=gru", "optim.lr=0.01", "run.progress=no"])
    assert (config.model.cell, config.optim.lr, config.run.progress) == ("gru", 0.01, False)


def test_config_round_trips_through_dict() -> None:
    config = apply_overrides(TrainingConfig(), ["model.hidden_size=77", "data.vocab_policy=refuse"])
    assert TrainingConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_schedule_warms_up_then_decays() -> None:
    config = apply_overrides(TrainingConfig(), ["optim.warmup_steps=10", "optim.max_steps=110", "optim.lr=1.0"])
    assert lr_at(0, config) == pytest.approx(0.1)
    assert lr_at(9, config) == pytest.approx(1.0)
    assert lr_at(60, config) < lr_at(20, config)
    assert lr_at(110, config) == pytest.approx(config.optim.min_lr_ratio)
    # a wall-clock budget that binds first anneals the rate by elapsed time instead
    assert lr_at(20, config, time_fraction=1.0) == pytest.approx(config.optim.min_lr_ratio)
    assert lr_at(20, config, time_fraction=0.5) < lr_at(20, config)


def test_dropout_schedule_moves_linearly_from_start_to_dropout() -> None:
    config = apply_overrides(TrainingConfig(), ["model.dropout=0.5", "optim.max_steps=100"])
    assert dropout_at(0, config) == dropout_at(100, config) == 0.5  # no schedule
    config = apply_overrides(config, ["model.dropout_start=0.1"])
    assert [dropout_at(step, config) for step in (0, 50, 100)] == pytest.approx([0.1, 0.3, 0.5])
    assert dropout_at(10, config, time_fraction=0.75) == pytest.approx(0.4)  # the budget's clock when further on
    assert apply_overrides(config, ["model.dropout_start=none"]).model.dropout_start is None
    with pytest.raises(ValueError, match=r"model\.dropout_start must be in"):
        apply_overrides(TrainingConfig(), ["model.dropout_start=1.0"])


@pytest.mark.parametrize("mask", ["step", "window"])
def test_the_trainer_applies_the_dropout_schedule_to_every_step(tiny_config: ConfigFactory, mask: str) -> None:
    """The units dropped before the head (zeros in what the head receives) follow the schedule from 0 to 0.6:
    none at the first step, about 0.6 of them at the last."""
    config = tiny_config("model.hidden_size=256", "model.dropout=0.6", "model.dropout_start=0.0",
                         f"model.dropout_mask={mask}", "optim.max_steps=12", "run.sample_interval=0")  # fmt: skip
    trainer = Trainer(config)
    dropped: list[float] = []
    trainer.model.head.register_forward_pre_hook(
        lambda module, args: dropped.append(float((args[0] == 0).float().mean())) if module.training else None
    )
    trainer.train()
    assert len(dropped) == 12
    assert dropped[0] == 0.0
    assert dropped[-1] == pytest.approx(0.6 * 11 / 12, abs=0.05)  # step 11 of 12; 256 units x 8 rows x 32 steps
    assert max(earlier - later for earlier, later in itertools.pairwise(dropped)) < 0.03  # no real drop
    rows = [json.loads(line) for line in (Path(config.run.out_dir) / "metrics.jsonl").read_text().splitlines()]
    logged = [row["dropout"] for row in rows if "train_loss" in row]
    assert logged and logged == sorted(logged) and logged[-1] <= 0.6  # the rate is in the training log


def test_tiny_model_overfits_a_short_text(tmp_path: Path) -> None:
    corpus = tmp_path / "hello.txt"
    corpus.write_text("hello world, hello RNN!\n" * 60, encoding="utf-8")
    config = apply_overrides(
        TrainingConfig(),
        [
            f"data.corpus={corpus}", f"run.out_dir={tmp_path / 'run'}", "model.hidden_size=48", "model.layers=1",
            "model.embedding_size=16", "optim.batch_size=4", "optim.seq_len=48", "optim.max_steps=600",
            "optim.lr=0.01", "optim.warmup_steps=10", "run.eval_interval=100", "run.sample_interval=0",
            "run.progress=false", "run.threads=1",
        ],
    )  # fmt: skip
    result = Trainer(config).train()
    assert result.best_val_loss < 0.15, f"validation loss {result.best_val_loss:.3f} nats: it did not memorise"


def test_run_writes_logs_samples_curves_and_checkpoints(tiny_config: ConfigFactory) -> None:
    config = tiny_config()
    result = Trainer(config).train()
    out = Path(config.run.out_dir)
    for name in ("best.pt", "last.pt", "metrics.jsonl", "samples.jsonl", "loss.png", "config.json", "vocab.json"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("val_bpc" in r for r in rows) and any("grad_norm" in r and "clipped_fraction" in r for r in rows)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [0, 20, 40]
    assert all(len(s["text"]) == config.run.sample_chars for s in samples)
    data = load_checkpoint(result.best_checkpoint)
    assert data["config"] == config.to_dict() and data["vocab"]["chars"]
    assert data["corpus"]["sha256"] and data["split"]["train_fraction"] == 0.9


def test_a_fresh_run_replaces_old_logs(tiny_config: ConfigFactory) -> None:
    config = tiny_config("optim.max_steps=10", "run.log_interval=5")
    Trainer(config).train()
    Trainer(config).train()  # same out_dir, not resumed
    steps = [json.loads(line)["step"] for line in (Path(config.run.out_dir) / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), steps


def test_same_seed_same_result(tiny_config: ConfigFactory, tmp_path: Path) -> None:
    a = Trainer(tiny_config("optim.max_steps=15", f"run.out_dir={tmp_path / 'a'}")).train()
    b = Trainer(tiny_config("optim.max_steps=15", f"run.out_dir={tmp_path / 'b'}")).train()
    assert a.best_val_loss == b.best_val_loss


def test_resume_continues_exactly(tiny_config: ConfigFactory, tmp_path: Path) -> None:
    """40 steps straight == 20 steps, stop, resume from last.pt, 20 more (the window dropout and its schedule, the
    input dropout and weight-drop masks' RNG, the epochs' shifts and the weights' average included)."""
    extra = [
        "model.layers=2",
        "model.dropout=0.1",
        "model.dropout_start=0.0",
        "model.input_dropout=0.1",
        "model.weight_drop=0.2",
        "model.dropout_mask=window",
        "optim.epoch_shift=true",
        "optim.batch_size=16",  # epochs of 29 windows: the second one, shifted, starts after the pause
        "optim.ema_decay=0.9",
        "optim.max_steps=40",
    ]
    straight = Trainer(tiny_config(*extra, f"run.out_dir={tmp_path / 'straight'}"))
    straight.train()
    batches = straight.batches
    epochs_after_20 = range(20 // batches.windows_per_epoch + 1, 40 // batches.windows_per_epoch + 1)
    assert any(batches.shift(epoch) for epoch in epochs_after_20)  # the resumed half has shifted epochs
    paused_config = tiny_config(*extra, f"run.out_dir={tmp_path / 'paused'}")
    Trainer(paused_config).train(stop_at=20)
    assert load_checkpoint(tmp_path / "paused" / "last.pt")["step"] == 20
    resumed = Trainer(paused_config, resume=tmp_path / "paused" / "last.pt")
    resumed.train()
    assert resumed.step == 40
    for (name, p), q in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert straight.average is not None and resumed.average is not None
    for p, q in zip(straight.average.averaged, resumed.average.averaged, strict=True):
        assert torch.equal(p, q)


def test_value_clipping_and_early_stop(tiny_config: ConfigFactory) -> None:
    config = tiny_config(
        "optim.clip_mode=value", "optim.clip=0.001", "optim.lr=0.5", "optim.max_steps=200",
        "run.eval_interval=5", "run.early_stop_patience=2", "run.sample_interval=0",
    )  # fmt: skip
    result = Trainer(config).train()
    assert result.steps < 200  # a huge learning rate stops improving long before the end
    rows = [json.loads(line) for line in (Path(config.run.out_dir) / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1].get("clipped_fraction", 1.0) > 0.9 or any(r.get("clipped_fraction", 0) > 0.9 for r in rows)


def test_a_format_1_checkpoint_still_resumes(tiny_config: ConfigFactory, tmp_path: Path) -> None:
    """Format 1 held one RNG state and no world size; it resumes as a one-process checkpoint."""
    config = tiny_config("optim.max_steps=30")
    Trainer(config).train(stop_at=20)
    data = load_checkpoint(Path(config.run.out_dir) / "last.pt")
    old = {**{k: v for k, v in data.items() if k != "world_size"}, "format": 1, "rng": data["rng"][0]}
    torch.save(old, tmp_path / "old.pt")
    resumed = Trainer(config, resume=tmp_path / "old.pt")
    assert resumed.step == 20 and resumed.train().steps == 30


def test_bf16_precision_runs_the_training_forward_in_bf16_and_keeps_the_rest_fp32(tiny_config: ConfigFactory) -> None:
    """run.precision=bf16 autocasts the training step's forward only: the head sees bf16 there, while the
    weights, the carried state and evaluation stay fp32, and the model still learns."""
    with pytest.raises(ValueError, match=r"run\.precision must be fp32 or bf16"):
        apply_overrides(TrainingConfig(), ["run.precision=fp16"]).validate()
    config = apply_overrides(tiny_config(), ["run.precision=bf16"])
    trainer = Trainer(config)
    seen: list[torch.dtype] = []
    trainer.model.head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    first, _, _ = trainer.train_step()
    assert seen == [torch.bfloat16], "the training forward did not run under bf16 autocast"
    assert all(s.dtype == torch.float32 for s in trainer.state)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    trainer._validate()
    assert seen[-1] == torch.float32, "evaluation ran in bf16"
    result = trainer.train()
    assert result.best_val_loss < first, (result.best_val_loss, first)


def test_samples_follow_their_own_interval_not_the_evaluations(tiny_config: ConfigFactory) -> None:
    config = apply_overrides(tiny_config(), ["run.eval_interval=20", "run.sample_interval=15"])
    Trainer(config).train()
    samples = [json.loads(line) for line in (Path(config.run.out_dir) / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [0, 15, 30]
