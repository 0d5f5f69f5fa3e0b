"""ROC-AUC, correlation, held-out selection and the controls behave as their definitions say."""

from __future__ import annotations

import itertools

import numpy as np

from training.analysis.features import Feature
from training.analysis.scoring import UnitScorer, auc_from_ranks, average_ranks, correlations, rank_columns


def _pairwise_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels], scores[~labels]
    wins = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)]
    return float(np.mean(wins))


def test_auc_matches_the_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    acts = rng.integers(0, 4, size=(60, 3)).astype(np.float64)  # many ties
    labels = rng.random(60) < 0.4
    aucs = auc_from_ranks(rank_columns(acts), labels)
    for u in range(3):
        assert abs(aucs[u] - _pairwise_auc(acts[:, u], labels)) < 1e-12


def test_average_ranks_share_ties() -> None:
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_correlation() -> None:
    x = np.arange(10.0)
    acts = np.stack([x, -2 * x + 1, np.ones(10)], axis=1)
    np.testing.assert_allclose(correlations(acts, x), [1.0, -1.0, 0.0], atol=1e-12)


def test_a_planted_unit_is_found_with_its_sign_and_the_controls_stay_near_chance() -> None:
    rng = np.random.default_rng(1)
    n = 4000
    labels = np.repeat(rng.random(n // 20) < 0.3, 20)  # runs, like string literals
    acts = rng.standard_normal((n, 50))
    acts[:, 17] = -labels.astype(np.float64) + 0.3 * rng.standard_normal(n)  # goes negative inside the feature
    scorer = UnitScorer(acts, [f"h0:{u}" for u in range(50)])
    score = scorer.score(Feature("in_string", labels, True, "planted"))
    assert score.unit == "h0:17" and score.sign == -1
    assert score.heldout > 0.95
    assert abs(score.control_shuffled - 0.5) < 0.05
    assert score.top[0][0] == "h0:17"


def test_continuous_feature_uses_correlation() -> None:
    rng = np.random.default_rng(2)
    column = np.tile(np.arange(40.0), 50)
    acts = rng.standard_normal((column.size, 10))
    acts[:, 3] = column / 40 + 0.1 * rng.standard_normal(column.size)
    score = UnitScorer(acts, [f"c1:{u}" for u in range(10)]).score(Feature("column", column, False, "planted"))
    assert score.metric == "r" and score.unit == "c1:3" and score.sign == 1
    assert score.heldout > 0.9 and abs(score.control_shuffled) < 0.1
