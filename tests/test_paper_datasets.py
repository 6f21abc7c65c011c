"""The paper's medical and retrieval datasets: CheXpert's label policy, ObjectNet's ImageNet mapping, GLDv2's and
Copydays' ground truth, class-folder retrieval caps, and the metrics they report (AUROC, listed retrieval)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bobkit.data import DATASETS, get_dataset, sources
from bobkit.data.datasets import multilabel_targets
from bobkit.eval.metrics import listed_retrieval_metrics, multilabel_auroc_metrics, roc_auc
from bobkit.rehearsal.environment import rehearsal_environment
from bobkit.tasks import retrieval

CHEXPERT = ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")


@pytest.fixture(scope="module")
def standins():
    """Every new dataset's stand-in, written once in its published layout and read by the real loaders."""
    with rehearsal_environment(["chexpert", "inat2021_val", "objectnet", "instre", "gldv2", "copydays"]) as env:
        yield env


# ------------------------------------------------------------------------------------------------------------
# CheXpert
# ------------------------------------------------------------------------------------------------------------


def test_chexpert_uncertain_labels_follow_the_medical_mae_policy():
    """U-Ones for Edema and Atelectasis, U-Zeros for the other three, blank as 0 (a hand-written CSV)."""
    table = pd.DataFrame({
        "Cardiomegaly": [1.0, -1.0, np.nan, 0.0],
        "Edema": [-1.0, 0.0, np.nan, 1.0],
        "Consolidation": [-1.0, 1.0, 0.0, np.nan],
        "Atelectasis": [np.nan, -1.0, 1.0, 0.0],
        "Pleural Effusion": [-1.0, np.nan, 1.0, 1.0],
        "Pneumonia": [1.0, 1.0, 1.0, 1.0],  # not one of the five: ignored
    })
    expected = np.array([[1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1], [0, 1, 0, 0, 1]])
    targets = sources.chexpert_targets(table)
    np.testing.assert_array_equal(targets, expected)
    codes = sources.label_set_codes(targets)
    assert codes.tolist() == [1 + 2, 4 + 8, 8 + 16, 2 + 16]
    np.testing.assert_array_equal(multilabel_targets(codes, CHEXPERT), expected)
    assert sources.label_set_names(("a", "b"))[3] == "a+b" and sources.label_set_names(("a", "b"))[0] == "none"
    with pytest.raises(ValueError, match="'Edema' holds 2.0"):
        sources.chexpert_targets(table.assign(Edema=[2.0, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="no column 'Cardiomegaly'"):
        sources.chexpert_targets(table.drop(columns="Cardiomegaly"))


def test_chexpert_reads_frontal_views_with_label_set_codes(standins):
    assert DATASETS["chexpert"].multilabel == CHEXPERT and DATASETS["chexpert"].num_classes == 32
    train, test = get_dataset("chexpert", "train"), get_dataset("chexpert", "test")
    assert len(train) == 4 and len(test) == 2  # lateral views dropped
    assert all("frontal" in p.name for p in train.paths)
    np.testing.assert_array_equal(multilabel_targets(train.labels, CHEXPERT),
                                  [[1, 1, 0, 0, 0], [0, 0, 1, 1, 1], [0, 0, 0, 1, 0], [1, 1, 1, 0, 1]])
    assert train.classes[train.labels[0]] == "Cardiomegaly+Edema"
    assert train.meta["uncertain_policy"] == {"Cardiomegaly": "U-Zeros", "Edema": "U-Ones",
                                              "Consolidation": "U-Zeros", "Atelectasis": "U-Ones",
                                              "Pleural Effusion": "U-Zeros"}
    assert test.batch([0]).shape == (1, 256, 256, 3)  # grayscale radiographs decode as RGB


# ------------------------------------------------------------------------------------------------------------
# Class-folder retrieval datasets
# ------------------------------------------------------------------------------------------------------------


def test_objectnet_classes_map_to_imagenet_indices(standins):
    ds = get_dataset("objectnet", "test")
    assert ds.classes == ["air_freshener", "alarm_clock", "banana"]  # sorted folders
    # analog clock (409) and digital clock (530); banana (954); no ImageNet class for an air freshener
    assert ds.meta["imagenet_1k_indices"] == [[], [409, 530], [954]]
    assert ds.meta["objectnet_labels"] == ["Air freshener", "Alarm clock", "Banana"]
    assert {p.suffix for p in ds.paths} == {".png"} and np.bincount(ds.labels).tolist() == [5, 5, 5]


def test_class_folder_retrieval_caps_each_class_in_file_order(standins):
    inat = get_dataset("inat2021_val", "test")
    assert inat.classes[0].startswith("00000_Animalia") and len(inat) == 12
    names = [p.name for p in inat.paths[:6]]
    assert names == sorted(names)  # files in sorted order: the paper's queries are the first of each class
    queries, database = retrieval.class_folder_split(inat.labels, query_fraction=0.2, max_per_class=5)
    assert queries.tolist() == [0, 6] and database.tolist() == [1, 2, 3, 4, 7, 8, 9, 10]
    instre = get_dataset("instre", "test")
    assert instre.classes == ["01a_canada_book", "02b_coca_cola"] and len(instre) == 10  # the .txt boxes skipped


# ------------------------------------------------------------------------------------------------------------
# Listed ground truth: Google Landmarks v2, Copydays
# ------------------------------------------------------------------------------------------------------------


def test_gldv2_solution_keeps_test_images_with_a_landmark(tmp_path):
    path = tmp_path / "retrieval_solution_v2.1.csv"
    path.write_text("id,images,Usage\naaa,x1 x2,Public\nbbb,None,Ignored\nccc,x3,Private\n")
    assert sources.parse_gldv2_solution(path) == {"aaa": ["x1", "x2"], "ccc": ["x3"]}
    path.write_text("id,images,Usage\nbbb,None,Ignored\n")
    with pytest.raises(ValueError, match="no test image has ground truth"):
        sources.parse_gldv2_solution(path)
    path.write_text("id,Usage\naaa,Public\n")
    with pytest.raises(ValueError, match="columns id,images"):
        sources.parse_gldv2_solution(path)


def test_gldv2_queries_database_and_positives(standins):
    queries, database, positives = retrieval.load_listed("gldv2")
    assert len(queries) == 2 and len(database) == 5  # the test image without a landmark is no query
    assert database.meta["ids"] == sorted(database.meta["ids"])
    ids = database.meta["ids"]
    assert [[ids[i] for i in p] for p in positives] == [["1f2e3d4c5b6a7980", "1f9e8d7c6b5a4930"],
                                                       ["2a3b4c5d6e7f8091"]]
    assert queries.paths[0].parts[-4:] == ("0", "a", "1", "0a1b2c3d4e5f6071.jpg")  # id-sharded folders


def test_copydays_copies_point_at_their_original(standins):
    queries, database, positives = retrieval.load_listed("copydays")
    assert [p.name for p in database.paths] == ["200000.jpg", "200100.jpg"]
    assert len(queries) == 3 + 9 * 2 + 9 * 2  # strong attacks, JPEG qualities, crops
    pairs = {(block, path.name): int(pos[0]) for block, path, pos in
             zip(queries.meta["blocks"], queries.paths, positives)}
    assert pairs[("strong", "200001.jpg")] == 0 and pairs[("strong", "200002.jpg")] == 0
    assert pairs[("strong", "200101.jpg")] == 1 and pairs[("jpegqual/3", "200100.jpg")] == 1
    assert pairs[("crops/80", "200000.jpg")] == 0
    strong, _, _ = retrieval.load_listed("copydays", copydays_attacks="strong")
    assert len(strong) == 3 and set(strong.meta["blocks"]) == {"strong"}


def test_retrieval_protocols_must_fit_the_dataset():
    with pytest.raises(ValueError, match="gldv2"):
        retrieval.run(protocol="gldv2", dataset="fashion_mnist")
    with pytest.raises(ValueError, match="protocol='copydays'"):
        retrieval.run(protocol="class_folder", dataset="copydays")
    with pytest.raises(ValueError, match="copydays_attacks"):
        retrieval.run(protocol="copydays", dataset="copydays", copydays_attacks="rotations")


def test_listed_retrieval_metrics_on_a_hand_made_ranking():
    """Query 0 ranks the database 0, 1, 2 and its one positive (1) second; query 1 ranks 2, 1, 0, both positives
    first: AP (trapezoid) 0.25 and 1, reciprocal ranks 0.5 and 1."""
    database = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    queries = np.array([[1.0, 0.0], [0.0, 1.0]])
    m = listed_retrieval_metrics(queries, database, [np.array([1]), np.array([2, 1])], ks=[1, 2])
    assert m["map"] == pytest.approx(0.625) and m["mrr"] == pytest.approx(0.75)
    assert m["precision@1"] == pytest.approx(0.5) and m["recall@1"] == pytest.approx(0.25)
    assert m["precision@2"] == pytest.approx(0.75) and m["recall@2"] == pytest.approx(1.0)
    assert m["se/map"] == pytest.approx(0.375 / math.sqrt(2)) and m["n_queries"] == 2 and "mp@1" not in m
    step = listed_retrieval_metrics(queries, database, [np.array([1]), np.array([2, 1])], ks=[1], ap="step")
    assert step["map"] == pytest.approx(0.75)  # non-interpolated AP: 0.5 and 1


# ------------------------------------------------------------------------------------------------------------
# AUROC
# ------------------------------------------------------------------------------------------------------------


def test_roc_auc_against_hand_computed_values():
    # 3 of the 4 (positive, negative) pairs ordered right
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    # a tied pair counts one half: (0.5 + 1 + 1 + 1) / 4
    assert roc_auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.2, 0.9])) == pytest.approx(0.875)
    # weights count items: item 0 twice is the same as listing it twice
    y, s = np.array([0, 1, 0, 1, 1]), np.array([0.3, 0.2, 0.1, 0.9, 0.25])
    assert roc_auc(y, s, np.array([2, 1, 1, 1, 1])) == pytest.approx(roc_auc(np.append(y, 0), np.append(s, 0.3)))
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 300), np.round(rng.normal(size=300), 1)  # rounded: many ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s))


