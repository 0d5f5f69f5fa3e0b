"""Tiny, seeded, randomly initialised model artifacts for the service tests.

Uses torch (tests may; the service may not) to export a real ONNX graph with the names and
shapes of the artifact contract, then writes a manifest with charrnn.artifact. Weights are
random but seeded, so every artifact is reproducible and a second export of the same spec
has the same hash.
"""

from __future__ import annotations

import string
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from charrnn.artifact import (
    FORMAT_VERSION,
    Manifest,
    ModelSpec,
    OnnxSpec,
    StateSpec,
    TensorSpec,
    VocabularySpec,
    sha256_file,
    write_manifest,
)
from charrnn.vocab import DEFAULT_UNKNOWN_CHAR

# Printable ASCII without the odd whitespace, plus newline (and the unknown char for 'replace').
BASE_CHARS = [c for c in string.printable if c not in "\t\r\x0b\x0c"]


@dataclass(frozen=True)
class TinySpec:
    cell: str = "lstm"
    layers: int = 2
    hidden: int = 24
    embedding: int = 16
    policy: str = "replace"
    seed: int = 0
    # Gains on the head and the recurrent weights: the default init decodes greedily into a
    # fixed point ("8888..."); larger weights give varied text, a sharper check of order and state.
    head_gain: float = 3.0
    rnn_gain: float = 3.0


class TinyCharModel(nn.Module):
    """Embedding → RNN → linear head; forward(tokens, *states) -> (logits, *new_states)."""

    def __init__(self, spec: TinySpec, vocab_size: int):
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(vocab_size, spec.embedding)
        rnn_cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[spec.cell]
        self.rnn = rnn_cls(spec.embedding, spec.hidden, num_layers=spec.layers, batch_first=True)
        self.head = nn.Linear(spec.hidden, vocab_size)
        with torch.no_grad():
            self.head.weight.mul_(spec.head_gain)
            for name, weight in self.rnn.named_parameters():
                if name.startswith("weight_"):
                    weight.mul_(spec.rnn_gain)

    def forward(self, tokens: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.embed(tokens)
        if self.spec.cell == "lstm":
            out, (h, c) = self.rnn(x, (states[0], states[1]))
            return self.head(out), h, c
        out, h = self.rnn(x, states[0])
        return self.head(out), h


def _export(
    model: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    state_in: list[str],
    state_out: list[str],
    dynamic: dict[str, dict[int, str]],
) -> None:
    torch.onnx.export(
        model,
        example,
        str(path),
        input_names=["tokens", *state_in],
        output_names=["logits", *state_out],
        dynamic_axes=dynamic,
        opset_version=17,
        dynamo=False,
    )


def vocabulary_chars(policy: str) -> list[str]:
    return BASE_CHARS + ([DEFAULT_UNKNOWN_CHAR] if policy == "replace" else [])


def build_model(spec: TinySpec) -> TinyCharModel:
    torch.manual_seed(spec.seed)
    model = TinyCharModel(spec, len(vocabulary_chars(spec.policy)))
    model.eval()
    return model


def export(spec: TinySpec, directory: Path) -> Path:
    """Export `spec` to an artifact directory; returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    model = build_model(spec)
    chars = vocabulary_chars(spec.policy)
    kinds = ["h", "c"] if spec.cell == "lstm" else ["h"]
    state_in = list(kinds)
    state_out = [f"{k}_out" for k in kinds]
    batch = 2
    example = (
        torch.zeros(batch, 5, dtype=torch.long),
        *(torch.zeros(spec.layers, batch, spec.hidden) for _ in kinds),
    )
    dynamic = {"tokens": {0: "batch", 1: "time"}, "logits": {0: "batch", 1: "time"}}
    dynamic.update({name: {1: "batch"} for name in state_in + state_out})
    onnx_path = directory / "model.onnx"
    with warnings.catch_warnings():  # "batch_size other than 1": moot, the states are graph inputs
        warnings.simplefilter("ignore")  # and the legacy-exporter deprecation notes
        _export(model, example, onnx_path, state_in, state_out, dynamic)
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        model=ModelSpec(
            name=f"tiny-{spec.cell}",
            version=f"seed{spec.seed}",
            cell=spec.cell,
            layers=spec.layers,
            hidden_size=spec.hidden,
            embedding_size=spec.embedding,
            vocab_size=len(chars),
            parameters=sum(p.numel() for p in model.parameters()),
        ),
        vocabulary=VocabularySpec(
            chars=chars,
            unknown_policy=spec.policy,
            unknown_char=DEFAULT_UNKNOWN_CHAR if spec.policy == "replace" else None,
        ),
        onnx=OnnxSpec(
            file="model.onnx",
            sha256=sha256_file(onnx_path),
            opset=17,
            tokens=TensorSpec("tokens", "int64", ["batch", "time"]),
            logits=TensorSpec("logits", "float32", ["batch", "time", len(chars)]),
            states=[StateSpec(k, i, o) for k, i, o in zip(kinds, state_in, state_out, strict=True)],
        ),
        training={"val_bits_per_char": 6.5, "corpus": "random weights"},
        export={"opset": 17, "torch": torch.__version__},
    )
    write_manifest(directory, manifest)
    return directory


@torch.no_grad()
def greedy_reference(spec: TinySpec, prompt: str, n: int) -> str:
    """Greedy decoding with the torch model, one step at a time: the reference sampler."""
    model = build_model(spec)
    chars = vocabulary_chars(spec.policy)
    index = {c: i for i, c in enumerate(chars)}
    kinds = 2 if spec.cell == "lstm" else 1
    states = tuple(torch.zeros(spec.layers, 1, spec.hidden) for _ in range(kinds))
    tokens = torch.tensor([[index[c] for c in prompt]])
    out: list[str] = []
    for _ in range(n):
        logits, *new = model(tokens, *states)
        states = tuple(new)
        nxt = int(torch.argmax(logits[0, -1]))
        out.append(chars[nxt])
        tokens = torch.tensor([[nxt]])
    return "".join(out)
