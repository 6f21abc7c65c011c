"""Corruptions and the OOD task on offline data (Fashion-MNIST corruptions, MNIST-5k -> sklearn digits)."""

from __future__ import annotations

import numpy as np
import pytest

from bobkit.data import MissingDataError, get_dataset
from bobkit.eval.corruptions import CORRUPTIONS, corrupt
from bobkit.results.table import higher_is_better
from bobkit.tasks import ood

PACKAGED = "mobilenetv2_100.packaged_tv_in1k"
TINY = dict(image_size=32, max_train=300, max_test=300, max_target=100, max_corrupted=100, num_threads=1,
            device="cpu")


@pytest.fixture(scope="module")
def fmnist() -> np.ndarray:
    return get_dataset("fashion_mnist", "test", max_samples=40).images


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    from PIL import Image
    from skimage import data

    return np.stack([np.asarray(Image.fromarray(im).resize((48, 48))) for im in (data.astronaut(), data.coffee())])


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_zero_is_identity_and_higher_severity_changes_more(name, fmnist, rgb):
    for images in (fmnist, rgb):
        same = corrupt(images, name, 0)
        assert same.dtype == np.uint8 and np.array_equal(same, images) and same is not images
        change = [np.abs(corrupt(images, name, s).astype(float) - images).mean() for s in range(1, 6)]
        assert change[0] > 0, name
        assert all(b >= a for a, b in zip(change, change[1:])), (name, change)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruptions_are_deterministic_per_seed(name, fmnist):
    a, b = corrupt(fmnist, name, 3, seed=1), corrupt(fmnist, name, 3, seed=1)
    assert np.array_equal(a, b) and a.shape == fmnist.shape
    if "noise" in name:
        assert not np.array_equal(a, corrupt(fmnist, name, 3, seed=2))