def _hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    return math.sqrt((auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (n_pos * n_neg))


def test_multilabel_auroc_has_per_label_standard_errors_of_the_right_size():
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 2, size=(300, 3))
    targets[:, 2] = 0  # a label with no positive among the test items: not scored
    scores = targets + rng.normal(scale=[0.6, 2.0, 1.0], size=(300, 3))
    m = multilabel_auroc_metrics(targets, scores, ["Edema", "Pleural Effusion", "Fracture"], seed=0)
    assert set(m) >= {"auroc/edema", "auroc/pleural_effusion", "mean_auroc", "se/mean_auroc"}
    assert "auroc/fracture" not in m and m["n_labels_scored"] == 2
    assert m["auroc/edema"] > m["auroc/pleural_effusion"] > 0.5
    assert m["mean_auroc"] == pytest.approx((m["auroc/edema"] + m["auroc/pleural_effusion"]) / 2)
    for label in ("edema", "pleural_effusion"):
        y = targets[:, 0 if label == "edema" else 1]
        expected = _hanley_mcneil_se(m[f"auroc/{label}"], int(y.sum()), int(len(y) - y.sum()))
        assert 0.6 < m[f"se/auroc/{label}"] / expected < 1.6, label  # bootstrap agrees with the closed form
    assert 0 < m["se/mean_auroc"] < max(m["se/auroc/edema"], m["se/auroc/pleural_effusion"])
    with pytest.raises(ValueError, match="no label"):
        multilabel_auroc_metrics(np.zeros((4, 1), int), np.zeros((4, 1)), ["Edema"])
