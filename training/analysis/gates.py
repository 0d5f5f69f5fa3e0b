"""`charrnn analyze gates`: how often each gate is saturated, per layer.

A gate near 0 or 1 acts as a switch: a forget gate right-saturated (> 0.9) most of the time
is a unit that remembers over long spans (Karpathy, Johnson & Fei-Fei 2015, figure 3).
Sigmoid gates only: LSTM input, forget and output; GRU reset and update.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from training.analysis.heldout import DEFAULT_MAX_CHARS, heldout_documents
from training.analysis.record import record
from training.analysis.render import pyplot
from training.analysis.weights import LoadedModel

LOW, HIGH = 0.1, 0.9
SIGMOID_GATES = {"lstm": ("i", "f", "o"), "gru": ("r", "z")}
GATE_LABELS = {"i": "input", "f": "forget", "o": "output", "r": "reset", "z": "update"}


@dataclass(frozen=True)
class GateStats:
    layer: int
    gate: str
    left: list[float]  # per unit: fraction of time < LOW
    right: list[float]  # per unit: fraction of time > HIGH

    @property
    def mean_left(self) -> float:
        return float(np.mean(self.left))

    @property
    def mean_right(self) -> float:
        return float(np.mean(self.right))


@dataclass
class GatesReport:
    model: str
    chars: int
    stats: list[GateStats]


def gate_statistics(gates: dict[str, np.ndarray], cell: str, layers: int) -> list[GateStats]:
    stats = []
    for layer in range(layers):
        for gate in SIGMOID_GATES[cell]:
            values = gates[f"gate_{gate}{layer}"]
            left = (values < LOW).mean(axis=0)
            right = (values > HIGH).mean(axis=0)
            stats.append(GateStats(layer, gate, left.round(4).tolist(), right.round(4).tolist()))
    return stats


def markdown(report: GatesReport) -> str:
    lines = [
        f"Model {report.model}, {report.chars} held-out characters. Mean over units of the fraction of time each "
        f"gate is left-saturated (< {LOW}) or right-saturated (> {HIGH}).",
        "",
        "| layer | gate | left-saturated | right-saturated | units right-saturated > 90% of the time |",
        "|---|---|---|---|---|",
    ]
    for s in report.stats:
        always = sum(1 for r in s.right if r > 0.9)
        lines.append(
            f"| {s.layer} | {GATE_LABELS[s.gate]} | {s.mean_left:.3f} | {s.mean_right:.3f} | {always}/{len(s.right)} |"
        )
    return "\n".join(lines) + "\n"


def plot_gates(report: GatesReport, path: Path) -> Path:
    """One panel per layer: every unit as a point (fraction left, fraction right), as in the paper."""
    plt = pyplot()
    layers = sorted({s.layer for s in report.stats})
    fig, axes = plt.subplots(1, len(layers), figsize=(3.4 * len(layers), 3.4), dpi=90, squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        for s in (s for s in report.stats if s.layer == layer):
            ax.scatter(s.left, s.right, s=6, alpha=0.6, label=GATE_LABELS[s.gate])
        ax.plot([0, 1], [1, 0], color="grey", lw=0.8, ls="--")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"layer {layer}")
        ax.set_xlabel(f"fraction of time < {LOW}")
        ax.set_ylabel(f"fraction of time > {HIGH}")
        ax.legend(fontsize=7, markerscale=2)
    fig.suptitle(report.model, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def analyze_gates(
    loaded: LoadedModel, out: Path, texts: list[Path] | None = None, max_chars: int = DEFAULT_MAX_CHARS
) -> GatesReport:
    if loaded.cell not in SIGMOID_GATES:
        raise ValueError(f"a {loaded.cell} cell has no gates (use an lstm or gru model)")
    text = "\n".join(heldout_documents(loaded, texts, max_chars))
    ids, _ = loaded.vocab.encode_lossy(text)
    recording = record(loaded.model, ids, gates=True)
    report = GatesReport(
        loaded.describe(), len(ids), gate_statistics(recording.groups, loaded.cell, loaded.model.config.layers)
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "gates.json").write_text(json.dumps(asdict(report)) + "\n", encoding="utf-8")
    (out / "gates.md").write_text(markdown(report), encoding="utf-8")
    plot_gates(report, out / "gates.png")
    return report
