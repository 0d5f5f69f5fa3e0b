"""`charrnn analyze progression`: the fixed-seed samples a run saved while training, step by step.

Every sample starts from the same prime with the same seed, so the only thing that changes
between them is the model: the page shows noise turning into words, then into code.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from charrnn.artifact import load_manifest

SAMPLES, METRICS = "samples.jsonl", "metrics.jsonl"


def find_run(model_dir: Path | None, checkpoint: Path | None) -> Path:
    """The run directory: the checkpoint's folder, or the one the artifact's manifest records."""
    if checkpoint is not None:
        return checkpoint.parent
    if model_dir is None:
        raise ValueError("give --run, --model or --checkpoint")
    out_dir = load_manifest(model_dir).training.get("config", {}).get("run", {}).get("out_dir")
    if not out_dir:
        raise ValueError(f"{model_dir}'s manifest does not record its run directory; pass --run")
    return Path(out_dir)


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def progression_html(samples: list[dict[str, object]], val_bpc: dict[int, float], title: str) -> str:
    rows = []
    for s in samples:
        step = int(str(s["step"]))
        bpc = f"{val_bpc[step]:.3f} bits/char" if step in val_bpc else "—"
        prime = html.escape(str(s["prime"]))
        text = html.escape(str(s["text"]))
        rows.append(f"<tr><td>{step}</td><td>{bpc}</td><td><pre><b>{prime}</b>{text}</pre></td></tr>")
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "td{vertical-align:top;padding:.4em;border-bottom:1px solid #ddd} pre{margin:0;white-space:pre-wrap}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>"
        "<p>The same prime (bold) and the same seed at every step: only the model changes.</p>"
        f"<table><tr><th>step</th><th>validation</th><th>sample</th></tr>{''.join(rows)}</table></body></html>\n"
    )


def write_progression(run: Path, out: Path) -> Path:
    samples_path = run / SAMPLES
    if not samples_path.is_file():
        raise FileNotFoundError(f"{samples_path} does not exist (train with run.sample_interval > 0)")
    samples = read_jsonl(samples_path)
    metrics_path = run / METRICS
    metrics = read_jsonl(metrics_path) if metrics_path.is_file() else []
    val_bpc = {int(str(m["step"])): float(str(m["val_loss"])) / math.log(2) for m in metrics if "val_loss" in m}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "progression.html"
    path.write_text(progression_html(samples, val_bpc, f"training progression of {run}"), encoding="utf-8")
    return path
