"""Classification: probe solver, metrics, low-shot sampling, fine-tuning, and the offline battle's key claim."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bobkit.data.datasets import low_shot_indices
from bobkit.tasks.classification import classification_metrics, run
from bobkit.tasks.training import (
    _probe_objective,
    _standardised,
    _top_direction_preconditioner,
    finetune,
    fit_linear_probe,
    fit_sgd_probe,
)

PACKAGED_VS_CONTROL = [
    ("mobilenetv2_100.packaged_tv_in1k", "mobilenetv2_100.random_init"),
    ("tf_efficientnet_lite0.packaged_in1k", "tf_efficientnet_lite0.random_init"),
    ("tf_efficientnet_lite2.packaged_in1k", "tf_efficientnet_lite2.random_init"),
]


def test_metrics_match_hand_computation():
    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6]]))
    labels = np.array([0, 1, 1, 2])
    m = classification_metrics(logits, labels)
    assert m["top1"] == pytest.approx(0.75)
    expected_nll = -np.mean(np.log([0.7, 0.8, 0.3, 0.6]))
    assert m["nll"] == pytest.approx(expected_nll, rel=1e-9)
    # per-class F1: class0 P=1/2 R=1 -> 2/3; class1 P=1 R=1/2 -> 2/3; class2 1 -> mean 7/9
    assert m["macro_f1"] == pytest.approx(7 / 9)
    assert "top5" not in m  # only 3 classes
    # sampling standard errors over the 4 items: binomial for top-1, the mean's for NLL, a bootstrap for F1
    assert m["se/top1"] == pytest.approx(np.sqrt(0.75 * 0.25 / 4))
    assert m["se/nll"] == pytest.approx(np.std(-np.log([0.7, 0.8, 0.3, 0.6])) / 2)
    assert 0 < m["se/macro_f1"] < 0.5 and "se/top5" not in m


def test_top5_is_reported_for_more_than_five_classes():
    logits = np.tile(np.arange(10.0), (2, 1))  # class 9 highest, then 8, 7, 6, 5
    m = classification_metrics(logits, np.array([5, 0]))
    assert m["top5"] == pytest.approx(0.5) and m["top1"] == 0.0


def test_non_finite_logits_are_refused():
    with pytest.raises(FloatingPointError):
        classification_metrics(np.array([[np.nan, 0.0]]), np.array([0]))


def test_probe_separates_linearly_separable_classes_and_folds_into_a_linear_layer():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 16)) * 5
    y = np.repeat(np.arange(4), 50)
    x = centers[y] + rng.normal(size=(200, 16))
    probe = fit_linear_probe(x, y, l2=1e-4, max_iter=100)
    assert (probe.logits(x).argmax(1) == y).mean() == 1.0
    layer = probe.as_module()
    folded = layer(torch.as_tensor(x, dtype=torch.float32)).detach().numpy()
    assert np.allclose(folded, probe.logits(x), atol=1e-3)


def test_low_shot_indices_are_stratified_and_deterministic():
    labels = np.repeat(np.arange(5), [100, 50, 20, 10, 3])
    five = low_shot_indices(labels, per_class=5, seed=1)
    assert np.bincount(labels[five]).tolist() == [5, 5, 5, 5, 3]
    frac = low_shot_indices(labels, fraction=0.1, seed=1)
    assert np.bincount(labels[frac]).tolist() == [10, 5, 2, 1, 1]  # every class keeps >= 1
    assert np.array_equal(frac, low_shot_indices(labels, fraction=0.1, seed=1))
    assert not np.array_equal(frac, low_shot_indices(labels, fraction=0.1, seed=2))
    with pytest.raises(ValueError, match="1.5"):
        low_shot_indices(labels, fraction=1.5)


def test_multilabel_bce_decodes_label_set_codes():
    from bobkit.tasks.training import multilabel_bce

    logits = torch.tensor([[2.0, -1.0, 0.0], [0.5, 0.5, -3.0]])
    codes = torch.tensor([0b101, 0b010])  # item 0: labels 0 and 2; item 1: label 1
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    by_hand = -(targets * torch.log(torch.sigmoid(logits)) + (1 - targets) * torch.log(1 - torch.sigmoid(logits)))
    assert multilabel_bce(3)(logits, codes).item() == pytest.approx(by_hand.mean().item(), rel=1e-6)


def test_multilabel_finetune_learns_each_label():
    """Label k is "quadrant k is bright": a fine-tune with the BCE loss separates every label on its items."""
    from bobkit.eval.metrics import multilabel_auroc_metrics
    from bobkit.tasks.training import multilabel_bce

    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, size=(96, 4))
    images = rng.integers(0, 60, size=(96, 8, 8), dtype=np.uint8)
    for k, (r, c) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
        images[bits[:, k] == 1, r:r + 4, c:c + 4] += 150
    codes = (bits << np.arange(4)).sum(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    config = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear"}
    losses = finetune(model, images, codes, config, image_size=8, epochs=10, lr=1e-2, weight_decay=0.0,
                      layer_decay=None, warmup_epochs=0, batch_size=16, seed=0, device=torch.device("cpu"),
                      criterion=multilabel_bce(4))
    assert losses[-1] < 0.5 * losses[0]
    from bobkit.features.extract import BatchConverter

    with torch.no_grad():
        scores = model.eval()(BatchConverter(config, 8, torch.device("cpu"))(torch.from_numpy(images))).numpy()
    m = multilabel_auroc_metrics(bits, scores.astype(np.float64), ["a", "b", "c", "d"], seed=0)
    assert m["mean_auroc"] > 0.95


def test_finetune_lowers_the_loss_and_refuses_nan():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(64, 8, 8), dtype=np.uint8)
    labels = (images.reshape(64, -1).mean(1) > 127).astype(np.int64)
    images[labels == 1] = np.clip(images[labels == 1].astype(int) + 60, 0, 255).astype(np.uint8)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    config = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear"}
    kwargs = dict(image_size=8, epochs=8, weight_decay=0.0, layer_decay=None, warmup_epochs=1, batch_size=16,
                  seed=0, device=torch.device("cpu"))
    losses = finetune(model, images, labels, config, lr=1e-2, **kwargs)
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    with pytest.raises(FloatingPointError, match="non-finite"):
        finetune(model, images, labels, config, lr=float("inf"), **kwargs)


def test_a_finetune_lr_list_is_selected_on_held_out_training_items():
    common = dict(backbone="resnet18.random_init", dataset="fashion_mnist", protocol="finetune", image_size=32,
                  max_train=100, max_test=40, epochs=1, batch_size=20, num_threads=1, device="cpu")
    swept = run(lr=[1e-6, 3e-3], **common)
    assert swept["selected_lr"] in (1e-6, 3e-3) and swept["n_validation"] == 20
    alone = run(lr=swept["selected_lr"], **common)  # the winner, fine-tuned on all 100 training items
    assert swept["top1"] == alone["top1"] and swept["nll"] == alone["nll"]
    assert "selected_lr" not in alone and alone["n_train"] == 100


def test_unknown_parameter_is_named():
    with pytest.raises(TypeError, match="max_trian"):
        run(max_trian=10)


@pytest.mark.slow
@pytest.mark.parametrize("packaged, control", PACKAGED_VS_CONTROL)
def test_packaged_backbone_beats_its_random_init_control_on_fashion_mnist(packaged, control):
    common = dict(dataset="fashion_mnist", protocol="linear_probe", image_size=64, max_train=1000, max_test=500,
                  batch_size=100)
    pretrained = run(backbone=packaged, **common)
    untrained = run(backbone=control, **common)
    assert pretrained["top1"] > untrained["top1"] + 0.03, (pretrained["top1"], untrained["top1"])
    assert pretrained["top1"] > 0.7
    assert math.isfinite(pretrained["nll"]) and pretrained["nll"] < untrained["nll"]


def test_sgd_probe_reaches_the_lbfgs_probe_on_the_same_objective():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(3, 8)) * 2
    y = np.repeat(np.arange(3), 60)
    x = centers[y] + rng.normal(size=(180, 8))
    lbfgs = fit_linear_probe(x, y, l2=1e-2, max_iter=200)
    sgd = fit_sgd_probe(x, y, l2=1e-2, epochs=60, lr=0.05, batch_size=32)
    agree = (lbfgs.logits(x).argmax(1) == sgd.logits(x).argmax(1)).mean()
    assert agree > 0.95
    assert np.abs(lbfgs.weight - sgd.weight).max() < 0.1


def _correlated_problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Strongly correlated features (few latent factors, like a random-init backbone's): ill-conditioned."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(600, 6))
    y = (latent[:, 0] + 0.5 * latent[:, 1] > 0).astype(np.int64) + 2 * (latent[:, 2] > 0.3)
    x = latent @ rng.normal(size=(6, 64)) * 3 + 0.05 * rng.normal(size=(600, 64))
    return x, y


def _objective(probe, x: np.ndarray, y: np.ndarray, l2: float) -> float:
    xs, yt, _, _ = _standardised(x, y, torch.device("cpu"))
    loss, _, _ = _probe_objective(xs, yt, int(y.max()) + 1, l2)(probe.weight, probe.bias)
    return float(loss)


def test_preconditioner_changes_the_path_not_the_optimum():
    x, y = _correlated_problem()
    plain = fit_linear_probe(x, y, l2=1e-2, max_iter=500, precondition_rank=0)
    preconditioned = fit_linear_probe(x, y, l2=1e-2, max_iter=500, precondition_rank=8)
    # same convex objective (a change of variables): both reach its optimum, with the same weights
    assert _objective(preconditioned, x, y, 1e-2) == pytest.approx(_objective(plain, x, y, 1e-2), abs=1e-5)
    assert torch.allclose(preconditioned.weight, plain.weight, atol=2e-2)


def test_preconditioner_speeds_up_ill_conditioned_probes():
    x, y = _correlated_problem()
    optimum = _objective(fit_linear_probe(x, y, l2=1e-3, max_iter=500, precondition_rank=0), x, y, 1e-3)
    gap = {rank: _objective(fit_linear_probe(x, y, l2=1e-3, max_iter=10, precondition_rank=rank), x, y, 1e-3)
           - optimum for rank in (0, 8)}
    assert gap[8] < 0.5 * gap[0], gap


def test_preconditioner_is_a_seeded_symmetric_map():
    x, _ = _correlated_problem()
    xs = torch.as_tensor(x, dtype=torch.float32)
    apply = _top_direction_preconditioner(xs, 4, 1e-3)
    a, b = torch.randn(3, 64), torch.randn(3, 64)
    assert torch.equal(apply(a), _top_direction_preconditioner(xs, 4, 1e-3)(a))  # deterministic
    assert torch.allclose((apply(a) * b).sum(), (a * apply(b)).sum(), atol=1e-4)  # <aP, b> = <a, bP>
    assert torch.equal(_top_direction_preconditioner(xs, 0, 1e-3)(a), a)
    assert torch.equal(_top_direction_preconditioner(xs, 64, 1e-3)(a), a)  # rank not below D: identity


# ----------------------------------------------------------------------------------------------------------------
# Multi-label datasets (CheXpert): one binary probe per label, AUROC per label and their mean
# ----------------------------------------------------------------------------------------------------------------


def test_multilabel_probe_separates_what_the_features_separate():
    """Features that carry each label (plus noise) give every label's probe an AUROC of 1 on held-out items."""
    from types import SimpleNamespace

    from bobkit.data import DATASETS
    from bobkit.data.sources import label_set_codes
    from bobkit.tasks import classification

    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, size=(120, 5))
    features = np.concatenate([targets * 4.0, rng.normal(size=(120, 3))], axis=1) + rng.normal(scale=0.3,
                                                                                              size=(120, 8))
    codes = label_set_codes(targets)
    p = dict(dataset="chexpert", probe_l2=1e-3, probe_solver="lbfgs", probe_max_iter=50, probe_epochs=1,
             probe_lr=0.1, seed=0)
    scorer = classification._fit_multilabel_probe(p, SimpleNamespace(device="cpu"), features[:80], codes[:80])
    m = scorer(features[80:], codes[80:])
    names = DATASETS["chexpert"].multilabel
    assert m["mean_auroc"] == pytest.approx(1.0) and m["n_labels_scored"] == 5
    assert [m[f"auroc/{'_'.join(n.lower().split())}"] for n in names] == pytest.approx([1.0] * 5)
    # shuffled features carry nothing: the mean AUROC falls to chance
    chance = scorer(rng.permutation(features[80:]), codes[80:])["mean_auroc"]
    assert 0.2 < chance < 0.8


