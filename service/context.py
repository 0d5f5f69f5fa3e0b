"""A point in a text: what continuing it exactly needs.

A `Context` is the hidden state after every character so far, the logits for the next character (computed
by the same model call as that state, so a continuation samples from the very same bits), and the
counter-based generator (seed, position). Continuing from a context samples at the next position, or first
runs new text from the state: the same computation an uninterrupted stream would have done. Resume tokens
(service/tokens.py) and server-side sessions (service/sessions.py) both carry contexts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.errors import InvalidRequest


@dataclass(frozen=True)
class Context:
    """A point in a text. `states` None means the zero state (start of a text)."""

    states: tuple[np.ndarray, ...] | None = None  # each float32 [layers, hidden]
    logits: np.ndarray | None = None  # float32 [vocab] for the next character; None at the start
    seed: int | None = None
    position: int = 0  # draws taken from the generator so far
    model_sha256: str | None = None  # the model file the state belongs to; None: the start of a text

    @property
    def nbytes(self) -> int:
        arrays = [*(self.states or ()), *(() if self.logits is None else (self.logits,))]
        return sum(a.nbytes for a in arrays) + 64

    def check_shapes(self, num_states: int, layers: int, hidden: int, vocab: int) -> None:
        """InvalidRequest unless this context's arrays fit a model of these shapes: one row that does not fit
        must fail alone before it reaches a model call it shares with other rows."""
        if self.states is not None and (
            len(self.states) != num_states or any(s.shape != (layers, hidden) for s in self.states)
        ):
            raise InvalidRequest("the context's state shape does not match the model")
        if self.logits is not None and self.logits.shape != (vocab,):
            raise InvalidRequest("the context's logits do not match the model's vocabulary")
