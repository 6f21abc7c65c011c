"""Retrieval, calibration and classification metrics.

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
    ``mp@k`` (revisited Oxford/Paris) is the revisitop code's "mP@k": hits in the top ``min(k, rank of the last
    positive)`` divided by that number, so a query with fewer than k positives can still score 1.
    Every mean over queries comes with its standard error over the queries (``se/<metric>``).

Calibration
    The textbook ECE (Guo et al. 2017): top-label confidence in float64, ``n_bins`` equal-width bins ``(lo, hi]``
    with the first closed at 0 and the last closed at 1, so a confidence of 1.0 falls in the last bin (torchmetrics
    casts to float32 and counts 1.0 in a hidden extra bin); the reliability diagram is drawn from the same bins.
    NLL, multiclass Brier score (sum over classes, range [0, 2], scikit-learn's definition) and temperature scaling
    fitted by minimising NLL on held-out logits, within :data:`TEMPERATURE_BOUNDS` and only where the held-out split
    supports it (:func:`calibrate_temperature` falls back to T = 1 and says why). Standard errors: per-item means
    for NLL and Brier, binomial for accuracy, a seeded bootstrap over items for ECE.

The revisited Oxford/Paris ground truth (a pickle, verified and converted once) is read by
:mod:`bobkit.data.revisited`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bobkit.eval.uncertainty import binomial_se, bootstrap_se, mean_se

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
        Arrays of shape ``(Q,)``: ``ap``, ``rr``, ``precision@k``, ``recall@k``, ``mp@k`` and ``n_relevant``. A
        query without positives gets NaN everywhere (it is left out of the means, as in the revisited protocol).
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
        rows = np.arange(len(rank))
        first = np.where(positive.any(axis=1), rank[rows, positive.argmax(axis=1)], np.inf)
        # 1-based rank of the last positive (revisitop's max(pos) + 1), for mP@k
        last = np.where(positive.any(axis=1), rank[rows, positive.shape[1] - 1 - positive[:, ::-1].argmax(axis=1)], 1)
        out: dict[str, np.ndarray] = {
            "ap": ap_sum / n_rel,
            "rr": 1.0 / first,
            "n_relevant": n_rel.astype(float),
        }
        for k in ks:
            in_top = (positive & (rank <= k)).sum(axis=1)
            out[f"precision@{k}"] = in_top / float(k)
            out[f"recall@{k}"] = in_top / n_rel
            k_eff = np.minimum(last, k)
            out[f"mp@{k}"] = (positive & (rank <= k_eff[:, None])).sum(axis=1) / k_eff
    empty = n_rel == 0
    for name, values in out.items():
        if name != "n_relevant":
            values[empty] = np.nan
    return out


def _summarise(per_query: list[dict[str, np.ndarray]], ks: Sequence[int], *, mp: bool = False) -> dict[str, float]:
    """Mean over queries with at least one positive, and its standard error over those queries (``se/<name>``);
    names ``map``, ``mrr``, ``precision@k``, ``recall@k`` (and ``mp@k`` with ``mp``), plus ``n_queries``."""
    cat = {name: np.concatenate([chunk[name] for chunk in per_query]) for name in per_query[0]}
    valid = cat["n_relevant"] > 0
    if not valid.any():
        raise ValueError("no query has a positive in the database; retrieval metrics are undefined")
    columns = {"map": "ap", "mrr": "rr"}
    for k in ks:
        columns.update({f"precision@{k}": f"precision@{k}", f"recall@{k}": f"recall@{k}"})
        if mp:
            columns[f"mp@{k}"] = f"mp@{k}"
    metrics = {name: float(cat[column][valid].mean()) for name, column in columns.items()}
    metrics.update({f"se/{name}": mean_se(cat[column][valid]) for name, column in columns.items()})
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
    ``precision@k``, ``recall@k`` (means over queries with a positive), their standard errors ``se/<metric>`` over
    the queries (the database is held fixed) and ``n_queries``.
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


def _ground_truth_metrics(
    query_features: np.ndarray,
    database_features: np.ndarray,
    judged: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    ks: Sequence[int],
    ap: str,
    device: str | torch.device,
    mp: bool,
) -> dict[str, float]:
    """Retrieval metrics from ``(positive, ignored)`` database positions per query (see :func:`ranked_metrics`)."""
    if len(judged) != len(query_features):
        raise ValueError(f"{len(query_features)} query features but {len(judged)} ground-truth entries")
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
            pos, ign = judged[qi]
            positive_mask[i, pos] = True
            ignore_mask[i, ign] = True
        rank_rows = np.arange(len(rows))[:, None]
        per_query.append(
            ranked_metrics(positive_mask[rank_rows, order], ignore_mask[rank_rows, order], ks=ks, ap=ap)
        )
    return _summarise(per_query, ks, mp=mp)


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
    """Revisited Oxford/Paris retrieval: per-query positives and junk from ``gnd`` (junk removed before counting).

    Returns the class-folder metrics plus ``mp@k`` (the community's mP@k, see the module docstring)."""
    if len(gnd) != len(query_features):
        raise ValueError(f"{len(query_features)} query features but {len(gnd)} ground-truth entries")
    judged = [revisited_positives(g, protocol) for g in gnd]
    return _ground_truth_metrics(query_features, database_features, judged, ks=ks, ap=ap, device=device, mp=True)


def listed_retrieval_metrics(
    query_features: np.ndarray,
    database_features: np.ndarray,
    positives: Sequence[np.ndarray],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    ap: str = "trapezoid",
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Retrieval against listed ground truth (Google Landmarks v2, Copydays): ``positives[q]`` holds the database
    positions of query ``q``'s positives; nothing is ignored. Returns the class-folder metrics."""
    empty = np.zeros(0, dtype=np.int64)
    judged = [(np.asarray(p, dtype=np.int64), empty) for p in positives]
    return _ground_truth_metrics(query_features, database_features, judged, ks=ks, ap=ap, device=device, mp=False)


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
    return float(_item_brier(probs, labels).mean())


def _item_brier(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample ``sum_c (p_c - 1[y = c])^2`` in float64."""
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(probs.shape[1])[np.asarray(labels)]
    return ((probs - onehot) ** 2).sum(axis=1)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Textbook top-label ECE over ``n_bins`` equal-width bins, in float64 (:func:`reliability_bins`).

    ``sum_b |acc_b - conf_b| * n_b / n``; a confidence of exactly 1.0 counts in the last bin.
    """
    return reliability_bins(probs, labels, n_bins).ece


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


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15,
                     weights: np.ndarray | None = None) -> ReliabilityBins:
    """Top-label confidence (float64) binned into ``n_bins`` equal-width bins ``(lo, hi]``, the first closed at 0.

    ``weights`` counts each sample that many times (a bootstrap resample's multiplicities); default once each.
    """
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    w = np.ones(len(confidence)) if weights is None else np.asarray(weights, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, weights=w, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=w * confidence, minlength=n_bins) / counts
        mean_acc = np.bincount(idx, weights=w * correct, minlength=n_bins) / counts
    return ReliabilityBins(edges, counts, mean_conf, mean_acc)


#: Range of a fitted temperature. Outside it temperature scaling no longer rescales confidence, it replaces it: at
#: T = 0.05 a logit gap of 0.5 becomes a probability ratio of e^10, so every confidence is 1.0, and at T = 20 every
#: prediction is near uniform. A fit that reaches a bound has no interior optimum (a held-out split the model gets
#: all right or all wrong) and is not used (:func:`calibrate_temperature`).
TEMPERATURE_BOUNDS: tuple[float, float] = (0.05, 20.0)
#: Fewest held-out items a temperature is fitted on; with fewer, T = 1 is kept (one free parameter estimated from a
#: few dozen items mostly fits their noise).
MIN_CALIBRATION_ITEMS = 100


class TemperatureFallback(enum.IntEnum):
    """Why temperature scaling kept T = 1 (recorded by the robustness task as ``fallback_temperature``)."""

    NONE = 0  #: the fitted temperature is used
    TOO_FEW_ITEMS = 1  #: fewer than :data:`MIN_CALIBRATION_ITEMS` held-out items
    AT_BOUND = 2  #: the NLL fit ran into a bound of :data:`TEMPERATURE_BOUNDS` (no interior optimum)
    NLL_WORSE = 3  #: fitted on one half of the held-out items, the temperature raised NLL on the other half


@dataclass(frozen=True)
class TemperatureFit:
    """The temperature to use and how it was decided (:func:`calibrate_temperature`)."""

    temperature: float  #: the temperature to apply (1.0 after a fallback)
    fitted: float  #: what the NLL fit on all held-out items found (NaN when not fitted)
    fallback: TemperatureFallback
    n_items: int  #: held-out items
    nll_at_one: float = float("nan")  #: held-out NLL at T = 1 (both halves)
    cross_fitted_nll: float = float("nan")  #: held-out NLL of each half at the temperature fitted on the other

    @property
    def reason(self) -> str:
        """The fallback in words (empty when the fitted temperature is used)."""
        return {
            TemperatureFallback.NONE: "",
            TemperatureFallback.TOO_FEW_ITEMS: f"{self.n_items} held-out items, fewer than {MIN_CALIBRATION_ITEMS}",
            TemperatureFallback.AT_BOUND: f"the fit reached the bound T = {self.fitted:.3g} of {TEMPERATURE_BOUNDS}",
            TemperatureFallback.NLL_WORSE: (f"cross-fitted held-out NLL {self.cross_fitted_nll:.4g} is worse than "
                                            f"{self.nll_at_one:.4g} at T = 1"),
        }[self.fallback]


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """Temperature ``T`` minimising held-out NLL of ``softmax(logits / T)``, within ``bounds``.

    NLL is convex in the inverse temperature, so a bounded Brent search over ``1/T`` finds the global minimum.
    """
    from scipy.optimize import minimize_scalar

    x = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    lo, hi = 1.0 / bounds[1], 1.0 / bounds[0]
    result = minimize_scalar(lambda s: float(F.cross_entropy(x * s, y)), bounds=(lo, hi), method="bounded",
                             options={"xatol": 1e-6})
    return float(1.0 / result.x)


def calibrate_temperature(logits: np.ndarray, labels: np.ndarray, *,
                          bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
                          min_items: int = MIN_CALIBRATION_ITEMS) -> TemperatureFit:
    """The temperature to report a calibrated model with: :func:`fit_temperature` on the held-out items, or T = 1.

    T = 1 is kept (and :class:`TemperatureFallback` says why) when there are fewer than ``min_items`` held-out
    items, when the fit reaches a bound, or when it does not generalise within the held-out split: the items are
    split in two halves (even and odd positions), a temperature fitted on each half is scored on the other, and if
    that cross-fitted NLL exceeds the NLL at T = 1 the fitted temperature would make a model less calibrated.
    """
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    n = int(len(y))
    if n < min_items:
        return TemperatureFit(1.0, float("nan"), TemperatureFallback.TOO_FEW_ITEMS, n)
    fitted = fit_temperature(x, y, bounds=bounds)
    if not bounds[0] * (1 + 1e-3) < fitted < bounds[1] * (1 - 1e-3):
        return TemperatureFit(1.0, fitted, TemperatureFallback.AT_BOUND, n)
    halves = (np.arange(0, n, 2), np.arange(1, n, 2))
    at_one = sum(nll(x[h], y[h]) * len(h) for h in halves) / n
    crossed = sum(nll(x[h], y[h], fit_temperature(x[o], y[o], bounds=bounds)) * len(h)
                  for h, o in (halves, halves[::-1])) / n
    if crossed > at_one:
        return TemperatureFit(1.0, fitted, TemperatureFallback.NLL_WORSE, n, at_one, crossed)
    return TemperatureFit(fitted, fitted, TemperatureFallback.NONE, n, at_one, crossed)


def calibration_metrics(logits: np.ndarray, labels: np.ndarray, *, temperature: float = 1.0,
                        n_bins: int = 15, seed: int = 0) -> dict[str, float]:
    """``ece``, ``nll``, ``brier`` (and ``acc``) of ``softmax(logits / temperature)``, each with its sampling
    standard error over the items as ``se/<name>`` (binomial for ``acc``, per-item means for ``nll`` and
    ``brier``, a bootstrap seeded by ``seed`` for ``ece``)."""
    probs = softmax(logits, temperature)
    labels = np.asarray(labels)
    x = torch.as_tensor(np.asarray(logits), dtype=torch.float64) / temperature
    item_nll = F.cross_entropy(x, torch.as_tensor(labels, dtype=torch.long), reduction="none").numpy()
    item_brier = _item_brier(probs, labels)
    acc = float((probs.argmax(1) == labels).mean())
    return {
        "acc": acc,
        "ece": expected_calibration_error(probs, labels, n_bins),
        "nll": float(item_nll.mean()),
        "brier": float(item_brier.mean()),
        "se/acc": binomial_se(acc, len(labels)),
        "se/ece": bootstrap_se(lambda w: reliability_bins(probs, labels, n_bins, w).ece, len(labels), seed=seed),
        "se/nll": mean_se(item_nll),
        "se/brier": mean_se(item_brier),
    }


# ----------------------------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------------------------


def macro_f1(labels: np.ndarray, predictions: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Macro-averaged F1 over the classes present in ``labels`` or ``predictions`` (scikit-learn's
    ``f1_score(average="macro")``); ``weights`` counts each item that many times (a bootstrap resample)."""
    y, pred = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    n_classes = int(max(y.max(initial=0), pred.max(initial=0))) + 1
    hit = w * (y == pred)
    true_positive = np.bincount(y, weights=hit, minlength=n_classes)
    support = np.bincount(y, weights=w, minlength=n_classes)  # tp + fn
    predicted = np.bincount(pred, weights=w, minlength=n_classes)  # tp + fp
    present = (support + predicted) > 0
    return float((2 * true_positive[present] / (support[present] + predicted[present])).mean())


def roc_auc(targets: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Area under the ROC curve of binary ``targets`` (0/1) ranked by ``scores`` (higher = more positive).

    The Mann-Whitney statistic: the fraction of (positive, negative) pairs the scores order correctly, a tie
    counting one half (scikit-learn's ``roc_auc_score``). ``weights`` counts each item that many times (a bootstrap
    resample's multiplicities). NaN when the (weighted) items hold no positive or no negative.
    """
    y = np.asarray(targets)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"targets {y.shape} and scores {s.shape} must be 1-D and of the same length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("roc_auc targets must be 0 or 1")
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    values, group = np.unique(s, return_inverse=True)  # ascending score groups; ties share a group
    pos = np.bincount(group, weights=w * (y == 1), minlength=len(values))
    neg = np.bincount(group, weights=w * (y == 0), minlength=len(values))
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    negatives_below = np.cumsum(neg) - neg
    return float((pos * (negatives_below + 0.5 * neg)).sum() / (n_pos * n_neg))


def multilabel_auroc_metrics(targets: np.ndarray, scores: np.ndarray, names: Sequence[str], *,
                             seed: int = 0) -> dict[str, float]:
    """Per-label AUROC (``auroc/<name>``) and their mean (``mean_auroc``, the paper's CheXpert metric), each with a
    seeded bootstrap standard error over the test items (``se/<metric>``; the mean's SE keeps the labels'
    correlation, since every resample scores all labels on the same items).

    A label whose test items are all positive or all negative has no AUROC: it is left out (its metric is not
    reported) and the mean is over the others; ``n_labels_scored`` says how many counted.

    Raises
    ------
    ValueError
        No label can be scored, or the shapes disagree.
    """
    y = np.asarray(targets)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 2 or y.shape[1] != len(names):
        raise ValueError(f"targets {y.shape} and scores {s.shape} must be (items, {len(names)} labels)")
    scored = [k for k in range(len(names)) if 0 < y[:, k].sum() < len(y)]
    if not scored:
        raise ValueError("no label has both positive and negative test items: AUROC is undefined for every label")
    keys = [f"auroc/{_metric_word(names[k])}" for k in scored]

    def statistic(weights: np.ndarray | None) -> dict[str, float]:
        values = {key: roc_auc(y[:, k], s[:, k], weights) for key, k in zip(keys, scored)}
        finite = [v for v in values.values() if np.isfinite(v)]
        return {**values, "mean_auroc": float(np.mean(finite)) if finite else float("nan")}

    metrics = statistic(None)
    errors = bootstrap_se(statistic, len(y), seed=seed)
    metrics.update({f"se/{key}": value for key, value in errors.items()})  # type: ignore[union-attr]
    metrics["n_labels_scored"] = float(len(scored))
    return metrics


def _metric_word(name: str) -> str:
    """A label name as a metric-name part: ``Pleural Effusion`` -> ``pleural_effusion``."""
    return "_".join(name.lower().replace("/", " ").split())
