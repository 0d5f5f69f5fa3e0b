"""`charrnn quantize` and `export --quantize int8`: the artifact, its manifest, the quality gate."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from charrnn.artifact import ArtifactError, Manifest, load_manifest
from charrnn.engine import Engine
from tests.conftest import REPO_ROOT
from training.config import QualityGate
from training.quantize import LossIncreaseError, QuantizeError, quantize_artifact, validation_ids
from training.quantize_graph import METHOD, quantize_columns, read_weights

DEFAULT_MODEL = REPO_ROOT / "models" / "default"
# The gate's own tests use a model whose int8 loss increase is known before anything is measured. Every hidden
# unit is the same constant (input and recurrent weights zero, gate biases saturated: i, g and o open, f shut), so
# per-row activation quantization is exact (each unit is its row's largest), and fp32 logits are 0 (uniform: ln V
# nats/char). One head row holds weights that cancel in fp32 but not on its int8 grid (scale 1, set by the
# +-127; 0.6 rounds up to one step, 1.2 down to one), so int8 lowers that character's logit by 5 x GAIN x h.
SATURATED = 20.0  # a gate pre-activation: sigmoid and tanh give 1 in float32, sigmoid(-20) ~ 2e-9
# Sums to 0; on the int8 grid to -10 + 5 = -5 steps. The +-127 sit side by side, so kernels that add products in
# int16 pairs (x86 without VNNI saturates there) see them cancel.
GRID_ROW = (127.0, -127.0, *[-0.6] * 10, *[1.2] * 5)
GAIN = 2.0
UNIT = math.tanh(1.0)  # every unit's h: o * tanh(i * g) with the gates saturated
# The manifest rounds losses to 1e-5 and ONNX Runtime's tanh/sigmoid approximate to ~1e-6; the designed
# increase is about a nat.
KNOWN_ABS = 1e-3


def charrnn(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "charrnn.cli", *args], capture_output=True, text=True, timeout=300)


def int8_loss_bound(artifact: Path) -> float:
    """The most any int8 graph of `artifact` can lose against fp32, in nats/char, from its head alone: the h the
    head reads lies in [-1, 1] in both graphs (tanh and sigmoid cells; per-row quantization keeps |h| at most its
    row's largest), so logit v moves by at most sum_k |w_vk| + |int8 w_vk|, and a character's loss (logsumexp
    minus its logit) by at most twice the largest such move. A tolerance there passes whatever the rounding."""
    manifest = load_manifest(artifact)
    head = read_weights(str(artifact / manifest.onnx.file), manifest).head_w.astype(np.float64)
    q, scale = quantize_columns(head)
    int8_head = q.T.astype(np.float64) * scale[:, None]
    return float(2 * (np.abs(head).sum(axis=1) + np.abs(int8_head).sum(axis=1)).max())


@pytest.fixture(scope="module")
def bound_gate(tiny_artifact: Path) -> QualityGate:
    """A gate the tiny model passes by construction: its tests are about the artifact, not the gate."""
    return QualityGate(max_loss_increase=int8_loss_bound(tiny_artifact))


@pytest.fixture(scope="module")
def int8_artifact(tiny_artifact: Path, bound_gate: QualityGate, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "artifact"
    quantize_artifact(tiny_artifact, out, bound_gate)
    return out


@dataclass(frozen=True)
class KnownError:
    artifact: Path  # fp32, with the tiny model's corpus, split and vocabulary
    fp32_loss: float  # nats/char on the validation split, computed from the construction
    int8_loss: float

    @property
    def increase(self) -> float:
        return self.int8_loss - self.fp32_loss


@pytest.fixture(scope="module")
def known_error(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> KnownError:
    """The tiny model's checkpoint with the weights described at the top, exported by `charrnn export`'s code."""
    import torch

    from training.data import eval_streams
    from training.export import export_checkpoint
    from training.train import EVAL_SEQ_LEN, EVAL_STREAMS, load_checkpoint, save_checkpoint

    run = tmp_path_factory.mktemp("known-error") / "run"
    shutil.copytree(tiny_artifact.parent / "run", run)  # its samples go into the manifest
    data = load_checkpoint(run / "best.pt")
    state = {name: torch.zeros_like(value) for name, value in data["model"].items()}
    hidden, vocab = state["rnn.weight_hh_l0"].shape[1], state["head.bias"].numel()
    gates = torch.tensor([1.0, -1.0, 1.0, 1.0]).repeat_interleave(hidden) * SATURATED  # torch's i, f, g, o
    for name in state:
        if name.startswith("rnn.bias_ih_l"):
            state[name] = gates.clone()
    ids = validation_ids(load_manifest(tiny_artifact), None)
    targets = np.concatenate([y.ravel() for _, y in eval_streams(ids, EVAL_STREAMS, EVAL_SEQ_LEN)])
    counts = np.bincount(targets, minlength=vocab)
    lowered = int(counts.argmax())
    state["head.weight"][lowered, : len(GRID_ROW)] = torch.tensor(GRID_ROW) * GAIN
    save_checkpoint(run / "best.pt", **{**data, "model": state})
    export_checkpoint(run / "best.pt", run.parent / "fp32", name="known-error", version="test")
    shift = 5 * GAIN * UNIT
    int8_loss = math.log(vocab - 1 + math.exp(-shift)) + shift * counts[lowered] / targets.size
    return KnownError(run.parent / "fp32", math.log(vocab), int8_loss)


def test_manifest_records_precision_method_and_both_losses(
    tiny_artifact: Path, int8_artifact: Path, bound_gate: QualityGate
) -> None:
    fp32, int8 = load_manifest(tiny_artifact), load_manifest(int8_artifact)
    assert fp32.precision == "fp32" and fp32.quantization is None
    q = int8.quantization
    assert int8.precision == "int8" and q is not None
    assert q.method == METHOD and q.batch_invariant
    assert q.source_sha256 == fp32.onnx.sha256 != int8.onnx.sha256
    assert q.val_chars == fp32.training["split"]["val_chars"]  # the whole validation split by default
    assert q.max_loss_increase == bound_gate.max_loss_increase and q.within_tolerance
    # Everything the server reads is unchanged: names, shapes, vocabulary, architecture.
    assert dataclasses.replace(int8.onnx, sha256="", precision="fp32") == dataclasses.replace(fp32.onnx, sha256="")
    assert (int8.model, int8.vocabulary) == (fp32.model, fp32.vocabulary)


def test_fp32_figure_is_trainings_validation_loss(tiny_artifact: Path, int8_artifact: Path) -> None:
    """The gate's fp32 baseline (ONNX Runtime) agrees with PyTorch's validation pass during training."""
    q = load_manifest(int8_artifact).quantization
    assert q is not None
    assert q.val_loss_nats_fp32 == pytest.approx(load_manifest(tiny_artifact).training["val_loss_nats"], abs=2e-4)


def test_int8_graph_keeps_the_io_contract_and_stays_close_to_fp32(tiny_artifact: Path, int8_artifact: Path) -> None:
    fp32, int8 = Engine(tiny_artifact), Engine(int8_artifact)
    rng = np.random.default_rng(0)
    for batch, steps in ((1, 1), (5, 1), (3, 17)):
        tokens = rng.integers(0, fp32.vocab_size, (batch, steps))
        states = tuple((rng.standard_normal(s.shape) * 0.5).astype(np.float32) for s in fp32.zero_states(batch))
        (ref_logits, ref_states), (logits, new_states) = fp32.run(tokens, states), int8.run(tokens, states)
        assert logits.shape == ref_logits.shape and logits.dtype == np.float32
        assert np.abs(logits - ref_logits).max() < 0.05
        for got, ref in zip(new_states, ref_states, strict=True):
            assert got.shape == ref.shape and np.abs(got - ref).max() < 0.05


def test_the_gate_measures_the_increase_the_model_was_built_with(known_error: KnownError, tmp_path: Path) -> None:
    q = quantize_artifact(known_error.artifact, tmp_path / "int8", QualityGate(allow_loss_increase=True)).quantization
    assert q is not None
    assert q.val_loss_nats_fp32 == pytest.approx(known_error.fp32_loss, abs=KNOWN_ABS)
    assert q.val_loss_nats == pytest.approx(known_error.int8_loss, abs=KNOWN_ABS)
    assert q.loss_increase == pytest.approx(known_error.increase, abs=2 * KNOWN_ABS)


def test_quality_gate_refuses_a_loss_increase_beyond_the_tolerance(known_error: KnownError, tmp_path: Path) -> None:
    """Tolerances at half and twice the increase the model was built with: which side each falls on is known."""
    increase = known_error.increase
    assert increase > 0.5, "the construction lowers a frequent character's logit by several nats"
    out = tmp_path / "refused"
    with pytest.raises(LossIncreaseError, match="artifact not written"):
        quantize_artifact(known_error.artifact, out, QualityGate(max_loss_increase=increase / 2))
    assert not out.exists() and not list(tmp_path.glob(".quantize-*"))
    written = quantize_artifact(
        known_error.artifact, out, QualityGate(max_loss_increase=increase / 2, allow_loss_increase=True)
    )
    assert written.quantization is not None and not written.quantization.within_tolerance
    passed = quantize_artifact(known_error.artifact, tmp_path / "passed", QualityGate(max_loss_increase=2 * increase))
    assert passed.quantization is not None and passed.quantization.within_tolerance


def test_refusals_name_the_problem(tiny_artifact: Path, int8_artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(QuantizeError, match="already int8"):
        quantize_artifact(int8_artifact, tmp_path / "twice")
    other = tmp_path / "other.txt"
    other.write_text("some other text\n" * 200, encoding="utf-8")
    with pytest.raises(QuantizeError, match="not the text the model was trained on"):
        quantize_artifact(tiny_artifact, tmp_path / "x", QualityGate(corpus=str(other)))
    with pytest.raises(QuantizeError, match="does not exist"):
        quantize_artifact(tmp_path / "missing", tmp_path / "y")
    with pytest.raises(QuantizeError, match=">= 0"):
        quantize_artifact(tiny_artifact, tmp_path / "z", QualityGate(max_loss_increase=-1))
    with pytest.raises(QuantizeError, match=">= 0"):
        quantize_artifact(tiny_artifact, tmp_path / "z", QualityGate(val_chars=-5))


def test_manifests_without_precision_load_as_fp32_and_records_must_match(int8_artifact: Path) -> None:
    current = json.loads((DEFAULT_MODEL / "manifest.json").read_text(encoding="utf-8"))
    assert current["onnx"]["precision"] == "fp32" and "quantization" not in current
    # A manifest written before int8 existed: no precision field.
    old = {**current, "onnx": {k: v for k, v in current["onnx"].items() if k != "precision"}}
    assert Manifest.from_dict(old).precision == "fp32"
    data = json.loads((int8_artifact / "manifest.json").read_text(encoding="utf-8"))
    assert Manifest.from_dict(json.loads(Manifest.from_dict(data).to_json())) == Manifest.from_dict(data)
    cases = {
        "no record": {**data, "quantization": None},
        "fp32 with a record": {**data, "onnx": {**data["onnx"], "precision": "fp32"}},
        "unknown precision": {**data, "onnx": {**data["onnx"], "precision": "int4"}},
    }
    for name, case in cases.items():
        with pytest.raises(ArtifactError):
            Manifest.from_dict(case)
        assert name


def test_cli_quantize_and_export_quantize(tiny_artifact: Path, bound_gate: QualityGate, tmp_path: Path) -> None:
    tolerance = ("--max-loss-increase", str(bound_gate.max_loss_increase))
    done = charrnn("quantize", str(tiny_artifact), "--out", str(tmp_path / "q"), "--val-chars", "500", *tolerance)
    assert done.returncode == 0, done.stderr
    quantization = load_manifest(tmp_path / "q").quantization
    assert "nats/char" in done.stdout and quantization is not None and quantization.val_chars == 500
    exported = charrnn(
        "export", str(tiny_artifact.parent / "run" / "best.pt"), "--out", str(tmp_path / "e"), "--quantize", "int8",
        *tolerance,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    manifest = load_manifest(tmp_path / "e")
    assert manifest.precision == "int8" and manifest.quantization is not None
    assert manifest.export["parity"]["max_abs_error_logits"] <= 1e-4  # the fp32 export it came from was checked
    assert not list(tmp_path.glob(".export-*"))


def test_cli_errors_are_one_line(known_error: KnownError, tmp_path: Path) -> None:
    missing = charrnn("quantize", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    # Its increase is about a nat by construction: a tolerance of 0 refuses it.
    strict = charrnn("quantize", str(known_error.artifact), "--out", str(tmp_path / "out"), "--max-loss-increase", "0")
    assert strict.returncode == 1 and "artifact not written" in strict.stderr and not (tmp_path / "out").exists()
    assert len([line for line in strict.stderr.splitlines() if "charrnn quantize:" in line]) == 1
    assert "Traceback" not in strict.stderr


def test_shipped_model_loses_under_a_hundredth_of_a_nat(tmp_path: Path) -> None:
    """models/default on the first 30,000 characters of its validation split (the builtin corpus)."""
    manifest = quantize_artifact(DEFAULT_MODEL, tmp_path / "int8", QualityGate(val_chars=30_000))
    q = manifest.quantization
    assert q is not None and q.val_chars == 30_000
    assert abs(q.loss_increase) < 0.01
    assert (tmp_path / "int8" / "model.onnx").stat().st_size < (DEFAULT_MODEL / "model.onnx").stat().st_size / 2


def test_quantize_reads_the_corpus_from_the_given_path(
    tiny_artifact: Path, tiny_corpus: Path, bound_gate: QualityGate, tmp_path: Path
) -> None:
    """An artifact whose manifest points at a moved corpus: --corpus names it, and it is checked by sha256."""
    moved = tmp_path / "moved"
    shutil.copytree(tiny_artifact, moved)
    data = json.loads((moved / "manifest.json").read_text(encoding="utf-8"))
    data["training"]["config"]["data"]["corpus"] = str(tmp_path / "gone.txt")
    (moved / "manifest.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(QuantizeError, match="cannot read the corpus"):
        quantize_artifact(moved, tmp_path / "a")
    gate = dataclasses.replace(bound_gate, corpus=str(tiny_corpus))
    assert quantize_artifact(moved, tmp_path / "b", gate).precision == "int8"


def test_analysis_says_to_use_the_fp32_artifact(int8_artifact: Path) -> None:
    from training.analysis.weights import WeightsError, load_model

    with pytest.raises(WeightsError, match="analyze the fp32 artifact"):
        load_model(int8_artifact)


def test_a_model_trained_on_a_prepared_corpus_quantizes(tiny_corpus: Path, tmp_path: Path) -> None:
    """quantize and export --quantize read the validation split as training did: from prepared:DIR."""
    from tests.conftest import TINY_OVERRIDES

    prepared = charrnn("prepare", "--corpus", str(tiny_corpus), "--out", str(tmp_path / "prep"))
    assert prepared.returncode == 0, prepared.stderr
    trained = charrnn(
        "train", "--corpus", f"prepared:{tmp_path / 'prep'}", "--out", str(tmp_path / "run"),
        "--export", str(tmp_path / "fp32"), *TINY_OVERRIDES, "optim.max_steps=10", "run.eval_interval=10",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    fp32 = load_manifest(tmp_path / "fp32")
    assert fp32.training["config"]["data"]["corpus"] == f"prepared:{tmp_path / 'prep'}"
    done = charrnn("quantize", str(tmp_path / "fp32"), "--out", str(tmp_path / "int8"), "--allow-loss-increase")
    assert done.returncode == 0, done.stderr
    quantization = load_manifest(tmp_path / "int8").quantization
    assert quantization is not None and quantization.val_chars == fp32.training["split"]["val_chars"]
    exported = charrnn(
        "export", str(tmp_path / "run" / "best.pt"), "--out", str(tmp_path / "e"), "--quantize", "int8",
        "--allow-loss-increase",
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert load_manifest(tmp_path / "e").precision == "int8"
