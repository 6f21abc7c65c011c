"""Sampling uncertainty of a cell's metrics over its test items.

A metric measured on ``n`` test items is an estimate; its standard error (SE) says how much it would move on
another draw of ``n`` items from the same distribution. Three estimators, from exact to general:

``binomial_se``
    An accuracy is a mean of 0/1 outcomes: ``sqrt(p (1 - p) / n)`` (e.g. 0.8 at n = 100 gives 0.04).
``mean_se``
    Any metric that is a mean of per-item values (NLL, Brier score, per-query AP, reciprocal rank, precision@k):
    ``sqrt(var / n)`` with the plug-in (``ddof=0``) variance, the same formula as the binomial one for 0/1 values.
``bootstrap_se``
    Metrics that are not per-item means (macro-F1, binned ECE, COCO AP): resample the items with replacement,
    recompute, take the standard deviation over resamples. Seeded, so a cell's SE is reproducible.

Tasks report them as ``se/<metric>`` next to ``<metric>`` (the task harness moves them into the sidecar's
``stderr``).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np

#: Bootstrap resamples for cheap statistics (vectorised counts); enough for two significant digits of an SE.
BOOTSTRAP_RESAMPLES = 200


def binomial_se(p: float, n: int) -> float:
    """Standard error ``sqrt(p (1 - p) / n)`` of a proportion ``p`` observed on ``n`` items (NaN when ``n`` is 0)."""
    if n <= 0 or not math.isfinite(p):
        return float("nan")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p={p!r} is not a proportion in [0, 1]")
    return math.sqrt(p * (1.0 - p) / n)


def mean_se(values: np.ndarray) -> float:
    """Standard error of the mean of per-item ``values``: ``sqrt(var / n)`` with the plug-in variance.

    NaN entries (items a metric leaves out, e.g. queries without positives) are dropped first; no items give NaN.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan")
    return float(np.sqrt(v.var() / v.size))


def difference_se(*standard_errors: float) -> float:
    """SE of a sum or difference of estimates from independent item sets: the root of the summed squares."""
    return float(math.sqrt(sum(se * se for se in standard_errors)))


def bootstrap_counts(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``(resamples, n)`` multiplicities of a seeded bootstrap: row ``r`` counts how often item ``i`` is drawn.

    Counts rather than index lists let a statistic written with weighted sums (``np.bincount(..., weights=)``)
    evaluate every resample without copying the data.
    """
    if n <= 0:
        raise ValueError(f"cannot bootstrap {n} items")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    counts = np.zeros((resamples, n), dtype=np.int64)
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1)
    return counts


def bootstrap_se(
    statistic: Callable[[np.ndarray], float | Mapping[str, float]],
    n: int,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> float | dict[str, float]:
    """Bootstrap standard error of ``statistic`` over ``n`` items.

    Parameters
    ----------
    statistic : callable
        Takes the multiplicity of each item ``(n,)`` (integers summing to ``n``; all ones is the observed sample)
        and returns a number or a dict of numbers.
    n : int
        Number of items.
    resamples : int
        Bootstrap draws.
    seed : int
        Seeds the draws (the same seed gives the same SE).

    Returns
    -------
    float or dict of str to float
        Standard deviation (``ddof=1``) of the statistic over the resamples, ignoring resamples where it is NaN;
        a dict when ``statistic`` returns one.
    """
    values = [statistic(row) for row in bootstrap_counts(n, resamples, seed)]
    if isinstance(values[0], Mapping):
        return {key: _nan_std([v[key] for v in values]) for key in values[0]}
    return _nan_std(values)


def _nan_std(values: list[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.std(ddof=1)) if v.size > 1 else float("nan")
