"""Sampling: counter-based uniforms, parameter semantics, and row independence (batch invariance)."""

from __future__ import annotations

import numpy as np
import pytest

from service.sampling import _SMALL_BATCH, sample, uniforms

V = 50


def _params(n: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> tuple[np.ndarray, ...]:
    return (
        np.full(n, temperature, np.float64),
        np.full(n, top_k, np.int64),
        np.full(n, top_p, np.float64),
    )


def _logits(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, V)) * 2).astype(np.float32)


def test_uniforms_are_a_pure_function_of_seed_and_position() -> None:
    seeds = np.array([1, 1, 2, 2**64 - 1], np.uint64)
    positions = np.array([0, 1, 0, 5], np.uint64)
    u = uniforms(seeds, positions)
    assert np.all((u >= 0) & (u < 1))
    assert len(set(u.tolist())) == 4
    for i in range(4):
        assert uniforms(seeds[i : i + 1], positions[i : i + 1])[0] == u[i]
    # Batches below a threshold take a Python-integer path, larger ones numpy's: the same bits either way.
    edge = np.array([0, 1, 2**63, 2**64 - 1] * 4, np.uint64)
    at = np.array([0, 2**63, 2**64 - 2, 12345] * 4, np.uint64)[::-1].copy()
    batched = uniforms(edge, at)
    assert len(edge) >= _SMALL_BATCH
    assert [uniforms(edge[i : i + 1], at[i : i + 1])[0] for i in range(len(edge))] == batched.tolist()
    many = uniforms(np.full(20000, 7, np.uint64), np.arange(20000, dtype=np.uint64))
    assert abs(many.mean() - 0.5) < 0.01
    assert abs(np.histogram(many, bins=10, range=(0, 1))[0] / 20000 - 0.1).max() < 0.01


def test_greedy_top1_and_tiny_top_p_are_argmax() -> None:
    logits = _logits(32)
    seeds = np.arange(32, dtype=np.uint64)
    pos = np.zeros(32, np.uint64)
    argmax = logits.argmax(axis=1)
    assert np.array_equal(sample(logits, *_params(32, temperature=0.0), seeds, pos), argmax)
    assert np.array_equal(sample(logits, *_params(32, top_k=1), seeds, pos), argmax)
    assert np.array_equal(sample(logits, *_params(32, top_p=1e-6), seeds, pos), argmax)


def test_top_k_and_top_p_restrict_the_candidates() -> None:
    logits = np.tile(_logits(1), (4000, 1))
    seeds = np.full(4000, 3, np.uint64)
    pos = np.arange(4000, dtype=np.uint64)
    order = np.argsort(-logits[0])
    picked = sample(logits, *_params(4000, top_k=3), seeds, pos)
    assert set(picked.tolist()) == set(order[:3].tolist())
    p = np.exp(logits[0] - logits[0].max())
    p /= p.sum()
    nucleus = order[: int(np.searchsorted(np.cumsum(p[order]), 0.5) + 1)]
    picked = sample(logits, *_params(4000, top_p=0.5), seeds, pos)
    assert set(picked.tolist()) == set(nucleus.tolist())


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_frequencies_follow_the_softmax(temperature: float) -> None:
    n = 20000
    logits = np.tile(_logits(1, seed=4)[:, :8], (n, 1))
    picked = sample(
        logits, *_params(n, temperature=temperature), np.full(n, 9, np.uint64), np.arange(n, dtype=np.uint64)
    )
    z = logits[0].astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    freq = np.bincount(picked, minlength=8) / n
    assert np.abs(freq - p).max() < 0.02


def test_a_rows_pick_does_not_depend_on_its_neighbours() -> None:
    """Row r alone, and row r among 63 others with different parameters, gives the same id."""
    n = 64
    logits = _logits(n, seed=5)
    rng = np.random.default_rng(6)
    temperature = rng.choice([0.0, 0.5, 1.0, 1.7], n)
    top_k = rng.choice([0, 1, 5, 20], n)
    top_p = rng.choice([1.0, 0.9, 0.3], n)
    seeds = rng.integers(0, 2**63, n).astype(np.uint64)
    pos = rng.integers(0, 1000, n).astype(np.uint64)
    together = sample(logits, temperature, top_k, top_p, seeds, pos)
    for r in range(n):
        alone = sample(logits[r : r + 1], temperature[r : r + 1], top_k[r : r + 1], top_p[r : r + 1], seeds[r : r + 1],
                       pos[r : r + 1])  # fmt: skip
        assert alone[0] == together[r]
    perm = rng.permutation(n)
    shuffled = sample(logits[perm], temperature[perm], top_k[perm], top_p[perm], seeds[perm], pos[perm])
    assert np.array_equal(shuffled, together[perm])
