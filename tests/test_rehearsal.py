"""The dress rehearsal (`bob rehearse`): stand-ins in each dataset's published layout, read by the real loaders;
cell groups; faults reported with the cell and the reason; and the loader/task bugs the rehearsal found."""

from __future__ import annotations

import pytest
import torch

# ------------------------------------------------------------------------------------------------------------
# Bugs the rehearsal found, each pinned by a test that failed before its fix
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone, finest", [
    ("vit_small_patch16_224.random_init", (64, 88)),  # 16 x 22 patches, upsampled 4x (the simple pyramid)
    ("swinv2_tiny_window8_256.random_init", (64, 88)),  # stride 4
    ("vit_large_patch14_clip_224.laion2b", (76, 104)),  # 19 x 26 patches after padding to whole patches, 4x
])
def test_detection_trunks_take_the_non_square_inputs_of_real_datasets(backbone, finest):
    """torchvision's detection transform keeps each image's aspect (COCO 640x480 at 1024 -> 1024x1376 after
    padding); ViT and SwinV2 trunks built for a square image_size refused that ("Input width (1376) doesn't
    match model (1024)"), so every COCO detection cell of a ViT or SwinV2 in the paper suites failed."""
    from bobkit.tasks.detector import TimmFPN, _all_reductions, _timm_arch, create_body, plan_levels

    out_indices, scales = plan_levels(_all_reductions(_timm_arch(backbone)))
    with torch.device("meta"):  # the real architecture and geometry, without the arithmetic
        body = create_body(backbone, "random_init", out_indices=out_indices, image_size=256, seed=0)
        trunk = TimmFPN(body, scales)
    pyramid = trunk(torch.empty(1, 3, 256, 352, device="meta"))
    assert tuple(next(iter(pyramid.values())).shape[-2:]) == finest


def _protocol2_gnd(junk: list[int]) -> bytes:
    """A revisited ground truth pickled by Python 3 at protocol 2 (numpy arrays), as the stand-in writes it."""
    import pickle

    import numpy as np

    gnd = [{"bbx": [1.0, 2.0, 30.0, 40.0], "easy": np.array([0]), "hard": np.array([1]),
            "junk": np.array(junk, dtype=np.int64)}]
    return pickle.dumps({"imlist": ["a", "b"], "qimlist": ["q"], "gnd": gnd, "tags": {"x"}}, protocol=2)


def test_ground_truth_pickles_of_protocol_2_load_with_empty_arrays_and_sets():
    """Protocol 2 spells the builtins module ``__builtin__`` and pickles an empty array's data as ``bytes()``:
    the allow-list knew neither spelling, so a ground truth with a query without junk (or a set) was refused."""
    from bobkit.data.revisited import restricted_unpickle

    loaded = restricted_unpickle(_protocol2_gnd([]))
    assert loaded["gnd"][0]["junk"].tolist() == [] and loaded["gnd"][0]["easy"].tolist() == [0]
    assert loaded["tags"] == {"x"}
    assert restricted_unpickle(_protocol2_gnd([1]))["gnd"][0]["junk"].tolist() == [1]


def test_ground_truth_pickles_still_refuse_code_and_huge_byte_strings():
    import pickle

    from bobkit.data.revisited import PickleLimitError, PickleLimits, UnsafePickleError, restricted_unpickle

    class Boom:
        def __reduce__(self):
            import os

            return (os.system, ("true",))

    with pytest.raises(UnsafePickleError, match="system"):
        restricted_unpickle(pickle.dumps(Boom(), protocol=2))
    # bytes(n) allocates n zero bytes: a 60-byte pickle must not make the reader allocate a terabyte.
    bomb = b"\x80\x02c__builtin__\nbytes\nq\x00J\x00\x00\x00\x40\x85q\x01Rq\x02."
    with pytest.raises(PickleLimitError, match="bytes"):
        restricted_unpickle(bomb, PickleLimits(max_array_bytes=1 << 20))


