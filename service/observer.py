"""What an engine reports as it works (service/metrics.py implements it): hooks called from the decode loop."""

from __future__ import annotations

from service.stream import Finished

# Where one stream can fail by itself (its own parameters, context or text), and what a log line says.
ROW_PHASES = {"join": "joining", "sample": "sampling", "record": "recording", "flush": "flushing"}
BATCH_PHASES = ("decode", "prefill")  # model calls: they fail every row in them
ENGINE_RESTARTS = ("died", "wedged")  # why an engine was replaced


class SchedulerObserver:
    """Hooks for metrics; called from the decode loop; the defaults do nothing."""

    def on_step(self, batch: int, model_s: float, sampling_s: float) -> None:
        """One decode step advanced `batch` rows."""

    def on_prefill(self, rows: int, chars: int, seconds: float) -> None:
        """One prefill chunk: `rows` texts advanced by `chars` characters in all."""

    def on_finish(self, finished: Finished, seconds: float) -> None:
        """A stream left with this result, `seconds` after submission."""

    def on_reject(self, reason: str) -> None:
        """A stream was refused ("queue_full", "shutting_down")."""

    def on_row_failure(self, phase: str) -> None:
        """One stream failed alone (a ROW_PHASES phase); its neighbours went on."""

    def on_engine_restart(self, reason: str) -> None:
        """An engine was replaced (an ENGINE_RESTARTS reason)."""

    def on_batch_failure(self, phase: str) -> None:
        """A model call failed (a BATCH_PHASES phase): every row in it failed."""
