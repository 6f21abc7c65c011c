"""Retrieval and calibration metrics.

Retrieval
    Queries are ranked against a database by dot product of L2-normalised features. Every metric is computed from
    the ranked relevance of the full database (not a truncated list), query chunk by query chunk so memory stays
    bounded. Items marked *ignore* (the revisited protocol's junk) are removed from the ranking before anything is
    counted. Average precision comes in two flavours:

    - ``"trapezoid"`` (default): the revisited Oxford/Paris ``compute_ap`` (trapezoids under the PR curve), which
      the paper's retrieval code uses for every dataset;
    - ``"step"``: non-interpolated AP, the same number as ``sklearn.metrics.average_precision_score`` (and as
      ``torchmetrics``' ``retrieval_average_precision`` when all scores are positive: torchmetrics drops positives
      scored <= 0, and cosine similarities can be negative, so the ranking here is done directly).

    ``precision@k`` is hits in the top k divided by k; ``recall@k`` is hits in the top k divided by the number of
    positives (information-retrieval recall, the paper's definition, not the metric-learning "hit rate").

Calibration
    ECE with 15 equal-width confidence bins (torchmetrics), NLL, multiclass Brier score (scikit-learn, sum over
    classes, range [0, 2]) and temperature scaling fitted by minimising NLL on held-out logits.

The revisited Oxford/Paris ground truth (a pickle, verified and converted once) is read by
:mod:`bobkit.data.revisited`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_KS = (1, 5, 10)
AP_MODES = ("trapezoid", "step")
REVISITED_PROTOCOLS = ("easy", "medium", "hard")


# ----------------------------------------------------------------------------------------------------------------
# Retrieval
# ----------------------------------------------------------------------------------------------------------------


def l2_normalize(features: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm (all-zero rows stay zero) as a float32 tensor."""
    x = torch.as_tensor(np.asarray(features, dtype=np.float32) if not torch.is_tensor(features) else features)
    return F.normalize(x.float(), p=2, dim=1)


def rank_database(queries: torch.Tensor, database: torch.Tensor) -> torch.Tensor:
    """Database indices ``(Q, N)`` sorted by decreasing dot product; ties keep database order (stable sort)."""
    similarity = queries @ database.T
    return torch.sort(similarity, dim=1, descending=True, stable=True).indices


def ranked_metrics(
    relevant: np.ndarray,
    ignore: np.ndarray | None = None,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    ap: str = "trapezoid",
) -> dict[str, np.ndarray]:
    """Per-query metrics from ranked relevance.

    Parameters
    ----------
    relevant
        Boolean ``(Q, N)``: whether the item at rank ``j`` (0 = best) is a positive for query ``q``. Every item of
        the database must be ranked, so that a row's sum is the number of positives.
    ignore
        Boolean ``(Q, N)`` of items removed from the ranking before counting (junk); ``None`` for none.
    ks
        Cut-offs for ``precision@k`` and ``recall@k``.
    ap
        ``"trapezoid"`` (revisited Oxford/Paris ``compute_ap``) or ``"step"`` (non-interpolated AP).

    Returns
    -------
    dict
        Arrays of shape ``(Q,)``: ``ap``, ``rr``, ``precision@k``, ``recall@k`` and ``n_relevant``. A query without
        positives gets NaN everywhere (it is left out of the means, as in the revisited protocol).
    """
    if ap not in AP_MODES:
        raise ValueError(f"ap={ap!r} is not one of {AP_MODES}")
    relevant = np.asarray(relevant, dtype=bool)
    if relevant.ndim != 2:
        raise ValueError(f"relevant must be 2-D (queries, ranked items), got shape {relevant.shape}")
    keep = np.ones_like(relevant) if ignore is None else ~np.asarray(ignore, dtype=bool)
    positive = relevant & keep
    # 1-based rank of each item once the ignored items are taken out of the list.
    rank = np.cumsum(keep, axis=1)
    hits = np.cumsum(positive, axis=1)
    n_rel = positive.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if ap == "step":
            ap_sum = np.where(positive, hits / rank, 0.0).sum(axis=1)
        else:
            # j-th positive (0-based) at 0-based rank r: mean of precision before (j/r, 1 when r=0) and at it.
            r0 = rank - 1
            j = hits - 1
            p_before = np.where(r0 == 0, 1.0, j / np.maximum(r0, 1))
            p_at = hits / rank
            ap_sum = np.where(positive, (p_before + p_at) / 2.0, 0.0).sum(axis=1)
        first = np.where(positive.any(axis=1), rank[np.arange(len(rank)), positive.argmax(axis=1)], np.inf)
        out: dict[str, np.ndarray] = {
            "ap": ap_sum / n_rel,
            "rr": 1.0 / first,
            "n_relevant": n_rel.astype(float),
        }
        for k in ks:
            in_top = (positive & (rank <= k)).sum(axis=1)
            out[f"precision@{k}"] = in_top / float(k)
            out[f"recall@{k}"] = in_top / n_rel
    empty = n_rel == 0
    for name, values in out.items():
        if name != "n_relevant":
            values[empty] = np.nan
    return out


