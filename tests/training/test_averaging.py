from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from training.averaging import WeightAverage
from training.config import TrainingConfig
from training.prepared import load_dataset
from training.train import Trainer, evaluate, load_checkpoint, model_from_checkpoint

ConfigFactory = Callable[..., TrainingConfig]


def test_the_average_follows_its_formula() -> None:
    """Checked against plain floats: avg_t = d_t avg + (1 - d_t) w_t, d_t = min(decay, (1 + t) / (10 + t))."""
    layer = nn.Linear(1, 1, bias=False)
    decay = 0.9
    with torch.no_grad():
        layer.weight.fill_(5.0)
    average = WeightAverage(layer, decay)
    expected = 5.0
    for t, w in enumerate([1.0, -2.0, 3.0, 0.5] * 10):
        with torch.no_grad():
            layer.weight.fill_(w)
        average.update(t)
        d = min(decay, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * w
        assert average.averaged[0].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)  # float32 against float64
    assert layer.weight.item() == 0.5  # updating never touches the model's own weights


def test_applied_swaps_the_average_in_and_restores_the_weights_exactly() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    average = WeightAverage(model, 0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    average.update(100)  # d = 0.5: halfway between the first weights and these
    own = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError), average.applied():
        for p, a in zip(model.parameters(), average.averaged, strict=True):
            assert torch.equal(p, a)
        raise RuntimeError("the block fails")
    for key, value in model.state_dict().items():
        assert torch.equal(value, own[key]), key
    saved = average.state_dict()
    assert set(saved) == set(own) and not torch.equal(saved["0.weight"], own["0.weight"])
    fresh = WeightAverage(model, 0.5)
    fresh.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(fresh.averaged, average.averaged, strict=True))


def test_a_run_with_an_average_evaluates_and_exports_the_average(tiny_config: ConfigFactory) -> None:
    """The logged validation loss is the averaged weights' (which best.pt hands to export), not the last
    step's: scored again from the checkpoint, the average reproduces it and the trained weights do not."""
    config = tiny_config("optim.ema_decay=0.9", "optim.max_steps=40", "run.eval_interval=40")
    result = Trainer(config).train()
    data = load_checkpoint(result.best_checkpoint)
    assert set(data["averaged_model"]) == set(data["model"])
    logged = [json.loads(line) for line in (Path(config.run.out_dir) / "metrics.jsonl").read_text().splitlines()]
    val_loss = next(r["val_loss"] for r in logged if r["step"] == 40)
    val_ids = load_dataset(config.data).val_ids  # the split the run scored

    model, _, _ = model_from_checkpoint(data)
    nats, chars = evaluate(model, val_ids)
    assert nats / chars == pytest.approx(val_loss, rel=1e-6)
    raw, _, _ = model_from_checkpoint({key: value for key, value in data.items() if key != "averaged_model"})
    nats, chars = evaluate(raw, val_ids)
    assert abs(nats / chars - val_loss) > 1e-4
