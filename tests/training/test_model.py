from __future__ import annotations

import pytest
import torch

from training.config import ModelConfig
from training.model import CharRNN

# torch's own modules, named here rather than taken from training.model: the reference the tests check against
TORCH_CELLS = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


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


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_weight_drop_masks_only_the_recurrent_matrices(cell: str) -> None:
    """Weight drop is DropConnect on W_hh: one mask per window, shared by every row and step. Rebuilt from the
    gradient's zeros, that mask applied by hand to a plain torch RNN reproduces the training forward; the
    input matrices keep every entry; eval mode is the plain model, which is what gets exported."""
    torch.manual_seed(0)
    p, hidden = 0.5, 32
    config = ModelConfig(cell=cell, layers=2, hidden_size=hidden, embedding_size=8, weight_drop=p)
    model = CharRNN(config, vocab_size=9)
    tokens = torch.randint(0, 9, (3, 7))
    logits, _ = model.train()(tokens)
    logits.sum().backward()
    grads = {name: param.grad for name, param in model.rnn.named_parameters()}
    for name, grad in grads.items():
        assert grad is not None
        zeros = float((grad == 0).float().mean())
        if name.startswith("weight_hh_"):  # about p of the entries dropped (binomial sd ~0.004 here)
            assert abs(zeros - p) < 0.05, (name, zeros)
        elif name.startswith("weight_ih_"):
            assert zeros < 0.01, (name, zeros)

    reference = TORCH_CELLS[cell](8, hidden, 2, batch_first=True)
    reference.load_state_dict(model.rnn.state_dict())
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if name.startswith("weight_hh_"):
                param.mul_((grads[name] != 0).float() / (1 - p))
        assert model.embedding is not None
        expected = model.head(reference(model.embedding(tokens))[0])
    torch.testing.assert_close(logits.detach(), expected, rtol=1e-5, atol=1e-5)

    plain = CharRNN(ModelConfig(cell=cell, layers=2, hidden_size=hidden, embedding_size=8), vocab_size=9)
    plain.load_state_dict(model.state_dict())
    model.eval()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[0], plain(tokens)[0])
        assert not torch.allclose(model.train()(tokens)[0], plain(tokens)[0])  # masked while training


def test_weight_drop_is_validated() -> None:
    from training.config import TrainingConfig, apply_overrides

    with pytest.raises(ValueError, match=r"model\.weight_drop must be in"):
        apply_overrides(TrainingConfig(), ["model.weight_drop=1.0"])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("weight_drop", [0.0, 0.3])
