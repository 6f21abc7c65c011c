"""How well one ranking of backbones agrees with another: Kendall's tau-b, weighted Kendall's tau, Spearman's rho,
the top-1 hit and the regret, for one sample (:func:`rank_stats`) or many bootstrap samples at once
(:func:`rank_stats_batch`).

The correlations equal scipy's (:func:`scipy.stats.kendalltau`, :func:`scipy.stats.weightedtau` with its defaults,
:func:`scipy.stats.spearmanr`), ties and repeated backbones included (``tests/test_transferability_analysis.py``),
without scipy's per-call overhead: a bootstrap computes thousands of them. A bootstrap sample is written as copy
counts per backbone, so all replicates are one array computation.
"""

from __future__ import annotations

import numpy as np

#: The statistics, in the order the arrays hold them. Higher is closer agreement, except ``regret`` (the measured
#: value given up by taking the predictor's best backbone; 0 when it is the measured best).
STATS: tuple[str, ...] = ("kendall", "weighted_kendall", "spearman", "top1_hit", "regret")

def _signs(values: np.ndarray) -> np.ndarray:
    """``sign(v_i - v_j)`` for every pair (n x n)."""
    return np.sign(values[:, None] - values[None, :])


def _cosine(sx: np.ndarray, sy: np.ndarray, weights: np.ndarray | float = 1.0) -> float:
    """``<sx, sy>_w / sqrt(<sx, sx>_w <sy, sy>_w)`` over pairs: Kendall's tau-b, weighted when ``weights`` vary."""
    norm = np.sqrt(float((weights * np.abs(sx)).sum()) * float((weights * np.abs(sy)).sum()))
    return float((weights * sx * sy).sum() / norm) if norm > 0 else np.nan


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b (pairs tied in a ranking left out of its norm), as :func:`scipy.stats.kendalltau`."""
    return _cosine(_signs(np.asarray(x, float)), _signs(np.asarray(y, float)))


def _hyperbolic_weights(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pair weights ``1/(r_i + 1) + 1/(r_j + 1)``, ``r`` the rank in decreasing lexicographic order of (x, y)
    (exact ties ordered as :func:`scipy.stats.weightedtau` orders them)."""
    rank = np.empty(len(x), dtype=float)
    rank[np.lexsort((y, x))[::-1]] = np.arange(len(x))
    w = 1.0 / (rank + 1.0)
    return w[:, None] + w[None, :]


def weighted_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Vigna's additive hyperbolic weighted tau, averaged over the rankings by (x, y) and by (y, x): the value of
    :func:`scipy.stats.weightedtau` with its defaults, without its per-call overhead."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    sx, sy = _signs(x), _signs(y)
    return 0.5 * (_cosine(sx, sy, _hyperbolic_weights(x, y)) + _cosine(sx, sy, _hyperbolic_weights(y, x)))


