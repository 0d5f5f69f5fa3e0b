from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from charrnn.artifact import ArtifactError, load_manifest
from tests.conftest import build_artifact
from training.export import ExportError, export_checkpoint
from training.sample import OnnxStepper, ReferenceSampling, TorchStepper, generate
from training.train import load_checkpoint, model_from_checkpoint


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_export_parity_for_every_cell(cell: str, tmp_path: Path, tiny_corpus: Path) -> None:
    artifact = build_artifact(tmp_path, tiny_corpus, f"model.cell={cell}", "model.layers=2")
    manifest = load_manifest(artifact)
    parity = manifest.export["parity"]
    assert parity["batches"] == [1, 3, 17] and parity["lengths"] == [1, 7, 64]
    assert max(parity["max_abs_error_logits"], parity["max_abs_error_state"]) <= 1e-4
    assert manifest.model.cell == cell and manifest.model.layers == 2
    assert [s.kind for s in manifest.onnx.states] == (["h", "c"] if cell == "lstm" else ["h"])


def test_manifest_describes_the_model(tiny_artifact: Path) -> None:
    manifest = load_manifest(tiny_artifact)
    assert manifest.format_version == 1
    assert manifest.onnx.tokens.shape == ["batch", "time"]
    assert manifest.onnx.logits.shape == ["batch", "time", manifest.model.vocab_size]
    assert len(manifest.vocabulary.chars) == manifest.model.vocab_size
    training = manifest.training
    assert training["corpus"]["sha256"] and training["split"]["train_fraction"] == 0.9
    assert training["val_bits_per_char"] == pytest.approx(training["val_loss_nats"] / np.log(2), rel=1e-4)
    assert {"torch_version", "onnx_version", "opset"} <= set(manifest.export)


def test_onnx_sampler_matches_torch_sampler(tiny_artifact: Path) -> None:
    """The same seed gives the same text from the checkpoint and from the exported graph."""
    model, vocab, _ = model_from_checkpoint(load_checkpoint(tiny_artifact.parent / "run" / "best.pt"))
    params = ReferenceSampling(temperature=0.9, top_k=10, seed=3)
    assert generate(OnnxStepper(tiny_artifact), vocab, "def ", 60, params) == generate(
        TorchStepper(model), vocab, "def ", 60, params
    )


def test_corrupted_model_file_is_refused(tiny_artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_artifact, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_manifest(copy)


def test_malformed_manifests_are_refused(tiny_artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_artifact, copy)
    good = json.loads((copy / "manifest.json").read_text())
    cases = {
        "not json": "{",
        "wrong version": json.dumps({**good, "format_version": 99}),
        "missing onnx": json.dumps({k: v for k, v in good.items() if k != "onnx"}),
        "vocab size": json.dumps({**good, "model": {**good["model"], "vocab_size": 3}}),
    }
    for name, text in cases.items():
        (copy / "manifest.json").write_text(text)
        with pytest.raises(ArtifactError):
            load_manifest(copy)
        assert name
    with pytest.raises(ArtifactError, match="does not exist"):
        load_manifest(tmp_path / "nowhere")


def test_failed_parity_writes_no_artifact(tiny_artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_checkpoint(tiny_artifact.parent / "run" / "best.pt", out, tolerance=-1.0)
    assert not (out / "manifest.json").exists()


def test_export_of_a_model_with_dropout_leaves_it_in_eval_mode(tmp_path: Path, tiny_corpus: Path) -> None:
    """Dropout is off at inference: the parity check compares ONNX with the model in eval mode."""
    artifact = build_artifact(tmp_path, tiny_corpus, "model.layers=2", "model.dropout=0.3")
    assert load_manifest(artifact).export["parity"]["max_abs_error_logits"] <= 1e-4