@pytest.mark.parametrize("name", ["imagenet_1k", "imagenet_1k_1pct", "imagenet_1k_10pct"])
def test_imagenet_has_a_test_split_the_tasks_can_ask_for(name):
    """Classification reads the splits "train" and "test", OOD and robustness default to "test": ImageNet had only
    "train" and "val", so every ImageNet cell of bob-full failed (UnknownSplitError: no split 'test'). Its test
    split is the 50k validation images (ILSVRC-2012's test labels were never released)."""
    from bobkit.data import dataset_info, get_dataset
    from bobkit.rehearsal.environment import rehearsal_environment

    assert "test" in dataset_info(name).splits
    with rehearsal_environment([name]):
        test, val = get_dataset(name, "test"), get_dataset(name, "val")
        assert [p.name for p in test.paths] == [p.name for p in val.paths]
        assert all(p.name.startswith("ILSVRC2012_val_") for p in test.paths) and len(test) == 6
        assert test.labels.tolist() == val.labels.tolist() and test.split == "test"


# ------------------------------------------------------------------------------------------------------------
# Stand-ins: each dataset's published layout, read by its real loader
# ------------------------------------------------------------------------------------------------------------


def _read_standin(name: str):
    """Everything the loaders make of a stand-in, as (items per split, a few facts)."""
    from bobkit.data import DATASETS, get_dataset

    if name in DATASETS:
        splits = {s: get_dataset(name, s) for s in DATASETS[name].splits}
        for ds in splits.values():
            assert ds.batch(range(len(ds))).dtype.name == "uint8"  # every file decodes
        return {s: len(ds) for s, ds in splits.items()}, splits
    if name in ("roxford5k", "rparis6k"):
        from bobkit.tasks.retrieval import load_revisited

        queries, database, gnd = load_revisited(name, crop_queries=True)
        return {"query": len(queries), "database": len(database)}, gnd
    if name == "visda2017":
        from bobkit.tasks.ood import load_visda2017

        return {s: len(load_visda2017(s)) for s in ("train", "test", "validation")}, None
    if name in ("gldv2", "copydays"):
        from bobkit.tasks.retrieval import load_listed

        queries, database, positives = load_listed(name)
        for ds in (queries, database):
            assert ds.batch(range(len(ds))).dtype.name == "uint8"
        return {"query": len(queries), "database": len(database)}, positives
    from bobkit.data import scenes

    out = {}
    for split in ("train", "val"):
        annotations, images = scenes.resolve_coco_split(name, split)
        ds = scenes.CocoDataset(annotations, images, keep_empty=split == "val")
        out[split] = [(tuple(image.shape), len(target["boxes"])) for image, target in (ds[i] for i in range(len(ds)))]
    return {s: len(v) for s, v in out.items()}, out


EXPECTED_SIZES = {
    "imagenet_1k": {"train": 9, "val": 6, "test": 6},
    "imagenet_1k_1pct": {"train": 6, "val": 6, "test": 6},
    "imagenet_1k_10pct": {"train": 9, "val": 6, "test": 6},
    "imagenet_a": {"test": 2}, "imagenet_r": {"test": 2}, "imagenet_sketch": {"test": 2}, "imagenet_v2": {"test": 2},
    "cifar100": {"train": 9, "test": 4},
    "flowers102": {"train": 6, "val": 3, "test": 3},
    "fgvc_aircraft": {"train": 6, "val": 3, "test": 3},
    "eurosat": {"train": 30, "test": 10},
    "cub200_2011": {"train": 4, "test": 10},
    "chexpert": {"train": 4, "test": 2},  # frontal views only
    "inat2021_val": {"test": 12}, "objectnet": {"test": 15}, "instre": {"test": 10},
    "gldv2": {"query": 2, "database": 5}, "copydays": {"query": 39, "database": 2},
    "visda2017": {"train": 24, "test": 12, "validation": 12},  # 10% of the synthetic images held out
    "roxford5k": {"query": 2, "database": 8}, "rparis6k": {"query": 2, "database": 8},
    "coco2017": {"train": 2, "val": 2}, "sim10k": {"train": 9, "val": 2}, "cityscapes": {"train": 2, "val": 2},
}


