"""The fine-tuning recipe from timm's pieces: the training transform, seeded per item and loader-independent,
mixup/cutmix targets and label smoothing, drop-path, and the rules between the recipe's parameters."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from bobkit import backbones
from bobkit.data.manifest import resolve
from bobkit.features.device import Execution
from bobkit.tasks.classification import SPEC
from bobkit.tasks.contract import ParameterError
from bobkit.tasks.recipe import AugmentedImages, BatchMixer, Recipe, micro_batch_size
from bobkit.tasks.training import BatchPlan, training_batches

CONFIG = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "interpolation": "bicubic"}
#: The paper's recipe (hsouri/bob-classification model_configs/*_ft.yaml).
PAPER = Recipe(augment=True, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, mixup=0.8, cutmix=1.0,
               label_smoothing=0.1, drop_path=0.1)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real colour photo (scikit-image's chelsea, 451 x 300)."""
    with Image.open(resolve("skimage_photos", "chelsea.png")) as im:
        return im.convert("RGB")


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------------------
# The training transform
# ------------------------------------------------------------------------------------------------------------


def test_training_transform_is_timms_create_transform(photo):
    from timm.data import create_transform

    ours = PAPER.transform(CONFIG, 64)
    theirs = create_transform((3, 64, 64), is_training=True, scale=(0.08, 1.0), hflip=0.5, color_jitter=None,
                              auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic", mean=CONFIG["mean"],
                              std=CONFIG["std"], re_prob=0.25, re_mode="pixel", re_count=1)
    assert repr(ours) == repr(theirs)
    assert "RandAugment" in repr(ours) and "RandomErasing" in repr(ours) and "RandomResizedCrop" in repr(ours)
    for seed in range(3):
        _seed_all(seed)
        a = ours(photo)
        _seed_all(seed)
        b = theirs(photo)
        assert a.shape == (3, 64, 64) and torch.equal(a, b)
    _seed_all(0)
    first = ours(photo)
    assert not torch.equal(first, ours(photo))  # random: the next draw differs


def test_an_items_augmentation_is_a_function_of_seed_step_and_index(photo):
    images = np.stack([np.asarray(photo)[:200, :200], np.asarray(photo)[100:300, 200:400]])
    data = AugmentedImages(images, np.array([0, 1]), PAPER.transform(CONFIG, 32), seed=7)
    x, label = data[(3, 1)]
    state = torch.get_rng_state()
    assert label == 1 and torch.equal(x, data[(3, 1)][0])
    assert torch.equal(state, torch.get_rng_state())  # the caller's generators are left alone
    assert not torch.equal(x, data[(4, 1)][0])  # another step: another draw
    assert not torch.equal(x, AugmentedImages(images, np.array([0, 1]), PAPER.transform(CONFIG, 32), seed=8)[(3, 1)][0])


def test_augmented_batches_are_the_same_with_0_and_2_loader_processes():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 20, 20, 3), dtype=np.uint8)
    labels = np.arange(12) % 3
    plan = BatchPlan.for_epochs(12, 4, epochs=2, seed=0)  # 6 steps of 4, 2 micro-batches each

    def batches(workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        ex = Execution(device=torch.device("cpu"), loader_workers=workers)
        return [m for _, micro in training_batches(images, labels, plan, CONFIG, image_size=16, recipe=PAPER,
                                                   execution=ex, accum_steps=2) for m in micro]

    inline, workers = batches(0), batches(2)
    assert len(inline) == 12
    for (x0, y0), (x2, y2) in zip(inline, workers):
        assert x0.shape == (2, 3, 16, 16) and torch.equal(x0, x2) and torch.equal(y0, y2)
    # the labels are those of the plan's items, in its order
    expected = np.concatenate([labels[plan.batch(s)] for s in range(6)])
    assert np.array_equal(torch.cat([y for _, y in inline]).numpy(), expected)


def test_plain_path_without_augment_is_the_frozen_feature_resize():
    from bobkit.features.extract import BatchConverter

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(8, 12, 12), dtype=np.uint8)
    plan = BatchPlan.for_epochs(8, 4, epochs=1, seed=3)
    ex = Execution(device=torch.device("cpu"))
    (step, [(x, y)]), _ = list(training_batches(images, np.arange(8), plan, CONFIG, image_size=16, recipe=Recipe(),
                                                 execution=ex))
    assert step == 0
    assert torch.equal(x, BatchConverter(CONFIG, 16)(images[plan.batch(0)]))
    assert y.tolist() == plan.batch(0).tolist()


