"""The ONNX-to-PyTorch loader reproduces the exported model exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import build_artifact
from training.analysis.weights import ONNX_GATE_ORDER, _reorder_gates, load_model
from training.model import state_kinds
from training.sample import OnnxStepper


def _random_case(vocab: int, layers: int, hidden: int, kinds: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, vocab, size=(3, 17), dtype=np.int64)
    state = tuple((rng.standard_normal((layers, 3, hidden)) * 0.5).astype(np.float32) for _ in range(kinds))
    return tokens, state


def test_rebuilt_model_matches_onnx_runtime(cell_artifact: Path) -> None:
    loaded = load_model(cell_artifact)
    config = loaded.model.config
    tokens, state = _random_case(
        loaded.model.vocab_size, config.layers, config.hidden_size, len(state_kinds(config.cell))
    )
    ref_logits, ref_state = OnnxStepper(cell_artifact).step(tokens, state)
    with torch.no_grad():
        logits, new_state = loaded.model(torch.from_numpy(tokens), tuple(torch.from_numpy(s) for s in state))
    np.testing.assert_allclose(logits.numpy(), ref_logits, atol=1e-5)
    for got, ref in zip(new_state, ref_state, strict=True):
        np.testing.assert_allclose(got.numpy(), ref, atol=1e-5)


def test_rebuilt_weights_equal_the_checkpoint(cell_artifact: Path) -> None:
    from_onnx = load_model(cell_artifact).model.state_dict()
    from_checkpoint = load_model(checkpoint=cell_artifact.parent / "run" / "best.pt").model.state_dict()
    assert from_onnx.keys() == from_checkpoint.keys()
    for name, value in from_checkpoint.items():
        torch.testing.assert_close(from_onnx[name], value, msg=name)


def test_one_hot_model_loads(tmp_path: Path, tiny_corpus: Path) -> None:
    artifact = build_artifact(tmp_path, tiny_corpus, "model.embedding_size=0", "optim.max_steps=2")
    loaded = load_model(artifact)
    assert loaded.model.embedding is None
    tokens, state = _random_case(loaded.model.vocab_size, 1, 24, 2)
    ref_logits, _ = OnnxStepper(artifact).step(tokens, state)
    with torch.no_grad():
        logits, _ = loaded.model(torch.from_numpy(tokens), tuple(torch.from_numpy(s) for s in state))
    np.testing.assert_allclose(logits.numpy(), ref_logits, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gate_reordering_is_a_permutation_of_blocks(cell: str) -> None:
    order = ONNX_GATE_ORDER[cell]
    hidden = 2
    blocks = np.repeat(np.arange(len(order)), hidden)[:, None].astype(np.float32)  # block k holds k
    reordered = _reorder_gates(blocks, order)
    assert reordered[::hidden, 0].tolist() == list(order)


def test_missing_artifact_is_refused(tmp_path: Path) -> None:
    from charrnn.artifact import ArtifactError

    with pytest.raises(ArtifactError):
        load_model(tmp_path / "nothing")
