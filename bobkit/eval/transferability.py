"""Transferability estimators: rank backbones for a target dataset from frozen features alone.

Each scores how well a backbone's features (or its ImageNet head's predictions) suit a labelled target set without
training on it; higher is better for all of them.

- :func:`logme`: LogME, the log maximum evidence of a Bayesian linear model per class (one-vs-rest targets), by the
  fixed-point iteration of You et al., "Ranking and Tuning Pre-trained Models" (JMLR 2022, arXiv:2110.10545).
- :func:`leep`: LEEP (Nguyen et al., ICML 2020): the log expected empirical prediction of the source head's
  probabilities mapped to target labels through their empirical joint distribution.
- :func:`nce`: NCE (Tran et al., ICCV 2019): negative conditional entropy of target labels given the source head's
  hard predictions.
- :func:`h_score`: H-score (Bao et al., ICIP 2019): ``tr(cov(f)^+ cov(E[f | y]))``.
- :func:`knn_loo_accuracy`: leave-one-out k-nearest-neighbour accuracy under cosine similarity.

LogME, LEEP and NCE reproduce the authors' public implementation (thuml/LogME) to 1e-6 (``tests/test_transferability.py``).
"""

from __future__ import annotations

import numpy as np

_EVIDENCE_EPS = 1e-5
_FIXED_POINT_STEPS = 11


def _as_labels(labels: np.ndarray) -> np.ndarray:
    y = np.asarray(labels).reshape(-1)
    if y.size == 0 or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ValueError("labels must be a non-empty array of non-negative integers")
    return y.astype(np.int64)


def _spectrum(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """``s (k, 1)`` and ``vh (k, D)`` of the thin SVD of ``features`` (N, D), with ``k`` its numerical rank; the
    projection ``X = U^T Y`` of targets follows as ``(vh @ features.T @ Y) / s`` without forming ``U`` (N x k).

    For tall matrices the symmetric eigendecomposition of the D x D Gram matrix gives ``s**2`` and ``vh`` at a
    fraction of the cost of an SVD, but its eigenvalues carry rounding noise of about ``D * eps * s_max**2``: when
    some direction lies below that floor (dead channels: all-zero or nearly constant columns) the Gram matrix cannot
    resolve it and the features' own SVD is taken instead. (The authors' code takes the Gram route with an absolute
    ``s > 1e-10`` cut, which keeps noise directions of such features: its value then depends on rounding.) The rank
    keeps ``s > max(1e-10, s_max * max(N, D) * eps)``. Returns ``(s, vh, rank)``.
    """
    n, d = features.shape
    eps = np.finfo(np.float64).eps
    s = vh = None
    if n > d and features.any(axis=0).all():  # an all-zero column (a dead channel) goes straight to the SVD
        s2, v = np.linalg.eigh(features.T @ features)
        if s2[0] > s2[-1] * d * eps * 100:  # every direction resolved, with a margin over the rounding floor
            s, vh = np.sqrt(s2[::-1]), v[:, ::-1].T  # eigh sorts ascending; the SVD convention is descending
    if s is None:
        _, s, vh = np.linalg.svd(features, full_matrices=False)
    rank = int(np.sum(s > max(1e-10, (s[0] if s.size else 0.0) * max(n, d) * eps)))
    return s[:rank].reshape(-1, 1), vh[:rank], rank


def _class_evidence(x: np.ndarray, target_norm2: float, sigma: np.ndarray, n: int, d: int) -> float:
    """Maximum log evidence per sample of one target under the Bayesian linear model (fixed point), from the
    target's coordinates ``x = U^T y`` (k, 1) in the features' left singular basis and its squared norm."""
    x2 = x**2
    residual_outside = float(target_norm2 - x2.sum())  # the part of the target outside the features' span
    alpha = beta = 1.0
    for _ in range(_FIXED_POINT_STEPS):
        t = alpha / beta
        gamma = float((sigma / (sigma + t)).sum())
        m2 = float((sigma * x2 / (t + sigma) ** 2).sum())
        res2 = float((x2 / (1 + sigma / t) ** 2).sum()) + residual_outside
        alpha = gamma / (m2 + _EVIDENCE_EPS)
        beta = (n - gamma) / (res2 + _EVIDENCE_EPS)
        if abs(alpha / beta - t) / t <= 1e-3:
            break
    evidence = (d / 2.0 * np.log(alpha) + n / 2.0 * np.log(beta) - 0.5 * np.sum(np.log(alpha + beta * sigma))
                - beta / 2.0 * res2 - alpha / 2.0 * m2 - n / 2.0 * np.log(2 * np.pi))
    return float(evidence / n)


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of ``features`` (N, D) for integer ``labels`` (N,): the mean over classes of the per-sample log
    maximum evidence of a one-vs-rest Bayesian linear regression, features used as given (float64)."""
    f = np.asarray(features, dtype=np.float64)
    y = _as_labels(labels)
    n, d = f.shape
    s, vh, _ = _spectrum(f)
    sigma = s**2
    targets = np.eye(int(y.max()) + 1)[y]  # one-vs-rest indicator per class (N, C)
    coords = (vh @ (f.T @ targets)) / s  # U^T Y, every class at once
    norms2 = targets.sum(axis=0)  # an indicator's squared norm is its count
    return float(np.mean([_class_evidence(coords[:, [c]], float(norms2[c]), sigma, n, d)
                          for c in range(targets.shape[1])]))


def _joint(source: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Empirical joint distribution ``P(y, z)`` (C_t, C_s) from per-sample source weights ``source`` (N, C_s)."""
    n_target = int(labels.max()) + 1
    joint = np.zeros((n_target, source.shape[1]))
    np.add.at(joint, labels, source / len(labels))
    return joint


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP of the source head's class probabilities ``source_probs`` (N, C_s) for target ``labels`` (N,)."""
    probs = np.asarray(source_probs, dtype=np.float64)
    y = _as_labels(labels)
    joint = _joint(probs, y)
    marginal = joint.sum(axis=0, keepdims=True)
    target_given_source = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0).T  # (C_s, C_t)
    expected = probs @ target_given_source
    return float(np.mean(np.log(expected[np.arange(len(y)), y])))