def test_every_stand_in_is_listed_with_its_expected_sizes():
    from bobkit.rehearsal import standin_names

    assert sorted(standin_names()) == sorted(EXPECTED_SIZES)


@pytest.mark.parametrize("name", sorted(EXPECTED_SIZES))
def test_every_stand_in_is_read_by_its_real_loader(name):
    from bobkit.rehearsal.environment import rehearsal_environment

    with rehearsal_environment([name]):
        sizes, facts = _read_standin(name)
    assert sizes == EXPECTED_SIZES[name]
    check = STANDIN_FACTS.get(name)
    if check is not None:
        check(facts)


def _cifar(splits):
    train = splits["train"]
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1, 99, 99, 99]  # the fine label byte of each record
    assert train.classes[99] == "worm" and train.meta["coarse_labels"].tolist()[-1] == 99 % 20


def _flowers(splits):
    assert splits["train"].labels.tolist() == [0, 0, 1, 1, 101, 101]  # MATLAB labels 1..102 -> 0..101
    assert [p.name for p in splits["test"].paths] == ["image_00004.jpg", "image_00008.jpg", "image_00012.jpg"]


def _fgvc(splits):
    train = splits["train"]
    assert train.crop_bottom == 20 and train.classes[2] == "F/A-18" and train.classes[3] == "Cessna 172"
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2]


def _imagenet(splits):
    from bobkit.data.sources import imagenet_wnids

    train = splits["train"]
    assert sorted({train.classes[i] for i in train.labels}) == sorted({p.parent.name for p in train.paths})
    assert train.classes == imagenet_wnids() and 999 in train.labels  # the last class: neither -A nor -R
    assert {p.suffix for p in train.paths} == {".JPEG"}


def _imagenet_a(splits):
    test = splits["test"]
    assert len(test.meta["class_subset"]) == 2 and " " in test.paths[0].name  # names with spaces


def _revisited(gnd):
    assert gnd[0]["easy"] == [0, 1] and gnd[0]["hard"] == [2] and gnd[1]["junk"] == []


def _coco(out):
    (shape, boxes), *_ = out["train"]
    assert shape == (3, 120, 160) and boxes == 2  # the crowd region is not a training box
    assert out["train"][1][0] == (3, 160, 120)  # the grayscale portrait, as RGB


def _cityscapes(out):
    assert [boxes for _, boxes in out["train"]] == [2, 2]  # car and person; road and cargroup are no instances


def _chexpert(splits):
    from bobkit.data import DATASETS
    from bobkit.data.datasets import multilabel_targets

    for ds in splits.values():
        targets = multilabel_targets(ds.labels, DATASETS["chexpert"].multilabel)
        assert (targets.min(0) == 0).all() and (targets.max(0) == 1).all()  # every label both ways in each split


def _objectnet(splits):
    assert splits["test"].meta["imagenet_1k_indices"] == [[], [409, 530], [954]]


def _gldv2(positives):
    assert [p.tolist() for p in positives] == [[0, 1], [2]]


STANDIN_FACTS = {"cifar100": _cifar, "flowers102": _flowers, "fgvc_aircraft": _fgvc, "imagenet_1k": _imagenet,
                 "imagenet_a": _imagenet_a, "roxford5k": _revisited, "coco2017": _coco, "cityscapes": _cityscapes,
                 "chexpert": _chexpert, "objectnet": _objectnet, "gldv2": _gldv2}


