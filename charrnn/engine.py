"""ONNX Runtime wrapper: one graph for prefill (time = prompt length) and decode (time = 1).

Shared by the server, the reference sampler and export's parity check, so they run a graph the same way.

The engine knows nothing about requests; it maps (tokens, states) to (logits, states) using
the input/output names from the manifest. States are tuples of float32 arrays shaped
[layers, batch, hidden], in manifest order (h, then c for LSTM).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn.artifact import Manifest, load_manifest
from charrnn.settings import setting

log = logging.getLogger(__name__)

States = tuple[np.ndarray, ...]


@dataclass(frozen=True)
class EngineOptions:
    """ONNX Runtime session options (docs/operations.md has the measurements behind the defaults)."""

    intra_op_threads: int = setting(1, "ONNX Runtime threads one model call may use (0: ONNX Runtime chooses)")
    inter_op_threads: int = setting(1, "ONNX Runtime threads across independent graph nodes")
    # Spinning keeps a core busy between calls; with two shared cores it steals time from gRPC.
    allow_spinning: bool = setting(
        False, "let ONNX Runtime threads spin between calls (costs a core when idle)", aliases=("--spinning",)
    )


class Engine:
    """A loaded model: `run` is thread-safe but meant to be called from one dedicated thread."""

    def __init__(self, model_dir: Path | str, options: EngineOptions | None = None, manifest: Manifest | None = None):
        self.model_dir = Path(model_dir)
        self.manifest = manifest if manifest is not None else load_manifest(self.model_dir)
        self.options = options or EngineOptions()
        import onnxruntime as ort  # here, not at import: the CLI reads EngineOptions before anything heavy

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options.intra_op_threads
        so.inter_op_num_threads = self.options.inter_op_threads
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        spin = "1" if self.options.allow_spinning else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)
        so.log_severity_level = 3
        path = self.model_dir / self.manifest.onnx.file
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        onnx = self.manifest.onnx
        self._tokens = onnx.tokens.name
        self._state_in = [s.input for s in onnx.states]
        self._outputs = [onnx.logits.name, *(s.output for s in onnx.states)]
        self.layers, self.hidden = self.manifest.state_shape
        self.vocab_size = self.manifest.model.vocab_size
        self.sha256 = onnx.sha256

    @property
    def num_states(self) -> int:
        return len(self._state_in)

    def zero_states(self, batch: int) -> States:
        """The start-of-text state for `batch` rows."""
        return tuple(np.zeros((self.layers, batch, self.hidden), np.float32) for _ in self._state_in)

    def run(self, tokens: np.ndarray, states: States) -> tuple[np.ndarray, States]:
        """tokens int64 [batch, time], states [layers, batch, hidden] → logits [batch, time, vocab], states."""
        feed: dict[str, np.ndarray] = {self._tokens: tokens}
        for name, value in zip(self._state_in, states, strict=True):
            feed[name] = value
        logits, *new_states = self.session.run(self._outputs, feed)
        return logits, tuple(new_states)

    def warm_up(self, max_batch: int, steps: int = 3) -> float:
        """Run prefill and decode at batch 1 and `max_batch` so first requests don't pay allocation costs."""
        start = time.perf_counter()
        for batch in sorted({1, max(1, max_batch)}):
            states = self.zero_states(batch)
            _, states = self.run(np.zeros((batch, 8), np.int64), states)
            for _ in range(steps):
                _, states = self.run(np.zeros((batch, 1), np.int64), states)
        elapsed = time.perf_counter() - start
        log.info("warm-up done in %.3f s (batch 1 and %d)", elapsed, max_batch)
        return elapsed
