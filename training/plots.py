"""Pictures of a training run (matplotlib, rendered headless to PNG)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _nats_to_bits(nats: Any) -> Any:
    return nats / math.log(2)


def _bits_to_nats(bits: Any) -> Any:
    return bits * math.log(2)


def plot_loss_curves(metrics_path: Path, out_path: Path, title: str | None = None) -> Path:
    """Train and validation loss (nats, with bits/char on the right axis) against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train: list[tuple[int, float]] = []
    val: list[tuple[int, float]] = []
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if "train_loss" in row:
            train.append((row["step"], row["train_loss"]))
        if "val_loss" in row:
            val.append((row["step"], row["val_loss"]))
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train", lw=1, alpha=0.8)
    if val:
        ax.plot(*zip(*val, strict=True), label="validation", marker="o", ms=3)
        best_step, best = min(val, key=lambda sv: sv[1])
        ax.annotate(f"best {best:.3f} nats", (best_step, best), textcoords="offset points", xytext=(-60, 12))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/char)")
    ax.grid(alpha=0.3)
    ax.legend()
    right = ax.secondary_yaxis("right", functions=(_nats_to_bits, _bits_to_nats))
    right.set_ylabel("bits/char")
    ax.set_title(title or metrics_path.parent.name)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return out_path
