"""Export a checkpoint to the model artifact (model.onnx + manifest.json), proving parity.

The legacy TorchScript exporter (``dynamo=False``) is used on purpose: it exports
nn.LSTM/GRU/RNN with state inputs and outputs and keeps the time axis dynamic, whereas the
dynamo exporter was measured here to pin the time dimension to the example's length. The
parity check below would catch either failure: it runs ONNX Runtime against PyTorch at
several batch sizes and lengths and refuses to write a manifest if they disagree.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from charrnn.artifact import (
    FORMAT_VERSION,
    ONNX_FILE,
    Manifest,
    ModelSpec,
    OnnxSpec,
    StateSpec,
    TensorSpec,
    load_manifest,
    sha256_file,
    write_manifest,
)
from training.analysis.progression import manifest_samples, run_samples
from training.config import QualityGate
from training.model import CharRNN, state_kinds
from training.quantize import quantize_artifact
from training.sample import OnnxStepper, TorchStepper
from training.train import load_checkpoint, model_from_checkpoint

log = logging.getLogger(__name__)

OPSET = 17
PARITY_TOLERANCE = 1e-4
PARITY_BATCHES = (1, 3, 17)
PARITY_LENGTHS = (1, 7, 64)
TOKENS, LOGITS = "tokens", "logits"


class ExportError(Exception):
    """The exported graph does not reproduce the PyTorch model."""


class _GraphModule(nn.Module):
    """Flat positional signature for the exporter: (tokens, h[, c]) -> (logits, h_out[, c_out])."""

    def __init__(self, model: CharRNN):
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        logits, new_state = self.model(tokens, tuple(state))
        return (logits, *new_state)


@dataclass(frozen=True)
class ParityReport:
    max_abs_logits: float
    max_abs_state: float
    cases: int

    @property
    def max_abs(self) -> float:
        return max(self.max_abs_logits, self.max_abs_state)


def check_parity(model: CharRNN, model_dir: Path, seed: int = 0) -> ParityReport:
    """ONNX Runtime vs PyTorch on random tokens and random (non-zero) states."""
    rng = np.random.default_rng(seed)
    onnx_stepper, torch_stepper = OnnxStepper(model_dir), TorchStepper(model)
    layers, hidden = model.config.layers, model.config.hidden_size
    worst_logits = worst_state = 0.0
    cases = 0
    for batch in PARITY_BATCHES:
        for length in PARITY_LENGTHS:
            tokens = rng.integers(0, model.vocab_size, size=(batch, length), dtype=np.int64)
            state = tuple(
                (rng.standard_normal((layers, batch, hidden)) * 0.5).astype(np.float32)
                for _ in state_kinds(model.config.cell)
            )
            ref_logits, ref_state = torch_stepper.step(tokens, state)
            got_logits, got_state = onnx_stepper.step(tokens, state)
            if got_logits.shape != ref_logits.shape:
                raise ExportError(
                    f"ONNX logits have shape {got_logits.shape}, PyTorch {ref_logits.shape} "
                    f"(batch {batch}, length {length}): a dynamic axis was fixed at export"
                )
            worst_logits = max(worst_logits, float(np.abs(got_logits - ref_logits).max()))
            for got, ref in zip(got_state, ref_state, strict=True):
                worst_state = max(worst_state, float(np.abs(got - ref).max()))
            cases += 1
    return ParityReport(worst_logits, worst_state, cases)


def _export_graph(model: CharRNN, path: Path) -> list[StateSpec]:
    kinds = state_kinds(model.config.cell)
    specs = [StateSpec(kind=k, input=k, output=f"{k}_out") for k in kinds]
    tokens = torch.zeros((2, 5), dtype=torch.int64)
    state = model.initial_state(2)
    dynamic: dict[str, dict[int, str]] = {TOKENS: {0: "batch", 1: "time"}, LOGITS: {0: "batch", 1: "time"}}
    for spec in specs:
        dynamic[spec.input] = {1: "batch"}
        dynamic[spec.output] = {1: "batch"}
    with warnings.catch_warnings():
        # Warns about LSTM batch sizes unless h0/c0 are graph inputs, which they are here.
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
        # The legacy exporter is chosen on purpose (see the module docstring), and its tracer's
        # notes about nn.RNNBase's Python-side shape checks are harmless: parity is checked below.
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed")
        torch.onnx.export(
            # In eval mode: the exporter restores the wrapper's mode afterwards, recursively, and a
            # wrapper left in training mode would switch the model's dropout on for the parity check.
            _GraphModule(model).eval(),
            (tokens, *state),
            str(path),
            input_names=[TOKENS, *(s.input for s in specs)],
            output_names=[LOGITS, *(s.output for s in specs)],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )
    return specs


def export_checkpoint(
    checkpoint: Path,
    out_dir: Path,
    *,
    name: str = "charrnn",
    version: str = "1",
    tolerance: float = PARITY_TOLERANCE,
) -> Manifest:
    """Write `out_dir/model.onnx` and `out_dir/manifest.json`; raise ExportError on a parity failure.

    The artifact is assembled in a temporary directory and moved into place only when the
    parity check passes, so a failed export never leaves a half-written artifact behind.
    """
    import onnx
    import onnxruntime

    data = load_checkpoint(checkpoint)
    model, vocab, config = model_from_checkpoint(data)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".export-") as tmp_name:
        tmp = Path(tmp_name)
        onnx_path = tmp / ONNX_FILE
        log.info("exporting %s (%d parameters) to ONNX opset %d", checkpoint, model.num_parameters(), OPSET)
        specs = _export_graph(model, onnx_path)
        onnx.checker.check_model(str(onnx_path))
        layers, hidden, vsize = config.model.layers, config.model.hidden_size, len(vocab)
        val_loss = float(data["best_val_loss"])
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            model=ModelSpec(
                name=name,
                version=version,
                cell=config.model.cell,
                layers=layers,
                hidden_size=hidden,
                embedding_size=config.model.embedding_size,
                vocab_size=vsize,
                parameters=model.num_parameters(),
            ),
            vocabulary=vocab.to_spec(),
            onnx=OnnxSpec(
                file=ONNX_FILE,
                sha256=sha256_file(onnx_path),
                opset=OPSET,
                tokens=TensorSpec(TOKENS, "int64", ["batch", "time"]),
                logits=TensorSpec(LOGITS, "float32", ["batch", "time", vsize]),
                states=specs,
            ),
            training=_training_facts(data, val_loss, checkpoint.parent),
            export={},
        )
        write_manifest(tmp, manifest)  # provisional, so the parity check can load the artifact
        report = check_parity(model, tmp)
        log.info(
            "parity over %d cases: max |Δ| logits %.2e, state %.2e", report.cases,
            report.max_abs_logits, report.max_abs_state,
        )  # fmt: skip
        if not report.max_abs <= tolerance:
            raise ExportError(
                f"ONNX Runtime differs from PyTorch by {report.max_abs:.3e} (> {tolerance:.0e}) "
                f"over batches {PARITY_BATCHES} x lengths {PARITY_LENGTHS}; artifact not written"
            )
        manifest = Manifest(
            **{**manifest.__dict__, "export": _export_facts(report, onnx.__version__, onnxruntime.__version__)}
        )
        write_manifest(tmp, manifest)
        out_dir.mkdir(parents=True, exist_ok=True)
        for item in (ONNX_FILE, "manifest.json"):
            shutil.move(str(tmp / item), str(out_dir / item))
    return load_manifest(out_dir)


def export_int8(
    checkpoint: Path, out_dir: Path, gate: QualityGate, *, name: str = "charrnn", version: str = "1"
) -> Manifest:
    """`export --quantize int8`: the fp32 artifact (parity-checked) in a temporary directory,
    then its int8 artifact behind the quality gate in `out_dir`."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".export-fp32-") as tmp:
        fp32_dir = Path(tmp) / "fp32"
        export_checkpoint(checkpoint, fp32_dir, name=name, version=version)
        return quantize_artifact(fp32_dir, out_dir, gate)


