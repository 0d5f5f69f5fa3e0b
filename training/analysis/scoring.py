"""Score units against features: ROC-AUC (binary features) and correlation (continuous ones).

The best unit is *selected* on the first half of the text and *reported* on the second,
so its score is not inflated by picking the maximum of many units on the same data.
Two controls run the same procedure on labels with no relation to the text: shuffled
(independent characters) and circularly shifted (keeps the labels' runs and rhythm).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from training.analysis.features import Feature


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank (what ROC-AUC needs)."""
    order = np.argsort(x, kind="mergesort")
    inverse = np.empty(order.size, dtype=np.int64)
    inverse[order] = np.arange(order.size)
    sorted_x = x[order]
    new_value = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    dense = np.cumsum(new_value)[inverse]
    bounds = np.r_[np.nonzero(new_value)[0], new_value.size]
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def rank_columns(acts: np.ndarray) -> np.ndarray:
    return np.stack([average_ranks(acts[:, u]) for u in range(acts.shape[1])], axis=1)


def auc_from_ranks(ranks: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """ROC-AUC of every column (Mann-Whitney U / (n_pos n_neg)); 0.5 where a class is empty."""
    labels = labels.astype(bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return np.full(ranks.shape[1], 0.5)
    return (ranks[labels].sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def correlations(acts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Pearson r of every column with `values`; 0 for constant columns."""
    a = acts - acts.mean(axis=0)
    v = values - values.mean()
    denom = np.sqrt((a * a).sum(axis=0) * (v * v).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * v[:, None]).sum(axis=0) / denom
    return np.nan_to_num(r)


@dataclass(frozen=True)
class FeatureScore:
    feature: str
    description: str
    metric: str  # "auc" or "r"
    unit: str  # the unit selected on the first half
    sign: int  # -1 when the unit tracks the feature by going negative (AUC of -activation)
    selection: float  # its score on the first half (signed so that higher is better)
    heldout: float  # its score on the second half: the number to report
    control_shuffled: float  # the same procedure on shuffled labels
    control_shifted: float  # ... on circularly shifted labels
    positives: float  # fraction of characters with the feature (binary) or its mean
    top: list[tuple[str, float]] = field(default_factory=list)  # the best units on the first half


class UnitScorer:
    """Ranks activations once per half, then scores any number of features against them."""

    def __init__(self, acts: np.ndarray, unit_ids: list[str], seed: int = 0):
        half = acts.shape[0] // 2
        self.halves = (acts[:half], acts[half:])
        self.split = half
        self.unit_ids = unit_ids
        self.rng = np.random.default_rng(seed)
        self._ranks: tuple[np.ndarray, np.ndarray] | None = None

    def _score(self, half: int, values: np.ndarray, binary: bool) -> np.ndarray:
        """Score of every unit, centred so that 0 means "no relation" (AUC - 0.5 or r)."""
        if binary:
            if self._ranks is None:
                self._ranks = (rank_columns(self.halves[0]), rank_columns(self.halves[1]))
            return auc_from_ranks(self._ranks[half], values) - 0.5
        return correlations(self.halves[half], values.astype(np.float64))

    def _select_and_report(
        self, a: np.ndarray, b: np.ndarray, binary: bool
    ) -> tuple[int, int, float, float, np.ndarray]:
        first = self._score(0, a, binary)
        best = int(np.argmax(np.abs(first)))
        sign = 1 if first[best] >= 0 else -1
        second = self._score(1, b, binary)[best] * sign
        return best, sign, float(abs(first[best])), float(second), first

    def score(self, feature: Feature, top: int = 5) -> FeatureScore:
        values = feature.values
        a, b = values[: self.split], values[self.split :]
        best, sign, sel, held, first = self._select_and_report(a, b, feature.binary)
        shuffled = self._select_and_report(self.rng.permutation(a), self.rng.permutation(b), feature.binary)[3]
        shifted = self._select_and_report(np.roll(a, a.size // 3), np.roll(b, b.size // 3), feature.binary)[3]
        offset = 0.5 if feature.binary else 0.0
        order = np.argsort(-np.abs(first), kind="stable")[:top]
        return FeatureScore(
            feature=feature.name,
            description=feature.description,
            metric="auc" if feature.binary else "r",
            unit=self.unit_ids[best],
            sign=sign,
            selection=round(sel + offset, 4),
            heldout=round(held + offset, 4),
            control_shuffled=round(shuffled + offset, 4),
            control_shifted=round(shifted + offset, 4),
            positives=round(float(values.mean()), 4),
            top=[(self.unit_ids[u], round(float(abs(first[u])) + offset, 4)) for u in order],
        )