def test_window_dropout_keeps_one_mask_per_row_for_the_window(cell: str, weight_drop: float) -> None:
    """dropout_mask=window: between the layers and before the head, a unit is dropped for every step of the
    window or for none. With one row, each mask is the set of input columns whose weight gradient is zero (a unit
    dropped at only some steps would still have a gradient); those masks, applied by hand to plain one-layer torch
    RNNs, reproduce the training forward and its state. Rows draw their own masks; eval mode is the plain model."""
    torch.manual_seed(0)
    p, hidden, embed = 0.5, 256, 8
    config = ModelConfig(cell=cell, layers=2, hidden_size=hidden, embedding_size=embed, dropout=p,
                         dropout_mask="window", weight_drop=weight_drop)  # fmt: skip
    model = CharRNN(config, vocab_size=9)
    tokens = torch.randint(0, 9, (1, 7))
    logits, state = model.train()(tokens)
    logits.sum().backward()
    grad = {name: param.grad for name, param in model.named_parameters()}
    between = (grad["rnn.weight_ih_l1"] != 0).any(dim=0).float()
    before_head = (grad["head.weight"] != 0).any(dim=0).float()
    for mask in (between, before_head):  # binomial sd 0.03 at 256 units
        assert abs(float(mask.mean()) - (1 - p)) < 0.15

    layer_cls = TORCH_CELLS[cell]
    layers = [layer_cls(embed, hidden, batch_first=True), layer_cls(hidden, hidden, batch_first=True)]
    with torch.no_grad():
        for index, layer in enumerate(layers):
            for name, param in layer.named_parameters():
                own = f"rnn.{name[:-1]}{index}"
                param.copy_(dict(model.named_parameters())[own])
                if name.startswith("weight_hh_") and weight_drop:
                    param.mul_((grad[own] != 0).float() / (1 - weight_drop))
        assert model.embedding is not None
        first, first_state = layers[0](model.embedding(tokens))
        second, second_state = layers[1](first * between / (1 - p))
        expected = model.head(second * before_head / (1 - p))
    torch.testing.assert_close(logits.detach(), expected, rtol=1e-5, atol=1e-5)
    states = [first_state, second_state] if cell == "lstm" else [(first_state,), (second_state,)]
    for kind, got in enumerate(state):
        torch.testing.assert_close(got.detach(), torch.cat([s[kind] for s in states]), rtol=1e-5, atol=1e-5)

    with torch.no_grad():
        twin, _ = model.train()(tokens.repeat(2, 1))
        assert not torch.allclose(twin[0], twin[1])  # each row its own masks
        plain = CharRNN(ModelConfig(cell=cell, layers=2, hidden_size=hidden, embedding_size=embed), vocab_size=9)
        plain.load_state_dict(model.state_dict())
        torch.testing.assert_close(model.eval()(tokens)[0], plain.eval()(tokens)[0])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_window_input_dropout_masks_each_input_feature_for_the_window(cell: str) -> None:
    """input_dropout with window masks: one mask per row over the encoded input's features, read back (one row)
    from the zero columns of the first layer's input-matrix gradient; applied by hand to the embedding in front of
    a plain torch RNN, it reproduces the training forward. Rows draw their own masks; eval mode is the plain model."""
    torch.manual_seed(0)
    p, hidden, embed = 0.3, 16, 256
    config = ModelConfig(cell=cell, layers=1, hidden_size=hidden, embedding_size=embed, input_dropout=p,
                         dropout_mask="window")  # fmt: skip
    model = CharRNN(config, vocab_size=9)
    tokens = torch.randint(0, 9, (1, 7))
    logits, _ = model.train()(tokens)
    logits.sum().backward()
    grad = model.rnn.weight_ih_l0.grad
    assert grad is not None
    kept = (grad != 0).any(dim=0).float()
    assert abs(float(kept.mean()) - (1 - p)) < 0.15  # binomial sd 0.03 at 256 features
    reference = TORCH_CELLS[cell](embed, hidden, batch_first=True)
    reference.load_state_dict(model.rnn.state_dict())
    with torch.no_grad():
        assert model.embedding is not None
        expected = model.head(reference(model.embedding(tokens) * kept / (1 - p))[0])
        torch.testing.assert_close(logits.detach(), expected, rtol=1e-5, atol=1e-5)
        twin, _ = model.train()(tokens.repeat(2, 1))
        assert not torch.allclose(twin[0], twin[1])
        plain = CharRNN(ModelConfig(cell=cell, layers=1, hidden_size=hidden, embedding_size=embed), vocab_size=9)
        plain.load_state_dict(model.state_dict())
        torch.testing.assert_close(model.eval()(tokens)[0], plain.eval()(tokens)[0])


def test_step_input_dropout_draws_a_fresh_mask_at_every_step() -> None:
    """With step masks the first layer's input loses about p of its entries, scaled by 1/(1-p), and a feature
    dropped at one step is not dropped at every step (the input the recurrent layer receives, captured)."""
    torch.manual_seed(0)
    p, embed = 0.3, 64
    config = ModelConfig(layers=1, hidden_size=8, embedding_size=embed, input_dropout=p, dropout_mask="step")
    model = CharRNN(config, vocab_size=9).train()
    seen: list[torch.Tensor] = []
    model.rnn.register_forward_pre_hook(lambda _module, args: seen.append(args[0].detach()))
    tokens = torch.zeros(1, 50, dtype=torch.long)  # one character repeated: the same embedding at every step
    model(tokens)
    assert model.embedding is not None
    clean = model.embedding(tokens).detach()
    dropped = seen[0] == 0
    assert abs(float(dropped.float().mean()) - p) < 0.05  # 3200 entries: sd 0.008
    torch.testing.assert_close(seen[0][~dropped], (clean / (1 - p))[~dropped])
    per_feature = dropped[0].float().mean(dim=0)  # the fraction of steps each feature was dropped at
    assert bool(((per_feature > 0) & (per_feature < 1)).all())


def test_input_dropout_is_validated() -> None:
    from training.config import TrainingConfig, apply_overrides

    with pytest.raises(ValueError, match=r"model\.input_dropout must be in"):
        apply_overrides(TrainingConfig(), ["model.input_dropout=1.0"])


def test_dropout_mask_is_validated() -> None:
    from training.config import TrainingConfig, apply_overrides

    with pytest.raises(ValueError, match=r"model\.dropout_mask must be step or window"):
        apply_overrides(TrainingConfig(), ["model.dropout_mask=locked"])