def test_bad_corruption_arguments_are_rejected(fmnist):
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(fmnist, "fog", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(fmnist, "contrast", 6)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(fmnist.astype(float), "contrast", 1)


def test_masked_accuracy_restricts_the_arg_max_to_the_class_subset():
    logits = np.array([[5.0, 1.0, 2.0, 0.0], [0.0, 3.0, 1.0, 9.0]])
    labels = np.array([2, 1])
    assert ood.masked_accuracy(logits, labels) == 0.0
    assert ood.masked_accuracy(logits, labels, np.array([1, 2])) == 1.0


def test_metric_names_read_with_the_right_direction():
    for name in ("id_acc", "acc/sklearn_digits", "acc/gaussian_noise/3", "mca"):
        assert higher_is_better(name), name
    for name in ("drop_sklearn_digits", "mca_drop"):
        assert not higher_is_better(name), name


def test_unknown_parameter_and_target_are_named():
    with pytest.raises(TypeError, match="target_list"):
        ood.run(target_list=["x"])
    with pytest.raises(ValueError, match="imagenet_q"):
        ood.run(targets=["imagenet_q"])
    with pytest.raises(ValueError, match="fog"):
        ood.run(corruptions=["fog"])


def test_target_with_other_classes_is_refused():
    with pytest.raises(ValueError, match="label space"):
        ood.run(backbone=PACKAGED, dataset="fashion_mnist", targets=["mnist5k"], **TINY)


def test_visda_missing_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("BOB_DATA_DIR", str(tmp_path))
    with pytest.raises(MissingDataError, match="visda2017"):
        ood.load_visda2017("validation")


def test_visda_folder_builder(tmp_path):
    from PIL import Image

    for split in ("train", "validation"):
        for cls in ("car", "horse"):
            (tmp_path / split / cls).mkdir(parents=True)
            for k in range(3):
                Image.new("RGB", (20, 10), (10, 200, 30)).save(tmp_path / split / cls / f"{k}.png")
    real = ood.load_visda2017("validation", root=tmp_path, storage_size=16)
    assert len(real) == 6 and real.classes[real.labels[0]] == "car" and real.batch([1]).shape == (1, 16, 16, 3)
    train, test = (ood.load_visda2017(s, root=tmp_path) for s in ("train", "test"))
    assert len(train) == 4 and len(test) == 2  # one synthetic image per class held out for in-distribution
    assert not set(map(str, train.paths)) & set(map(str, test.paths))


def test_fashion_mnist_corruptions(tmp_path):
    m = ood.run(backbone=PACKAGED, dataset="fashion_mnist", targets=["corruptions"],
                corruptions=["gaussian_noise", "contrast"], severities=[1, 5], **TINY)
    expected = {f"acc/{c}/{s}" for c in ("gaussian_noise", "contrast") for s in (1, 5)}
    assert expected <= set(m)
    assert m["mca"] == pytest.approx(np.mean([m[k] for k in expected]))
    assert m["mca_drop"] == pytest.approx(m["id_acc"] - m["mca"])
    assert m["id_acc"] > 0.5
    assert m["acc/contrast/5"] < m["id_acc"]  # the strongest contrast loss hurts a frozen ImageNet backbone
    # sampling standard errors: binomial per accuracy, over the 100 corrupted / 300 in-distribution items
    assert m["se/id_acc"] == pytest.approx(np.sqrt(m["id_acc"] * (1 - m["id_acc"]) / 300))
    for key in expected:
        assert m[f"n/{key}"] == 100 and m[f"se/{key}"] == pytest.approx(np.sqrt(m[key] * (1 - m[key]) / 100))
    # mca: the SE of the per-image mean over the 4 conditions, at most the binomial SE of its mean accuracy
    assert 0 < m["se/mca"] <= np.sqrt(m["mca"] * (1 - m["mca"]) / 100) + 1e-12
    assert m["se/mca_drop"] == pytest.approx(np.hypot(m["se/id_acc"], m["se/mca"]))
    assert "selected_probe_l2" in m and m["n_test"] == 300


def test_mnist_to_sklearn_digits_is_a_real_shift():
    m = ood.run(backbone=PACKAGED, dataset="mnist5k", targets=["sklearn_digits"], **TINY)
    assert {"id_acc", "acc/sklearn_digits", "drop_sklearn_digits"} <= set(m)
    assert m["drop_sklearn_digits"] == pytest.approx(m["id_acc"] - m["acc/sklearn_digits"])
    assert m["id_acc"] > 0.5 and m["drop_sklearn_digits"] > 0.1
    n_target = m["n/acc/sklearn_digits"]
    assert n_target == 100  # max_target
    acc = m["acc/sklearn_digits"]
    assert m["se/acc/sklearn_digits"] == pytest.approx(np.sqrt(acc * (1 - acc) / n_target))
    assert m["se/drop_sklearn_digits"] == pytest.approx(np.hypot(m["se/id_acc"], m["se/acc/sklearn_digits"]))


def test_execution_settings_are_recorded():
    m = ood.run(backbone=PACKAGED, dataset="fashion_mnist", targets=["corruptions"], corruptions=["contrast"],
                severities=[5], precision="bf16", loader_workers=1, **TINY)
    assert m["exec_cuda"] == 0.0 and m["exec_bf16"] == 1.0 and m["exec_autocast_bits"] == 16.0
    assert m["exec_loader_workers"] == 1.0 and m["exec_compile"] == 0.0 and m["exec_grad_checkpointing"] == 0.0
    assert m["exec_channels_last"] == 1.0  # auto: the corrupted images ran through a CNN in NHWC
    assert m["id_acc"] > 0.5


def test_finetune_protocol_records_its_execution_settings():
    m = ood.run(backbone=PACKAGED, dataset="mnist5k", protocol="finetune", targets=["sklearn_digits"],
                image_size=32, max_train=64, max_test=64, max_target=64, batch_size=32, num_threads=1, device="cpu",
                precision="bf16", channels_last=False, grad_checkpointing=True)
    assert m["exec_bf16"] == 1.0 and m["exec_channels_last"] == 0.0 and m["exec_grad_checkpointing"] == 1.0
    assert 0.0 <= m["id_acc"] <= 1.0
    assert m["drop_sklearn_digits"] == pytest.approx(m["id_acc"] - m["acc/sklearn_digits"])


def test_a_missing_target_is_reported_before_any_feature_is_extracted(tmp_path, monkeypatch):
    """Issue 25 item 14: every dataset a cell reads is checked before work (not after the source features)."""
    monkeypatch.setenv("BOB_DATA_DIR", str(tmp_path))  # no ImageNet-R here

    def no_work(*args, **kwargs):
        raise AssertionError("features extracted before the targets were checked")

    monkeypatch.setattr(ood, "extract_features", no_work)
    monkeypatch.setattr(ood.backbones, "create_model", no_work)
    with pytest.raises(MissingDataError, match="imagenet_r"):
        ood.run(backbone=PACKAGED, dataset="fashion_mnist", targets=["corruptions", "imagenet_r"], **TINY)
