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
    from bobkit.tasks.detection import TimmFPN, _all_reductions, _timm_arch, create_body, plan_levels

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