# ------------------------------------------------------------------------------------------------------------
# Mixing, label smoothing
# ------------------------------------------------------------------------------------------------------------


def test_mixed_targets_sum_to_one_with_the_smoothing_mass_where_it_belongs():
    classes, smoothing = 10, 0.1
    mixer = BatchMixer(Recipe(mixup=0.8, cutmix=1.0, label_smoothing=smoothing), classes, seed=0)
    x = torch.rand(8, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    off = smoothing / classes
    for step in range(6):
        _, target = mixer(x.clone(), y, step)
        assert target.shape == (8, classes)
        assert torch.allclose(target.sum(1), torch.ones(8), atol=1e-6)
        # Item 2j is mixed with item 2j+1 (the mixer reorders: match rows by their largest entry's class).
        for row in target:
            own, partner = row.topk(2).indices.tolist()
            assert {own, partner} in ({2 * j, 2 * j + 1} for j in range(4))
            # the two classes share 1 - smoothing + 2 * off; every other class holds exactly off
            assert float(row[own] + row[partner]) == pytest.approx(1 - smoothing + 2 * off, abs=1e-6)
            rest = np.delete(row.numpy(), [own, partner])
            assert np.allclose(rest, off, atol=1e-7)


def test_mixing_is_the_same_however_the_global_batch_is_split():
    mixer = BatchMixer(Recipe(mixup=0.8, cutmix=1.0), 4, seed=3)
    x = torch.rand(8, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    for step in range(4):
        whole_x, whole_t = mixer(x.clone(), y, step)
        halves = [mixer(x[k:k + 4].clone(), y[k:k + 4], step) for k in (0, 4)]
        # the mixer's order is evens then odds reversed within each micro-batch; compare as sets of rows
        parts_x = torch.cat([h[0] for h in halves])
        parts_t = torch.cat([h[1] for h in halves])
        key = lambda t: sorted(tuple(r.tolist()) for r in t.flatten(1))  # noqa: E731
        assert key(whole_x) == key(parts_x) and key(whole_t) == key(parts_t)
    a, b = mixer(x.clone(), y, 0)[1], mixer(x.clone(), y, 1)[1]
    assert not torch.equal(a, b)  # lambda is drawn per step


def test_loss_follows_timms_train_script():
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    assert isinstance(PAPER.criterion(), SoftTargetCrossEntropy)
    smooth = Recipe(label_smoothing=0.1).criterion()
    assert isinstance(smooth, LabelSmoothingCrossEntropy)
    assert isinstance(Recipe().criterion(), torch.nn.CrossEntropyLoss)
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    logp = torch.log_softmax(logits, 1)[0]
    by_hand = 0.9 * -logp[0] + 0.1 * -logp.mean()  # (1 - s) NLL + s * uniform cross-entropy
    assert float(smooth(logits, torch.tensor([0]))) == pytest.approx(float(by_hand), rel=1e-6)
    assert Recipe().mixer(3, 0) is None


# ------------------------------------------------------------------------------------------------------------
# Drop-path
# ------------------------------------------------------------------------------------------------------------


def test_drop_path_reaches_timm_and_acts_in_train_mode_only():
    model = backbones.create_model("vit_tiny_patch16_224.random_init", num_classes=3, image_size=32,
                                   drop_path_rate=0.5)
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.5)  # timm: linear in depth, up to the rate
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.allclose(model(x), model(x))
        plain = backbones.create_model("vit_tiny_patch16_224.random_init", num_classes=3, image_size=32).train()
        assert torch.equal(plain(x), plain(x))  # no drop-path, no dropout: train mode is deterministic
    with pytest.raises(ValueError, match="drop_path_rate"):
        backbones.create_model("vit_tiny_patch16_224.random_init", num_classes=3, image_size=32, drop_path_rate=1.0)


# ------------------------------------------------------------------------------------------------------------
# Rules between the recipe's parameters
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, named", [
    ({"auto_augment": "rand-m9-mstd0.5-inc1"}, "augment=True"),
    ({"re_prob": 0.25}, "re_prob"),
    ({"augment": True, "rrc_scale": [0.9, 0.5]}, "rrc_scale"),
    ({"augment": True, "rrc_scale": [0.5]}, "rrc_scale"),
    ({"batch_size": 64, "accum_steps": 3}, "batch_size=64"),
    ({"batch_size": 6, "accum_steps": 2, "mixup": 0.8}, "3 is odd"),
    ({"augment": True, "auto_augment": "no-such-policy"}, "auto_augment"),
])
def test_recipe_rules_fail_before_any_work_naming_the_values(overrides, named):
    with pytest.raises(ParameterError, match=named):
        SPEC.validate({"protocol": "finetune", **overrides})


