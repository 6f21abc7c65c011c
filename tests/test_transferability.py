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
