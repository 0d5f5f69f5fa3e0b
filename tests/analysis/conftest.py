"""Tiny models of every cell, exported through the real pipeline, and Python text they can read."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import build_artifact

# Lexable Python made of the tiny corpus' characters: strings, brackets, indentation.
PYTHON_TEXT = """def print(self):
    if self("for"):
        return lambda("while", "if")
    else:
        yield class("def")
for self in print("import"):
    while self:
        print("return")
"""


@pytest.fixture(scope="session")
def python_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "sample.py"
    path.write_text(PYTHON_TEXT * 12, encoding="utf-8")
    return path


@pytest.fixture(scope="session", params=["lstm", "gru", "rnn"])
def cell_artifact(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path) -> Path:
    """A 2-layer tiny artifact of each cell (a few training steps: weights need not be good)."""
    cell = request.param
    return build_artifact(
        tmp_path_factory.mktemp(f"tiny-{cell}"),
        tiny_corpus,
        f"model.cell={cell}",
        "model.layers=2",
        "optim.max_steps=4",
    )