def test_stand_ins_pass_the_real_verification_which_stays_as_strict(monkeypatch):
    """A published checksum is replaced in a rehearsal-only overlay of the manifest, a file without one is pinned
    in the rehearsal's own pin store; a stand-in changed afterwards fails its check; the user's manifest,
    pins and environment are untouched."""
    import os

    from bobkit.data import ChecksumError, get_dataset, load_manifest
    from bobkit.data.manifest import default_manifest_path
    from bobkit.data.sources import load_cifar100
    from bobkit.data.verify import pins
    from bobkit.rehearsal.environment import ENV_NAMES, rehearsal_environment
    from bobkit.utils.files import sha256_file

    monkeypatch.setenv("BOB_PIN_UNVERIFIED", "1")  # the rehearsal must not trust files on first use
    real = default_manifest_path()
    real_hash, before = sha256_file(real), {n: os.environ.get(n) for n in ENV_NAMES}
    with rehearsal_environment(["cifar100", "roxford5k"]) as env:
        assert os.environ["BOB_DATA_MANIFEST"] == str(env.manifest) and "BOB_PIN_UNVERIFIED" not in os.environ
        tar = env.data_dir / "cifar100" / "cifar-100-binary.tar.gz"
        overlay = load_manifest(env.manifest).entry("cifar100").files[0]
        assert overlay.sha256 == sha256_file(tar) and overlay.md5 is None
        assert load_manifest(real).entry("cifar100").files[0].sha256.startswith("58a81ae1")
        assert pins()["roxford5k"]["roxford5k/gnd_roxford5k.pkl"]["sha256"] == sha256_file(
            env.data_dir / "roxford5k" / "gnd_roxford5k.pkl")
        assert (env.cache_dir / "data" / "pinned_hashes.json").is_file()
        assert len(get_dataset("cifar100", "train")) == 9
        tar.write_bytes(tar.read_bytes() + b"\0")  # changed after it was recorded
        load_cifar100.cache_clear()
        with pytest.raises(ChecksumError):
            get_dataset("cifar100", "train")
    assert {n: os.environ.get(n) for n in ENV_NAMES} == before and not env.root.exists()
    assert sha256_file(real) == real_hash


def test_every_dataset_of_the_manifest_cites_its_layout_documentation():
    from bobkit.data import load_manifest
    from bobkit.rehearsal import layout_source, standin_names

    manifest = load_manifest()
    for entry in manifest:
        if entry.kind == "dataset":
            assert str(entry.raw.get("layout_source", "")).startswith("https://"), entry.name
    assert all(layout_source(name) for name in standin_names())


# ------------------------------------------------------------------------------------------------------------
# Groups, twins, miniature cells
# ------------------------------------------------------------------------------------------------------------


def test_cells_group_by_task_protocol_loaders_and_backbone_family():
    from bobkit.batch.grid import expand_grid
    from bobkit.rehearsal.groups import arch_groups, cell_groups

    cells = expand_grid({"grid": [
        {"task": "classification", "dataset": "cifar100", "image_size": 224,
         "backbone": ["resnet50.a1_in1k", "convnext_tiny.fb_in1k", "vit_small_patch16_224.augreg_in1k"],
         "setting": [{"protocol": "finetune", "lr": 1e-3}, {"protocol": "finetune", "lr": 1e-4},
                     {"protocol": "linear_probe", "probe_solver": "sgd", "label_fraction": 0.1}]},
        {"task": "ood", "backbone": "resnet50.dino", "dataset": "imagenet_1k", "image_size": 224,
         "targets": ["imagenet_a", "corruptions"], "protocol": "linear_probe"},
    ]})
    groups = {g.label: len(g.cells) for g in cell_groups(cells)}
    assert groups == {
        "classification finetune cifar100 [CNN: resnet50.a1_in1k]": 4,  # 2 architectures x 2 learning rates
        "classification finetune cifar100 [ViT: vit_small_patch16_224.augreg_in1k]": 2,
        "classification linear_probe/sgd/label_fraction cifar100 [CNN: resnet50.a1_in1k]": 2,
        "classification linear_probe/sgd/label_fraction cifar100 [ViT: vit_small_patch16_224.augreg_in1k]": 1,
        "ood linear_probe/lbfgs imagenet_1k+imagenet_a+corruptions [CNN: resnet50.dino]": 1,
    }
    assert len(cell_groups(cells, by="architecture")) == 7  # every task x architecture x loader x protocol
    archs = {g.label: g for g in arch_groups(cells)}
    resnet = archs["arch resnet50 @224 (finetune, frozen)"]
    assert resnet.backbones == ["resnet50.a1_in1k", "resnet50.dino"] and resnet.num_classes == 100
    assert set(archs) >= {"arch convnext_tiny @224 (finetune, frozen)",
                          "arch vit_small_patch16_224 @224 (finetune, frozen)"}


