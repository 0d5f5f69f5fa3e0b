"""The char-RNN: input encoding, a recurrent stack (tanh RNN, LSTM or GRU) and a linear head.

No I/O here. The recurrent state is a tuple of tensors shaped [layers, batch, hidden]:
``(h,)`` for rnn and gru, ``(h, c)`` for lstm.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.config import ModelConfig

State = tuple[Tensor, ...]

_CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def state_kinds(cell: str) -> tuple[str, ...]:
    return ("h", "c") if cell == "lstm" else ("h",)


class CharRNN(nn.Module):
    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        if config.embedding_size > 0:
            self.embedding: nn.Embedding | None = nn.Embedding(vocab_size, config.embedding_size)
            input_size = config.embedding_size
        else:  # one-hot input: a fixed identity lookup, exported as a Gather like any embedding
            self.embedding = None
            self.register_buffer("onehot", torch.eye(vocab_size), persistent=False)
            input_size = vocab_size
        rnn_cls: Any = _CELLS[config.cell]  # nn.RNN's nonlinearity defaults to tanh, the lecture's cell
        self.rnn: nn.RNNBase = rnn_cls(
            input_size,
            config.hidden_size,
            num_layers=config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout)  # its p is the rate in use (set_dropout moves it)
        # One-layer stand-ins (on the meta device: no storage, and not submodules, so not in the state dict) that
        # run one layer of `self.rnn` with its own weights, for the window dropout between layers.
        self._layer_shells: list[nn.RNNBase] = [
            rnn_cls(size, config.hidden_size, batch_first=True, device="meta")
            for size in [input_size] + [config.hidden_size] * (config.layers - 1)
        ]
        self.head = nn.Linear(config.hidden_size, vocab_size)
        if config.tie_weights:
            if self.embedding is None or config.embedding_size != config.hidden_size:
                raise ValueError("tie_weights needs embedding_size == hidden_size")
            self.head.weight = self.embedding.weight

    def encode(self, tokens: Tensor) -> Tensor:
        if self.embedding is not None:
            return self.embedding(tokens)
        onehot = self.get_buffer("onehot")
        return F.embedding(tokens, onehot)

    def initial_state(self, batch_size: int, device: torch.device | None = None) -> State:
        shape = (self.config.layers, batch_size, self.config.hidden_size)
        return tuple(torch.zeros(shape, device=device) for _ in state_kinds(self.config.cell))

    def forward(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """tokens [B, T] int64 -> logits [B, T, V] and the state after the last step."""
        x = self.encode(tokens)
        if state is None:
            state = self.initial_state(tokens.shape[0], tokens.device)
        if self.training and self.config.input_dropout > 0.0:
            x = self._input_dropout(x)
        if self.training and self.config.dropout_mask == "window" and self.dropout.p > 0.0:
            out, new_state = self._layer_by_layer(x, state)
            return self.head(self._window_dropout(out, self.dropout.p)), new_state
        if self.training and self.config.weight_drop > 0.0:
            out, hx = torch.func.functional_call(self.rnn, self._dropped_recurrent_weights(), (x, _to_hx(state)))
        else:
            out, hx = self.rnn(x, _to_hx(state))
        return self.head(self.dropout(out)), _from_hx(hx)

    def set_dropout(self, p: float) -> None:
        """Use dropout rate p between the layers and before the head from now on, with either mask (a training
        schedule, model.dropout_start, moves it); the exported model has no dropout either way."""
        self.dropout.p = p
        if self.config.layers > 1:
            self.rnn.dropout = p

    def _input_dropout(self, x: Tensor) -> Tensor:
        """The encoded input [B, T, E] with model.input_dropout, masked as model.dropout_mask says."""
        p = self.config.input_dropout
        return self._window_dropout(x, p) if self.config.dropout_mask == "window" else F.dropout(x, p)

    @staticmethod
    def _window_dropout(x: Tensor, p: float) -> Tensor:
        """x [B, T, F] with one mask per row, the same at every time step (variational / locked dropout)."""
        keep = 1.0 - p
        return x * ((torch.rand(x.shape[0], 1, x.shape[2], device=x.device) < keep) / keep)

    def _layer_by_layer(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """The stack one layer at a time (each still one fused RNN call), so that the dropout between layers
        can keep its mask for the window; weight drop applies as in the whole-stack call."""
        weights: dict[str, Tensor] = dict(self.rnn.named_parameters())
        if self.config.weight_drop > 0.0:
            weights.update(self._dropped_recurrent_weights())
        outputs: list[State] = []
        for layer, shell in enumerate(self._layer_shells):
            if layer > 0:
                x = self._window_dropout(x, self.dropout.p)
            suffix = f"_l{layer}"
            own = {name.removesuffix(suffix) + "_l0": w for name, w in weights.items() if name.endswith(suffix)}
            layer_state = tuple(s[layer : layer + 1] for s in state)
            x, hx = torch.func.functional_call(shell, own, (x, _to_hx(layer_state)))
            outputs.append(_from_hx(hx))
        return x, tuple(torch.cat(parts) for parts in zip(*outputs, strict=True))

    def _dropped_recurrent_weights(self) -> dict[str, Tensor]:
        """Each W_hh with one DropConnect mask for the whole window (every row and time step), so the
        recurrence, not only its inputs and outputs, is regularised; gradients reach the kept entries."""
        keep = 1.0 - self.config.weight_drop
        # rand < keep is about twice as fast on a CPU as F.dropout's Bernoulli draw, the same distribution.
        return {
            name: param * (torch.rand_like(param) < keep) / keep
            for name, param in self.rnn.named_parameters()
            if name.startswith("weight_hh_")
        }

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _to_hx(state: State) -> Tensor | tuple[Tensor, Tensor]:
    """Our state tuple as torch's RNN modules take it: (h, c) for an LSTM, h alone otherwise."""
    return (state[0], state[1]) if len(state) == 2 else state[0]


def _from_hx(hx: Tensor | tuple[Tensor, ...]) -> State:
    """What torch's RNN modules return as the state, back to our tuple."""
    return tuple(hx) if isinstance(hx, tuple) else (hx,)


def detach_state(state: State) -> State:
    """Cut the graph between truncated-BPTT windows while keeping the values."""
    return tuple(s.detach() for s in state)
