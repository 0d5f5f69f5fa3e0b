"""The lecture's "hello" model: vocabulary [h, e, l, o] as one-hot vectors, a tanh RNN that learns
to predict e, l, l, o from h, e, l, l.

The second "l" is the point: after "l" the answer is "l" once and "o" the next time, so the
prediction must come from the hidden state, not from the input character alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.analysis.unroll import unroll
from training.config import ModelConfig
from training.model import CharRNN

VOCAB = ("h", "e", "l", "o")
WORD = "hello"


@dataclass
class HelloResult:
    model: CharRNN
    losses: list[float]  # per training step
    inputs: str
    targets: str
    predicted: str
    hidden: np.ndarray  # [steps, hidden]: the state after each input character
    probabilities: np.ndarray  # [steps, vocab]


def train_hello(hidden: int = 3, seed: int = 0, steps: int = 300, lr: float = 0.05) -> HelloResult:
    """Train on the single sequence h,e,l,l -> e,l,l,o with Adam; deterministic for a seed."""
    torch.manual_seed(seed)
    model = CharRNN(ModelConfig(cell="rnn", layers=1, hidden_size=hidden, embedding_size=0), len(VOCAB))
    ids = torch.tensor([[VOCAB.index(c) for c in WORD]])
    x, y = ids[:, :-1], ids[:, 1:]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, len(VOCAB)), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        trace = unroll(model, x)
        assert trace.logits is not None
        probs = torch.softmax(trace.logits[0], dim=-1).numpy()
        hidden_states = trace.h(0)[0].numpy()
    predicted = "".join(VOCAB[i] for i in probs.argmax(axis=-1))
    return HelloResult(model, losses, WORD[:-1], WORD[1:], predicted, hidden_states, probs)


def describe(result: HelloResult) -> str:
    """A step-by-step table, like the lecture's figure: input, one-hot, hidden state, output."""
    out = [
        f"vocabulary {list(VOCAB)}, one-hot inputs, tanh RNN with {result.hidden.shape[1]} hidden units",
        f"trained {len(result.losses)} steps: loss {result.losses[0]:.3f} -> {result.losses[-1]:.4f}",
        "",
    ]
    for t, (ch, target) in enumerate(zip(result.inputs, result.targets, strict=True)):
        onehot = [int(c == ch) for c in VOCAB]
        h = " ".join(f"{v:+.2f}" for v in result.hidden[t])
        p = " ".join(f"{c}:{v:.2f}" for c, v in zip(VOCAB, result.probabilities[t], strict=True))
        out.append(
            f"step {t}: input {ch!r} {onehot}  h = [{h}]  p = {p}  -> {result.predicted[t]!r} (target {target!r})"
        )
    verdict = "all correct" if result.predicted == result.targets else "NOT all correct"
    out.append(f"\npredicted {result.predicted!r} for target {result.targets!r}: {verdict}")
    return "\n".join(out) + "\n"


def write_hello(result: HelloResult, out: Path) -> None:
    """`out/hello.txt` (the table printed) and `out/hello.json` (losses, states and probabilities per step)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "hello.txt").write_text(describe(result), encoding="utf-8")
    data = {
        "vocabulary": list(VOCAB),
        "inputs": result.inputs,
        "targets": result.targets,
        "predicted": result.predicted,
        "losses": [round(x, 6) for x in result.losses],
        "hidden": result.hidden.round(6).tolist(),
        "probabilities": result.probabilities.round(6).tolist(),
    }
    (out / "hello.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
