"""`charrnn bench cells`: tanh RNN vs LSTM vs GRU at equal parameter count and equal wall-clock budget.

Each cell gets the hidden size that brings its parameter count closest to the reference
LSTM's, then trains for the same number of minutes on the same corpus and split. The
learning-rate schedule is the same for all (a step budget far beyond what the minutes
allow, so after warm-up the rate is close to its peak for every cell): differences come
from the cells, not from where each one happened to be in its decay.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from training.config import TrainingConfig, apply_overrides
from training.data import Dataset, prepare

log = logging.getLogger(__name__)

CELLS = ("rnn", "lstm", "gru")
STEP_BUDGET = 1_000_000  # effectively unlimited: the minutes stop each run


@dataclass(frozen=True)
class CellResult:
    cell: str
    layers: int
    hidden: int
    parameters: int
    steps: int
    wall_min: float
    best_val_bpc: float
    run_dir: str


GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def count_parameters(config: TrainingConfig, vocab_size: int) -> int:
    """CharRNN's parameter count, by formula (building large candidate models to count them is slow)."""
    m = config.model
    h = m.hidden_size
    inputs = m.embedding_size or vocab_size
    recurrent = GATES[m.cell] * ((inputs + h + 2) * h + (m.layers - 1) * (2 * h + 2) * h)
    embedding = vocab_size * m.embedding_size
    head = (0 if m.tie_weights else h * vocab_size) + vocab_size
    return embedding + recurrent + head


def matching_hidden_size(config: TrainingConfig, cell: str, vocab_size: int, target: int) -> int:
    """The hidden size whose parameter count is closest to `target` for `cell` (binary search)."""
    probe = TrainingConfig.from_dict(config.to_dict())
    probe.model.cell = cell

    def params(hidden: int) -> int:
        probe.model.hidden_size = hidden
        return count_parameters(probe, vocab_size)

    lo, hi = 1, 8192
    while lo < hi:  # smallest hidden size with params >= target
        mid = (lo + hi) // 2
        if params(mid) < target:
            lo = mid + 1
        else:
            hi = mid
    return min((h for h in (lo - 1, lo) if h >= 1), key=lambda h: abs(params(h) - target))


def base_config(corpus: str, minutes: float, out: Path, overrides: list[str]) -> TrainingConfig:
    config = TrainingConfig()
    config.data.corpus = corpus
    config.optim.max_minutes = minutes
    config.optim.max_steps = STEP_BUDGET
    config.model.hidden_size = 128
    config.run.eval_interval = 100
    config.run.sample_interval = 0
    config.run.progress = False
    config.run.out_dir = str(out)
    return apply_overrides(config, overrides)


def run_cells(
    base: TrainingConfig, out: Path, cells: tuple[str, ...] = CELLS, dataset: Dataset | None = None
) -> list[CellResult]:
    """Train each cell in turn; the reference parameter count is the base config's LSTM."""
    from training.train import Trainer

    dataset = dataset or prepare(base.data)
    vocab_size = len(dataset.vocab)
    reference = TrainingConfig.from_dict(base.to_dict())
    reference.model.cell = "lstm"
    target = count_parameters(reference, vocab_size)
    log.info("target: %d parameters (an lstm %dx%d)", target, base.model.layers, base.model.hidden_size)
    results = []
    for cell in cells:
        config = TrainingConfig.from_dict(base.to_dict())
        config.model.cell = cell
        config.model.hidden_size = matching_hidden_size(base, cell, vocab_size, target)
        config.run.out_dir = str(out / cell)
        config.validate()
        result = Trainer(config, dataset=dataset).train()
        results.append(
            CellResult(
                cell=cell,
                layers=config.model.layers,
                hidden=config.model.hidden_size,
                parameters=count_parameters(config, vocab_size),
                steps=result.steps,
                wall_min=round(result.wall_time_s / 60, 2),
                best_val_bpc=round(result.best_val_bpc, 4),
                run_dir=str(out / cell),
            )
        )
        log.info("%s: %.4f bits/char after %d steps", cell, result.best_val_bpc, result.steps)
    return results


def markdown_table(results: list[CellResult]) -> str:
    lines = [
        "| cell | layers x hidden | parameters | steps | minutes | best val bits/char |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: r.best_val_bpc):
        lines.append(
            f"| {r.cell} | {r.layers}x{r.hidden} | {r.parameters:,} | {r.steps} | {r.wall_min:.1f} "
            f"| {r.best_val_bpc:.4f} |"
        )
    return "\n".join(lines) + "\n"


def validation_curve(run_dir: Path) -> list[tuple[float, float]]:
    """(training minutes, validation bits/char) at every evaluation of a run."""
    points = []
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if "val_loss" in row:
            points.append((row["wall_time_s"] / 60, row["val_loss"] / math.log(2)))
    return points


def plot_curves(results: list[CellResult], path: Path) -> Path:
    from training.analysis.render import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    for r in results:
        curve = validation_curve(Path(r.run_dir))
        if curve:
            ax.plot(*zip(*curve, strict=True), marker="o", ms=2.5, label=f"{r.cell} {r.layers}x{r.hidden}")
    ax.set_xlabel("training wall-clock (minutes)")
    ax.set_ylabel("validation bits/char")
    ax.set_title(f"equal parameters (~{results[0].parameters:,}), equal time" if results else "")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(results: list[CellResult], out: Path, command: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results)
    (out / "cells.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n", encoding="utf-8")
    (out / "cells.md").write_text(f"`{command}`\n\n{table}", encoding="utf-8")
    plot_curves(results, out / "cells.png")
    return table