def test_random_twins_keep_the_architecture_and_preprocessing_and_leave_no_trace():
    from bobkit.backbones import backbone_names, create_model, data_config, get_backbone
    from bobkit.rehearsal.twins import random_twins

    with random_twins(["resnet50.dino", "vit_small_patch16_224.mocov3", "resnet18.random_init"]) as twin:
        assert twin["resnet18.random_init"] == "resnet18.random_init"  # already random: used as it is
        assert get_backbone(twin["resnet50.dino"]).source == "random"
        assert data_config(twin["resnet50.dino"]) == data_config("resnet50.dino")  # bilinear, crop 0.875
        with torch.device("meta"):
            vit = create_model(twin["vit_small_patch16_224.mocov3"], image_size=224)
        assert vit.blocks[0].attn.num_heads == 12  # MoCo v3's ViT-S, not timm's 6 heads
        names = set(twin.values())
    assert not names & set(backbone_names()) - {"resnet18.random_init"}


def test_a_miniature_cell_keeps_every_branch_and_cuts_the_work():
    from bobkit.rehearsal.cells import miniature

    p = miniature("robustness", {"protocol": "linear_probe", "dataset": "imagenet_1k", "image_size": 224,
                                 "max_train": None, "max_test": None, "epsilons": [0, 0.25, 0.5, 1, 2],
                                 "attacks": ["fgsm", "pgd"], "pgd_steps": 10, "max_attack": 5000, "batch_size": 64})
    assert p["image_size"] == 224 and p["attacks"] == ["fgsm", "pgd"] and p["epsilons"] == [0, 0.25]
    assert (p["max_train"], p["max_test"], p["pgd_steps"], p["max_attack"]) == (None, 2, 1, 2)  # whole stand-in
    f = miniature("classification", {"protocol": "finetune", "epochs": 100, "layer_decay": 0.75, "max_train": None,
                                     "batch_size": 64, "warmup_epochs": 5})
    assert (f["epochs"], f["max_train"], f["batch_size"], f["layer_decay"]) == (1, 2, 2, 0.75)  # one step
    a = miniature("ood", {"protocol": "finetune", "epochs": 100, "max_train": None, "batch_size": 1024,
                          "accum_steps": 8})
    assert (a["batch_size"], a["accum_steps"]) == (16, 8)  # accumulation kept: two images a micro-batch
    d = miniature("detection", {"protocol": "frozen", "epochs": 36, "lr_steps": [27, 33], "n_train": 240})
    assert d["epochs"] == 1 and d["lr_steps"] == [0.75, 33 / 36]  # the schedule's steps at the same share
    d = miniature("detection", {"protocol": "frozen", "image_size": 1024, "epochs": 36, "batch_size": 16,
                                "n_train": 240, "n_val": 80})
    assert (d["image_size"], d["epochs"], d["batch_size"], d["n_train"], d["n_val"]) == (128, 1, 2, 2, 2)
    assert d["device"] == "cpu" and d["num_threads"] == 1