def _training_facts(data: dict[str, Any], val_loss: float, run: Path) -> dict[str, Any]:
    """What the manifest records of training; the run's fixed-seed samples up to this checkpoint go with
    it, so `charrnn analyze progression` works from the artifact alone."""
    return {
        "corpus": data["corpus"],
        "split": data["split"],
        "steps": int(data["step"]),
        "wall_time_s": round(float(data["wall_time_s"]), 1),
        "val_loss_nats": round(val_loss, 5),
        "val_bits_per_char": round(val_loss / math.log(2), 5),
        "config": data["config"],
        "samples": manifest_samples(run_samples(run, int(data["step"]))),
    }


def _export_facts(report: ParityReport, onnx_version: str, ort_version: str) -> dict[str, Any]:
    return {
        "opset": OPSET,
        "exporter": "torch.onnx (TorchScript, dynamo=False)",
        "torch_version": torch.__version__,
        "onnx_version": onnx_version,
        "onnxruntime_version": ort_version,
        "parity": {
            "batches": list(PARITY_BATCHES),
            "lengths": list(PARITY_LENGTHS),
            "max_abs_error_logits": report.max_abs_logits,
            "max_abs_error_state": report.max_abs_state,
            "tolerance": PARITY_TOLERANCE,
        },
        "exported_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    }
