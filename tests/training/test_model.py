from __future__ import annotations

import pytest
import torch

from training.config import ModelConfig
from training.model import CharRNN


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("embedding", [0, 8])
def test_shapes_for_every_cell(cell: str, embedding: int) -> None:
    model = CharRNN(ModelConfig(cell=cell, layers=2, hidden_size=16, embedding_size=embedding), vocab_size=11)
    tokens = torch.randint(0, 11, (3, 5))
    logits, state = model(tokens)
    assert logits.shape == (3, 5, 11)
    assert len(state) == (2 if cell == "lstm" else 1)
    assert all(s.shape == (2, 3, 16) for s in state)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_state_carries_across_calls(cell: str) -> None:
    """Running a sequence in two halves with the state carried equals running it whole."""
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(cell=cell, layers=2, hidden_size=16, embedding_size=8), vocab_size=9).eval()
    tokens = torch.randint(0, 9, (2, 12))
    whole, _ = model(tokens)
    first, state = model(tokens[:, :5])
    second, _ = model(tokens[:, 5:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=1e-5, atol=1e-5)


def test_one_hot_input_is_fixed() -> None:
    model = CharRNN(ModelConfig(embedding_size=0, hidden_size=8, layers=1), vocab_size=5)
    assert model.embedding is None
    assert all("onehot" not in name for name, _ in model.named_parameters())


def test_weight_tying_shares_the_matrix() -> None:
    model = CharRNN(ModelConfig(embedding_size=16, hidden_size=16, layers=1, tie_weights=True), vocab_size=7)
    assert model.embedding is not None
    assert model.head.weight is model.embedding.weight
    with pytest.raises(ValueError, match="tie_weights"):
        CharRNN(ModelConfig(embedding_size=8, hidden_size=16, tie_weights=True), vocab_size=7)
