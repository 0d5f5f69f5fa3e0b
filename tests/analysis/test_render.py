"""Heat maps: negative blue, positive red, white at zero; every character shown once."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.analysis.render import colours, heatmap_html, heatmap_png, text_grid


def test_colour_signs() -> None:
    rgb = colours(np.array([1.0, -1.0, 0.0]), scale=1.0)
    assert rgb[0].tolist() == [1.0, 0.0, 0.0]  # red
    assert rgb[1].tolist() == [0.0, 0.0, 1.0]  # blue
    assert rgb[2].tolist() == [1.0, 1.0, 1.0]  # white


def test_html_has_one_span_per_character_and_escapes() -> None:
    text = 'a<b\n"c"'
    page = heatmap_html(text, np.linspace(-1, 1, len(text)), "unit h0:1")
    assert page.count("<span style=") == len(text) + 2  # plus the two legend swatches
    assert "&lt;" in page and "&quot;" in page
    assert 'background:#0000ff" title="-1.000"' in page  # first char: most negative, blue
    assert 'background:#ff0000" title="+1.000"' in page


def test_grid_wraps_lines_and_long_rows() -> None:
    rows = text_grid("abc\nde", width=2, max_rows=10)
    assert rows == [[0, 1], [2, 3], [4, 5]]


def test_png_is_written(tmp_path: Path) -> None:
    text = "x = 'hi'\n" * 5
    path = heatmap_png(text, np.sin(np.arange(len(text))), tmp_path / "u.png", "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
