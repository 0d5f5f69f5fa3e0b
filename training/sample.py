"""The reference sampler: one stream, one character at a time, in plain numpy.

It is deliberately simple (no batching) so that the service's batched sampler can be
checked against it. It drives any "stepper" (a PyTorch checkpoint or an ONNX artifact):
torch is imported only by the PyTorch stepper.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from charrnn.vocab import Vocabulary

if TYPE_CHECKING:
    from training.model import CharRNN

StateArrays = tuple[np.ndarray, ...]


@dataclass(frozen=True)
class ReferenceSampling:
    """The reference sampler's settings (numpy's generator, unlike the server's counter-based one)."""

    temperature: float = 1.0  # 0 = greedy (argmax)
    top_k: int = 0  # keep the k most likely characters; 0 = all
    top_p: float = 1.0  # keep the smallest set whose probability reaches top_p; 1 = all
    seed: int = 0  # the RNG seed (numpy PCG64)


class Stepper(Protocol):
    def step(self, tokens: np.ndarray, state: StateArrays | None) -> tuple[np.ndarray, StateArrays]:
        """tokens [1, T] int64 -> logits [1, T, V] float32 and the new state."""
        ...


def filtered_probabilities(logits: np.ndarray, params: ReferenceSampling) -> np.ndarray:
    """Probabilities after temperature, top-k and top-p (float64, sums to 1)."""
    z = logits.astype(np.float64) / params.temperature
    if 0 < params.top_k < z.size:
        kth = np.partition(z, -params.top_k)[-params.top_k]
        z = np.where(z >= kth, z, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    if params.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cumulative = np.cumsum(p[order])
        keep = cumulative - p[order] < params.top_p  # keep until the mass before a token reaches top_p
        mask = np.zeros_like(p, dtype=bool)
        mask[order[keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return p


def sample_next(logits: np.ndarray, params: ReferenceSampling, rng: np.random.Generator) -> int:
    if params.temperature == 0:
        return int(np.argmax(logits))
    p = filtered_probabilities(logits, params)
    return int(rng.choice(p.size, p=p))


def generate(stepper: Stepper, vocab: Vocabulary, prompt: str, n_chars: int, params: ReferenceSampling) -> str:
    """Feed `prompt` (zero initial state), then sample `n_chars` characters one at a time."""
    if not prompt:
        raise ValueError("the reference sampler needs a non-empty prompt")
    rng = np.random.default_rng(params.seed)
    logits, state = stepper.step(vocab.encode(prompt)[None, :], None)
    out: list[int] = []
    for _ in range(n_chars):
        token = sample_next(logits[0, -1], params, rng)
        out.append(token)
        logits, state = stepper.step(np.array([[token]], dtype=np.int64), state)
    return vocab.decode(out)


class TorchStepper:
    """Steps a PyTorch CharRNN (for samples during training and parity checks)."""

    def __init__(self, model: CharRNN):
        self.model = model

    def step(self, tokens: np.ndarray, state: StateArrays | None) -> tuple[np.ndarray, StateArrays]:
        import torch

        device = next(self.model.parameters()).device
        with torch.no_grad():
            torch_state = None if state is None else tuple(torch.from_numpy(s).to(device) for s in state)
            logits, new_state = self.model(torch.from_numpy(tokens).to(device), torch_state)
        return logits.cpu().numpy(), tuple(s.cpu().numpy() for s in new_state)


class OnnxStepper:
    """Steps an exported artifact with the shared ONNX Runtime engine (no sampling, no batching).

    `charrnn.engine.Engine` is the same wrapper the server steps with, so export's parity check and the
    reference sampler run the graph exactly as the server does.
    """

    def __init__(self, model_dir: Path | str, threads: int = 1):
        from charrnn.engine import Engine, EngineOptions

        self.engine = Engine(model_dir, EngineOptions(intra_op_threads=threads))
        self.manifest = self.engine.manifest
        self.vocab = Vocabulary.from_spec(self.manifest.vocabulary)

    def step(self, tokens: np.ndarray, state: StateArrays | None) -> tuple[np.ndarray, StateArrays]:
        state = state if state is not None else self.engine.zero_states(tokens.shape[0])
        return self.engine.run(tokens.astype(np.int64), state)
