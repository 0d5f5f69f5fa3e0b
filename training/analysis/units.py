"""`charrnn analyze units`: which hidden units track strings, brackets, indentation, line position.

Karpathy, Johnson & Fei-Fei (2015) found single LSTM cells that switch on inside quotes
and count indentation. This records every unit of the model over held-out text, scores
each against character features (Python's for a model of code, a play's for prose: see FEATURE_SETS),
and draws the chosen unit over the text. With `--annotate`, the units
that clearly track a feature go into the artifact's manifest (`units`), where the HTTP playground reads them.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from charrnn.artifact import UnitNote, load_manifest, write_manifest
from training.analysis.features import FEATURE_SETS, Feature, FeatureSet
from training.analysis.heldout import DEFAULT_MAX_CHARS, heldout_documents
from training.analysis.record import Recording, record
from training.analysis.render import heatmap_html, heatmap_png
from training.analysis.scoring import FeatureScore, UnitScorer
from training.analysis.weights import LoadedModel
from training.config import BUILTIN_CORPUS

log = logging.getLogger(__name__)

SHOWN_CHARS = 2500  # characters on the HTML page
# A unit is written into the manifest when its held-out score is at least this far from chance (AUC 0.5,
# r 0) and this many times farther than either control: both far above what the default model's scores show
# for shuffled or shifted labels (docs/rnn.md).
ANNOTATE_MIN_EFFECT = 0.25
ANNOTATE_MIN_OVER_CONTROL = 3.0
_UNIT_ID = re.compile(r"^(?:tanh_)?([hc])(\d+):(\d+)$")


@dataclass
class UnitsReport:
    model: str
    chars: int
    units: int
    scores: list[FeatureScore]
    shown_unit: str
    shown_sign: int
    feature_set: str
    headline: str  # the feature whose best unit is drawn

    def headline_score(self) -> FeatureScore:
        return self.score(self.headline)

    def score(self, feature: str) -> FeatureScore:
        return next(s for s in self.scores if s.feature == feature)


def markdown(report: UnitsReport) -> str:
    lines = [
        f"Model {report.model}; {report.units} units over {report.chars} held-out characters. The unit is chosen on "
        "the first half and scored on the second; the controls repeat that with shuffled / shifted labels.",
        "",
        "| feature | metric | best unit | sign | held-out | control (shuffled) | control (shifted) | runners-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in report.scores:
        runners = ", ".join([f"{u} {v:.3f}" for u, v in s.top if u != s.unit][:3])
        lines.append(
            f"| {s.feature} | {s.metric} | {s.unit} | {'+' if s.sign > 0 else '-'} | {s.heldout:.3f} "
            f"| {s.control_shuffled:.3f} | {s.control_shifted:.3f} | {runners} |"
        )
    return "\n".join(lines) + "\n"


def busiest_window(flags: np.ndarray, start: int, length: int) -> int:
    """Start of the `length`-character window after `start` with the most feature on/off switches."""
    switches = np.r_[0, np.abs(np.diff(flags.astype(np.int64)))]
    if flags.size - start <= length:
        return start
    sums = np.convolve(switches[start:], np.ones(length), mode="valid")
    return start + int(np.argmax(sums))


def analyze_units(
    loaded: LoadedModel,
    out: Path,
    texts: list[Path] | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    unit: str | None = None,
    seed: int = 0,
    features_of: str = "auto",
) -> UnitsReport:
    feature_set = choose_feature_set(loaded, texts, features_of)
    documents = heldout_documents(loaded, texts, max_chars, accept=feature_set.accept)
    text, features = feature_set.document_features(documents)
    ids, unknown = loaded.vocab.encode_lossy(text)
    if unknown:
        log.warning("%d held-out characters are outside the vocabulary (read as the unknown character)", unknown)
    recording = record(loaded.model, ids)
    acts, unit_ids = recording.matrix()
    log.info("recorded %d units over %d characters", len(unit_ids), len(text))
    scorer = UnitScorer(acts, unit_ids, seed=seed)
    scores = [scorer.score(f) for f in features]
    headline = next(s for s in scores if s.feature == feature_set.headline)
    shown_unit, sign = (unit, 1) if unit else (headline.unit, headline.sign)
    report = UnitsReport(
        loaded.describe(), len(text), len(unit_ids), scores, shown_unit, sign, feature_set.name, headline.feature
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "units.json").write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    (out / "units.md").write_text(markdown(report), encoding="utf-8")
    draw_unit(recording, text, features, shown_unit, scorer.split, out, headline if not unit else None)
    return report


def choose_feature_set(loaded: LoadedModel, texts: list[Path] | None, name: str) -> FeatureSet:
    """`auto`: Python's features for a model of the builtin Python corpus or for `.py` texts, else prose."""
    if name != "auto":
        return FEATURE_SETS[name]
    if texts:
        return FEATURE_SETS["python" if all(p.suffix == ".py" for p in texts) else "prose"]
    corpus = loaded.training.get("config", {}).get("data", {}).get("corpus")
    return FEATURE_SETS["python" if corpus == BUILTIN_CORPUS else "prose"]


def draw_unit(
    recording: Recording,
    text: str,
    features: list[Feature],
    unit: str,
    split: int,
    out: Path,
    headline: FeatureScore | None,
) -> None:
    """HTML page and PNG of `unit` over the held-out half, where the headline feature (strings, for code)
    switches most."""
    values = recording.unit(unit)
    flags = next(f.values for f in features if f.name == (headline.feature if headline else features[0].name))
    sign = "+" if headline and headline.sign > 0 else "-"
    note = f"held-out AUC {headline.heldout:.3f} for '{headline.description}' ({sign} sign)" if headline else ""
    start = busiest_window(flags, split, SHOWN_CHARS)
    end = start + SHOWN_CHARS
    page = heatmap_html(text[start:end], values[start:end], f"unit {unit}", note)
    (out / "unit.html").write_text(page, encoding="utf-8")
    png_start = busiest_window(flags, start, 1200)
    heatmap_png(
        text[png_start : png_start + 1200],
        values[png_start : png_start + 1200],
        out / "unit.png",
        f"unit {unit} {note}",
    )


def unit_notes(report: UnitsReport) -> list[UnitNote]:
    """Each feature's best unit, when it beats chance and both controls clearly (see ANNOTATE_MIN_*).

    `tanh_cL:i` is noted as `cL:i`: the server streams the cell state, and tanh is monotonic, so the unit
    tracks the feature with the same sign.
    """
    notes = []
    for s in report.scores:
        chance = 0.5 if s.metric == "auc" else 0.0
        effect = abs(s.heldout - chance)
        control = max(abs(s.control_shuffled - chance), abs(s.control_shifted - chance))
        match = _UNIT_ID.match(s.unit)
        if match is None or effect < ANNOTATE_MIN_EFFECT or effect < ANNOTATE_MIN_OVER_CONTROL * control:
            continue
        kind, layer, index = match.group(1), int(match.group(2)), int(match.group(3))
        notes.append(UnitNote(kind, layer, index, s.feature, s.description, s.metric, s.heldout, s.sign))
    return notes


def annotate_manifest(model_dir: Path, notes: list[UnitNote]) -> Path:
    """Write `notes` as the artifact's `units` (replacing earlier ones); the rest of the manifest is unchanged."""
    manifest = load_manifest(model_dir)
    return write_manifest(model_dir, replace(manifest, units=notes))
