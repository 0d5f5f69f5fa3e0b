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
    corpus: str
    budget_min: float
    evals: list[tuple[int, float, float]]  # (step, training minutes, validation bits/char)

    def bpc_at_step(self, step: int) -> float:
        """Validation bits/char at the last evaluation at or before `step`."""
        return min((e for e in self.evals if e[0] <= step), key=lambda e: -e[0])[2]


def load_result(run_dir: Path) -> CellResult:
    """Read one cell's run back from its directory (config, vocabulary and metrics log)."""
    config = TrainingConfig.from_dict(json.loads((run_dir / "config.json").read_text(encoding="utf-8")))
    vocab_size = len(json.loads((run_dir / "vocab.json").read_text(encoding="utf-8"))["chars"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    evals = [(int(r["step"]), r["wall_time_s"] / 60, r["val_loss"] / math.log(2)) for r in rows if "val_loss" in r]
    if not evals:
        raise ValueError(f"{run_dir} has no validation results")
    return CellResult(
        cell=config.model.cell,
        layers=config.model.layers,
        hidden=config.model.hidden_size,
        parameters=count_parameters(config, vocab_size),
        steps=int(rows[-1]["step"]),
        wall_min=float(rows[-1]["wall_time_s"]) / 60,
        best_val_bpc=round(min(e[2] for e in evals), 4),
        run_dir=str(run_dir),
        corpus=config.data.corpus,
        budget_min=config.optim.max_minutes,
        evals=evals,
    )


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
        (out / cell / "metrics.jsonl").unlink(missing_ok=True)  # the log appends; start this run's afresh
        Trainer(config, dataset=dataset).train()
        results.append(load_result(out / cell))
        log.info("%s: %.4f bits/char after %d steps", cell, results[-1].best_val_bpc, results[-1].steps)
    return results


def markdown_table(results: list[CellResult]) -> str:
    """Equal time (best validation within the budget) and equal steps (the fewest any cell made)."""
    common = min(r.evals[-1][0] for r in results)
    lines = [
        f"| cell | layers x hidden | parameters | steps in budget | steps/min | val bits/char at step {common} "
        "| best val bits/char (equal time) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: r.best_val_bpc):
        rate = r.steps / r.wall_min if r.wall_min else float("nan")
        lines.append(
            f"| {r.cell} | {r.layers}x{r.hidden} | {r.parameters:,} | {r.steps} | {rate:.0f} "
            f"| {r.bpc_at_step(common):.4f} | {r.best_val_bpc:.4f} |"
        )
    return "\n".join(lines) + "\n"


def plot_curves(results: list[CellResult], path: Path) -> Path:
    from training.analysis.render import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    for r in results:
        minutes, bpc = [e[1] for e in r.evals], [e[2] for e in r.evals]
        ax.plot(minutes, bpc, marker="o", ms=2.5, label=f"{r.cell} {r.layers}x{r.hidden} ({r.steps} steps)")
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
