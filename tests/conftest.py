"""Shared fixtures: tiny corpora, tiny training configs and a tiny exported artifact."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

WORDS = ["def", "return", "if", "else", "for", "while", "import", "class", "self", "print", "lambda", "yield"]


def make_text(n_words: int = 3000, seed: int = 1) -> str:
    """A small code-like text with quotes and brackets, deterministic."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_words // 6):
        indent = "    " * rng.randint(0, 2)
        words = " ".join(rng.choice(WORDS) for _ in range(4))
        lines.append(f'{indent}{words}("{rng.choice(WORDS)}")')
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


TINY_OVERRIDES = [
    "model.hidden_size=24",
    "model.layers=1",
    "model.embedding_size=8",
    "optim.batch_size=8",
    "optim.seq_len=32",
    "optim.max_steps=40",
    "optim.warmup_steps=5",
    "run.eval_interval=20",
    "run.sample_interval=20",
    "run.sample_chars=40",
    "run.log_interval=10",
    "run.progress=false",
    "run.threads=1",
]


@pytest.fixture
def tiny_config(tiny_corpus: Path, tmp_path: Path) -> Callable[..., object]:
    """A factory: tiny_config("model.cell=gru", ...) -> TrainingConfig writing into tmp_path/run."""
    from training.config import TrainingConfig, apply_overrides

    def make(*overrides: str) -> TrainingConfig:
        config = TrainingConfig()
        config.data.corpus = str(tiny_corpus)
        config.run.out_dir = str(tmp_path / "run")
        return apply_overrides(config, [*TINY_OVERRIDES, *overrides])

    return make


def build_artifact(out_dir: Path, corpus: Path, *overrides: str) -> Path:
    """Train a tiny model for a few steps and export it: a real artifact in seconds."""
    from training.config import TrainingConfig, apply_overrides
    from training.export import export_checkpoint
    from training.train import Trainer

    config = TrainingConfig()
    config.data.corpus = str(corpus)
    config.run.out_dir = str(out_dir / "run")
    apply_overrides(config, [*TINY_OVERRIDES, "optim.max_steps=20", *overrides])
    result = Trainer(config).train()
    export_checkpoint(result.best_checkpoint, out_dir / "artifact", name="tiny", version="test")
    return out_dir / "artifact"


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path) -> Path:
    """A tiny LSTM artifact (policy 'replace'), exported through the real pipeline."""
    return build_artifact(tmp_path_factory.mktemp("tiny-lstm"), tiny_corpus)
