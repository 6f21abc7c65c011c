"""Retrieval, calibration and classification metrics and their standard errors, against hand-computed values
and library oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bobkit.eval import metrics as M
from bobkit.eval.uncertainty import binomial_se, bootstrap_counts, bootstrap_se, difference_se, mean_se

# Two queries over a ranked database of 10 items (rank 0 first).
# q0: positives at ranks 0, 2, 5 (3 positives); q1: one positive at rank 2.
RANKED = np.zeros((2, 10), dtype=bool)
RANKED[0, [0, 2, 5]] = True
RANKED[1, 2] = True


def test_step_ap_mrr_precision_recall_by_hand():
    out = M.ranked_metrics(RANKED, ap="step")
    # q0: AP = (1/1 + 2/3 + 3/6) / 3; q1: AP = (1/3) / 1
    assert out["ap"] == pytest.approx([(1 + 2 / 3 + 3 / 6) / 3, 1 / 3])
    assert out["rr"] == pytest.approx([1.0, 1 / 3])
    assert out["precision@1"] == pytest.approx([1.0, 0.0])
    assert out["precision@5"] == pytest.approx([2 / 5, 1 / 5])
    assert out["precision@10"] == pytest.approx([3 / 10, 1 / 10])
    assert out["recall@1"] == pytest.approx([1 / 3, 0.0])
    assert out["recall@5"] == pytest.approx([2 / 3, 1.0])
    assert out["recall@10"] == pytest.approx([1.0, 1.0])


def test_trapezoid_ap_by_hand():
    out = M.ranked_metrics(RANKED, ap="trapezoid")
    # revisitop compute_ap: sum over positives j at rank r of (j/r [1 if r=0] + (j+1)/(r+1)) / 2, over n positives
    q0 = (1.0 + (1 / 2 + 2 / 3) / 2 + (2 / 5 + 3 / 6) / 2) / 3
    q1 = (0 / 2 + 1 / 3) / 2
    assert out["ap"] == pytest.approx([q0, q1])


def test_mp_at_k_divides_by_the_rank_of_the_last_positive():
    out = M.ranked_metrics(RANKED)
    # q0: positives at 1-based ranks 1, 3, 6 -> mP@1 = 1/1, mP@5 = 2/5 (last positive at 6 > 5), mP@10 = 3/6
    # q1: one positive at rank 3 -> mP@1 = 0/1, mP@5 = 1/3, mP@10 = 1/3 (precision@k: 0, 1/5, 1/10)
    assert out["mp@1"] == pytest.approx([1.0, 0.0])
    assert out["mp@5"] == pytest.approx([2 / 5, 1 / 3])
    assert out["mp@10"] == pytest.approx([3 / 6, 1 / 3])


def test_step_ap_matches_sklearn_and_torchmetrics():
    from sklearn.metrics import average_precision_score
    from torchmetrics.functional.retrieval import retrieval_average_precision, retrieval_reciprocal_rank

    rng = np.random.default_rng(0)
    # Positive scores: torchmetrics drops positives whose score is <= 0 (cosine similarities can be negative,
    # one reason bobkit ranks by itself).
    scores = rng.random(size=(6, 40))
    target = rng.random((6, 40)) < 0.2
    target[:, 0] = True
    order = np.argsort(-scores, axis=1, kind="stable")
    out = M.ranked_metrics(np.take_along_axis(target, order, 1), ap="step")
    for q in range(6):
        assert out["ap"][q] == pytest.approx(average_precision_score(target[q], scores[q]))
        assert out["ap"][q] == pytest.approx(
            float(retrieval_average_precision(torch.tensor(scores[q]), torch.tensor(target[q]))), abs=1e-6)
        assert out["rr"][q] == pytest.approx(
            float(retrieval_reciprocal_rank(torch.tensor(scores[q]), torch.tensor(target[q]))), abs=1e-6)


def test_class_retrieval_ranks_by_cosine():
    # 2-D features: the query points along x; database items at known angles, labels known.
    angles = np.array([0.1, 0.5, 1.0, 2.0, 3.0])
    db = np.stack([np.cos(angles), np.sin(angles)], 1) * np.array([[3], [1], [5], [2], [1]])  # norms must not matter
    db_labels = np.array([0, 1, 0, 1, 0])
    out = M.class_retrieval_metrics(np.array([[2.0, 0.0]]), np.array([0]), db, db_labels, ap="step")
    # ranking 0,1,2,3,4 -> relevance 1,0,1,0,1: AP = (1 + 2/3 + 3/5)/3
    assert out["map"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert out["mrr"] == 1.0
    assert out["precision@5"] == pytest.approx(3 / 5)
    assert out["recall@1"] == pytest.approx(1 / 3)
    assert out["n_queries"] == 1


def _revisitop_reference_ap(ranks: np.ndarray, ok: list[int], junk: list[int]) -> float:
    """The official revisited-protocol AP (filipradenovic/revisitop compute_map + compute_ap), one query."""
    pos = np.arange(len(ranks))[np.isin(ranks, ok)]
    jk = np.arange(len(ranks))[np.isin(ranks, junk)]
    k = ij = 0
    for ip in range(len(pos)):
        while ij < len(jk) and pos[ip] > jk[ij]:
            k += 1
            ij += 1
        pos[ip] -= k
    ap = 0.0
    for j, r in enumerate(pos):
        p0 = 1.0 if r == 0 else j / r
        ap += (p0 + (j + 1) / (r + 1)) / 2 / len(ok)
    return ap


def _unit(angles: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(angles), np.sin(angles)], 1)


def test_revisited_protocol_ignores_junk():
    # Database of 6 items ranked 0..5 for the single query (increasing angle from the query).
    db = _unit(np.linspace(0.1, 1.5, 6))
    query = _unit(np.array([0.0]))
    gnd = [{"easy": [1], "hard": [3], "junk": [0, 2]}]
    medium = M.revisited_retrieval_metrics(query, db, gnd, protocol="medium", ap="step")
    # junk removed -> ranking 1(+), 3(+), 4, 5: AP = 1, first positive at rank 1
    assert medium["map"] == pytest.approx(1.0)
    assert medium["mrr"] == 1.0
    assert medium["precision@1"] == 1.0
    assert medium["recall@1"] == pytest.approx(0.5)
    # junk counted as negatives instead would give ranks 2 and 4: AP = (1/2 + 2/4)/2 = 0.5
    as_negatives = M.revisited_retrieval_metrics(query, db, [{"easy": [1], "hard": [3], "junk": []}], ap="step")
    assert as_negatives["map"] == pytest.approx(0.5)
    # hard protocol: only item 3 positive; easy item 1 and junk ignored -> ranked first: AP 1
    hard = M.revisited_retrieval_metrics(query, db, gnd, protocol="hard", ap="step")
    assert hard["map"] == pytest.approx(1.0)


def _revisitop_reference_mp(ranks: np.ndarray, ok: list[int], junk: list[int], ks: list[int]) -> list[float]:
    """The official revisitop compute_map's precision@k (mP@k), one query, positions adjusted for junk."""
    pos = np.arange(len(ranks))[np.isin(ranks, ok)]
    jk = np.arange(len(ranks))[np.isin(ranks, junk)]
    k = ij = 0
    for ip in range(len(pos)):
        while ij < len(jk) and pos[ip] > jk[ij]:
            k += 1
            ij += 1
        pos[ip] -= k
    pos = pos + 1
    return [(pos <= min(max(pos), kappa)).sum() / min(max(pos), kappa) for kappa in ks]


