"""Load a model for analysis: from a training checkpoint, or back from an ONNX artifact.

Analysis needs PyTorch weights (unrolled cells, gradients, gates), but the shipped model
directory holds only ``model.onnx``. The exported graph keeps every weight as an
initializer, so the `CharRNN` can be rebuilt from it: the ONNX recurrent ops store
W [1, G*H, I], R [1, G*H, H] and B [1, 2*G*H] in ONNX's gate order, which differs from
torch's (LSTM: ONNX i,o,f,c vs torch i,f,g,o; GRU: ONNX z,r,h vs torch r,z,n).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from charrnn.artifact import load_manifest
from charrnn.vocab import Vocabulary

if TYPE_CHECKING:
    from training.model import CharRNN

log = logging.getLogger(__name__)

# torch gate block k comes from ONNX gate block ONNX_GATE_ORDER[cell][k].
ONNX_GATE_ORDER: dict[str, tuple[int, ...]] = {"lstm": (0, 2, 3, 1), "gru": (1, 0, 2), "rnn": (0,)}
_RECURRENT_OPS = {"LSTM": "lstm", "GRU": "gru", "RNN": "rnn"}


class WeightsError(ValueError):
    """The ONNX graph does not have the shape this loader knows how to invert."""


@dataclass
class LoadedModel:
    """A model ready for analysis, with what is known about how it was trained."""

    model: CharRNN
    vocab: Vocabulary
    source: str  # where it came from, for titles and reports
    training: dict[str, Any] = field(default_factory=dict)  # config, corpus and split facts when known

    @property
    def cell(self) -> str:
        return self.model.config.cell

    def describe(self) -> str:
        c = self.model.config
        return f"{self.source} ({c.cell} {c.layers}x{c.hidden_size})"


def _reorder_gates(weight: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
    """Permute the gate blocks stacked along axis 0 of a [G*H, ...] array."""
    blocks = weight.reshape(len(order), weight.shape[0] // len(order), *weight.shape[1:])
    return np.ascontiguousarray(blocks[list(order)].reshape(weight.shape))


def _state_dict_from_onnx(graph: Any, cell: str, layers: int, embedding: bool) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state: dict[str, np.ndarray] = {}
    rnn_nodes = [n for n in graph.node if n.op_type in _RECURRENT_OPS]
    if len(rnn_nodes) != layers or any(_RECURRENT_OPS[n.op_type] != cell for n in rnn_nodes):
        raise WeightsError(f"expected {layers} {cell.upper()} nodes, found {[n.op_type for n in rnn_nodes]}")
    order = ONNX_GATE_ORDER[cell]
    for layer, node in enumerate(rnn_nodes):
        attrs = {a.name: a for a in node.attribute}
        if attrs.get("direction") is not None and attrs["direction"].s not in (b"", b"forward"):
            raise WeightsError("only forward recurrent layers are supported")
        if cell == "gru" and (attrs.get("linear_before_reset") is None or attrs["linear_before_reset"].i != 1):
            raise WeightsError("torch's GRU needs linear_before_reset=1")
        if len(node.input) > 7 and node.input[7]:
            raise WeightsError("LSTM peepholes are not supported")
        w, r, b = (inits.get(name) for name in node.input[1:4])
        if w is None or r is None or b is None:
            raise WeightsError(f"layer {layer}: W, R and B must be initializers")
        half = b.shape[-1] // 2
        state[f"rnn.weight_ih_l{layer}"] = _reorder_gates(w[0], order)
        state[f"rnn.weight_hh_l{layer}"] = _reorder_gates(r[0], order)
        state[f"rnn.bias_ih_l{layer}"] = _reorder_gates(b[0, :half], order)
        state[f"rnn.bias_hh_l{layer}"] = _reorder_gates(b[0, half:], order)
    for node in graph.node if embedding else ():  # a one-hot model's Gather reads a fixed identity
        if node.op_type == "Gather" and node.input[0] in inits and inits[node.input[0]].ndim == 2:
            state["embedding.weight"] = inits[node.input[0]]
            break
    head_w = next((inits[i] for n in graph.node if n.op_type == "MatMul" for i in n.input if i in inits), None)
    head_b = next((inits[i] for n in graph.node if n.op_type == "Add" for i in n.input if i in inits), None)
    if head_w is None or head_b is None:
        raise WeightsError("could not find the output head (MatMul + Add with initializers)")
    state["head.weight"] = np.ascontiguousarray(head_w.T)
    state["head.bias"] = head_b
    return state


def model_from_artifact(model_dir: Path | str) -> LoadedModel:
    """Rebuild the PyTorch model from an artifact's ONNX initializers and manifest."""
    import onnx
    import torch

    from training.config import TrainingConfig
    from training.model import CharRNN

    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    if manifest.precision != "fp32":
        raise WeightsError(f"{model_dir} is an {manifest.precision} artifact; analyze the fp32 artifact it came from")
    spec = manifest.model
    saved = manifest.training.get("config")
    config = TrainingConfig.from_dict(saved).model if saved else TrainingConfig().model
    config.cell, config.layers, config.hidden_size = spec.cell, spec.layers, spec.hidden_size
    config.embedding_size = spec.embedding_size
    config.dropout = 0.0
    config.tie_weights = False  # tied or not, the exported head is its own initializer
    graph = onnx.load(str(model_dir / manifest.onnx.file)).graph
    arrays = _state_dict_from_onnx(graph, spec.cell, spec.layers, spec.embedding_size > 0)
    model = CharRNN(config, spec.vocab_size)
    expected = set(model.state_dict())
    if set(arrays) != expected:
        raise WeightsError(f"ONNX weights {sorted(arrays)} do not match the model's {sorted(expected)}")
    model.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in arrays.items()})
    model.eval()
    return LoadedModel(model, Vocabulary.from_spec(manifest.vocabulary), str(model_dir), dict(manifest.training))


def model_from_checkpoint_file(path: Path | str) -> LoadedModel:
    from training.train import load_checkpoint, model_from_checkpoint

    data = load_checkpoint(Path(path))
    model, vocab, config = model_from_checkpoint(data)
    training = {"config": config.to_dict(), "corpus": data.get("corpus", {}), "split": data.get("split", {})}
    return LoadedModel(model, vocab, str(path), training)


def load_model(model_dir: Path | str | None = None, checkpoint: Path | str | None = None) -> LoadedModel:
    """A checkpoint when given, else the artifact directory (rebuilt from ONNX)."""
    if checkpoint is not None:
        return model_from_checkpoint_file(checkpoint)
    if model_dir is None:
        raise ValueError("give a model directory or a checkpoint")
    return model_from_artifact(model_dir)
