"""`charrnn bench train-options`: what the training options that change a step's cost cost, against the plain
fp32 step, timed back to back in one run so the ratios survive this machine's drift.

The step is the trainer's: forward (under bf16 autocast for `run.precision=bf16`), cross-entropy on fp32
logits, backward, AdamW, and the weights' average when `optim.ema_decay` is set. The options are timed in
rounds (every option once per round, the order rotating) and each option's time is its median step.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from training.averaging import WeightAverage
from training.config import ModelConfig
from training.model import CharRNN

VOCAB = 66  # tiny shakespeare's


@dataclass(frozen=True)
class Option:
    name: str
    precision: str = "fp32"
    weight_drop: float = 0.0
    ema_decay: float = 0.0


OPTIONS = [
    Option("fp32 (baseline)"),
    Option("bf16", precision="bf16"),
    Option("weight_drop 0.4", weight_drop=0.4),
    Option("ema_decay 0.999", ema_decay=0.999),
    Option("bf16 + weight_drop 0.4", precision="bf16", weight_drop=0.4),
]


class Stepper:
    """One model and optimiser for one option; `step()` times one training step."""

    def __init__(self, option: Option, config: ModelConfig, batch: int, seq_len: int):
        torch.manual_seed(0)
        self.option = option
        self.model = CharRNN(replace(config, weight_drop=option.weight_drop), VOCAB).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.average = WeightAverage(self.model, option.ema_decay) if option.ema_decay else None
        self.tokens = torch.randint(0, VOCAB, (batch, seq_len))
        self.steps = 0

    def step(self) -> float:
        autocast: Any = (
            torch.autocast("cpu", dtype=torch.bfloat16) if self.option.precision == "bf16" else contextlib.nullcontext()
        )
        t0 = time.perf_counter()
        with autocast:
            logits, _ = self.model(self.tokens)
        loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), self.tokens.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.average is not None:
            self.average.update(self.steps)
        self.steps += 1
        return time.perf_counter() - t0


def run(config: ModelConfig, batch: int, seq_len: int, rounds: int) -> list[dict[str, object]]:
    steppers = [Stepper(option, config, batch, seq_len) for option in OPTIONS]
    for stepper in steppers:  # the first step warms up kernels and allocations
        stepper.step()
    times: list[list[float]] = [[] for _ in steppers]
    for r in range(rounds):
        order = list(range(len(steppers)))
        order = order[r % len(order) :] + order[: r % len(order)]
        for i in order:
            times[i].append(steppers[i].step())
    base = statistics.median(times[0])
    rows: list[dict[str, object]] = []
    for stepper, measured in zip(steppers, times, strict=True):
        median = statistics.median(measured)
        rows.append(
            {
                "option": stepper.option.name,
                "ms/step": round(median * 1e3, 1),
                "kchars/s": round(batch * seq_len / median / 1e3, 2),
                "time / fp32": round(median / base, 2),
            }
        )
    return rows