def test_revisited_mp_at_k_matches_official_code_and_has_query_standard_errors():
    rng = np.random.default_rng(5)
    n_db, n_q, ks = 80, 6, [1, 5, 10]
    db, queries = rng.normal(size=(n_db, 16)), rng.normal(size=(n_q, 16))
    gnd, ref = [], []
    for q in range(n_q):
        perm = rng.permutation(n_db)
        g = {"easy": perm[:2].tolist(), "hard": perm[2:4].tolist(), "junk": perm[4:12].tolist()}
        gnd.append(g)
        sims = M.l2_normalize(db).numpy() @ M.l2_normalize(queries[q : q + 1]).numpy()[0]
        ref.append(_revisitop_reference_mp(np.argsort(-sims, kind="stable"), g["easy"] + g["hard"], g["junk"], ks))
    out = M.revisited_retrieval_metrics(queries, db, gnd, protocol="medium", ks=ks)
    ref = np.array(ref)
    for j, kappa in enumerate(ks):
        assert out[f"mp@{kappa}"] == pytest.approx(ref[:, j].mean())
        assert out[f"se/mp@{kappa}"] == pytest.approx(ref[:, j].std() / np.sqrt(n_q))
    assert out["n_queries"] == n_q


def test_class_retrieval_reports_standard_errors_over_queries():
    rng = np.random.default_rng(6)
    db, db_labels = rng.normal(size=(50, 8)), rng.integers(0, 3, size=50)
    q, q_labels = rng.normal(size=(12, 8)), rng.integers(0, 3, size=12)
    out = M.class_retrieval_metrics(q, q_labels, db, db_labels, ks=[5])
    per_query = M.ranked_metrics(
        db_labels[np.argsort(-(M.l2_normalize(q) @ M.l2_normalize(db).T).numpy(), axis=1, kind="stable")]
        == q_labels[:, None], ks=[5])
    assert out["map"] == pytest.approx(per_query["ap"].mean())
    assert out["se/map"] == pytest.approx(per_query["ap"].std() / np.sqrt(12))
    assert out["se/precision@5"] == pytest.approx(per_query["precision@5"].std() / np.sqrt(12))
    assert "mp@5" not in out  # mP@k is the revisited Oxford/Paris convention


