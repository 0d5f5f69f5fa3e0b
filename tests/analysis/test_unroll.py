"""The unrolled cells compute what the fused torch ops compute."""

from __future__ import annotations

import pytest
import torch

from training.analysis.unroll import GATE_NAMES, unroll
from training.config import ModelConfig
from training.model import CharRNN


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_unrolled_matches_fused(cell: str) -> None:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(cell=cell, layers=2, hidden_size=16, embedding_size=8), 11).eval()
    tokens = torch.randint(0, 11, (3, 9))
    state = tuple(torch.randn(2, 3, 16) * 0.5 for _ in model.initial_state(3))
    with torch.no_grad():
        logits, final = model(tokens, state)
        trace = unroll(model, tokens, state, keep_gates=True)
    assert trace.logits is not None
    torch.testing.assert_close(trace.logits, logits, atol=1e-5, rtol=1e-5)
    for got, ref in zip(trace.state, final, strict=True):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert trace.h(1).shape == (3, 9, 16)
    for layer in range(2):
        assert set(trace.gates[layer]) == set(GATE_NAMES[cell])
        for name in ("i", "f", "o", "r", "z"):
            if name in trace.gates[layer]:
                gate = trace.gate(layer, name)
                assert float(gate.min()) >= 0.0 and float(gate.max()) <= 1.0


def test_per_step_states_are_reachable_by_autograd() -> None:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(cell="lstm", layers=1, hidden_size=8, embedding_size=4), 5)
    trace = unroll(model, torch.randint(0, 5, (1, 6)))
    assert trace.logits is not None
    grads = torch.autograd.grad(trace.logits[0, -1].sum(), trace.steps[0])
    assert all(g is not None and g.shape == (1, 8) for g in grads)
