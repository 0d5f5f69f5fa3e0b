"""`charrnn quantize`: an fp32 artifact -> an int8 artifact, behind a quality gate.

The int8 graph (training/quantize_graph.py) keeps the fp32 graph's I/O contract, so the server
loads it like any other artifact. Before anything is written, both graphs are scored with ONNX
Runtime on the model's validation split (the same procedure as training's validation pass), and
the artifact is refused when int8 loses more than a tolerance in nats per character. The
artifact is assembled in a temporary directory and moved into place only when it passes.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from charrnn.artifact import (
    MANIFEST_FILE,
    ONNX_FILE,
    ArtifactError,
    Manifest,
    QuantizationSpec,
    load_manifest,
    sha256_file,
    write_manifest,
)
from charrnn.vocab import Vocabulary
from training.config import QualityGate
from training.quantize_graph import METHOD, OPSET, QuantizeError, build_int8_graph, read_weights

log = logging.getLogger(__name__)


class LossIncreaseError(Exception):
    """The int8 graph's validation loss exceeds the fp32 one by more than the tolerance."""


def fp32_manifest(source: Path) -> Manifest:
    """The manifest of the fp32 artifact `source`, the only kind that can be quantized; QuantizeError (one
    line) when it is missing, malformed or already quantized."""
    try:
        manifest = load_manifest(source)
    except ArtifactError as exc:
        raise QuantizeError(str(exc)) from exc
    if manifest.precision != "fp32":
        raise QuantizeError(f"{source} is already {manifest.precision}; quantize its fp32 artifact")
    return manifest


def validation_ids(manifest: Manifest, corpus: str | None) -> np.ndarray:
    """The model's validation characters, encoded: its training data loaded as training loads it
    (`training.prepared.load_dataset`, so a prepared corpus works too) from the data settings the manifest
    recorded, `corpus` replacing the recorded corpus when given.

    The corpus is checked against the sha256 the manifest recorded, so the split is the one the model never
    trained on; it is encoded with the model's vocabulary.
    """
    from training.config import TrainingConfig
    from training.prepared import load_dataset

    facts = manifest.training
    recorded_config = facts.get("config")
    if not isinstance(recorded_config, dict):
        recorded_config = {}
    if not corpus and "corpus" not in recorded_config.get("data", {}):
        raise QuantizeError("the manifest does not name the corpus the model was trained on; pass --corpus")
    try:
        data = TrainingConfig.from_dict({"data": recorded_config.get("data", {})}).data
    except (ValueError, TypeError, AttributeError) as exc:
        raise QuantizeError(f"the manifest's training config cannot be read: {exc}") from exc
    if corpus:
        data.corpus = corpus
    split = facts.get("split")
    if isinstance(split, dict) and "train_fraction" in split:
        data.train_fraction = float(split["train_fraction"])
    try:
        dataset = load_dataset(data)
    except (OSError, ValueError) as exc:  # CorpusError is a ValueError
        raise QuantizeError(f"cannot read the corpus {data.corpus!r}: {exc}") from exc
    recorded = facts["corpus"].get("sha256") if isinstance(facts.get("corpus"), dict) else None
    if recorded and recorded != dataset.corpus.sha256:
        raise QuantizeError(
            f"corpus {data.corpus!r} (sha256 {dataset.corpus.sha256[:12]}...) is not the text the model was "
            f"trained on (sha256 {recorded[:12]}...); pass --corpus with that text"
        )
    model_vocab = Vocabulary.from_spec(manifest.vocabulary)
    if dataset.vocab == model_vocab:
        return np.asarray(dataset.val_ids)
    # A text whose vocabulary is not the model's (a model trained elsewhere, scored on a stand-in text): the
    # same split, read with the model's vocabulary, unknown characters as training treats them.
    ids, _ = model_vocab.encode_lossy(dataset.vocab.decode(int(i) for i in dataset.val_ids))
    return ids


