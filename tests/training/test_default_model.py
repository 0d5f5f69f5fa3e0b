"""The shipped default model: its manifest matches its file, and ONNX Runtime runs it."""

from __future__ import annotations

import numpy as np
import pytest

from charrnn.artifact import load_manifest, sha256_file
from tests.conftest import REPO_ROOT
from training.sample import OnnxStepper, ReferenceSampling, generate

DEFAULT = REPO_ROOT / "models" / "default"


def test_shipped_manifest_matches_the_file() -> None:
    manifest = load_manifest(DEFAULT)  # verifies the sha256
    assert sha256_file(DEFAULT / manifest.onnx.file) == manifest.onnx.sha256
    total = sum(p.stat().st_size for p in DEFAULT.iterdir())
    assert total <= 10 * 1024 * 1024, f"default artifact is {total} bytes (limit 10 MB)"
    assert manifest.training["val_bits_per_char"] > 0
    assert manifest.training["corpus"]["name"].startswith("python-stdlib")


@pytest.mark.parametrize(("batch", "length"), [(1, 1), (3, 17)])
def test_onnx_runtime_runs_it_with_declared_shapes(batch: int, length: int) -> None:
    stepper = OnnxStepper(DEFAULT)
    manifest = stepper.manifest
    tokens = np.zeros((batch, length), dtype=np.int64)
    logits, state = stepper.step(tokens, None)
    assert logits.shape == (batch, length, manifest.model.vocab_size)
    layers, hidden = manifest.state_shape
    assert [s.shape for s in state] == [(layers, batch, hidden)] * len(manifest.onnx.states)
    assert np.isfinite(logits).all()


def test_it_writes_python_like_text() -> None:
    stepper = OnnxStepper(DEFAULT)
    text = generate(stepper, stepper.vocab, "def ", 300, ReferenceSampling(temperature=0.5, seed=0))
    assert "(" in text and ":" in text and "\n" in text


def test_the_shipped_models_together_stay_under_20_mb() -> None:
    """Every shipped artifact is committed (weights included), so git carries their sum: the bound is 20 MB."""
    models = REPO_ROOT / "models"
    folders = [p for p in models.iterdir() if (p / "manifest.json").is_file()]
    assert {p.name for p in folders} >= {"default", "shakespeare"}
    total = sum(f.stat().st_size for p in folders for f in p.iterdir() if f.is_file())
    assert total <= 20 * 1024 * 1024, f"models/ holds {total} bytes (limit 20 MB)"
