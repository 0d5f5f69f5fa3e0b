"""Record every hidden unit over a text: h of each layer, and for the LSTM c and tanh(c) too."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from training.analysis.unroll import GATE_NAMES, unroll
from training.model import CharRNN, State

CHUNK = 256  # steps per unrolled call; the state carries across chunks


@dataclass
class Recording:
    """Activations per named group ("h0", "c0", "tanh_c0", "gate_f0", ...), each [T, hidden]."""

    groups: dict[str, np.ndarray]

    def matrix(self, names: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
        """All units side by side [T, units] with their ids ("c1:42" = unit 42 of layer 1's cell state)."""
        names = names or [n for n in self.groups if not n.startswith("gate_")]
        columns = [self.groups[n] for n in names]
        ids = [f"{n}:{u}" for n, col in zip(names, columns, strict=True) for u in range(col.shape[1])]
        return np.concatenate(columns, axis=1), ids

    def unit(self, unit_id: str) -> np.ndarray:
        group, _, index = unit_id.partition(":")
        if group not in self.groups or not index.isdigit() or int(index) >= self.groups[group].shape[1]:
            raise KeyError(f"no unit {unit_id!r}; groups are {sorted(self.groups)} with units 0..N-1")
        return self.groups[group][:, int(index)]


@torch.no_grad()
def record(model: CharRNN, ids: np.ndarray, gates: bool = False) -> Recording:
    """Run the text (one stream, state carried) and keep every step's states (and gates if asked)."""
    cell, layers = model.config.cell, model.config.layers
    parts: dict[str, list[np.ndarray]] = {}
    state: State | None = None
    tokens = torch.from_numpy(np.asarray(ids, dtype=np.int64))[None, :]
    for start in range(0, tokens.shape[1], CHUNK):
        trace = unroll(model, tokens[:, start : start + CHUNK], state, keep_gates=gates)
        state = trace.state
        for layer in range(layers):
            found = {f"h{layer}": trace.h(layer)}
            if cell == "lstm":
                c = trace.c(layer)
                found.update({f"c{layer}": c, f"tanh_c{layer}": torch.tanh(c)})
            if gates:
                found.update({f"gate_{g}{layer}": trace.gate(layer, g) for g in GATE_NAMES[cell]})
            for name, value in found.items():
                parts.setdefault(name, []).append(value[0].numpy())
    return Recording({name: np.concatenate(chunks) for name, chunks in parts.items()})
