"""Vectorised per-row sampling with a counter-based random generator.

Every row has its own temperature, top-k, top-p, seed and position. The uniform draw for a
row is a hash of (seed, position) alone, so a row's character never depends on which other
rows share the batch, and the generator's whole state is two integers that fit in a resume
token. All arithmetic is row-wise (sorts, sequential cumulative sums) so a row's result is the
same bits at batch 1 or 64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO_POW_MINUS_53 = 2.0**-53


@dataclass(frozen=True)
class SamplingParams:
    """One stream's sampling parameters (validated at the API edge)."""

    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = no limit
    top_p: float = 1.0  # 1 = off


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective avalanche on uint64 (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


_MASK = (1 << 64) - 1
_SMALL_BATCH = 8  # below this, Python integers beat a dozen numpy calls on tiny arrays


def _mix64_int(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def uniforms(seeds: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Uniform float64 in [0, 1) for each (seed, position) pair: a pure function of the pair.

    Small batches take the same arithmetic on Python integers (wrapping at 2**64 by masking): the same bits.
    """
    if len(seeds) < _SMALL_BATCH:
        return np.array(
            [(_mix64_int((_mix64_int(int(s)) + (int(p) + 1) * 0x9E3779B97F4A7C15) & _MASK) >> 11) * _TWO_POW_MINUS_53
             for s, p in zip(seeds.tolist(), positions.tolist(), strict=True)],
            np.float64,
        )  # fmt: skip
    with np.errstate(over="ignore"):
        s = np.asarray(seeds, dtype=np.uint64)
        p = np.asarray(positions, dtype=np.uint64)
        z = _mix64(_mix64(s) + (p + np.uint64(1)) * _GOLDEN)
    return (z >> np.uint64(11)).astype(np.float64) * _TWO_POW_MINUS_53


def sample(
    logits: np.ndarray,
    temperature: np.ndarray,
    top_k: np.ndarray,
    top_p: np.ndarray,
    seeds: np.ndarray,
    positions: np.ndarray,
) -> np.ndarray:
    """Pick one token id per row of `logits` [batch, vocab]; returns int64 [batch].

    Each row takes one of three paths chosen by its own parameters only (so neighbours never
    change its result): temperature 0 → argmax; no top-k/top-p → inverse-CDF over the
    softmax in vocabulary order; otherwise inverse-CDF over the candidates sorted by
    probability (stable: ties resolve to the lower id), cut by top-k and top-p and renormalised.
    """
    if temperature.min(initial=1.0) > 0 and top_k.max(initial=0) == 0 and top_p.min(initial=1.0) >= 1.0:
        return _sample_plain(logits, temperature, uniforms(seeds, positions))  # every row plain: no masks, no copies
    batch = logits.shape[0]
    out = np.empty(batch, np.int64)
    greedy = temperature <= 0
    filtered = ~greedy & ((top_k > 0) | (top_p < 1.0))
    plain = ~greedy & ~filtered
    if greedy.any():
        out[greedy] = logits[greedy].argmax(axis=1)
    if plain.any():
        out[plain] = _sample_plain(logits[plain], temperature[plain], uniforms(seeds[plain], positions[plain]))
    if filtered.any():
        out[filtered] = _sample_filtered(
            logits[filtered], temperature[filtered], top_k[filtered], top_p[filtered],
            uniforms(seeds[filtered], positions[filtered]),
        )  # fmt: skip
    return out


def _sample_plain(logits: np.ndarray, temperature: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF over each row's softmax in vocabulary order, computed in place on one float64 copy."""
    x = logits.astype(np.float64)
    if not (temperature == 1.0).all():  # x / 1.0 is x: skip the pass
        x /= temperature[:, None]
    x -= x.max(axis=1, keepdims=True)
    np.exp(x, out=x)
    np.cumsum(x, axis=1, out=x)
    return _inverse_cdf(x, u)


def _inverse_cdf(cumulative: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Index of the first column whose cumulative mass exceeds u * total, per row."""
    target = u * cumulative[:, -1]
    pick = (cumulative <= target[:, None]).sum(axis=1)
    return np.minimum(pick, cumulative.shape[1] - 1)


def _sample_filtered(
    logits: np.ndarray, temperature: np.ndarray, top_k: np.ndarray, top_p: np.ndarray, u: np.ndarray
) -> np.ndarray:
    vocab = logits.shape[1]
    x = logits.astype(np.float64)
    order = np.argsort(-x, axis=1, kind="stable")
    xs = np.take_along_axis(x, order, axis=1) / temperature[:, None]
    e = np.exp(xs - xs[:, :1])
    ce = np.cumsum(e, axis=1)
    mass_before = (ce - e) / ce[:, -1:]
    k = np.where(top_k > 0, np.minimum(top_k, vocab), vocab)
    keep = (np.arange(vocab)[None, :] < k[:, None]) & ((mass_before < top_p[:, None]) | (top_p[:, None] >= 1.0))
    pick = _inverse_cdf(np.cumsum(np.where(keep, e, 0.0), axis=1), u)
    pick = np.minimum(pick, keep.sum(axis=1) - 1)  # kept candidates are a prefix of the order
    return order[np.arange(len(order)), pick]
