"""The lecture's hello model learns e, l, l, o, which needs memory (l is followed by l, then o)."""

from __future__ import annotations

import pytest

from charrnn.cli import main
from training.analysis.hello import VOCAB, describe, train_hello


def test_hello_model_predicts_ello() -> None:
    result = train_hello(hidden=3, seed=0)
    assert result.predicted == "ello"
    assert result.losses[-1] < 0.05 < result.losses[0]
    assert result.hidden.shape == (4, 3) and result.probabilities.shape == (4, len(VOCAB))
    assert (result.probabilities.max(axis=1) > 0.9).all()
    # the two "l" steps see the same input but different hidden states: memory at work
    assert abs(result.hidden[2] - result.hidden[3]).max() > 0.1


def test_hello_command_prints_every_step(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "hello"]) == 0
    out = capsys.readouterr().out
    for t in range(4):
        assert f"step {t}: input" in out
    assert "predicted 'ello' for target 'ello': all correct" in out


def test_describe_reports_failure_honestly() -> None:
    result = train_hello(hidden=3, seed=0, steps=1)
    assert result.predicted != "ello"  # one step is not enough
    assert "NOT all correct" in describe(result)
