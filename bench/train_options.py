"""`charrnn bench train-options`: what the training options that change a step's cost cost, against the plain
fp32 step, timed back to back in one run so the ratios survive this machine's drift.

Each option gets its own Trainer on a synthetic corpus, and the benchmark times `Trainer.train_step`, the
step a real run takes: forward (under autocast for bf16), loss, backward, clipping, AdamW and the average's
update. The options are timed in rounds (every option once per round, the order rotating) and each option's
time is its median step.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from training.config import ModelConfig, TrainingConfig
from training.train import Trainer, build_optimizer

# 65 characters and the unknown one: tiny shakespeare's vocabulary size (66), so the output layer is the lecture's
ALPHABET = "".join(chr(c) for c in range(33, 98))


@dataclass(frozen=True)
class Option:
    name: str
    precision: str = "fp32"
    weight_drop: float = 0.0
    ema_decay: float = 0.0
    dropout: float = 0.0
    dropout_mask: str = "step"
    fused_adamw: bool = True  # False: torch's per-tensor AdamW loop, which training used before


OPTIONS = [
    Option("fp32 (baseline)"),
    Option("bf16", precision="bf16"),
    Option("weight_drop 0.4", weight_drop=0.4),
    Option("ema_decay 0.999", ema_decay=0.999),
    Option("bf16 + weight_drop 0.4", precision="bf16", weight_drop=0.4),
    Option("dropout 0.4, step masks", dropout=0.4),
    Option("dropout 0.4, window masks", dropout=0.4, dropout_mask="window"),
    Option("AdamW per-tensor loop", fused_adamw=False),
]


def trainer_for(option: Option, model: ModelConfig, batch: int, seq_len: int, corpus: Path, out: Path) -> Trainer:
    config = TrainingConfig()
    config.data.corpus = str(corpus)
    config.model = replace(
        model, weight_drop=option.weight_drop, dropout=option.dropout, dropout_mask=option.dropout_mask
    )
    config.optim.batch_size, config.optim.seq_len, config.optim.ema_decay = batch, seq_len, option.ema_decay
    config.run.precision, config.run.out_dir, config.run.progress = option.precision, str(out), False
    trainer = Trainer(config)
    if not option.fused_adamw:
        trainer.optimizer = build_optimizer(trainer.model, config, fused=False)
    return trainer


def synthetic_corpus(path: Path, batch: int, seq_len: int) -> Path:
    """Every character of ALPHABET, then random text long enough for a few windows of every stream after the
    90/10 split."""
    rng = random.Random(0)
    path.write_text(ALPHABET + "".join(rng.choices(ALPHABET, k=12 * batch * (seq_len + 1))), encoding="utf-8")
    return path


def run(model: ModelConfig, batch: int, seq_len: int, rounds: int) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory(prefix="charrnn-train-options-") as tmp:
        corpus = synthetic_corpus(Path(tmp) / "corpus.txt", batch, seq_len)
        trainers = [
            trainer_for(option, model, batch, seq_len, corpus, Path(tmp) / str(i)) for i, option in enumerate(OPTIONS)
        ]
        for trainer in trainers:  # the first step warms up kernels and allocations
            trainer.train_step()
        times: list[list[float]] = [[] for _ in trainers]
        for r in range(rounds):
            order = list(range(len(trainers)))
            for i in order[r % len(order) :] + order[: r % len(order)]:
                t0 = time.perf_counter()
                trainers[i].train_step()
                times[i].append(time.perf_counter() - t0)
    base = statistics.median(times[0])
    rows: list[dict[str, object]] = []
    for option, measured in zip(OPTIONS, times, strict=True):
        median = statistics.median(measured)
        rows.append(
            {
                "option": option.name,
                "ms/step": round(median * 1e3, 1),
                "kchars/s": round(batch * seq_len / median / 1e3, 2),
                "time / fp32": round(median / base, 2),
            }
        )
    return rows