def _summarise(per_query: list[dict[str, np.ndarray]], ks: Sequence[int]) -> dict[str, float]:
    """Mean over queries with at least one positive; names ``map``, ``mrr``, ``precision@k``, ``recall@k``."""
    cat = {name: np.concatenate([chunk[name] for chunk in per_query]) for name in per_query[0]}
    valid = cat["n_relevant"] > 0
    if not valid.any():
        raise ValueError("no query has a positive in the database; retrieval metrics are undefined")
    metrics = {"map": float(cat["ap"][valid].mean()), "mrr": float(cat["rr"][valid].mean())}
    for k in ks:
        metrics[f"precision@{k}"] = float(cat[f"precision@{k}"][valid].mean())
        metrics[f"recall@{k}"] = float(cat[f"recall@{k}"][valid].mean())
    metrics["n_queries"] = float(valid.sum())
    return metrics


def _chunks(n: int, n_database: int, budget: int = 1 << 22) -> Iterable[slice]:
    """Query slices whose ``(chunk, N)`` rank matrix stays under ``budget`` entries."""
    step = max(1, budget // max(1, n_database))
    for lo in range(0, n, step):
        yield slice(lo, min(n, lo + step))


def class_retrieval_metrics(
    query_features: np.ndarray,
    query_labels: np.ndarray,
    database_features: np.ndarray,
    database_labels: np.ndarray,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    ap: str = "trapezoid",
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Class-folder retrieval: a database item is a positive when it shares the query's label.

    Features are L2-normalised and ranked by dot product (cosine similarity). Returns ``map``, ``mrr``,
    ``precision@k``, ``recall@k`` (means over queries with a positive) and ``n_queries``.
    """
    q = l2_normalize(query_features).to(device)
    db = l2_normalize(database_features).to(device)
    db_labels = torch.as_tensor(np.asarray(database_labels), device=device)
    q_labels = torch.as_tensor(np.asarray(query_labels), device=device)
    per_query = []
    for sl in _chunks(len(q), len(db)):
        order = rank_database(q[sl], db)
        relevant = (db_labels[order] == q_labels[sl, None]).cpu().numpy()
        per_query.append(ranked_metrics(relevant, ks=ks, ap=ap))
    return _summarise(per_query, ks)


def revisited_positives(gnd: dict[str, Any], protocol: str = "medium") -> tuple[np.ndarray, np.ndarray]:
    """Positive and ignored database indices of one revisited query under ``protocol``.

    easy: easy positives, hard + junk ignored; medium: easy + hard positives, junk ignored (the paper's choice);
    hard: hard positives, easy + junk ignored.
    """
    if protocol not in REVISITED_PROTOCOLS:
        raise ValueError(f"protocol={protocol!r} is not one of {REVISITED_PROTOCOLS}")
    easy, hard, junk = (np.asarray(gnd.get(k, []), dtype=np.int64) for k in ("easy", "hard", "junk"))
    if protocol == "easy":
        return easy, np.concatenate([junk, hard])
    if protocol == "medium":
        return np.concatenate([easy, hard]), junk
    return hard, np.concatenate([junk, easy])


def revisited_retrieval_metrics(
    query_features: np.ndarray,
    database_features: np.ndarray,
    gnd: Sequence[dict[str, Any]],
    *,
    protocol: str = "medium",
    ks: Sequence[int] = DEFAULT_KS,
    ap: str = "trapezoid",
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Revisited Oxford/Paris retrieval: per-query positives and junk from ``gnd`` (junk removed before counting)."""
    if len(gnd) != len(query_features):
        raise ValueError(f"{len(query_features)} query features but {len(gnd)} ground-truth entries")
    q = l2_normalize(query_features).to(device)
    db = l2_normalize(database_features).to(device)
    n_db = len(db)
    per_query = []
    for sl in _chunks(len(q), n_db):
        order = rank_database(q[sl], db).cpu().numpy()
        rows = range(sl.start, sl.stop)
        positive_mask = np.zeros((len(rows), n_db), dtype=bool)
        ignore_mask = np.zeros((len(rows), n_db), dtype=bool)
        for i, qi in enumerate(rows):
            pos, ign = revisited_positives(gnd[qi], protocol)
            positive_mask[i, pos] = True
            ignore_mask[i, ign] = True
        rank_rows = np.arange(len(rows))[:, None]
        per_query.append(
            ranked_metrics(positive_mask[rank_rows, order], ignore_mask[rank_rows, order], ks=ks, ap=ap)
        )
    return _summarise(per_query, ks)


# ----------------------------------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------------------------------


def softmax(logits: np.ndarray | torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities of ``logits / temperature`` (float64)."""
    x = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    return torch.softmax(x / temperature, dim=1).numpy()


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (nats) of ``labels`` under ``softmax(logits / temperature)``."""
    x = torch.as_tensor(np.asarray(logits), dtype=torch.float64) / temperature
    return float(F.cross_entropy(x, torch.as_tensor(np.asarray(labels), dtype=torch.long)))


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multiclass Brier score: mean over samples of ``sum_c (p_c - 1[y = c])^2`` (0 perfect, 2 worst)."""
    from sklearn.metrics import brier_score_loss

    probs = np.asarray(probs, dtype=np.float64)
    return float(brier_score_loss(np.asarray(labels), probs, labels=np.arange(probs.shape[1]), scale_by_half=False))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with ``n_bins`` equal-width confidence bins (torchmetrics' ``multiclass_calibration_error``)."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    p = torch.as_tensor(np.asarray(probs), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    return float(multiclass_calibration_error(p, y, num_classes=p.shape[1], n_bins=n_bins, norm="l1"))


@dataclass
class ReliabilityBins:
    """Per-bin counts, mean confidence and accuracy of a reliability diagram (empty bins hold NaN)."""

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error from these bins."""
        filled = self.counts > 0
        gap = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float((gap * self.counts[filled]).sum() / self.counts.sum())


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> ReliabilityBins:
    """Top-label confidence binned into ``n_bins`` equal-width bins ``(lo, hi]`` (as torchmetrics bins them)."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=confidence, minlength=n_bins) / counts
        mean_acc = np.bincount(idx, weights=correct.astype(float), minlength=n_bins) / counts
    return ReliabilityBins(edges, counts, mean_conf, mean_acc)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, bounds: tuple[float, float] = (0.01, 100.0)) -> float:
    """Temperature ``T`` minimising held-out NLL of ``softmax(logits / T)``.

    NLL is convex in the inverse temperature, so a bounded Brent search over ``1/T`` finds the global minimum.
    """
    from scipy.optimize import minimize_scalar

    x = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    lo, hi = 1.0 / bounds[1], 1.0 / bounds[0]
    result = minimize_scalar(lambda s: float(F.cross_entropy(x * s, y)), bounds=(lo, hi), method="bounded",
                             options={"xatol": 1e-6})
    return float(1.0 / result.x)


def calibration_metrics(logits: np.ndarray, labels: np.ndarray, *, temperature: float = 1.0,
                        n_bins: int = 15) -> dict[str, float]:
    """``ece``, ``nll``, ``brier`` (and ``acc``) of ``softmax(logits / temperature)``."""
    probs = softmax(logits, temperature)
    labels = np.asarray(labels)
    return {
        "acc": float((probs.argmax(1) == labels).mean()),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "nll": nll(logits, labels, temperature),
        "brier": brier_score(probs, labels),
    }
