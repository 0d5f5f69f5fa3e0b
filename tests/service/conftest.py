"""Fixtures for the service tests: tiny exported artifacts (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service.tinymodel import TinySpec, export

SPECS = {
    "lstm": TinySpec(),
    "lstm_refuse": TinySpec(policy="refuse", seed=1),
    "lstm_other": TinySpec(seed=7),  # same shapes, different weights: another model's hash
    "gru": TinySpec(cell="gru", seed=2),
    "rnn": TinySpec(cell="rnn", layers=1, seed=3),
    # Another shape and vocabulary (no unknown character): a second model of a repository.
    "gru_small": TinySpec(cell="gru", layers=1, hidden=16, embedding=8, policy="refuse", seed=5),
}


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("artifacts")
    return {name: export(spec, root / name) for name, spec in SPECS.items()}


@pytest.fixture(scope="session")
def lstm_dir(artifacts: dict[str, Path]) -> Path:
    return artifacts["lstm"]