def test_revisited_trapezoid_matches_official_code():
    rng = np.random.default_rng(3)
    n_db, n_q = 60, 5
    db = rng.normal(size=(n_db, 16))
    queries = rng.normal(size=(n_q, 16))
    gnd, ref = [], []
    for q in range(n_q):
        perm = rng.permutation(n_db)
        g = {"easy": perm[:4].tolist(), "hard": perm[4:7].tolist(), "junk": perm[7:15].tolist()}
        gnd.append(g)
        sims = M.l2_normalize(db).numpy() @ M.l2_normalize(queries[q : q + 1]).numpy()[0]
        ranks = np.argsort(-sims, kind="stable")
        ref.append(_revisitop_reference_ap(ranks, g["easy"] + g["hard"], g["junk"]))
    out = M.revisited_retrieval_metrics(queries, db, gnd, protocol="medium", ap="trapezoid")
    assert out["map"] == pytest.approx(np.mean(ref))


def test_query_without_positives_is_left_out():
    relevant = np.array([[True, False], [False, False]])
    out = M.ranked_metrics(relevant)
    assert np.isnan(out["ap"][1]) and out["ap"][0] == 1.0


# --- calibration ------------------------------------------------------------------------------------------------


def _synthetic_predictor(n: int, temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true label distribution (calibrated at T=1), sharpened by 1/temperature."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(scale=2.0, size=(n, 5))
    p = M.softmax(true_logits)
    labels = np.minimum((rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1), 4)
    return true_logits / temperature, labels


def test_ece_of_calibrated_predictor_is_near_zero_and_overconfident_is_large():
    logits, labels = _synthetic_predictor(20000, temperature=1.0)
    calibrated = M.calibration_metrics(logits, labels)
    assert calibrated["ece"] < 0.015
    over_logits, _ = _synthetic_predictor(20000, temperature=0.25)
    overconfident = M.calibration_metrics(over_logits, labels)
    assert overconfident["ece"] > 0.15
    assert overconfident["nll"] > calibrated["nll"]
    assert overconfident["brier"] > calibrated["brier"]


def test_temperature_scaling_recovers_temperature_and_lowers_nll():
    logits, labels = _synthetic_predictor(20000, temperature=0.25, seed=1)
    held_out, eval_ = slice(0, 10000), slice(10000, None)
    t = M.fit_temperature(logits[held_out], labels[held_out])
    assert t == pytest.approx(4.0, rel=0.1)
    before = M.calibration_metrics(logits[eval_], labels[eval_])
    after = M.calibration_metrics(logits[eval_], labels[eval_], temperature=t)
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"]
    assert after["acc"] == before["acc"]  # temperature never changes the arg-max


def test_reliability_bins_agree_with_torchmetrics_ece_away_from_confidence_one():
    logits, labels = _synthetic_predictor(3000, temperature=0.5, seed=2)
    probs = M.softmax(logits)
    assert (probs.astype(np.float32).max(1) < 1.0).all()  # no confidence that float32 rounds to 1.0
    from torchmetrics.functional.classification import multiclass_calibration_error

    bins = M.reliability_bins(probs, labels, n_bins=15)
    assert bins.counts.sum() == 3000
    assert bins.ece == M.expected_calibration_error(probs, labels, 15)  # one definition
    reference = multiclass_calibration_error(torch.tensor(probs, dtype=torch.float32), torch.tensor(labels),
                                             num_classes=5, n_bins=15, norm="l1")
    assert bins.ece == pytest.approx(float(reference), abs=1e-5)


def test_ece_is_the_textbook_value_where_torchmetrics_hides_confidence_one():
    # The case: confidences 1 - 4e-9 (float32: exactly 1.0) and e^3.6 / (e^3.6 + 2) = 0.9482, all in
    # the last bin (14/15, 1]: |mean confidence - accuracy| = |(2 (1 - 4.1e-9) + 2 * 0.9482) / 4 - 3/4|.
    logits = np.array([[20.0, 0, 0], [20.0, 0, 0], [3.6, 0, 0], [3.6, 0, 0]])
    labels = np.array([0, 1, 0, 0])
    high, low = 1 / (1 + 2 * np.exp(-20.0)), np.exp(3.6) / (np.exp(3.6) + 2)
    expected = abs((2 * high + 2 * low) / 4 - 3 / 4)
    assert expected == pytest.approx(0.2241, abs=1e-4)
    metrics = M.calibration_metrics(logits, labels)
    assert metrics["ece"] == pytest.approx(expected, rel=1e-12)
    bins = M.reliability_bins(M.softmax(logits), labels)  # the diagram's bins give the same number
    assert bins.counts.tolist() == [0.0] * 14 + [4.0] and bins.ece == metrics["ece"]
    from torchmetrics.functional.classification import multiclass_calibration_error

    hidden_bin = multiclass_calibration_error(torch.tensor(M.softmax(logits), dtype=torch.float32),
                                              torch.tensor(labels), num_classes=3, n_bins=15, norm="l1")
    assert float(hidden_bin) == pytest.approx(0.2759, abs=1e-4)  # what was reported before


def test_calibration_standard_errors():
    logits, labels = _synthetic_predictor(400, temperature=0.5, seed=4)
    m = M.calibration_metrics(logits, labels, seed=1)
    probs = M.softmax(logits)
    assert m["se/acc"] == pytest.approx(np.sqrt(m["acc"] * (1 - m["acc"]) / 400))
    item_brier = ((probs - np.eye(5)[labels]) ** 2).sum(1)
    assert m["brier"] == pytest.approx(item_brier.mean())
    assert m["se/brier"] == pytest.approx(item_brier.std() / np.sqrt(400))
    item_nll = -np.log(probs[np.arange(400), labels])
    assert m["se/nll"] == pytest.approx(item_nll.std() / np.sqrt(400))
    assert 0 < m["se/ece"] < 0.1
    assert M.calibration_metrics(logits, labels, seed=1)["se/ece"] == m["se/ece"]  # seeded


def test_brier_by_hand():
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    # sample 0: perfect (0); sample 1 (label 0): 0.25 + 0.25
    assert M.brier_score(probs, np.array([0, 0])) == pytest.approx(0.25)
    from sklearn.metrics import brier_score_loss

    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=50)
    y = rng.integers(0, 4, size=50)
    assert M.brier_score(p, y) == pytest.approx(brier_score_loss(y, p, labels=np.arange(4), scale_by_half=False))


