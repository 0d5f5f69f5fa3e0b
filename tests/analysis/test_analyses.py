"""Units, gates, gradients and progression on tiny exported models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from training.analysis.gates import analyze_gates, gate_statistics
from training.analysis.gradients import SCALES, analyze_gradients, gradient_norms, scaled, twin, windows
from training.analysis.progression import ProgressionError, find_samples, write_progression
from training.analysis.record import record
from training.analysis.units import analyze_units
from training.analysis.weights import load_model


def test_record_keeps_h_c_and_tanh_c_of_every_layer(cell_artifact: Path) -> None:
    loaded = load_model(cell_artifact)
    ids = np.arange(300) % loaded.model.vocab_size
    rec = record(loaded.model, ids, gates=True)
    expected = {"h0", "h1"} | ({"c0", "c1", "tanh_c0", "tanh_c1"} if loaded.cell == "lstm" else set())
    assert expected <= set(rec.groups)
    acts, ids_ = rec.matrix()
    assert acts.shape == (300, len(expected) * 24) and len(ids_) == acts.shape[1]
    if loaded.cell == "lstm":
        np.testing.assert_allclose(rec.groups["tanh_c1"], np.tanh(rec.groups["c1"]), atol=1e-6)
    # the recording carries the state across chunks: it equals one fused pass
    with torch.no_grad():
        _, state = loaded.model(torch.from_numpy(ids[None, :].astype(np.int64)))
    np.testing.assert_allclose(rec.groups["h1"][-1], state[0][1, 0].numpy(), atol=1e-5)


def test_units_report_and_pictures(tiny_artifact: Path, python_file: Path, tmp_path: Path) -> None:
    report = analyze_units(load_model(tiny_artifact), tmp_path, [python_file])
    names = [s.feature for s in report.scores]
    assert names == ["in_string", "in_brackets", "start_of_line", "column", "indent"]
    quote = report.headline_score()
    for s in report.scores:
        if s.metric == "auc":
            assert all(0.0 <= v <= 1.0 for v in (s.heldout, s.control_shuffled, s.control_shifted, s.selection))
            assert s.selection >= 0.5  # the sign is chosen so that the unit's first-half AUC is >= 0.5
    assert quote.unit == report.shown_unit
    data = json.loads((tmp_path / "units.json").read_text())
    assert data["scores"][0]["feature"] == "in_string"
    assert "<span" in (tmp_path / "unit.html").read_text()
    assert (tmp_path / "unit.png").stat().st_size > 0


def test_units_refuses_an_unknown_unit(tiny_artifact: Path, python_file: Path, tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        analyze_units(load_model(tiny_artifact), tmp_path, [python_file], unit="h7:0")


def test_gate_statistics_count_saturation() -> None:
    values = np.array([[0.05, 0.5], [0.95, 0.5], [0.05, 0.99], [0.5, 0.99]])
    gates = {f"gate_{g}0": values for g in ("i", "f", "o")}
    stats = gate_statistics(gates, "lstm", 1)
    assert [s.gate for s in stats] == ["i", "f", "o"]
    assert stats[0].left == [0.5, 0.0] and stats[0].right == [0.25, 0.5]


def test_gates_on_a_model(cell_artifact: Path, python_file: Path, tmp_path: Path) -> None:
    loaded = load_model(cell_artifact)
    if loaded.cell == "rnn":
        with pytest.raises(ValueError, match="no gates"):
            analyze_gates(loaded, tmp_path, [python_file])
        return
    report = analyze_gates(loaded, tmp_path, [python_file])
    assert {s.layer for s in report.stats} == {0, 1}
    for s in report.stats:
        assert all(a >= 0 and b >= 0 and a + b <= 1 for a, b in zip(s.left, s.right, strict=True))
    assert (tmp_path / "gates.png").is_file() and (tmp_path / "gates.md").is_file()


def test_last_step_gradient_is_the_heads_jacobian(tiny_artifact: Path, python_file: Path) -> None:
    """k = 0: ∂L_T/∂h_T = W_head^T (softmax - onehot), computed by hand."""
    loaded = load_model(tiny_artifact)
    ids, _ = loaded.vocab.encode_lossy(python_file.read_text())
    batch = windows(ids, 10, streams=1)
    norms = gradient_norms(loaded.model, batch)
    with torch.no_grad():
        logits, _ = loaded.model(batch[:, :-1])
        p = torch.softmax(logits[0, -1], dim=-1)
        p[batch[0, -1]] -= 1
        expected = (loaded.model.head.weight.T @ p).norm().item()
    assert len(norms) == 10
    assert norms[0] == pytest.approx(expected, rel=1e-4)


def test_scaling_recurrent_weights_explodes_and_clipping_caps_the_step(
    tiny_artifact: Path, python_file: Path, tmp_path: Path
) -> None:
    loaded = load_model(tiny_artifact)
    report = analyze_gradients(loaded, tmp_path, texts=[python_file], steps=40)
    labels = [c.label for c in report.curves]
    assert any("trained" in label and "untrained" not in label for label in labels)
    assert {"rnn untrained", "lstm untrained", "gru untrained"} <= set(labels)
    by_scale = {c.scale: c.norms for c in report.curves if c.cell == "rnn" and not c.trained}
    assert by_scale[SCALES[-1]][-1] > 100 * by_scale[1.0][-1]  # far back, the scaled-up RNN explodes
    rows = {r.scale: r for r in report.clipping}
    assert rows[SCALES[-1]].grad_norm > rows[1.0].grad_norm
    assert np.isfinite(rows[SCALES[-1]].loss_after_clipped)
    assert (tmp_path / "gradients.png").is_file()


def test_scaled_copy_leaves_the_original_alone(tiny_artifact: Path) -> None:
    model = twin(load_model(tiny_artifact).model.config, "rnn", 25)
    before = model.rnn.weight_hh_l0.detach().clone()
    bigger = scaled(model, 3.0)
    torch.testing.assert_close(bigger.rnn.weight_hh_l0.detach(), 3.0 * before)
    torch.testing.assert_close(model.rnn.weight_hh_l0.detach(), before)


def test_progression_lists_every_saved_sample(tiny_artifact: Path, tmp_path: Path) -> None:
    run = tiny_artifact.parent / "run"
    source, samples = find_samples(tiny_artifact, None, run)
    assert source == str(run)
    page = write_progression(samples, source, tmp_path).read_text()
    steps = [json.loads(line)["step"] for line in (run / "samples.jsonl").read_text().splitlines()]
    assert steps and all(f"<tr><td>{s}</td>" in page for s in steps)
    assert "bits/char" in page


def test_export_records_the_samples_up_to_its_checkpoint(tiny_artifact: Path) -> None:
    """The manifest carries the run's samples (with the validation bits/char at their step), read back
    independently here from the run's own logs."""
    run = tiny_artifact.parent / "run"
    training = json.loads((tiny_artifact / "manifest.json").read_text())["training"]
    saved = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    kept = [s for s in saved if s["step"] <= training["steps"]]
    assert kept and [(s["step"], s["prime"], s["text"]) for s in kept] == [
        (s["step"], s["prime"], s["text"]) for s in training["samples"]
    ]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = {m["step"]: m["val_loss"] / math.log(2) for m in metrics if "val_loss" in m}
    assert any(s["step"] in evals for s in training["samples"])
    for s in training["samples"]:
        expected = evals.get(s["step"])
        assert s["val_bits_per_char"] == (None if expected is None else pytest.approx(expected, abs=1e-5))


