"""An exponential moving average of the weights (Polyak averaging), for `optim.ema_decay`.

Late in a run the weights wander around a minimum with the optimiser's noise; their running average sits
nearer its centre and scores better than any one step's weights. The run evaluates, samples, and exports the
average; it trains (and resumes) the weights themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

WARMUP = 10.0  # the rate is min(decay, (1 + step) / (WARMUP + step)): early steps, still far apart, weigh more


class WeightAverage:
    """avg <- d * avg + (1 - d) * weights after every optimiser step, with d warming up towards `decay`,
    so that the first weights, far from the final ones, are forgotten quickly."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the average's decay must be in (0, 1), not {decay}")
        self.model = model
        self.decay = decay
        self.names = [name for name, _ in model.named_parameters()]
        self.averaged = [p.detach().clone() for p in model.parameters()]

    def rate(self, step: int) -> float:
        """d for the update after optimiser step `step` (counted from 0)."""
        return min(self.decay, (1.0 + step) / (WARMUP + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        weights = [p.detach() for p in self.model.parameters()]
        torch._foreach_lerp_(self.averaged, weights, 1.0 - self.rate(step))

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block and exactly its own ones again after it."""
        params = list(self.model.parameters())
        with torch.no_grad():
            own = [p.detach().clone() for p in params]
            torch._foreach_copy_([p.detach() for p in params], self.averaged)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([p.detach() for p in params], own)

    def state_dict(self) -> dict[str, Tensor]:
        """The model's state_dict with the averaged weights: what model_from_checkpoint loads."""
        with self.applied():
            return {key: value.detach().clone() for key, value in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = [name for name in self.names if name not in state]
        if missing:
            raise ValueError(f"the averaged weights lack {missing}")
        self.averaged = [state[name].detach().clone().to(p.device) for name, p in self.model.named_parameters()]
