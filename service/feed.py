"""Text through the model from a context, one chunk at a time: prompts, `Score` texts and `Session` feeds.

The scheduler interleaves these runs with decoding, one chunk per iteration, so a long text delays live
streams by at most one chunk's model call. Runs whose next chunk has the same length go through the model
together (one call, one row each): full chunks of concurrent long texts always batch.

Chunk boundaries depend only on the text (multiples of `chunk_chars` from its start), so a run's result is a
function of its own text and context, never of what else was running.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from charrnn.engine import Engine, States
from service.context import Context
from service.errors import InvalidRequest


class TextRun:
    """`ids` run from `context`; with `logprobs`, the natural log-probability of each character too."""

    def __init__(self, ids: Sequence[int] | np.ndarray, context: Context, engine: Engine, logprobs: bool = False):
        # A text or context that does not fit the model fails here, alone, not in a model call it shares.
        try:
            self.ids = np.asarray(ids, np.int64)
        except (OverflowError, TypeError, ValueError) as exc:
            raise InvalidRequest(f"the text's ids cannot be represented ({exc})") from exc
        if len(self.ids) and not (self.ids.min() >= 0 and self.ids.max() < engine.vocab_size):
            raise InvalidRequest("the text holds ids outside the model's vocabulary")
        context.check_shapes(engine.num_states, engine.layers, engine.hidden, engine.vocab_size)
        self.context = context
        self.model_sha256 = engine.sha256
        self.pos = 0  # characters run so far
        layers, hidden = engine.layers, engine.hidden
        self.states: States = (
            tuple(s.copy() for s in context.states)
            if context.states is not None
            else tuple(np.zeros((layers, hidden), np.float32) for _ in range(engine.num_states))
        )
        self.logits = context.logits  # for the next character; None at the start of a text
        # Character j is scored by the logits before it: none exist for the first character of a text.
        self.first_scored = 0 if context.logits is not None else 1
        self.logprobs = np.empty(max(0, len(ids) - self.first_scored), np.float64) if logprobs else None
        self.cancelled = False
        self.error: BaseException | None = None  # set when its engine failed before the run was done
        self.on_done: Callable[[TextRun], None] | None = None

    @property
    def done(self) -> bool:
        return self.pos >= len(self.ids)

    def next_length(self, chunk_chars: int) -> int:
        return min(chunk_chars, len(self.ids) - self.pos)

    def after(self) -> Context:
        """The context after the whole text (only once `done`)."""
        return Context(self.states, self.logits, self.context.seed, self.context.position, self.model_sha256)

    def advance(self, logits: np.ndarray, states: States) -> None:
        """Take one chunk's results: logits [length, vocab] and the states after it ([layers, hidden] each)."""
        length = len(logits)
        a = self.pos
        if self.logprobs is not None:
            predictors = logits[:-1] if self.logits is None else np.concatenate([self.logits[None, :], logits[:-1]])
            targets = self.ids[a + 1 : a + length] if self.logits is None else self.ids[a : a + length]
            start = a + 1 - self.first_scored if self.logits is None else a - self.first_scored
            self.logprobs[start : start + len(targets)] = log_probabilities(predictors, targets)
        self.states = states
        self.logits = logits[-1].copy()
        self.pos += length


def log_probabilities(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """ln p(target) under each row's softmax, in float64."""
    x = logits.astype(np.float64)
    peak = x.max(axis=1, keepdims=True)
    log_z = peak[:, 0] + np.log(np.exp(x - peak).sum(axis=1))
    return x[np.arange(len(targets)), targets] - log_z


def next_group(runs: Sequence[TextRun], chunk_chars: int, max_rows: int) -> list[TextRun]:
    """The first waiting run and the others (in order) whose next chunk has its length, up to `max_rows`."""
    length = runs[0].next_length(chunk_chars)
    return [r for r in runs if r.next_length(chunk_chars) == length][:max_rows]


def run_chunk(engine: Engine, group: Sequence[TextRun], chunk_chars: int) -> int:
    """One model call advancing every run of `group` by its next chunk (all the same length); returns chars run."""
    length = group[0].next_length(chunk_chars)
    tokens = np.stack([r.ids[r.pos : r.pos + length] for r in group])
    states = tuple(np.stack([r.states[k] for r in group], axis=1) for k in range(len(group[0].states)))
    logits, new_states = engine.run(tokens, states)
    for row, run in enumerate(group):
        run.advance(logits[row], tuple(s[:, row].copy() for s in new_states))
    return length * len(group)
