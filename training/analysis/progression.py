"""`charrnn analyze progression`: the fixed-seed samples of a training run, step by step.

Every sample starts from the same prime with the same seed, so the only thing that changes
between them is the model: the page shows noise turning into words, then into code. The samples
come from a run directory, or from the artifact itself: export records them in the manifest
(`training.samples`), so an artifact shows its progression without the run that made it.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from charrnn.artifact import load_manifest

SAMPLES, METRICS = "samples.jsonl", "metrics.jsonl"
# Where to get samples when there are none: the instruction every refusal ends with.
TRAIN_A_RUN = (
    "train a run, e.g. `charrnn train --out runs/mine optim.max_minutes=5 run.sample_interval=50`, "
    "then `charrnn analyze progression --run runs/mine`"
)


class ProgressionError(ValueError):
    """There are no samples to show; the message says how to get some."""


@dataclass(frozen=True)
class Sample:
    """One fixed-seed sample and the validation loss measured at its step (None: not evaluated then)."""

    step: int
    prime: str
    text: str
    val_bits_per_char: float | None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sample:
        bpc = data.get("val_bits_per_char")
        return cls(int(data["step"]), str(data["prime"]), str(data["text"]), None if bpc is None else float(bpc))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_samples(run: Path, last_step: int | None = None) -> list[Sample]:
    """The samples `run` saved up to `last_step` (all by default), with the validation bits/char at each
    step from its metrics log; [] when the run saved none (run.sample_interval=0)."""
    samples_path, metrics_path = run / SAMPLES, run / METRICS
    if not samples_path.is_file():
        return []
    metrics = read_jsonl(metrics_path) if metrics_path.is_file() else []
    val_bpc = {int(m["step"]): float(m["val_loss"]) / math.log(2) for m in metrics if "val_loss" in m}
    return [
        Sample(int(s["step"]), str(s["prime"]), str(s["text"]), val_bpc.get(int(s["step"])))
        for s in read_jsonl(samples_path)
        if last_step is None or int(s["step"]) <= last_step
    ]


def manifest_samples(samples: list[Sample]) -> list[dict[str, Any]]:
    """The manifest's form (`training.samples`), bits/char rounded like the manifest's other losses."""
    rows = [asdict(s) for s in samples]
    for row in rows:
        if row["val_bits_per_char"] is not None:
            row["val_bits_per_char"] = round(row["val_bits_per_char"], 5)
    return rows


def find_samples(model_dir: Path, checkpoint: Path | None, run: Path | None) -> tuple[str, list[Sample]]:
    """(where they came from, the samples): `run`, else the checkpoint's run, else the artifact's recorded
    samples, else the run directory its manifest names if that is here. ProgressionError when none."""
    if run is None and checkpoint is not None:
        run = checkpoint.parent
    if run is not None:
        if not (run / SAMPLES).is_file():
            raise ProgressionError(
                f"{run / SAMPLES} does not exist: {run} is not a training run that saved samples; {TRAIN_A_RUN}"
            )
        return str(run), run_samples(run)
    manifest = load_manifest(model_dir)
    recorded = manifest.training.get("samples")
    if recorded:
        return str(model_dir), [Sample.from_dict(s) for s in recorded]
    out_dir = manifest.training.get("config", {}).get("run", {}).get("out_dir")
    if out_dir and (Path(out_dir) / SAMPLES).is_file():
        return out_dir, run_samples(Path(out_dir), manifest.training.get("steps"))
    where = f"its run directory {out_dir} is not here" if out_dir else "it names no run directory"
    raise ProgressionError(
        f"{model_dir} was exported without its training samples and {where} "
        f"(training runs are not part of the repository); {TRAIN_A_RUN}"
    )


def progression_html(samples: list[Sample], title: str) -> str:
    rows = []
    for s in samples:
        bpc = "—" if s.val_bits_per_char is None else f"{s.val_bits_per_char:.3f} bits/char"
        prime, text = html.escape(s.prime), html.escape(s.text)
        rows.append(f"<tr><td>{s.step}</td><td>{bpc}</td><td><pre><b>{prime}</b>{text}</pre></td></tr>")
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "td{vertical-align:top;padding:.4em;border-bottom:1px solid #ddd} pre{margin:0;white-space:pre-wrap}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>"
        "<p>The same prime (bold) and the same seed at every step: only the model changes.</p>"
        f"<table><tr><th>step</th><th>validation</th><th>sample</th></tr>{''.join(rows)}</table></body></html>\n"
    )


def markdown(samples: list[Sample], width: int = 72) -> str:
    """A table of each sample's first line (prime included), for the terminal."""
    lines = ["| step | val bits/char | sample (first line) |", "|---|---|---|"]
    for s in samples:
        bpc = "—" if s.val_bits_per_char is None else f"{s.val_bits_per_char:.2f}"
        first = (s.prime + s.text).strip("\n").split("\n", 1)[0][:width].replace("|", "\\|").replace("`", "'")
        lines.append(f"| {s.step} | {bpc} | `{first}` |")
    return "\n".join(lines) + "\n"


def write_progression(samples: list[Sample], source: str, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "progression.html"
    path.write_text(progression_html(samples, f"training progression of {source}"), encoding="utf-8")
    return path
