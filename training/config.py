"""Training configuration: dataclasses with commented defaults, strict `section.key=value` overrides.

The resolved configuration is saved inside every checkpoint and in the run directory as
JSON, so a run describes itself.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BUILTIN_CORPUS = "builtin:python-stdlib"


@dataclass
class DataConfig:
    corpus: str = BUILTIN_CORPUS  # file, directory, glob, comma-separated list, or builtin:python-stdlib
    train_fraction: float = 0.9  # contiguous first part trains, the rest validates (nanoGPT's split)
    vocab_policy: str = "replace"  # characters outside the vocabulary: "replace" (with U+FFFD) or "refuse"
    vocab_min_count: int = 1  # rarer training characters are folded into the unknown character


@dataclass
class ModelConfig:
    cell: str = "lstm"  # "rnn" (tanh, the lecture's cell), "lstm" or "gru"
    layers: int = 2  # stacked recurrent layers
    hidden_size: int = 256  # units per layer
    embedding_size: int = 64  # 0 = one-hot input vectors (the lecture's encoding)
    dropout: float = 0.0  # between layers and before the output head
    # How dropout masks are drawn while training: "step", a fresh mask at every time step (torch's RNN dropout);
    # "window", one mask per stream for a whole training window (variational or locked dropout, as in AWD-LSTM),
    # so a dropped unit stays dropped for the window. Training only: the exported model is unchanged.
    dropout_mask: str = "step"
    # A dropout schedule: training starts at this rate and moves linearly to model.dropout by the end of the run
    # (the clock of the learning-rate schedule: steps or the time budget), so a model that over-fits late can
    # learn fast early. None = model.dropout throughout.
    dropout_start: float | None = None
    # Dropout on the encoded input characters, before the first layer (AWD-LSTM's dropouti), with masks drawn as
    # dropout_mask says. Training only: the exported model is unchanged.
    input_dropout: float = 0.0
    # DropConnect on the recurrent (hidden-to-hidden) matrices while training, one mask per step (AWD-LSTM's
    # weight drop): regularises the recurrence itself. Training only: the exported model is unchanged.
    weight_drop: float = 0.0
    tie_weights: bool = False  # share embedding and output matrices (needs embedding_size == hidden_size)


@dataclass
class OptimConfig:
    batch_size: int = 64  # parallel contiguous streams (B)
    seq_len: int = 128  # truncated-BPTT window (T); state carries across windows
    # Each epoch after the first starts every stream 0..T-1 characters later (drawn from run.seed), so the
    # truncation points move between passes over the text, as AWD-LSTM's varying window length makes them.
    epoch_shift: bool = False
    max_steps: int = 3000  # optimiser steps (upper bound)
    max_minutes: float = 0.0  # wall-clock budget in minutes; 0 = no budget
    lr: float = 3e-3  # peak learning rate (AdamW)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100  # linear warm-up
    weight_decay: float = 0.01  # AdamW decoupled weight decay (matrices only)
    beta1: float = 0.9
    beta2: float = 0.99
    clip_mode: str = "norm"  # "norm" (global L2 norm), "value" (char-rnn style, element-wise) or "none"
    clip: float = 1.0  # the norm or value limit
    # A running average of the weights, avg = d * avg + (1 - d) * weights after each step (d warms up to this):
    # evaluated, sampled, and exported in place of the last step's weights. 0 = off.
    ema_decay: float = 0.0


@dataclass
class RunConfig:
    seed: int = 1337  # same seed, same machine -> same result
    out_dir: str = "runs/default"  # checkpoints, logs, samples, plots
    eval_interval: int = 250  # steps between validation passes (and checkpoints)
    eval_max_chars: int = 0  # cap on validation characters per pass; 0 = the full split
    log_interval: int = 25  # steps between metric log lines
    sample_interval: int = 250  # steps between fixed-seed samples; 0 = off
    sample_prime: str = "def "  # the prime text for samples
    sample_chars: int = 300  # characters per sample
    sample_seed: int = 7  # fixed so samples are comparable across steps
    early_stop_patience: int = 0  # stop after this many evals without improvement; 0 = never
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    mkldnn: str = "on"  # oneDNN kernels "on" or "off": on was faster or equal in every cell (bench train-kernels)
    # "bf16": the training step's forward under autocast (weights, optimiser, carried state and evaluation stay
    # fp32): a faster step on a CPU with native bf16 (AVX-512 BF16, AMX) on a good day, a slower one without;
    # measure it here first with `charrnn bench train-options` (docs/benchmarks.md).
    precision: str = "fp32"
    progress: bool = True  # progress bar on stderr
    device: str = "cpu"  # "cpu" or "cuda" (under torchrun, each process takes the GPU of its LOCAL_RANK)
    dist_timeout_s: float = 300.0  # under torchrun: a collective waiting longer fails the job (a rank hung)


@dataclass
class TrainingConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> None:
        m, o, d = self.model, self.optim, self.data
        checks = [
            (m.cell in ("rnn", "lstm", "gru"), f"model.cell must be rnn, lstm or gru, not {m.cell!r}"),
            (m.layers >= 1 and m.hidden_size >= 1, "model.layers and model.hidden_size must be >= 1"),
            (m.embedding_size >= 0, "model.embedding_size must be >= 0 (0 = one-hot)"),
            (0.0 <= m.dropout < 1.0, "model.dropout must be in [0, 1)"),
            (0.0 <= m.weight_drop < 1.0, "model.weight_drop must be in [0, 1)"),
            (0.0 <= m.input_dropout < 1.0, "model.input_dropout must be in [0, 1)"),
            (m.dropout_start is None or 0.0 <= m.dropout_start < 1.0, "model.dropout_start must be in [0, 1)"),
            (m.dropout_mask in ("step", "window"), f"model.dropout_mask must be step or window: {m.dropout_mask!r}"),
            (
                not m.tie_weights or m.embedding_size == m.hidden_size,
                "model.tie_weights needs model.embedding_size == model.hidden_size",
            ),
            (0.0 < d.train_fraction < 1.0, "data.train_fraction must be in (0, 1)"),
            (d.vocab_policy in ("replace", "refuse"), "data.vocab_policy must be replace or refuse"),
            (o.batch_size >= 1 and o.seq_len >= 1, "optim.batch_size and optim.seq_len must be >= 1"),
            (o.clip_mode in ("norm", "value", "none"), "optim.clip_mode must be norm, value or none"),
            (0.0 <= o.ema_decay < 1.0, "optim.ema_decay must be in [0, 1) (0 = no average)"),
            (o.max_steps >= 1, "optim.max_steps must be >= 1"),
            (self.run.mkldnn in ("on", "off"), "run.mkldnn must be on or off"),
            (self.run.precision in ("fp32", "bf16"), "run.precision must be fp32 or bf16"),
            (self.run.device in ("cpu", "cuda"), "run.device must be cpu or cuda"),
            (self.run.dist_timeout_s > 0, "run.dist_timeout_s must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        config = cls()
        for section, values in data.items():
            for key, value in values.items():
                set_value(config, f"{section}.{key}", value)
        return config

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


def _coerce(raw: Any, annotation: Any, key: str) -> Any:
    """Convert a CLI string (or JSON value) to the field's declared type, strictly."""
    target = annotation if isinstance(annotation, type) else typing.get_origin(annotation) or annotation
    if isinstance(annotation, types.UnionType):
        if raw is None or (isinstance(raw, str) and raw.lower() == "none"):
            return None  # an optional setting left unset (JSON null, or `none` on the command line)
        target = next(a for a in typing.get_args(annotation) if a is not type(None))
    if not isinstance(raw, str):
        if target is float and isinstance(raw, int) and not isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, target):
            return raw
        raise ValueError(f"{key} expects {target.__name__}, got {raw!r}")
    if target is bool:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key} expects true/false, got {raw!r}")
    if target in (int, float):
        try:
            return target(raw)
        except ValueError:
            raise ValueError(f"{key} expects {target.__name__}, got {raw!r}") from None
    return raw