def validation_loss(model_dir: Path, ids: np.ndarray) -> float:
    """Mean nats/char over `ids` with ONNX Runtime through the server's Engine, state carried
    across windows exactly as training's validation pass does (training.train.evaluate)."""
    from charrnn.engine import Engine
    from training.data import eval_streams
    from training.train import EVAL_SEQ_LEN, EVAL_STREAMS

    engine = Engine(model_dir)
    states = None
    total, count = 0.0, 0
    for x, y in eval_streams(ids, EVAL_STREAMS, EVAL_SEQ_LEN):
        logits, states = engine.run(x.astype(np.int64), states or engine.zero_states(x.shape[0]))
        z = logits.astype(np.float64)
        z -= z.max(axis=-1, keepdims=True)
        log_probs = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        total -= float(np.take_along_axis(log_probs, y[..., None].astype(np.int64), axis=-1).sum())
        count += y.size
    return total / max(1, count)


def quantize_artifact(source: Path, out_dir: Path, gate: QualityGate | None = None) -> Manifest:
    """Write the int8 artifact of the fp32 artifact `source` to `out_dir`.

    Raises QuantizeError when `source` cannot be quantized and LossIncreaseError when the
    quality gate refuses (nothing is written then).
    """
    import onnx

    gate = gate or QualityGate()
    if gate.max_loss_increase < 0:
        raise QuantizeError(f"the loss tolerance must be >= 0 nats/char, not {gate.max_loss_increase}")
    if gate.val_chars < 0:
        raise QuantizeError(f"the number of validation characters must be >= 0 (0: all), not {gate.val_chars}")
    manifest = fp32_manifest(source)
    ids = validation_ids(manifest, gate.corpus)
    if gate.val_chars:
        ids = ids[: gate.val_chars]
    if ids.size < 2:
        raise QuantizeError("the validation split is empty; pass a longer --corpus")
    model = build_int8_graph(read_weights(str(source / manifest.onnx.file), manifest), manifest)
    onnx.checker.check_model(model)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".quantize-") as tmp_name:
        tmp = Path(tmp_name)
        onnx.save(model, str(tmp / ONNX_FILE))
        log.info("scoring fp32 and int8 on %d validation characters", ids.size)
        fp32_loss = validation_loss(source, ids)
        provisional = _int8_manifest(manifest, tmp, ids.size, fp32_loss, fp32_loss, gate.max_loss_increase)
        write_manifest(tmp, provisional)  # so the Engine can load the graph
        int8_loss = validation_loss(tmp, ids)
        final = _int8_manifest(manifest, tmp, ids.size, fp32_loss, int8_loss, gate.max_loss_increase)
        quant = final.quantization
        assert quant is not None
        summary = (
            f"validation loss {int8_loss:.4f} nats/char int8 vs {fp32_loss:.4f} fp32 "
            f"({quant.loss_increase:+.4f}, tolerance {gate.max_loss_increase}) on {ids.size} characters"
        )
        if not quant.within_tolerance:
            if not gate.allow_loss_increase:
                raise LossIncreaseError(f"{summary}: artifact not written (--allow-loss-increase writes it anyway)")
            log.warning("%s: written anyway (--allow-loss-increase)", summary)
        else:
            log.info("%s", summary)
        write_manifest(tmp, final)
        out_dir.mkdir(parents=True, exist_ok=True)
        for item in (ONNX_FILE, MANIFEST_FILE):
            shutil.move(str(tmp / item), str(out_dir / item))
    return load_manifest(out_dir)


def _int8_manifest(
    source: Manifest, directory: Path, val_chars: int, fp32_loss: float, int8_loss: float, tolerance: float
) -> Manifest:
    onnx_spec = dataclasses.replace(
        source.onnx, file=ONNX_FILE, sha256=sha256_file(directory / ONNX_FILE), opset=OPSET, precision="int8"
    )
    quantization = QuantizationSpec(
        method=METHOD,
        batch_invariant=True,
        source_sha256=source.onnx.sha256,
        val_chars=val_chars,
        val_loss_nats_fp32=round(fp32_loss, 5),
        val_loss_nats=round(int8_loss, 5),
        max_loss_increase=tolerance,
    )
    return dataclasses.replace(source, onnx=onnx_spec, quantization=quantization)