def nce(source_labels: np.ndarray, labels: np.ndarray) -> float:
    """NCE of the source head's hard predictions ``source_labels`` (N,) for target ``labels`` (N,): the negative
    conditional entropy ``-H(Y | Z)`` of the empirical joint distribution (0 log 0 taken as 0)."""
    z = _as_labels(source_labels)
    y = _as_labels(labels)
    joint = _joint(np.eye(int(z.max()) + 1)[z], y)
    p_z = joint.sum(axis=0)
    seen = p_z > 0
    conditional = joint[:, seen] / p_z[seen]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(conditional > 0, conditional * np.log(conditional), 0.0)
    return float(np.sum(plogp.sum(axis=0) * p_z[seen]))


def h_score(features: np.ndarray, labels: np.ndarray) -> float:
    """H-score: ``tr(pinv(cov(f)) @ cov(g))`` where ``g`` replaces each feature by its class mean.

    ``cov(g) = M^T W M`` (class means ``M``, class weights ``W``), so the trace is a weighted sum of the class means'
    quadratic forms under the pseudo-inverse: one symmetric eigendecomposition of ``cov(f)`` (the pseudo-inverse
    of ``numpy.linalg.pinv(..., rcond=1e-10, hermitian=True)``), no D x D x D product.
    """
    f = np.asarray(features, dtype=np.float64)
    y = _as_labels(labels)
    f = f - f.mean(axis=0)
    class_means = np.zeros((int(y.max()) + 1, f.shape[1]))
    np.add.at(class_means, y, f)
    counts = np.bincount(y, minlength=len(class_means)).astype(np.float64)
    class_means = np.divide(class_means, counts[:, None], out=np.zeros_like(class_means), where=counts[:, None] > 0)
    denominator = max(len(f) - 1, 1)
    eigenvalues, vectors = np.linalg.eigh(f.T @ f / denominator)
    kept = np.abs(eigenvalues) > 1e-10 * np.abs(eigenvalues).max()
    projected = class_means @ vectors[:, kept]  # class means in the eigenbasis (C, k)
    quadratic = (projected**2 / eigenvalues[kept]).sum(axis=1)  # m_c^T pinv(cov f) m_c
    return float((counts / denominator * quadratic).sum())


def knn_loo_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 5, chunk: int = 2048) -> float:
    """Leave-one-out accuracy of a ``k``-nearest-neighbour vote under cosine similarity.

    Each item is classified by its ``k`` most similar other items; a tied vote goes to the class whose tied members
    are most similar in total. Memory stays at ``chunk`` x N similarities.
    """
    if k < 1:
        raise ValueError(f"k={k!r} must be a positive integer")
    f = np.asarray(features, dtype=np.float64)
    y = _as_labels(labels)
    n = len(y)
    if n < 2:
        raise ValueError("leave-one-out kNN needs at least two items")
    k = min(k, n - 1)
    f = f / np.clip(np.linalg.norm(f, axis=1, keepdims=True), 1e-12, None)
    n_classes = int(y.max()) + 1
    correct = 0
    for lo in range(0, n, chunk):
        sims = f[lo:lo + chunk] @ f.T
        rows = np.arange(sims.shape[0])
        sims[rows, lo + rows] = -np.inf  # leave the item itself out
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        votes = np.zeros((len(rows), n_classes))
        weights = np.zeros((len(rows), n_classes))
        np.add.at(votes, (rows[:, None], y[nearest]), 1.0)
        np.add.at(weights, (rows[:, None], y[nearest]), sims[rows[:, None], nearest])
        best = votes == votes.max(axis=1, keepdims=True)
        predicted = np.where(best, weights, -np.inf).argmax(axis=1)
        correct += int((predicted == y[lo:lo + chunk]).sum())
    return correct / n