def test_a_miniature_leaves_the_items_per_class_a_selection_needs_as_the_real_split_does():
    """probe_l2="auto" holds out training items per class: a miniature capped at 4 items left classes with one
    and failed every probe group; a label fraction keeps one item per class on the stand-in exactly when it keeps
    one on the real dataset (10% of Flowers-102's 10 per class), else all of the stand-in's (10% of CIFAR-100's 500)."""
    import numpy as np

    from bobkit.data import get_dataset
    from bobkit.data.datasets import low_shot_indices
    from bobkit.rehearsal.cells import miniature, standin_label_fraction
    from bobkit.rehearsal.environment import rehearsal_environment

    assert standin_label_fraction("cifar100", 0.1) == 1.0 and standin_label_fraction("eurosat", 0.01) == 1.0
    assert standin_label_fraction("flowers102", 0.1) < 0.01
    p = miniature("classification", {"protocol": "linear_probe", "dataset": "flowers102", "max_train": 2000,
                                     "label_fraction": 0.1})
    assert p["max_train"] is None and p["label_fraction"] < 0.01
    with rehearsal_environment(["eurosat", "flowers102", "imagenet_1k_1pct"]):
        for name in ("eurosat", "flowers102", "imagenet_1k_1pct"):
            assert np.unique(get_dataset(name, "train").labels, return_counts=True)[1].min() >= 2, name
        labels = get_dataset("flowers102", "train").labels
        kept = labels[low_shot_indices(labels, fraction=p["label_fraction"])]
        assert np.unique(kept, return_counts=True)[1].tolist() == [1, 1, 1]  # as 10% of the real 10 per class


def test_a_miniature_rehearses_shots_as_their_fraction_and_retrieval_on_the_whole_stand_in():
    """bob-full's 10-shot probes failed on every stand-in (3 of CIFAR-100's 100 classes: "shots_per_class=10 is
    more than 100 of the 100 classes hold"), and ObjectNet retrieval capped at 10 items left no class the 5 items
    a query needs at query_fraction 0.2."""
    from bobkit.rehearsal.cells import miniature, standin_shots_fraction

    assert standin_shots_fraction("cifar100", 10) == pytest.approx(10 / 500)
    assert standin_shots_fraction("flowers102", 20) == 1.0  # 10 per class in the real train split
    p = miniature("classification", {"protocol": "linear_probe", "dataset": "cifar100", "max_train": None,
                                     "shots_per_class": 10, "label_fraction": None})
    assert p["shots_per_class"] is None and p["label_fraction"] == 1.0  # 10 of 500 keeps the stand-in's all
    r = miniature("retrieval", {"protocol": "class_folder", "dataset": "objectnet", "max_samples": None,
                                "max_per_class": 50, "query_fraction": 0.2})
    assert r["max_samples"] is None and r["max_per_class"] == 50
    assert miniature("retrieval", {"protocol": "revisited", "max_samples": None})["max_samples"] == 10
    # bob-full's SwinV2-L fine-tunes accumulate 2 micro-batches: a one-image micro-batch cannot pair for mixup
    f = miniature("classification", {"protocol": "finetune", "max_train": None, "batch_size": 1024,
                                     "accum_steps": 2, "mixup": 0.8})
    assert (f["batch_size"], f["max_train"], f["accum_steps"]) == (4, 4, 2)


# ------------------------------------------------------------------------------------------------------------
# Planted faults: reported with the cell and the reason
# ------------------------------------------------------------------------------------------------------------

TINY = {"backbone": "resnet18.random_init", "image_size": 32, "seed": 0}


def _flowers_with_labels_under_another_key(root, rng):
    """A hand-made Flowers-102 conversion that saved the labels as ``label`` instead of ``labels``."""
    from scipy.io import loadmat, savemat

    from bobkit.rehearsal.layouts_classification import write_flowers102

    write_flowers102(root, rng)
    path = root / "flowers102" / "imagelabels.mat"
    savemat(path, {"label": loadmat(path)["labels"]}, format="5")


