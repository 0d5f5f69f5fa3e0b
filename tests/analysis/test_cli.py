"""The `charrnn analyze ...` commands end to end on a tiny artifact."""

from __future__ import annotations

from pathlib import Path

import pytest

from charrnn.cli import main


def test_units_command(
    tiny_artifact: Path, python_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "units"
    code = main(["analyze", "units", "--model", str(tiny_artifact), "--text", str(python_file), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| in_string | auc |" in printed and "quote unit" in printed and "shuffled-label control" in printed
    assert {p.name for p in out.iterdir()} == {"units.md", "units.json", "unit.html", "unit.png"}


def test_units_command_with_a_checkpoint_and_a_chosen_unit(
    tiny_artifact: Path, python_file: Path, tmp_path: Path
) -> None:
    checkpoint = tiny_artifact.parent / "run" / "best.pt"
    args = ["analyze", "units", "--checkpoint", str(checkpoint), "--text", str(python_file), "--unit", "c0:3"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    assert "unit c0:3" in (tmp_path / "unit.html").read_text()


@pytest.mark.parametrize("analysis", ["gates", "gradients", "progression"])
def test_other_commands_write_their_outputs(
    analysis: str, tiny_artifact: Path, python_file: Path, tmp_path: Path
) -> None:
    args = ["analyze", analysis, "--model", str(tiny_artifact), "--out", str(tmp_path)]
    if analysis != "progression":
        args += ["--text", str(python_file)]
    if analysis == "gradients":
        args += ["--steps", "20"]
    assert main(args) == 0
    expected = {"gates": "gates.png", "gradients": "gradients.png", "progression": "progression.html"}[analysis]
    assert (tmp_path / expected).is_file()


def test_missing_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "units", "--model", str(tmp_path / "none"), "--out", str(tmp_path)]) == 1
    assert "does not exist" in capsys.readouterr().err
