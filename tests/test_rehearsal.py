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
