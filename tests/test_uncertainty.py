"""Sampling standard errors: exact formulas against hand-computed values, the bootstrap against them."""

from __future__ import annotations

import numpy as np
import pytest

from bobkit.eval.uncertainty import binomial_se, bootstrap_counts, bootstrap_se, difference_se, mean_se


def test_binomial_se_by_hand():
    assert binomial_se(0.8, 100) == pytest.approx(0.04)
    assert binomial_se(0.5, 400) == pytest.approx(0.025)
    assert binomial_se(1.0, 50) == 0.0
    assert np.isnan(binomial_se(0.5, 0))
    with pytest.raises(ValueError, match="1.2"):
        binomial_se(1.2, 10)


def test_mean_se_is_the_binomial_one_for_zero_one_items_and_drops_nan():
    outcomes = np.array([1.0] * 80 + [0.0] * 20)
    assert mean_se(outcomes) == pytest.approx(0.04)
    assert mean_se(np.array([1.0, 3.0, np.nan])) == pytest.approx(1.0 / np.sqrt(2))  # sd 1, n 2
    assert np.isnan(mean_se(np.array([np.nan])))


def test_bootstrap_se_of_an_accuracy_converges_to_the_binomial_se():
    outcomes = np.array([1.0] * 80 + [0.0] * 20)

    def accuracy(counts: np.ndarray) -> float:
        return float((counts * outcomes).sum() / counts.sum())

    se = bootstrap_se(accuracy, 100, resamples=4000, seed=0)
    assert se == pytest.approx(0.04, abs=0.002)
    assert bootstrap_se(accuracy, 100, resamples=4000, seed=0) == se  # seeded
    both = bootstrap_se(lambda c: {"acc": accuracy(c), "err": 1 - accuracy(c)}, 100, resamples=500, seed=1)
    assert both["acc"] == pytest.approx(both["err"])


def test_bootstrap_counts_are_resamples_of_n():
    counts = bootstrap_counts(30, resamples=50, seed=2)
    assert counts.shape == (50, 30) and (counts.sum(1) == 30).all() and counts.min() >= 0
    assert not np.array_equal(counts, bootstrap_counts(30, resamples=50, seed=3))


def test_difference_se_adds_variances():
    assert difference_se(0.03, 0.04) == pytest.approx(0.05)