def test_a_paper_recipe_validates_and_splits_its_global_batch():
    params = SPEC.validate({"protocol": "finetune", "augment": True, "auto_augment": "rand-m9-mstd0.5-inc1",
                            "re_prob": 0.25, "mixup": 0.8, "cutmix": 1.0, "label_smoothing": 0.1,
                            "drop_path": 0.1, "batch_size": 1024, "accum_steps": 8})
    assert Recipe.from_params(params) == PAPER
    assert micro_batch_size(1024, 8) == 128 and micro_batch_size(1024, 4, processes=2) == 128
    with pytest.raises(ParameterError, match="processes=2 x accum_steps=3"):
        micro_batch_size(1024, 3, processes=2)


def test_the_papers_randaugment_survives_a_zero_bit_posterize(photo):
    """rand-m9-mstd0.5-inc1 reaches magnitude 10, where PosterizeIncreasing keeps 0 bits: Pillow 13 raises for
    that; the recipe's transform turns the image black, as the Pillow of the paper's time did."""
    from timm.data.auto_augment import posterize

    transform = PAPER.transform(CONFIG, 32)
    (randaugment,) = [t for t in transform.transforms if type(t).__name__ == "RandAugment"]
    (op,) = [op for op in randaugment.ops if op.name == "PosterizeIncreasing"]
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0  # the largest magnitude the policy draws
    small = photo.resize((32, 32))
    with pytest.raises(ValueError, match="bits"):
        posterize(small, 0)  # timm's own op on this Pillow
    assert not np.asarray(op(small)).any()  # 0 bits kept: black
    op.magnitude = 5  # 2 bits kept: as timm
    assert np.array_equal(np.asarray(op(small)), np.asarray(posterize(small, 2)))


def test_a_classification_cell_fine_tunes_with_the_papers_recipe():
    """Every knob reaches the run: augmented input (timm transform in the loader), mixup + cutmix with smoothing,
    drop-path, the global batch split into 2 micro-batches (recorded as exec_accum_steps)."""
    from bobkit.tasks.classification import run

    m = run(backbone="mobilenetv2_100.packaged_tv_in1k", dataset="fashion_mnist", protocol="finetune",
            image_size=32, max_train=64, max_test=32, epochs=1, batch_size=16, lr=1e-3, augment=True,
            auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, mixup=0.8, cutmix=1.0, label_smoothing=0.1,
            drop_path=0.1, accum_steps=2, warmup_lr=1e-4, min_lr=1e-6, num_threads=1, device="cpu")
    assert m["exec_accum_steps"] == 2.0 and m["n_train"] == 64.0
    assert m["exec_loader_processes"] >= 1  # augmentation in worker processes: all usable cores but the trainer's
    assert 0.0 <= m["top1"] <= 1.0 and np.isfinite(m["nll"])