def test_the_rehearsal_reports_planted_faults_with_the_cell_and_the_reason(monkeypatch):
    import bobkit.backbones as backbones
    from bobkit.batch.grid import expand_grid
    from bobkit.rehearsal import format_table, rehearse

    real = backbones.create_model

    def without_features_only(name, **kwargs):
        if kwargs.get("features_only"):
            raise RuntimeError(f"features_only is not implemented for {name}")
        return real(name, **kwargs)

    monkeypatch.setattr(backbones, "create_model", without_features_only)
    cells = expand_grid({"grid": [
        {"task": "classification", **TINY, "dataset": ["flowers102", "eurosat"], "protocol": "linear_probe"},
        {"task": "detection", **TINY, "dataset": "coco2017", "protocol": "random_init", "epochs": 1},
    ]})
    result = rehearse(cells, overrides={"flowers102": _flowers_with_labels_under_another_key}, progress=False)
    outcomes = {o.label: o for o in result.outcomes}
    flowers = outcomes["classification linear_probe/lbfgs flowers102 [CNN: resnet18.random_init]"]
    assert (flowers.passed, flowers.error, flowers.cells) == (False, "KeyError: 'labels'", 1)
    assert outcomes["classification linear_probe/lbfgs eurosat [CNN: resnet18.random_init]"].passed
    reason = "RuntimeError: features_only is not implemented for resnet18.random_init"
    assert outcomes["detection random_init coco2017 [CNN: resnet18.random_init]"].error == reason
    assert outcomes["arch resnet18 detection coco2017 @32 (detect)"].error == reason
    assert outcomes["arch resnet18 @32 (frozen)"].passed
    assert not result.passed and len(result.failed) == 3
    table = format_table(result)
    failed = [line for line in table.splitlines() if "FAILED" in line]
    assert any("flowers102" in line and "KeyError: 'labels'" in line for line in failed)
    assert "3 cells in 3 pipeline groups and 2 architecture groups: 2 passed, 3 failed" in table


def test_bob_rehearse_exits_non_zero_and_names_a_backbone_without_a_loader(tmp_path, capsys):
    from bobkit.backbones import Backbone, register, unregister
    from bobkit.cli import main

    register(Backbone(name="future_net.x", display_name="Future net", architecture="FN", family="other",
                      method="m", method_kind="supervised", pretrain_data="d", pretrain_images=None,
                      params_millions=None, timm_model=None, source="unsupported", feature="f",
                      requires="a loader for Future net checkpoints"))
    grid = tmp_path / "grid.yaml"
    grid.write_text("grid:\n  - task: classification\n    dataset: eurosat\n    image_size: 32\n"
                    "    backbone: [resnet18.random_init, future_net.x]\n")
    try:
        assert main(["rehearse", str(grid), "--no-progress"]) == 1
    finally:
        unregister("future_net.x")
    captured = capsys.readouterr()
    assert "FAILED classification linear_probe/lbfgs eurosat [other: future_net.x]" in captured.err
    assert "future_net.x is registered but has no loader" in captured.err and "Future net" in captured.err
    assert "classification linear_probe/lbfgs eurosat [CNN: resnet18.random_init]" in captured.out
    assert "2 cells in 2 pipeline groups" in captured.out


def test_box_only_detection_cells_pass_the_runners_finite_scores_rule():
    """Sim10k has boxes only; detection reported its mask AP as NaN, and the runner fails a cell with a non-finite
    score, so every Sim10k -> Cityscapes cell failed after training ("non-finite metric(s): mask_ap, ...")."""
    from bobkit.batch.grid import expand_grid
    from bobkit.rehearsal import rehearse

    cells = expand_grid({"grid": [{"task": "detection", **TINY, "image_size": 64, "dataset": "sim10k",
                                   "eval_dataset": "cityscapes", "protocol": "random_init", "epochs": 3}]})
    result = rehearse(cells, progress=False)
    assert result.passed, [(o.label, o.error) for o in result.failed]
