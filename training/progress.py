"""A progress bar for long work (loss, chars/s, ETA) that degrades to log lines without a terminal."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger(__name__)


class Progress:
    """tqdm when stderr is a terminal (or when forced); otherwise a log line every `every` updates."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, every: int = 100, unit: str = "step"):
        self.total, self.every = total, every
        self._start, self._initial = time.perf_counter(), initial
        self._bar: Any = None
        self._last: dict[str, float] = {}
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(
                    total=total, initial=initial, unit=unit, dynamic_ncols=True,
                    disable=not sys.stderr.isatty(), file=sys.stderr,
                )  # fmt: skip
            except ImportError:
                self._bar = None

    def update(self, position: int, **values: float) -> None:
        self._last = values
        if self._bar is not None and not self._bar.disable:
            self._bar.n = position
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)
            self._bar.refresh()
        elif position % self.every == 0:
            shown = " ".join(f"{k}={v:.4g}" for k, v in values.items())
            log.info("%d/%d %s eta=%s", position, self.total, shown, self.eta(position))

    def eta(self, position: int) -> str:
        """Time left at the average pace so far, as m:ss."""
        done = position - self._initial
        if done <= 0:
            return "?"
        left = (self.total - position) * (time.perf_counter() - self._start) / done
        return f"{int(left // 60)}:{int(left % 60):02d}"

    def note(self, message: str) -> None:
        if self._bar is not None and not self._bar.disable:
            self._bar.write(message, file=sys.stderr)
        else:
            log.info("%s", message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
