"""The transferability task: scores from the probe's cached features, LEEP/NCE from the backbone's own ImageNet head
(and a named reason where there is none), timings, the declaration's checks, the notebook and the demo grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bobkit import backbones
from bobkit.batch.codehash import task_code_files
from bobkit.batch.grid import load_grid
from bobkit.data import get_dataset
from bobkit.eval import transferability as T
from bobkit.features.device import resolve_execution
from bobkit.features.extract import extract_features, feature_key, run_forward
from bobkit.results.sidecars import parse_task_output
from bobkit.tasks import ParameterError, UnknownParameterError, classification, get_spec, transferability

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "params" / "demo.yaml"
#: Tiny cells: the probe and the transferability cell share these features.
TINY = dict(dataset="mnist5k", image_size=32, max_train=120, device="cpu", num_threads=2)
ESTIMATORS = ("logme", "leep", "nce", "h_score", "knn_acc")


def _demo_cells(task: str) -> list:
    return [cell for cell in load_grid(DEMO) if cell.task == task]


DEMO_BACKBONES = sorted({cell.params["backbone"] for cell in _demo_cells("transferability")})
HEADED = [b for b in DEMO_BACKBONES if transferability.no_head_reason(b) is None]


# ------------------------------------------------------------------------------------------------------------
# Declaration and bad input
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"knn_k": 0}, "knn_k=0 must be at least 1"),
    ({"protocol": "finetune"}, "protocol='finetune' is not one of 'frozen'"),
    ({"dataset": "mnist6k"}, "dataset='mnist6k' is not accepted"),
    ({"max_train": 0}, "max_train=0 must be at least 1"),
    ({"backbone": "resnet19.random_init"}, "backbone='resnet19.random_init' is not accepted"),
])
def test_bad_values_are_named_before_any_work(overrides, needle):
    with pytest.raises(ParameterError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        transferability.run(**overrides)


def test_an_unknown_parameter_is_named_with_its_close_match():
    with pytest.raises(UnknownParameterError, match="max_trian.*max_train"):
        transferability.run(max_trian=100)


def test_the_scores_are_declared_higher_is_better_and_logme_is_the_headline():
    spec = get_spec("transferability")
    for name in ESTIMATORS:
        assert spec.metric(name).kind == "score" and spec.metric(name).higher_is_better is True, name
    assert [m.name for m in spec.metrics if m.primary] == ["logme"]
    for name in ("logme_seconds", "source_head_seconds", "no_source_head/random_init", "source_head_classes",
                 "feature_cache_hit", "n_features"):
        assert spec.metric(name).kind == "descriptor", name
    # the feature settings are the probe's: same names, same defaults
    probe = get_spec("classification").defaults()
    assert {k: spec.defaults()[k] for k in ("image_size", "max_train", "seed")} == {
        k: probe[k] for k in ("image_size", "max_train", "seed")}


def test_the_run_key_follows_the_estimators_code():
    assert "bobkit.eval.transferability" in task_code_files("transferability")


# ------------------------------------------------------------------------------------------------------------
# Which backbones have an ImageNet head
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("backbone", "reason"), [
    ("mobilenetv2_100.packaged_tv_in1k", None),  # a packaged file converted with its classifier
    ("tf_efficientnet_lite0.packaged_in1k", None),
    ("convnext_base.fb_in22k_ft_in1k", None),  # hub weights with an IN-1k head
    ("convnext_base.fb_in22k", "headless_weights"),  # a 21,841-class head is not ImageNet-1k's
    ("vit_small_patch16_224.dino", "headless_weights"),  # self-supervised: no classifier
    ("resnet50.dino", "headless_weights"),  # converted from a URL: backbone only
    ("resnet18.random_init", "random_init"),
])
def test_no_head_reason_follows_the_weights(backbone, reason):
    assert transferability.no_head_reason(backbone) == reason


def _photos(size: int = 224) -> tuple[np.ndarray, list[str]]:
    """Two real photos as uint8 (N, H, W, 3): a cat and a cup of coffee (scikit-image)."""
    from PIL import Image
    from skimage import data

    images = [np.asarray(Image.fromarray(getattr(data, name)()).resize((size, size), Image.BICUBIC))
              for name in ("chelsea", "coffee")]
    return np.stack(images), ["chelsea", "coffee"]


def _normalised(images: np.ndarray, backbone: str, size: int) -> torch.Tensor:
    config = backbones.data_config(backbone, image_size=size)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(config["mean"])[:, None, None]) / torch.tensor(config["std"])[:, None, None]


@pytest.mark.parametrize("backbone", HEADED)
def test_the_head_on_pooled_features_is_the_full_imagenet_classifier(backbone):
    """head(pooled features) equals the 1000-class model's logits, and it is the pretrained head: it calls the
    cat photo a cat (ImageNet classes 281-285)."""
    images, _ = _photos()
    x = _normalised(images, backbone, 224)
    with torch.no_grad():
        logits = backbones.create_model(backbone, num_classes=1000)(x)
        pooled = backbones.create_model(backbone, num_classes=0)(x)
    probs = transferability.source_head_probabilities(backbone, pooled.numpy(), image_size=224, seed=0,
                                                      device=torch.device("cpu"))
    assert probs.shape == (2, 1000)
    np.testing.assert_allclose(probs, torch.softmax(logits.double(), 1).numpy(), atol=1e-5)
    assert 281 <= int(probs[0].argmax()) <= 285, int(probs[0].argmax())


# ------------------------------------------------------------------------------------------------------------
# The task on the demo backbones, after the probe
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", DEMO_BACKBONES)
def test_the_task_scores_the_probes_cached_features(backbone):
    probe = classification.run(backbone=backbone, max_test=60, **TINY)
    result = transferability.run(backbone=backbone, **TINY)
    assert probe["n_train"] == result["n_train"] == 120
    assert result["feature_cache_hit"] == 1.0 and result["load_seconds"] < 1.0  # no backbone built, no forward
    cached = extract_features(backbone, TINY["dataset"], "train", image_size=32, max_samples=120, seed=0,
                              device="cpu")
    assert cached.cache_hit
    features, labels = np.asarray(cached.features, dtype=np.float64), cached.labels
    assert result["logme"] == pytest.approx(T.logme(features, labels), abs=1e-12)
    assert result["h_score"] == pytest.approx(T.h_score(features, labels), abs=1e-9)
    assert result["knn_acc"] == pytest.approx(T.knn_loo_accuracy(features, labels, k=5), abs=1e-12)
    assert result["n_features"] == features.shape[1] and result["n_classes"] == 10
    reason = transferability.no_head_reason(backbone)
    output = parse_task_output(result.output())
    assert output.non_finite() == []  # a not-applicable score is absent, never NaN: the runner keeps the cell
    assert output.primary == ["logme"]
    for name in ("logme", "h_score", "knn_acc"):
        assert output.descriptors[f"{name}_seconds"] >= 0.0
    if reason is None:
        assert set(ESTIMATORS) <= set(output.metrics) and output.descriptors["source_head_classes"] == 1000
        assert result["leep"] < 0.0 and result["nce"] <= 0.0  # log-probabilities, negative entropies
        assert output.descriptors["source_head_seconds"] > 0.0 and result.details.not_applicable == {}
    else:
        assert reason == "random_init"
        assert "leep" not in output.metrics and "nce" not in output.metrics
        assert output.descriptors[f"no_source_head/{reason}"] == 1.0 and output.descriptors["source_head_classes"] == 0
        assert result.details.not_applicable == {"leep": transferability.NO_HEAD_REASONS[reason],
                                                 "nce": transferability.NO_HEAD_REASONS[reason]}


@pytest.mark.parametrize("backbone", HEADED[:1])
def test_leep_and_nce_equal_those_of_the_full_models_predictions(backbone):
    """An independent path: the 1000-class model's forward pass over the same training images."""
    result = transferability.run(backbone=backbone, **TINY)
    dataset = get_dataset(TINY["dataset"], "train", max_samples=120, seed=0)
    model = backbones.create_model(backbone, num_classes=1000, image_size=32)
    config = backbones.data_config(backbone, image_size=32)
    logits = run_forward(model.eval(), dataset, config, 32, 64, resolve_execution("cpu", "fp32"))
    probs = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), 1).numpy()
    assert result["leep"] == pytest.approx(T.leep(probs, dataset.labels), abs=1e-4)
    assert result["nce"] == pytest.approx(T.nce(probs.argmax(1), dataset.labels), abs=1e-9)


