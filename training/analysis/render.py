"""Pictures: characters coloured by a unit's activation (negative blue, positive red), as HTML and PNG."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

NEWLINE_MARK = "↵"


def pyplot() -> Any:
    """matplotlib's pyplot on the headless Agg backend (imported only when a picture is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colours(values: np.ndarray, scale: float | None = None) -> np.ndarray:
    """RGB in [0, 1] per value: white at 0, saturating to red (positive) or blue (negative) at ±scale."""
    values = np.asarray(values, dtype=np.float64)
    scale = scale or float(np.abs(values).max()) or 1.0
    strength = np.clip(np.abs(values) / scale, 0.0, 1.0)
    rgb = np.ones((*values.shape, 3))
    fade = 1.0 - strength
    positive = values >= 0
    rgb[..., 1] = fade  # green fades for both signs
    rgb[..., 0] = np.where(positive, 1.0, fade)
    rgb[..., 2] = np.where(positive, fade, 1.0)
    return rgb


def _css(rgb: np.ndarray) -> str:
    r, g, b = (round(255 * float(v)) for v in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap_html(text: str, values: Sequence[float] | np.ndarray, title: str, note: str = "") -> str:
    """One page: every character on a background coloured by the activation after reading it."""
    values = np.asarray(values, dtype=np.float64)
    if len(text) != values.size:
        raise ValueError(f"{len(text)} characters but {values.size} values")
    rgb = colours(values, 1.0 if np.abs(values).max() <= 1.0 else None)
    spans = []
    for ch, colour, value in zip(text, rgb, values, strict=True):
        shown = NEWLINE_MARK + "\n" if ch == "\n" else html.escape(ch)
        spans.append(f'<span style="background:{_css(colour)}" title="{value:+.3f}">{shown}</span>')
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em} pre{font-size:13px;line-height:1.35}</style>"
        f"</head><body><h1>{html.escape(title)}</h1><p>{html.escape(note)}</p>"
        "<p>Background: the unit's value after reading each character; "
        '<span style="background:#ff4040">positive red</span>, '
        '<span style="background:#4040ff;color:white">negative blue</span>, white near 0. '
        "Hover for the value.</p>"
        f"<pre>{''.join(spans)}</pre></body></html>\n"
    )


def text_grid(text: str, width: int, max_rows: int) -> list[list[int]]:
    """Character positions laid out in rows: a row ends at a newline or after `width` characters."""
    rows: list[list[int]] = [[]]
    for pos, ch in enumerate(text):
        if len(rows[-1]) == width:
            rows.append([])
        rows[-1].append(pos)
        if ch == "\n":
            rows.append([])
        if len(rows) > max_rows:
            return rows[:max_rows]
    return [r for r in rows if r] or [[]]


def heatmap_png(text: str, values: np.ndarray, path: Path, title: str, width: int = 90, max_rows: int = 30) -> Path:
    """The same picture as the HTML page, as a small PNG for the docs."""
    plt = pyplot()
    values = np.asarray(values, dtype=np.float64)
    rows = text_grid(text, width, max_rows)
    rgb = np.ones((len(rows), width, 3))
    scale = 1.0 if np.abs(values).max() <= 1.0 else None
    shown = colours(values, scale)
    fig, ax = plt.subplots(figsize=(width * 0.095, len(rows) * 0.19 + 0.5), dpi=90)
    for r, positions in enumerate(rows):
        for c, pos in enumerate(positions):
            rgb[r, c] = shown[pos]
            ch = NEWLINE_MARK if text[pos] == "\n" else text[pos]
            if not ch.isspace():  # white letters on the deepest colours, so they stay readable
                ink = "white" if shown[pos].min() < 0.35 else "black"
                ax.text(c, r, ch, ha="center", va="center", fontsize=7.5, family="monospace", color=ink)
    ax.imshow(rgb, aspect="auto", interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    fig.tight_layout(pad=0.3)
    fig.savefig(path)
    plt.close(fig)
    return path