def test_macro_f1_matches_sklearn_and_counts_weights_as_repeats():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, size=200)
    pred = np.where(rng.random(200) < 0.6, y, rng.integers(0, 7, size=200))  # class 6 only predicted
    assert M.macro_f1(y, pred) == pytest.approx(f1_score(y, pred, average="macro"))
    weights = rng.integers(0, 3, size=200)
    repeated = np.repeat(np.arange(200), weights)
    assert M.macro_f1(y, pred, weights) == pytest.approx(f1_score(y[repeated], pred[repeated], average="macro"))


# --- sampling standard errors (bobkit.eval.uncertainty) -----------------------------------------------------------


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


def _separable_held_out(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Confident logits whose held-out items are all classified correctly: NLL falls as T -> 0 (no interior
    optimum), the small-held-out case that fitted T = 0.01 on a run page."""
    logits = np.random.default_rng(seed).normal(scale=1.0, size=(n, 5))
    return logits, logits.argmax(1)


def test_fitted_temperature_stays_within_its_stated_bounds():
    logits, labels = _separable_held_out(30)
    lo, hi = M.TEMPERATURE_BOUNDS
    assert (lo, hi) == (0.05, 20.0)
    assert M.fit_temperature(logits, labels) == pytest.approx(lo, rel=1e-3)  # was 0.01, the old bound
    assert M.fit_temperature(-logits, labels) == pytest.approx(hi, rel=1e-3)  # every item wrong: flat as T grows


def test_temperature_falls_back_to_one_on_a_small_or_separable_held_out_split():
    small = M.calibrate_temperature(*_separable_held_out(30))
    assert small.temperature == 1.0 and small.fallback == M.TemperatureFallback.TOO_FEW_ITEMS
    assert small.n_items == 30 and small.n_items < M.MIN_CALIBRATION_ITEMS
    separable = M.calibrate_temperature(*_separable_held_out(400))
    assert separable.temperature == 1.0 and separable.fallback == M.TemperatureFallback.AT_BOUND
    assert separable.fitted == pytest.approx(M.TEMPERATURE_BOUNDS[0], rel=1e-3)
    logits, labels = _synthetic_predictor(2000, temperature=0.25, seed=3)
    good = M.calibrate_temperature(logits, labels)
    assert good.fallback == M.TemperatureFallback.NONE and good.temperature == pytest.approx(4.0, rel=0.15)
    assert good.temperature == good.fitted


def test_temperature_falls_back_when_the_cross_fitted_held_out_nll_gets_worse():
    # already calibrated at T = 1 and few items: a fitted T only chases noise, and each half's T does worse on the
    # other half than T = 1 does
    for seed in range(40):
        logits, labels = _synthetic_predictor(120, temperature=1.0, seed=seed)
        fit = M.calibrate_temperature(logits, labels)
        if fit.fallback == M.TemperatureFallback.NLL_WORSE:
            assert fit.temperature == 1.0 and np.isfinite(fit.fitted)
            break
    else:
        pytest.fail("no seed made the cross-fitted NLL worse than T = 1")
    for fit in (M.calibrate_temperature(*_synthetic_predictor(120, temperature=1.0, seed=s)) for s in range(40)):
        if fit.fallback == M.TemperatureFallback.NONE:  # an accepted temperature never raises held-out NLL
            assert fit.cross_fitted_nll <= fit.nll_at_one
