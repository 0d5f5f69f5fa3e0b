"""The model artifact: the only contract between training and serving.

An artifact is a directory holding ``model.onnx`` and ``manifest.json``. This module
defines the manifest's schema, writes it, reads it back and verifies it against the
ONNX file. It imports neither torch nor onnxruntime, so both sides can use it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"

CELLS = ("rnn", "lstm", "gru")
UNKNOWN_POLICIES = ("refuse", "replace")
# The arithmetic of the graph: "fp32" as exported from PyTorch, "int8" from `charrnn quantize`.
PRECISIONS = ("fp32", "int8")


class ArtifactError(Exception):
    """The artifact is missing, malformed, or does not match its manifest."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. Symbolic dimensions are strings ("batch", "time")."""

    name: str
    dtype: str  # "int64" or "float32"
    shape: list[int | str]


@dataclass(frozen=True)
class StateSpec:
    """One recurrent state tensor, fed back from output to input between calls."""

    kind: str  # "h" or "c"
    input: str  # graph input name
    output: str  # graph output name


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    cell: str  # one of CELLS
    layers: int
    hidden_size: int
    embedding_size: int  # 0 means one-hot input
    vocab_size: int
    parameters: int


@dataclass(frozen=True)
class VocabularySpec:
    """Ordered characters (token id = index) and what to do with characters outside them."""

    chars: list[str]
    unknown_policy: str  # "refuse": reject; "replace": map to `unknown_char`
    unknown_char: str | None  # a member of `chars` when the policy is "replace"


@dataclass(frozen=True)
class OnnxSpec:
    file: str
    sha256: str
    opset: int
    tokens: TensorSpec  # [batch, time] int64
    logits: TensorSpec  # [batch, time, vocab] float32
    states: list[StateSpec]  # each [layers, batch, hidden] float32
    precision: str = "fp32"  # one of PRECISIONS; manifests written before int8 existed omit it


@dataclass(frozen=True)
class QuantizationSpec:
    """How an int8 graph was made from an fp32 one, and what it cost in validation loss."""

    method: str  # how activations and weights were quantized (training/quantize_graph.py)
    batch_invariant: bool  # a row's logits and state do not depend on the rows beside it
    source_sha256: str  # the fp32 model.onnx it was made from
    val_chars: int  # validation characters both losses were measured on
    val_loss_nats_fp32: float  # the fp32 graph, measured with ONNX Runtime
    val_loss_nats: float  # this graph, same characters, same procedure
    max_loss_increase: float  # the quality gate's tolerance in nats/char

    @property
    def loss_increase(self) -> float:
        return self.val_loss_nats - self.val_loss_nats_fp32

    @property
    def within_tolerance(self) -> bool:
        """False only for an artifact written past the quality gate (--allow-loss-increase)."""
        return self.loss_increase <= self.max_loss_increase


@dataclass(frozen=True)
class UnitNote:
    """A hidden unit that `charrnn analyze units` found tracking a feature of the text (optional metadata:
    the HTTP playground offers these units first, with what they track)."""

    kind: str  # "h" or "c", a state of the graph
    layer: int
    index: int
    feature: str  # the analysis' feature name, e.g. "in_string"
    tracks: str  # what the feature is, in words
    metric: str  # "auc" (binary feature) or "r" (correlation)
    score: float  # on held-out text, the unit's sign applied
    sign: int  # +1: the unit goes positive with the feature, -1: negative

    @property
    def name(self) -> str:
        """The unit as `charrnn generate --watch` and the analyses write it: "c0:80"."""
        return f"{self.kind}{self.layer}:{self.index}"


