"""`charrnn generate --watch` as a person sees it: in a real terminal (tmux), against a real server.

What it must show: a legend first (the unit, its kind, how the colour scale is chosen), then the prompt
uncoloured, then each generated character on its value's colour with text that stays readable on every
background, then the range the unit covered. Readability is the WCAG contrast ratio, computed here from
its definition (not with the heat map's own helpers).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from charrnn.client.heatmap import Painter, rgb
from tests.service.harness import REPO, ServerThread, make_config
from tests.service.test_activations import reference

PROMPT = "def main(argv):\n    "
Cell = tuple[str, tuple[int, ...] | None, tuple[int, ...] | None]  # a character, its text and background colours


def cells(line: str) -> list[Cell]:
    """Each character of a line of terminal output with the 24-bit colours in force where it is drawn.

    A small SGR interpreter: tmux re-emits an attribute only when it changes, so colours are state.
    """
    out: list[Cell] = []
    fg: tuple[int, ...] | None = None
    bg: tuple[int, ...] | None = None
    for sgr, ch in re.findall(r"\x1b\[([\d;]*)m|(.)", line):
        if not sgr and ch:
            out.append((ch, fg, bg))
            continue
        params = [int(p) for p in sgr.split(";") if p] or [0]
        i = 0
        while i < len(params):
            code = params[i]
            if code in (38, 48) and params[i + 1 : i + 2] == [2]:
                colour = tuple(params[i + 2 : i + 5])
                fg, bg = (colour, bg) if code == 38 else (fg, colour)
                i += 5
                continue
            if code == 0:
                fg = bg = None
            elif code == 39:
                fg = None
            elif code == 49:
                bg = None
            i += 1
    return out


def wcag_contrast(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    def lum(colour: tuple[int, ...]) -> float:
        lin = [c / 255 / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in colour]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    high, low = sorted((lum(a), lum(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_every_background_keeps_its_text_readable() -> None:
    painter = Painter(("h", 0, 0))
    values = np.linspace(-1.5, 1.5, 301)
    drawn = cells(painter.colour("x" * len(values), list(values)))
    assert len(drawn) == len(values) and all(fg and bg for _, fg, bg in drawn)
    worst = min(wcag_contrast(fg, bg) for _, fg, bg in drawn if fg and bg)
    assert worst >= 4.5, f"worst text/background contrast {worst:.2f} (WCAG AA asks 4.5)"
    # Diverging: near-white at 0, blue below, red above, darker with |value| up to the scale.
    assert min(rgb(0.0)) > 240
    for v in (0.2, 0.6, 1.0):
        red, blue = rgb(v), rgb(-v)
        assert red[0] > red[2] and blue[2] > blue[0]
    assert sum(rgb(1.0)) < sum(rgb(0.5)) < sum(rgb(0.1)) and rgb(2.0) == rgb(1.0)


def test_the_scale_follows_the_kind_of_state() -> None:
    h = Painter(("h", 1, 3))
    assert h.scale == 1.0, "h is tanh's output: its range is [-1, 1]"
    c = Painter(("c", 0, 80))
    c.colour("abc", [-12.0, 0.5, 3.0])
    assert c.scale == 12.0 and "ranged over [-12, +3]" in c.summary(), "c is unbounded: the largest |value| seen"
    fixed = Painter(("c", 0, 80), scale=4.0)
    fixed.colour("a", [-12.0])
    assert fixed.scale == 4.0 and "±4" in fixed.legend()


@pytest.fixture(scope="module")
def server(lstm_dir: Path) -> Iterator[ServerThread]:
    with ServerThread(make_config(lstm_dir)) as srv:
        yield srv


def in_tmux(command: list[str], done: str, timeout: float = 60.0) -> list[str]:
    """Run `command` in a detached tmux terminal; the screen's lines (with colours) once `done` shows."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    socket = f"charrnn-test-{time.monotonic_ns()}"
    tmux = ["tmux", "-L", socket, "-f", "/dev/null"]
    shell = f"cd {shlex.quote(str(REPO))} && {shlex.join(command)}; sleep 60"
    subprocess.run([*tmux, "new-session", "-d", "-x", "200", "-y", "50", shell], check=True, timeout=30)
    try:
        deadline = time.monotonic() + timeout
        while True:
            screen = subprocess.run(
                [*tmux, "capture-pane", "-p", "-e", "-J"], capture_output=True, text=True, check=True, timeout=30
            ).stdout
            if done in screen or time.monotonic() > deadline:
                return screen.rstrip("\n").split("\n")
            time.sleep(0.2)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=30)


def test_watch_in_a_terminal(server: ServerThread, lstm_dir: Path) -> None:
    args = ["generate", PROMPT, "--target", server.target, "--max-chars", "40", "--temperature", "0"]
    plain = subprocess.run(
        [sys.executable, "-m", "charrnn.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    lines = in_tmux([sys.executable, "-m", "charrnn.cli", *args, "--watch", "c:0:5"], done="ranged over")
    shown = [re.sub(r"\x1b\[[\d;]*m", "", line) for line in lines]

    assert shown[0].startswith("unit c:0:5 (LSTM cell state c, unbounded):"), shown[0]
    assert "scale ±the largest |value| so far" in shown[0]
    # The prompt comes first, with no colour at all; then every generated character has one.
    body = [cell for line in lines[1:-1] for cell in [*cells(line), ("\n", None, None)]]
    assert "".join(ch for ch, _, _ in body[: len(PROMPT)]) == PROMPT
    assert all(bg is None for _, _, bg in body[: len(PROMPT)])
    generated = [(ch, fg, bg) for ch, fg, bg in body[len(PROMPT) :] if bg is not None]
    assert "".join(ch for ch, _, _ in generated).replace("↵", "\n") == plain

    values = reference(lstm_dir, PROMPT, plain, [("c", 0, 5)])[:, 0]
    assert len(generated) == len(values) == 40
    scale = np.maximum.accumulate(np.abs(values))  # the running largest |value|
    for (_, fg, bg), value, s in zip(generated, values, scale, strict=True):
        assert fg is not None and bg is not None and wcag_contrast(fg, bg) >= 4.5
        if abs(value) > 0.1 * s:
            assert (bg[0] > bg[2]) == (value > 0), f"value {value:+.3f}: background {bg}"
    summary = re.fullmatch(r"unit c:0:5 ranged over \[(\S+), (\S+)\] \(colour scale ±(\S+)\)", shown[-1])
    assert summary is not None, shown[-1]
    expected = (values.min(), values.max(), scale[-1])
    assert [float(x) for x in summary.groups()] == pytest.approx(expected, rel=5e-3, abs=1e-3)