def set_value(config: TrainingConfig, dotted: str, raw: Any) -> None:
    """Set `section.key` on the config; unknown sections or keys are refused, with the valid ones listed."""
    section_name, _, key = dotted.partition(".")
    sections = {f.name: f for f in dataclasses.fields(config)}
    if section_name not in sections or not key:
        raise ValueError(f"unknown setting {dotted!r}: use section.key with section in {sorted(sections)}")
    section = getattr(config, section_name)
    hints = typing.get_type_hints(type(section))
    if key not in hints:
        raise ValueError(f"unknown setting {dotted!r}: {section_name} has {sorted(hints)}")
    setattr(section, key, _coerce(raw, hints[key], dotted))


def apply_overrides(config: TrainingConfig, overrides: list[str]) -> TrainingConfig:
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        dotted, _, raw = item.partition("=")
        set_value(config, dotted.strip(), raw)
    config.validate()
    return config


def describe_settings() -> str:
    """Every setting with its default, for --help."""
    lines = []
    for section in dataclasses.fields(TrainingConfig):
        defaults = section.default_factory()  # type: ignore[operator]
        for f in dataclasses.fields(defaults):
            lines.append(f"  {section.name}.{f.name}={getattr(defaults, f.name)!r}")
    return "\n".join(lines)


@dataclass(frozen=True)
class QualityGate:
    """What `charrnn quantize` (and `export --quantize`) accepts: an int8 model must score this close to fp32."""

    max_loss_increase: float = 0.01  # nats/char int8 may lose against fp32 on the validation split
    allow_loss_increase: bool = False  # beyond it: write the artifact anyway, with a warning
    val_chars: int = 0  # validation characters to score (the first ones); 0 = the whole split
    corpus: str | None = None  # where the validation split comes from; None = the manifest's training corpus
