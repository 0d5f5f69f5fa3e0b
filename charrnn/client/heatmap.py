"""Terminal renderings of watched hidden units for `charrnn generate --watch`.

Pure Python and light (the CLI imports it): each character's background is coloured by a
unit's value, white at 0 saturating to red (positive) or blue (negative) at ±scale, the same
mapping as the analysis pages (training/analysis/render.py), in ANSI 24-bit colour.
"""

from __future__ import annotations

from collections.abc import Sequence

RESET = "\x1b[0m"
_INK = "\x1b[38;2;0;0;0m"  # black text stays readable on every background
# Characters that would break the coloured line are shown by a visible stand-in.
_SHOWN = {"\n": "↵", "\t": "→"}


def rgb(value: float, scale: float = 1.0) -> tuple[int, int, int]:
    """Background colour for `value`: white at 0, red at +scale, blue at -scale."""
    strength = min(abs(value) / scale, 1.0) if scale > 0 else 1.0
    fade = round(255 * (1.0 - strength))
    return (255, fade, fade) if value >= 0 else (fade, fade, 255)


def colour_text(text: str, values: Sequence[float], scale: float = 1.0) -> str:
    """`text` with each character on its value's colour; a newline is drawn as ↵ and then kept."""
    out = []
    for ch, value in zip(text, values, strict=True):
        r, g, b = rgb(value, scale)
        out.append(f"\x1b[48;2;{r};{g};{b}m{_INK}{_SHOWN.get(ch, ch)}{RESET}")
        if ch == "\n":
            out.append("\n")
    return "".join(out)


def tsv_header(units: Sequence[tuple[str, int, int]]) -> str:
    """Column names: the character, then one column per unit named KIND:LAYER:INDEX."""
    return "\t".join(["char", *(f"{k}:{layer}:{index}" for k, layer, index in units)]) + "\n"


def tsv_rows(text: str, rows: Sequence[Sequence[float]]) -> str:
    """One line per character: the character (escaped, so a line stays a line) and its values."""
    lines = []
    for ch, values in zip(text, rows, strict=True):
        shown = ch.encode("unicode_escape").decode("ascii") if not ch.isprintable() or ch == "\\" else ch
        lines.append("\t".join([shown, *(f"{v:.6g}" for v in values)]) + "\n")
    return "".join(lines)
