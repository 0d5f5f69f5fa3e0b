"""A benchmark's figure: one set of axes on the headless Agg backend (matplotlib imported only when a figure
is drawn), finished the same way every time: grid, legend, saved at 120 dpi."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def axes(path: Path, size: tuple[float, float]) -> Iterator[Any]:
    """Draw on the yielded axes; the figure is written to `path` when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
