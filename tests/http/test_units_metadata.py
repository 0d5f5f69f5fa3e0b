"""Interpretable units as optional manifest metadata: written by `charrnn analyze units --annotate`, read by
the HTTP side (GET /v1/models, the playground's picker); manifests without them still load."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import pytest

from charrnn.artifact import ArtifactError, UnitNote, load_manifest
from charrnn.cli import main
from tests.http.conftest import base_url
from tests.service.harness import ServerThread, make_config
from training.analysis.scoring import FeatureScore
from training.analysis.units import UnitsReport, annotate_manifest, unit_notes

PYTHON_TEXT = 'def f(x):\n    if x("a"):\n        return [x, "b"]\n    return (x)\n' * 40


def score(
    feature: str, metric: str, unit: str, sign: int, heldout: float, shuffled: float, shifted: float
) -> FeatureScore:
    return FeatureScore(feature, f"{feature} in words", metric, unit, sign, heldout, heldout, shuffled, shifted, 0.3)


def test_units_that_beat_chance_and_the_controls_are_noted() -> None:
    report = UnitsReport("m", 1000, 96, [
        score("in_string", "auc", "tanh_c0:5", -1, 0.92, 0.51, 0.53),  # tanh of c0:5: noted as c0:5
        score("in_brackets", "auc", "h1:3", 1, 0.70, 0.50, 0.52),  # 0.20 from chance: too weak
        score("column", "r", "c1:7", 1, 0.75, 0.01, -0.30),  # a control 0.30 from chance: not 3x beaten
        score("indent", "r", "h0:2", -1, 0.85, 0.01, 0.05),
    ], "c0:5", -1, "python", "in_string")  # fmt: skip
    notes = unit_notes(report)
    assert [(n.name, n.feature, n.sign, n.score) for n in notes] == [
        ("c0:5", "in_string", -1, 0.92),
        ("h0:2", "indent", -1, 0.85),
    ]
    assert notes[0].tracks == "in_string in words" and notes[1].metric == "r"


@pytest.fixture
def artifact(model_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "artifact"
    shutil.copytree(model_dir, copy)
    return copy


def test_annotating_changes_only_the_units_and_old_manifests_still_load(artifact: Path) -> None:
    before = json.loads((artifact / "manifest.json").read_text())
    note = UnitNote("c", 1, 7, "in_string", "inside a string literal", "auc", 0.9, -1)
    annotate_manifest(artifact, [note])
    after = json.loads((artifact / "manifest.json").read_text())
    written = {"kind": "c", "layer": 1, "index": 7, "feature": "in_string", "tracks": "inside a string literal",
               "metric": "auc", "score": 0.9, "sign": -1}  # fmt: skip
    assert after.pop("units") == [written]
    before.pop("units", None)
    assert after == before
    assert load_manifest(artifact).units == [note]  # the sha256 check covers model.onnx only

    (artifact / "manifest.json").write_text(json.dumps(after))  # without units: written before they existed
    assert load_manifest(artifact).units == []


def test_a_unit_the_model_lacks_is_refused(artifact: Path) -> None:
    data = json.loads((artifact / "manifest.json").read_text())
    data["units"] = [{"kind": "h", "layer": 2, "index": 0, "feature": "f", "tracks": "t", "metric": "auc",
                      "score": 0.9, "sign": 1}]  # fmt: skip
    (artifact / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="units: h2:0 is not a unit of this lstm 2x24"):
        load_manifest(artifact)


def test_the_models_route_lists_the_noted_units(artifact: Path) -> None:
    annotate_manifest(artifact, [UnitNote("h", 0, 3, "indent", "indentation width", "r", 0.8, 1)])
    with (
        ServerThread(make_config(artifact, http_port=0)) as srv,
        urllib.request.urlopen(f"{base_url(srv)}/v1/models", timeout=10) as response,
    ):
        card = json.loads(response.read())["data"][0]["charrnn"]
    assert card["units"] == [{"unit": "h0:3", "kind": "h", "layer": 0, "index": 3, "feature": "indent",
                              "tracks": "indentation width", "metric": "r", "score": 0.8, "sign": 1}]  # fmt: skip


def test_analyze_units_annotate_writes_the_manifest(tiny_artifact: Path, tmp_path: Path) -> None:
    artifact = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, artifact)
    text = tmp_path / "sample.py"
    text.write_text(PYTHON_TEXT)
    args = ["analyze", "units", "--model", str(artifact), "--text", str(text), "--out", str(tmp_path / "out")]
    assert main([*args, "--annotate"]) == 0
    data = json.loads((artifact / "manifest.json").read_text())
    assert isinstance(data["units"], list)  # what a 20-step model's units pass is up to them; the field is written
    assert load_manifest(artifact).units == [UnitNote(**u) for u in data["units"]]


def test_annotate_needs_the_artifact_not_a_checkpoint(
    tiny_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tiny_artifact.parent / "run" / "best.pt"
    assert main(["analyze", "units", "--checkpoint", str(checkpoint), "--annotate", "--out", str(tmp_path)]) == 2
    assert "--annotate writes --model's manifest" in capsys.readouterr().err