def test_scores_without_a_head_leave_leep_and_nce_out():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    features = np.eye(3)[labels] * 2 + rng.normal(size=(60, 3))
    scores = transferability.score_features(features, labels, knn_k=3)
    assert set(scores) == {"logme", "logme_seconds", "h_score", "h_score_seconds", "knn_acc", "knn_acc_seconds"}
    probs = np.full((60, 4), 0.25)
    with_head = transferability.score_features(features, labels, source_probs=lambda: probs)
    # a head that says nothing: LEEP is log(1/3) (the labels' marginal), NCE is -log(3) (labels independent of it)
    assert with_head["leep"] == pytest.approx(np.log(1 / 3)) and with_head["nce"] == pytest.approx(-np.log(3))


# ------------------------------------------------------------------------------------------------------------
# Notebook and grids
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.notebook
def test_the_notebook_runs_under_papermill_and_says_why_leep_is_missing(tmp_path):
    import papermill

    out_dir = tmp_path / "cell"
    executed = papermill.execute_notebook(
        str(REPO / "notebooks" / "tasks" / "transferability.ipynb"), str(tmp_path / "out.ipynb"),
        parameters={"backbone": "resnet18.random_init", "dataset": "mnist5k", "image_size": 32, "max_train": 60,
                    "knn_k": 3, "device": "cpu", "num_threads": 1, "output_dir": str(out_dir)},
        kernel_name="python3", progress_bar=False, cwd=str(REPO))
    output = json.loads((out_dir / "task_metrics.json").read_text())
    assert output["format"] == 2 and output["primary"] == ["logme"]
    assert set(output["metrics"]) == {"logme", "h_score", "knn_acc"}
    assert output["setting_params"]["knn_k"] == 3 and output["setting_params"]["max_train"] == 60
    assert output["descriptors"]["no_source_head/random_init"] == 1.0
    shown = json.dumps(executed.cells[-1]["outputs"])
    assert "random-init control has no trained classifier head" in shown


def test_demo_transferability_cells_read_the_probes_features():
    probes = {(c.params["backbone"], c.params["dataset"]): c.params for c in _demo_cells("classification")
              if c.params["protocol"] == "linear_probe"}
    cells = _demo_cells("transferability")
    assert len(cells) == 12 and {c.params["dataset"] for c in cells} == {"fashion_mnist", "mnist5k"}
    for cell in cells:
        p = cell.params
        probe = probes[(p["backbone"], p["dataset"])]
        assert feature_key(p["backbone"], p["dataset"], "train", image_size=p["image_size"],
                           max_samples=p["max_train"], seed=p["seed"]) == feature_key(
            probe["backbone"], probe["dataset"], "train", image_size=probe["image_size"],
            max_samples=probe["max_train"], seed=probe["seed"])


def test_the_example_grid_is_a_subset_of_the_demo():
    demo = {cell.run_key for cell in load_grid(DEMO)}
    example = load_grid(REPO / "params" / "examples" / "rank_before_you_run.yaml")
    assert {c.task for c in example} == {"classification", "transferability"}
    assert {c.run_key for c in example} <= demo