def test_multilabel_cell_reports_mean_auroc_and_fine_tunes_with_bce(tmp_path):
    import json

    from bobkit.rehearsal.environment import rehearsal_environment
    from bobkit.tasks.contract import ParameterError

    with rehearsal_environment(["chexpert"]):
        tuned = run(backbone="resnet18.random_init", dataset="chexpert", protocol="finetune", image_size=32,
                    max_train=None, max_test=None, epochs=1, batch_size=4, lr=1e-3, num_threads=1)
        with pytest.raises(ParameterError, match=r"\{'mixup': 0.8\}: multi-label fine-tuning trains one"):
            run(backbone="resnet18.random_init", dataset="chexpert", protocol="finetune", image_size=32, mixup=0.8)
        run(backbone="resnet18.random_init", dataset="chexpert", image_size=32, max_train=None, max_test=None,
            probe_l2=1.0, output_dir=str(tmp_path))
    # The fine-tune is scored like the probe: mean and per-label AUROC, no softmax accuracy.
    assert tuned.primary == ["mean_auroc"] and "top1" not in tuned.scores
    tuned_labels = [k for k in tuned.scores if k.startswith("auroc/")]
    assert len(tuned_labels) == 5 and tuned["train_steps"] >= 1 and math.isfinite(tuned["train_final_loss"])
    output = json.loads((tmp_path / "task_metrics.json").read_text())
    metrics = output["metrics"]
    assert output["primary"] == ["mean_auroc"] and "top1" not in metrics
    per_label = [v for k, v in metrics.items() if k.startswith("auroc/")]
    assert len(per_label) == 5 and metrics["mean_auroc"] == pytest.approx(np.mean(per_label))
    assert set(output["stderr"]) == set(metrics)  # every AUROC with its bootstrap standard error
    assert output["descriptors"]["n_test"] == 2 and output["descriptors"]["n_labels_scored"] == 5


def test_shots_per_class_above_what_a_class_holds_is_refused_before_work(monkeypatch):
    """Issue 25 item 14: 50 shots of a class with 20 training items would silently keep all of them."""
    from bobkit.tasks import classification
    from bobkit.tasks.contract import ParameterError

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the low-shot rule was checked")

    monkeypatch.setattr(classification, "extract_features", no_work)
    monkeypatch.setattr(classification.backbones, "create_model", no_work)
    with pytest.raises(ParameterError, match=r"shots_per_class=50 is more than 10 of the 10 classes of "
                                             r"'fashion_mnist' train \(max_train=200\) hold .*smallest 20, largest 20"):
        run(backbone="resnet18.random_init", dataset="fashion_mnist", max_train=200, max_test=50, shots_per_class=50,
            image_size=32, device="cpu", num_threads=1)
    for protocol in ("linear_probe", "finetune"):  # a rule every class can meet passes the check
        classification.check_shots({"dataset": "fashion_mnist", "max_train": 200, "seed": 0, "shots_per_class": 20,
                                    "protocol": protocol})
