"""Terminal renderings of watched hidden units for `charrnn generate --watch`.

Pure Python and light (the CLI imports it). Each generated character's background shows the unit's
value on a diverging map (ColorBrewer's RdBu: blue negative, near-white at 0, red positive, darker
toward ±scale), and its text is black or white, whichever contrasts more with that background, so it
stays readable at both ends (WCAG contrast ratio 4.5 or more everywhere). The scale: `h` is a tanh
output, so ±1; an LSTM's cell state `c` is unbounded (the quote unit reaches -12), so its scale is the
largest |value| seen so far in the stream, as the analysis pages use the text's largest; a fixed
scale replaces either.
"""

from __future__ import annotations

from collections.abc import Sequence

RESET = "\x1b[0m"
# Characters that would break the coloured line are shown by a visible stand-in.
_SHOWN = {"\n": "↵", "\t": "→"}
# ColorBrewer RdBu (11 classes), from -scale to +scale.
RDBU = (
    (5, 48, 97), (33, 102, 172), (67, 147, 195), (146, 197, 222), (209, 229, 240), (247, 247, 247),
    (253, 219, 199), (244, 165, 130), (214, 96, 77), (178, 24, 43), (103, 0, 31),
)  # fmt: skip
BLACK, WHITE = (0, 0, 0), (255, 255, 255)
RGB = tuple[int, int, int]
UNIT_KINDS = {"h": "hidden state h, tanh-bounded", "c": "LSTM cell state c, unbounded"}


def rgb(value: float, scale: float = 1.0) -> RGB:
    """Background for `value`: RdBu interpolated, the ends at ±scale (beyond them it stays at the end)."""
    t = max(-1.0, min(1.0, value / scale)) if scale > 0 else 0.0
    position = (t + 1.0) / 2.0 * (len(RDBU) - 1)
    i = min(int(position), len(RDBU) - 2)
    f = position - i
    a, b = RDBU[i], RDBU[i + 1]
    return (round(a[0] + (b[0] - a[0]) * f), round(a[1] + (b[1] - a[1]) * f), round(a[2] + (b[2] - a[2]) * f))


def luminance(colour: RGB) -> float:
    """WCAG relative luminance of an sRGB colour."""

    def linear(channel: int) -> float:
        c = channel / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in colour)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: RGB, b: RGB) -> float:
    """WCAG contrast ratio, 1 to 21."""
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def ink(background: RGB) -> RGB:
    """Black or white text, whichever reads better on `background`."""
    return BLACK if contrast(BLACK, background) >= contrast(WHITE, background) else WHITE


def paint(text: str, colour: RGB) -> str:
    """`text` on `colour` with its ink, in ANSI 24-bit colour."""
    (r, g, b), (ir, ig, ib) = colour, ink(colour)
    return f"\x1b[48;2;{r};{g};{b}m\x1b[38;2;{ir};{ig};{ib}m{text}{RESET}"


class Painter:
    """Colours one stream's characters by one unit and keeps the range it has seen.

    `scale` fixes the value at which the colour saturates; None chooses by the unit's kind: 1 for `h`,
    the running largest |value| for `c`.
    """

    def __init__(self, unit: tuple[str, int, int], scale: float | None = None):
        self.unit = unit
        self.fixed = scale if scale is not None else (1.0 if unit[0] == "h" else None)
        self.low, self.high = float("inf"), float("-inf")
        self.seen = 0

    @property
    def name(self) -> str:
        return ":".join(map(str, self.unit))

    @property
    def scale(self) -> float:
        if self.fixed is not None:
            return self.fixed
        return max(abs(self.low), abs(self.high)) if self.seen else 0.0

    def _scale_words(self) -> str:
        if self.fixed is not None:
            return f"±{self.fixed:g}"
        return "±the largest |value| so far"

    def legend(self) -> str:
        """One line: which unit, its kind, the colours from -scale to +scale, and how the scale is chosen."""
        marks = [(-1.0, "-"), (-0.5, " "), (0.0, "0"), (0.5, " "), (1.0, "+")]
        swatches = "".join(paint(f" {mark} ", rgb(t)) for t, mark in marks)
        kind = UNIT_KINDS.get(self.unit[0], self.unit[0])
        return f"unit {self.name} ({kind}): {swatches} scale {self._scale_words()}; the prompt is not coloured\n"

    def colour(self, text: str, values: Sequence[float]) -> str:
        """`text` with each character on its value's colour; a newline is drawn as ↵ and then kept."""
        out = []
        for ch, value in zip(text, values, strict=True):
            self.low, self.high = min(self.low, value), max(self.high, value)
            self.seen += 1
            out.append(paint(_SHOWN.get(ch, ch), rgb(value, self.scale)))
            if ch == "\n":
                out.append("\n")
        return "".join(out)

    def summary(self) -> str:
        """One line: the range the unit covered and the scale the colours ended at."""
        if not self.seen:
            return f"unit {self.name}: no characters generated\n"
        return f"unit {self.name} ranged over [{self.low:+.3g}, {self.high:+.3g}] (colour scale ±{self.scale:.3g})\n"


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
