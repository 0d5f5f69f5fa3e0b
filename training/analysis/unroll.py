"""The recurrent stack unrolled step by step, sharing the fused model's weights.

The fused nn.LSTM/GRU/RNN hides per-step quantities: it returns only the top layer's
outputs and never the gates or the LSTM cell state, and autograd cannot reach a single
step's hidden state inside it. Here each layer runs one step at a time with the same
equations as torch (checked against the fused model in the tests), so every h_t, c_t and
gate is a tensor of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from training.model import CharRNN, State

# Gates recorded per cell, in torch's block order; the LSTM's "g" is the tanh candidate.
GATE_NAMES: dict[str, tuple[str, ...]] = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n"), "rnn": ()}


@dataclass
class Trace:
    """Per layer: the hidden state after each step (and the LSTM cell state, and gates if kept)."""

    steps: list[list[Tensor]]  # [layer][t] -> h_t [B, H], each a node of the autograd graph
    cells: list[list[Tensor]] = field(default_factory=list)  # [layer][t] -> c_t (LSTM only)
    gates: list[dict[str, list[Tensor]]] = field(default_factory=list)  # [layer][gate][t] -> [B, H]
    logits: Tensor | None = None  # [B, T, V]
    state: State = ()

    def h(self, layer: int) -> Tensor:
        return torch.stack(self.steps[layer], dim=1)

    def c(self, layer: int) -> Tensor:
        return torch.stack(self.cells[layer], dim=1)

    def gate(self, layer: int, name: str) -> Tensor:
        return torch.stack(self.gates[layer][name], dim=1)


def _layer_weights(model: CharRNN, layer: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    rnn = model.rnn
    return (
        getattr(rnn, f"weight_ih_l{layer}"),
        getattr(rnn, f"weight_hh_l{layer}"),
        getattr(rnn, f"bias_ih_l{layer}"),
        getattr(rnn, f"bias_hh_l{layer}"),
    )


def unroll(model: CharRNN, tokens: Tensor, state: State | None = None, keep_gates: bool = False) -> Trace:
    """Run `tokens` [B, T] through the model one step at a time; logits match `model(tokens, state)`."""
    cell = model.config.cell
    if state is None:
        state = model.initial_state(tokens.shape[0], tokens.device)
    x = model.encode(tokens)
    trace = Trace(steps=[])
    final_h, final_c = [], []
    for layer in range(model.config.layers):
        w_ih, w_hh, b_ih, b_hh = _layer_weights(model, layer)
        projected = x @ w_ih.T + b_ih  # the input part of every step at once: [B, T, G*H]
        h = state[0][layer]
        c = state[1][layer] if cell == "lstm" else h
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        gates: dict[str, list[Tensor]] = {name: [] for name in GATE_NAMES[cell]} if keep_gates else {}
        for t in range(tokens.shape[1]):
            rec = h @ w_hh.T + b_hh
            if cell == "rnn":
                h = torch.tanh(projected[:, t] + rec)
                values: tuple[Tensor, ...] = ()
            elif cell == "lstm":
                i, f, g, o = (projected[:, t] + rec).chunk(4, dim=-1)
                i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
                c = f * c + i * g
                h = o * torch.tanh(c)
                cs.append(c)
                values = (i, f, g, o)
            else:  # gru, torch's formulation (reset applied after the recurrent matmul)
                xr, xz, xn = projected[:, t].chunk(3, dim=-1)
                hr, hz, hn = rec.chunk(3, dim=-1)
                r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
                n = torch.tanh(xn + r * hn)
                h = (1 - z) * n + z * h
                values = (r, z, n)
            hs.append(h)
            for name, value in zip(gates, values, strict=False):
                gates[name].append(value)
        trace.steps.append(hs)
        if cell == "lstm":
            trace.cells.append(cs)
            final_c.append(c)
        trace.gates.append(gates)
        final_h.append(h)
        x = torch.stack(hs, dim=1)
    trace.logits = model.head(x)
    trace.state = (torch.stack(final_h), torch.stack(final_c)) if cell == "lstm" else (torch.stack(final_h),)
    return trace
