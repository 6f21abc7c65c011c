"""Transferability estimators: the authors' reference values, hand-computed cases and known properties."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bobkit.eval import transferability as T

DATA = Path(__file__).parent / "data" / "transferability"
REFERENCE = json.loads((DATA / "reference.json").read_text())


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    with np.load(DATA / "reference.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("case", REFERENCE, ids=[c["case"] for c in REFERENCE])
def test_scores_reproduce_the_authors_implementation(case: dict, arrays: dict[str, np.ndarray]) -> None:
    features = arrays[f"{case['case']}_features"]
    labels = arrays[f"{case['case']}_labels"]
    probs = arrays[f"{case['case']}_source_probs"]
    assert T.logme(features, labels) == pytest.approx(case["logme"], abs=1e-6)
    assert T.leep(probs, labels) == pytest.approx(case["leep"], abs=1e-6)
    assert T.nce(probs.argmax(1), labels) == pytest.approx(case["nce"], abs=1e-6)


def test_logme_prefers_features_that_carry_the_labels() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    informative = np.eye(3)[labels] * 3 + rng.normal(size=(300, 3))
    noise = rng.normal(size=(300, 3))
    assert T.logme(informative, labels) > T.logme(noise, labels) + 0.1


def test_h_score_by_hand() -> None:
    # centred f = [-1.5, -0.5, 0.5, 1.5], var 5/3; class means -> [-1, -1, 1, 1], var 4/3; ratio 0.8
    assert T.h_score(np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0, 0, 1, 1])) == pytest.approx(0.8)
    # features equal to their class means: cov(g) = cov(f), the score is the rank (1)
    assert T.h_score(np.array([[0.0], [0.0], [2.0], [2.0]]), np.array([0, 0, 1, 1])) == pytest.approx(1.0)


def test_h_score_saturates_at_classes_minus_one_when_features_outnumber_items(arrays) -> None:
    # case2 has N=80 < D=128: any labelling is linearly explained, so the score is C - 1 = 3
    assert T.h_score(arrays["case2_features"], arrays["case2_labels"]) == pytest.approx(3.0, abs=1e-6)


def test_leep_and_nce_of_a_perfect_source_head() -> None:
    labels = np.array([0, 1, 2, 0, 1, 2])
    assert T.nce(labels, labels) == pytest.approx(0.0)
    assert T.leep(np.eye(3)[labels], labels) == pytest.approx(0.0)
    # a head that predicts one class for everything carries no information: NCE = -H(Y) = -log 3
    assert T.nce(np.zeros(6, dtype=int), labels) == pytest.approx(-np.log(3))


def test_knn_loo_accuracy_by_hand() -> None:
    # two tight clusters on the unit circle and one item of class 1 next to class 0's cluster
    angles = np.array([0.0, 0.05, 0.1, 1.5, 1.55, 0.2])
    features = np.stack([np.cos(angles), np.sin(angles)], 1)
    labels = np.array([0, 0, 0, 1, 1, 1])
    # 1-NN: every item but the intruder finds its own class; the intruder's nearest is class 0
    assert T.knn_loo_accuracy(features, labels, k=1) == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="k=0"):
        T.knn_loo_accuracy(features, labels, k=0)


def test_bad_labels_are_rejected() -> None:
    with pytest.raises(ValueError, match="non-negative integers"):
        T.logme(np.ones((3, 2)), np.array([0.5, 1.0, 0.0]))


def _logme_by_direct_svd(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME from the features' own SVD (exact tiny singular values), every class through the same fixed point."""
    n, d = features.shape
    u, s, _ = np.linalg.svd(features, full_matrices=False)
    keep = s > 1e-10
    targets = np.eye(int(labels.max()) + 1)[labels]
    return float(np.mean([T._class_evidence(u[:, keep].T @ targets[:, [c]], float(targets[:, c].sum()),
                                            (s[keep] ** 2).reshape(-1, 1), n, d) for c in range(targets.shape[1])]))


@pytest.mark.parametrize("dead", ["zero", "near_zero"])
def test_logme_of_features_with_dead_channels_is_that_of_their_own_svd(dead: str) -> None:
    # ReLU features of small images have dead channels (all-zero columns) and dependent ones: the Gram matrix's
    # rounding noise then hides directions an absolute 1e-10 cut keeps (the value depended on rounding: 0.33 here
    # against 0.62); the features' own SVD resolves them
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 400)
    features = np.maximum(rng.normal(size=(400, 64)) + np.eye(5)[labels] @ rng.normal(size=(5, 64)), 0) * 50
    features[:, :12] = 0.0 if dead == "zero" else 1e-3 * rng.normal(size=(400, 12)) * (rng.random((400, 12)) < 0.01)
    features[:, 12:16] = 2 * features[:, 16:20]
    assert T.logme(features, labels) == pytest.approx(_logme_by_direct_svd(features, labels), abs=1e-9)


def test_logme_takes_the_gram_route_on_full_rank_features_with_the_same_value() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 500)
    features = rng.normal(size=(500, 40)) + np.eye(4)[labels] @ rng.normal(size=(4, 40))
    assert T.logme(features, labels) == pytest.approx(_logme_by_direct_svd(features, labels), abs=1e-9)
