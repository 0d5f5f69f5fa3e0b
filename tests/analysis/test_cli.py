"""The `charrnn analyze ...` commands end to end on a tiny artifact."""

from __future__ import annotations

import json
import shutil
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
    assert "| in_string | auc |" in printed and "in_string unit" in printed and "shuffled-label control" in printed
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
    assert main(["analyze", "units", "--model", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and err.count("\n") == 1


def test_hello_writes_what_it_prints_into_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "hello", "--out", str(tmp_path / "hello")]) == 0
    printed = capsys.readouterr().out
    table = (tmp_path / "hello" / "hello.txt").read_text()
    assert table and printed.startswith(table)
    data = json.loads((tmp_path / "hello" / "hello.json").read_text())
    assert data["predicted"] == "ello" and len(data["hidden"]) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["hello", "--hidden", "0"], "--hidden: expected a whole number >= 1, got '0'"),
        (["gates", "--chars", "-5"], "--chars: expected a whole number >= 1, got '-5'"),
        (["gradients", "--steps", "x"], "--steps: expected a whole number >= 1, got 'x'"),
    ],
)
def test_bad_numbers_are_usage_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["analyze", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_progression_from_the_artifact_alone(tiny_artifact: Path, tmp_path: Path) -> None:
    """The samples recorded in the manifest are enough: the run directory it names is gone."""
    artifact = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, artifact)
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["training"]["config"]["run"]["out_dir"] = str(tmp_path / "gone")
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    assert main(["analyze", "progression", "--model", str(artifact), "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "progression.html").read_text()
    assert all(f"<tr><td>{s['step']}</td>" in page for s in manifest["training"]["samples"])


def test_progression_without_samples_or_run_says_how_to_get_them(
    tiny_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    artifact = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, artifact)
    manifest = json.loads((artifact / "manifest.json").read_text())
    del manifest["training"]["samples"]
    manifest["training"]["config"]["run"]["out_dir"] = str(tmp_path / "gone")
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    assert main(["analyze", "progression", "--model", str(artifact), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"its run directory {tmp_path / 'gone'} is not here" in err
    assert "charrnn analyze progression --run runs/mine" in err