def _average_ranks(signs: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties averaged, from the pair signs of the values."""
    return (signs > 0).sum(axis=1) + ((signs == 0).sum(axis=1) + 1) / 2.0


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt(float((a**2).sum()) * float((b**2).sum()))
    return float((a * b).sum() / norm) if norm > 0 else np.nan


def spearman_rho(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho (Pearson correlation of the tie-averaged ranks), as :func:`scipy.stats.spearmanr`."""
    return _pearson(_average_ranks(_signs(np.asarray(x, float))), _average_ranks(_signs(np.asarray(y, float))))


def rank_stats(measured: np.ndarray, predicted: np.ndarray, ids: np.ndarray | None = None,
               min_backbones: int = 3) -> np.ndarray:
    """:data:`STATS` of ``predicted`` against ``measured`` (both higher-is-better) over a sample of backbones
    (``ids`` name them: a bootstrap sample repeats some). NaN when fewer than ``min_backbones`` distinct ones."""
    m, p = np.asarray(measured, float), np.asarray(predicted, float)
    ids = np.arange(len(m)) if ids is None else np.asarray(ids)
    distinct, first = np.unique(ids, return_index=True)
    if distinct.size < max(min_backbones, 2):
        return np.full(len(STATS), np.nan)
    sm, sp = _signs(m), _signs(p)
    weighted = 0.5 * (_cosine(sm, sp, _hyperbolic_weights(m, p)) + _cosine(sm, sp, _hyperbolic_weights(p, m)))
    top = first[p[first] == p.max()]  # the predictor's best backbone(s), one item each
    hit = float(np.mean(m[top] == m.max()))  # ties split the credit
    return np.array([_cosine(sm, sp), weighted, _pearson(_average_ranks(sm), _average_ranks(sp)), hit,
                     float(m.max() - m[top].mean())])


def _harmonic(n: int) -> np.ndarray:
    """``H[k] = 1 + 1/2 + ... + 1/k`` for k = 0..n."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1))])


def _copy_weights(first: np.ndarray, second: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Hyperbolic pair weights of a sample holding ``counts`` copies of each backbone (R x n x n): the sum, over
    copies, of ``1/(r_a + 1) + 1/(r_b + 1)`` with copies ranked in decreasing lexicographic order of (first,
    second): ``c_j H_i + c_i H_j``, ``H_i`` the harmonic weight of backbone i's consecutive ranks."""
    order = np.lexsort((second, first), axis=-1)[:, ::-1]
    c_sorted = np.take_along_axis(counts, order, axis=1)
    start = np.cumsum(c_sorted, axis=1) - c_sorted
    harmonic = _harmonic(int(counts.sum(axis=1).max()))
    h_sorted = harmonic[(start + c_sorted).astype(int)] - harmonic[start.astype(int)]
    h = np.empty_like(h_sorted)
    np.put_along_axis(h, order, h_sorted, axis=1)
    return counts[:, None, :] * h[:, :, None] + counts[:, :, None] * h[:, None, :]


def _batch_cosine(sx: np.ndarray, sy: np.ndarray, weights: np.ndarray) -> np.ndarray:
    num = (weights * sx * sy).sum(axis=(1, 2))
    norm = np.sqrt((weights * np.abs(sx)).sum(axis=(1, 2)) * (weights * np.abs(sy)).sum(axis=(1, 2)))
    return np.where(norm > 0, num / np.where(norm > 0, norm, 1.0), np.nan)


def _batch_pearson(a: np.ndarray, b: np.ndarray, weights: np.ndarray) -> np.ndarray:
    total = weights.sum(axis=1, keepdims=True)
    a = a - (weights * a).sum(axis=1, keepdims=True) / total
    b = b - (weights * b).sum(axis=1, keepdims=True) / total
    norm = np.sqrt((weights * a**2).sum(axis=1) * (weights * b**2).sum(axis=1))
    return np.where(norm > 0, (weights * a * b).sum(axis=1) / np.where(norm > 0, norm, 1.0), np.nan)


def rank_stats_batch(measured: np.ndarray, predicted: np.ndarray, counts: np.ndarray,
                     min_backbones: int = 3) -> np.ndarray:
    """:func:`rank_stats` of many bootstrap samples at once: ``counts`` (R x n) copies of each of n backbones per
    sample, ``measured`` (R x n) and ``predicted`` (n or R x n) their values. Returns R x :data:`STATS`; equal to
    :func:`rank_stats` of each sample written out copy by copy (``tests/test_transferability_analysis.py``)."""
    c = np.asarray(counts, float)
    m = np.broadcast_to(np.asarray(measured, float), c.shape)
    p = np.broadcast_to(np.asarray(predicted, float), c.shape)
    present = c > 0
    sm = np.sign(m[:, :, None] - m[:, None, :])
    sp = np.sign(p[:, :, None] - p[:, None, :])
    pairs = c[:, :, None] * c[:, None, :]
    weighted = 0.5 * (_batch_cosine(sm, sp, _copy_weights(m, p, c)) + _batch_cosine(sm, sp, _copy_weights(p, m, c)))
    ranks_m = ((sm > 0) * c[:, None, :]).sum(axis=2) + (((sm == 0) * c[:, None, :]).sum(axis=2) + 1) / 2
    ranks_p = ((sp > 0) * c[:, None, :]).sum(axis=2) + (((sp == 0) * c[:, None, :]).sum(axis=2) + 1) / 2
    best_m = np.where(present, m, -np.inf).max(axis=1, keepdims=True)
    top = present & (p == np.where(present, p, -np.inf).max(axis=1, keepdims=True))
    n_top = top.sum(axis=1)
    hit = (top & (m == best_m)).sum(axis=1) / n_top
    regret = best_m[:, 0] - np.where(top, m, 0.0).sum(axis=1) / n_top
    out = np.stack([_batch_cosine(sm, sp, pairs), weighted, _batch_pearson(ranks_m, ranks_p, c), hit, regret],
                   axis=1)
    out[present.sum(axis=1) < max(min_backbones, 2)] = np.nan
    return out