@dataclass(frozen=True)
class Manifest:
    format_version: int
    model: ModelSpec
    vocabulary: VocabularySpec
    onnx: OnnxSpec
    # Free-form facts for people and dashboards; the server reads none of them.
    training: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    quantization: QuantizationSpec | None = None  # present exactly when onnx.precision is not "fp32"
    units: list[UnitNote] = field(default_factory=list)  # interpretable units; absent from older manifests

    @property
    def precision(self) -> str:
        return self.onnx.precision

    @property
    def state_shape(self) -> tuple[int, int]:
        """(layers, hidden): a state tensor is [layers, batch, hidden]."""
        return self.model.layers, self.model.hidden_size

    def to_json(self) -> str:
        data = asdict(self)
        if self.quantization is None:
            del data["quantization"]
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Manifest:
        try:
            version = int(data["format_version"])
            if version != FORMAT_VERSION:
                raise ArtifactError(
                    f"manifest format_version {version} is not supported (this build reads {FORMAT_VERSION})"
                )
            onnx = data["onnx"]
            manifest = Manifest(
                format_version=version,
                model=ModelSpec(**data["model"]),
                vocabulary=VocabularySpec(**data["vocabulary"]),
                onnx=OnnxSpec(
                    file=onnx["file"],
                    sha256=onnx["sha256"],
                    opset=int(onnx["opset"]),
                    tokens=TensorSpec(**onnx["tokens"]),
                    logits=TensorSpec(**onnx["logits"]),
                    states=[StateSpec(**s) for s in onnx["states"]],
                    precision=str(onnx.get("precision", "fp32")),
                ),
                training=dict(data.get("training", {})),
                export=dict(data.get("export", {})),
                quantization=QuantizationSpec(**data["quantization"]) if data.get("quantization") else None,
                units=[UnitNote(**u) for u in data.get("units", [])],
            )
        except ArtifactError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"manifest is malformed: {exc!r}") from exc
        manifest.validate()
        return manifest

    def validate(self) -> None:
        """Check internal consistency; raise ArtifactError with a message a person can act on."""
        m, v = self.model, self.vocabulary
        if m.cell not in CELLS:
            raise ArtifactError(f"manifest cell {m.cell!r} is not one of {CELLS}")
        if len(v.chars) != m.vocab_size:
            raise ArtifactError(f"vocabulary has {len(v.chars)} characters but vocab_size is {m.vocab_size}")
        if len(set(v.chars)) != len(v.chars) or any(len(c) != 1 for c in v.chars):
            raise ArtifactError("vocabulary must be distinct single characters")
        if v.unknown_policy not in UNKNOWN_POLICIES:
            raise ArtifactError(f"unknown_policy {v.unknown_policy!r} is not one of {UNKNOWN_POLICIES}")
        if v.unknown_policy == "replace" and v.unknown_char not in v.chars:
            raise ArtifactError("unknown_policy 'replace' needs an unknown_char that is in the vocabulary")
        expected_states = ["h", "c"] if m.cell == "lstm" else ["h"]
        if [s.kind for s in self.onnx.states] != expected_states:
            raise ArtifactError(f"a {m.cell} graph carries states {expected_states}")
        if self.onnx.logits.shape[-1] != m.vocab_size:
            raise ArtifactError("logits' last dimension does not match the vocabulary size")
        if self.onnx.precision not in PRECISIONS:
            raise ArtifactError(f"precision {self.onnx.precision!r} is not one of {PRECISIONS}")
        if (self.quantization is None) != (self.onnx.precision == "fp32"):
            raise ArtifactError("a quantization record belongs with a non-fp32 precision, and only there")
        for note in self.units:
            if note.kind not in expected_states or not (0 <= note.layer < m.layers and 0 <= note.index < m.hidden_size):
                raise ArtifactError(f"units: {note.name} is not a unit of this {m.cell} {m.layers}x{m.hidden_size}")


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    manifest.validate()
    path = directory / MANIFEST_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_manifest(directory: Path | str, *, verify_hash: bool = True) -> Manifest:
    """Read and check an artifact directory. Refuses a missing file or a hash mismatch."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise ArtifactError(f"model directory {directory} does not exist")
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: is {directory} a model artifact (run `charrnn export`)?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} must hold a JSON object")
    manifest = Manifest.from_dict(data)
    onnx_path = directory / manifest.onnx.file
    if not onnx_path.is_file():
        raise ArtifactError(f"{onnx_path} is missing")
    if verify_hash:
        actual = sha256_file(onnx_path)
        if actual != manifest.onnx.sha256:
            raise ArtifactError(
                f"{onnx_path} has sha256 {actual} but the manifest says {manifest.onnx.sha256}: "
                "the model file was changed or corrupted; re-export the artifact"
            )
    return manifest