def test_progression_without_samples_says_how_to_get_some(tmp_path: Path) -> None:
    with pytest.raises(ProgressionError, match=r"charrnn train --out runs/mine .*--run runs/mine"):
        find_samples(tmp_path, None, tmp_path)


def test_a_long_plain_text_split_is_cut_at_a_line(tiny_artifact: Path) -> None:
    from training.analysis.heldout import heldout_documents, validation_documents

    loaded = load_model(tiny_artifact)
    tail = validation_documents(loaded)
    assert len(tail) == 1 and len(tail[0]) > 500
    (doc,) = heldout_documents(loaded, max_chars=500)
    assert 0 < len(doc) <= 500 and doc.endswith("\n") and tail[0].startswith(doc)


def test_a_prepared_corpus_split_is_read_with_trainings_loader(tiny_corpus: Path, tmp_path: Path) -> None:
    """A model trained on `prepared:DIR`: its held-out text is the prepared validation split, the same
    characters as the plain corpus' split; a directory that is gone is a HeldoutError saying what to do."""
    from tests.conftest import build_artifact
    from training.analysis.heldout import HeldoutError, heldout_documents, validation_documents
    from training.config import DataConfig
    from training.data import load_corpus, split_text
    from training.prepared import PREFIX, prepare_corpus

    prepared = tmp_path / "prepared"
    prepare_corpus(DataConfig(corpus=str(tiny_corpus), train_fraction=0.8), prepared)
    loaded = load_model(build_artifact(tmp_path / "model", Path(f"{PREFIX}{prepared}"), "optim.max_steps=2"))
    assert loaded.training["config"]["data"]["corpus"] == f"{PREFIX}{prepared}"
    (tail,) = validation_documents(loaded)
    assert tail == split_text(load_corpus(str(tiny_corpus)).text, 0.8)[1] and len(tail) > 500
    (doc,) = heldout_documents(loaded, max_chars=500)
    assert 0 < len(doc) <= 500 and doc.endswith("\n") and tail.startswith(doc)
    (prepared / "prepared.json").rename(prepared / "moved.json")
    with pytest.raises(HeldoutError, match=r"is not available here .*pass --text FILE"):
        validation_documents(loaded)
