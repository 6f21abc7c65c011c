"""The detector of the detection task: a registry backbone + FPN inside torchvision's Mask R-CNN.

The trunk is the registry's timm ``features_only`` model (:func:`create_body`); :class:`TimmFPN` turns its outputs
into a feature pyramid (plain ViTs get a parameter-free simple pyramid, :func:`plan_levels`); the heads are
torchvision's (:func:`build_detector`), at one of two widths (:data:`HEAD_CONFIGS`): ``full``, the widths of the
paper's detectors (256-channel FPN, torchvision's default RPN, box and mask heads), for real datasets; and
``narrow_cpu``, narrowed for CPU training on the offline scenes. :func:`prepare_detector` applies the run's
execution settings, :func:`detector_layer_of` gives layer-wise lr decay its depths.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from bobkit.features.device import Execution, autocast
from bobkit.tasks.training import trunk_layer_of

PROTOCOLS = ("finetune", "frozen", "random_init")

#: Anchor sizes (one per pyramid level, 4 FPN levels + max-pool) for 28-56 px items on a 128 px canvas; scaled with
#: the input size. Real datasets use the paper's (mmdetection's) anchors: 8 x the level's stride, 32-512 px, at any
#: input size (multi-scale training varies it).
SCENE_ANCHORS = (12, 24, 40, 64, 96)
COCO_ANCHORS = (32, 64, 128, 256, 512)


@dataclass(frozen=True)
class HeadConfig:
    """Widths and sampling of the FPN, RPN and RoI heads (see :data:`HEAD_CONFIGS`)."""

    fpn_channels: int
    box_head_width: int  # TwoMLPHead's representation size
    mask_head_width: int  # channels of each of the four mask convolutions
    roi_sampling_ratio: int  # RoIAlign samples per bin and axis
    box_batch_size_per_image: int  # RoIs sampled per image for the box loss
    rpn_pre_nms_top_n_train: int
    rpn_post_nms_top_n_train: int
    rpn_pre_nms_top_n_test: int
    rpn_post_nms_top_n_test: int


#: ``full``: torchvision's Mask R-CNN defaults, the widths of the paper's detectors (256-channel FPN, 1024-wide box
#: MLP, four 256-channel mask convolutions, 512 sampled RoIs, 2000/1000 proposals). ``narrow_cpu``: for CPU training
#: on the offline scenes only; with the full widths the mask convolutions were most of a profiled CPU step on the
#: scenes, and these heads (plus one RoIAlign sample per bin and 64 RoIs per image: RoIAlign's backward dominates a
#: CPU step, DESIGN 8) cut that step's CPU time by about 45%.
HEAD_CONFIGS: dict[str, HeadConfig] = {
    "full": HeadConfig(fpn_channels=256, box_head_width=1024, mask_head_width=256, roi_sampling_ratio=2,
                       box_batch_size_per_image=512, rpn_pre_nms_top_n_train=2000, rpn_post_nms_top_n_train=2000,
                       rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=1000),
    "narrow_cpu": HeadConfig(fpn_channels=64, box_head_width=256, mask_head_width=64, roi_sampling_ratio=1,
                             box_batch_size_per_image=64, rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500,
                             rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=300),
}
HEADS = tuple(HEAD_CONFIGS)


# ------------------------------------------------------------------------------------------------------- trunk


def plan_levels(reductions: Sequence[int]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Which backbone outputs feed the FPN, and how each is resampled.

    Parameters
    ----------
    reductions : sequence of int
        Stride of every feature level the backbone can return (timm ``feature_info``, all levels).

    Returns
    -------
    out_indices : tuple of int
        Hierarchical nets (CNNs, Swin): the deepest output of each of the last four distinct strides (1-4 for
        MobileNetV2 / EfficientNet / ResNet, strides 4-32). Plain ViTs: four evenly spaced blocks.
    scales : tuple of float
        Resampling factor per output: all 1 for hierarchical nets; ``(4, 2, 1, 0.5)`` for plain ViTs, turning their
        single stride into a 4-level pyramid (a parameter-free version of ViTDet's simple feature pyramid).
    """
    reductions = list(reductions)
    if len(set(reductions)) > 1:
        last_of_stride = {r: i for i, r in enumerate(reductions)}  # later index wins: deepest output per stride
        strides = sorted(last_of_stride)[-4:]
        return tuple(last_of_stride[s] for s in strides), (1.0,) * len(strides)
    n = len(reductions)
    if n < 4:
        return tuple(range(n)), (1.0,) * n
    return (n // 4 - 1, n // 2 - 1, 3 * n // 4 - 1, n - 1), (4.0, 2.0, 1.0, 0.5)


def _timm_arch(backbone: str) -> str:
    """The timm architecture of a registry entry (``arch.tag`` names fall back to ``arch``)."""
    from bobkit import backbones

    entry = backbones.get_backbone(backbone)
    return str(entry.timm_model or backbone).split(".")[0]


def _all_reductions(arch: str) -> list[int]:
    """Strides of every feature level timm can return for ``arch`` (built on the meta device: no memory, no IO)."""
    import timm

    with torch.device("meta"):
        probe = timm.create_model(arch, pretrained=False, features_only=True)
    return [int(info["reduction"]) for info in probe.feature_info.info]


def create_body(
    backbone: str, protocol: str, *, out_indices: Sequence[int], image_size: int, seed: int
) -> nn.Module:
    """The registry's ``features_only`` trunk; for ``random_init``, its architecture without pretrained weights.

    Parameters
    ----------
    backbone : str
        Registry name.
    protocol : {"finetune", "frozen", "random_init"}
        ``random_init`` builds the architecture with ``pretrained=False``, initialised from ``seed``.
    out_indices : sequence of int
        Feature levels to return.
    image_size : int
        Input short side (the registry passes it to ViT-style models); the trunk accepts any height and width,
        since torchvision's transform keeps each image's aspect (COCO at 1024: e.g. 1024 x 1376 after padding).
    seed : int
        Initialisation seed of random weights.

    Returns
    -------
    torch.nn.Module
        A timm ``features_only`` model.
    """
    from bobkit import backbones

    return backbones.create_model(
        backbone,
        features_only=True,
        out_indices=tuple(out_indices),
        image_size=image_size,
        seed=seed,
        pretrained=protocol != "random_init",
        dynamic_size=True,
    )


class TimmFPN(nn.Module):
    """A timm ``features_only`` trunk + torchvision FPN, the ``backbone`` torchvision's Mask R-CNN expects.

    Parameters
    ----------
    body : torch.nn.Module
        timm ``features_only`` model returning a list of feature maps.
    scales : sequence of float
        Resampling factor per body output (plain ViTs), 1 for hierarchical nets.
    out_channels : int
        FPN width.
    frozen : bool
        Body fixed: no gradients, always in eval mode, run under ``torch.no_grad``.
    freeze_bn : bool
        Body BatchNorm layers stay in eval mode (running statistics and affine use pretrained values) even in
        ``train()``; used for the pretrained protocols.
    precision : {"fp32", "bf16", "fp16"}
        Autocast precision of the body and FPN (:func:`bobkit.features.device.autocast`). Their outputs return to fp32,
        so the RPN, RoI heads, box decoding and losses run in full precision: under a whole-model bf16 autocast
        torchvision decodes boxes in the predictor's dtype, and bf16's 8 significant bits round coordinates to
        4 px at 800 px.
    """

    def __init__(
        self,
        body: nn.Module,
        scales: Sequence[float],
        *,
        out_channels: int = 256,
        frozen: bool = False,
        freeze_bn: bool = True,
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        self.body = body
        self.scales = tuple(float(s) for s in scales)
        self.frozen = frozen
        self.freeze_bn = freeze_bn or frozen
        self.precision = precision
        channels = list(body.feature_info.channels())
        self.channels_last = str(getattr(body, "output_fmt", "NCHW")).endswith("NHWC")  # timm Swin features
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels
        if frozen:
            body.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> TimmFPN:
        """Set train mode, keeping the body (frozen) or its BatchNorm layers (pretrained) in eval mode."""
        super().train(mode)
        if self.frozen:
            self.body.eval()
        elif self.freeze_bn:
            for module in self.body.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        with autocast(x.device, self.precision):
            pyramid = self._pyramid(x)
        return OrderedDict((k, v.float()) for k, v in pyramid.items())  # fp32 for the heads (no copy in fp32)

    def _pyramid(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        if self.frozen:
            with torch.no_grad():
                feats = self.body(x)
        else:
            feats = self.body(x)
        if isinstance(feats, dict):
            feats = list(feats.values())
        pyramid = OrderedDict()
        for k, (feat, scale) in enumerate(zip(feats, self.scales)):
            if self.channels_last:
                feat = feat.permute(0, 3, 1, 2).contiguous()
            if scale > 1:
                feat = F.interpolate(feat, scale_factor=scale, mode="bilinear", align_corners=False)
            elif scale < 1:
                feat = F.max_pool2d(feat, kernel_size=int(round(1 / scale)))
            pyramid[str(k)] = feat
        return self.fpn(pyramid)


def is_plain_vit(backbone: str) -> bool:
    """Whether the registry backbone is a plain (single-stride) ViT: the paper trains those ViTDet-style (simple
    pyramid, large-scale jitter at 1024 px) and hierarchical nets (CNNs, Swin) with DETR-style multi-scale crops."""
    return len(set(_all_reductions(_timm_arch(backbone)))) == 1


def build_detector(
    backbone: str,
    protocol: str,
    num_classes: int,
    *,
    image_size: int,
    heads: str = "full",
    anchor_sizes: Sequence[float] = SCENE_ANCHORS,
    max_size: int | None = None,
    seed: int = 0,
    masks: bool = True,
    precision: str = "fp32",
    resize_in_training: bool = True,
) -> FasterRCNN:
    """Mask R-CNN over a registry backbone.

    Parameters
    ----------
    backbone : str
        Registry name; normalisation comes from its data config.
    protocol : {"finetune", "frozen", "random_init"}
        See the module docstring.
    num_classes : int
        Object classes, without background.
    image_size : int
        Short side the detector resizes inputs to.
    heads : {"full", "narrow_cpu"}
        Head widths (:data:`HEAD_CONFIGS`): ``full`` as the paper's detectors; ``narrow_cpu``, for the offline
        scenes on a CPU, only when named.
    anchor_sizes : sequence of float
        One anchor size per pyramid level (5 levels), three aspect ratios each.
    max_size : int, optional
        Long-side cap (default ``image_size``: square scenes).
    seed : int
        Seeds the heads' (and random-init backbones') initialisation.
    masks : bool
        False builds the same detector without a mask head (Faster R-CNN) for box-only datasets.
    precision : {"fp32", "bf16", "fp16"}
        Autocast precision of the feature network (body + FPN); the heads stay fp32 (see :class:`TimmFPN`).
    resize_in_training : bool
        False when the training data pipeline has resized the images already (multi-scale or large-scale jitter,
        :func:`bobkit.tasks.detection.train_transform`): the detector then only normalises and pads training
        images; evaluation images are always resized to ``image_size`` / ``max_size``.

    Returns
    -------
    torchvision.models.detection.MaskRCNN or FasterRCNN
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if heads not in HEAD_CONFIGS:
        raise ValueError(f"heads must be one of {', '.join(HEADS)}, got {heads!r}")
    from bobkit import backbones

    cfg = HEAD_CONFIGS[heads]
    out_indices, scales = plan_levels(_all_reductions(_timm_arch(backbone)))
    body = create_body(backbone, protocol, out_indices=out_indices, image_size=image_size, seed=seed)
    config = backbones.data_config(backbone, image_size=image_size)
    torch.manual_seed(seed)  # the heads: same initialisation for every protocol at a given seed
    feature_net = TimmFPN(body, scales, out_channels=cfg.fpn_channels, frozen=protocol == "frozen",
                          freeze_bn=protocol != "random_init", precision=precision)
    levels = [str(k) for k in range(len(out_indices))]
    anchors = AnchorGenerator(
        sizes=tuple((float(s),) for s in anchor_sizes), aspect_ratios=((0.5, 1.0, 2.0),) * len(anchor_sizes)
    )
    common: dict[str, Any] = dict(
        num_classes=None,  # given by the predictors
        box_head=TwoMLPHead(cfg.fpn_channels * 7 * 7, cfg.box_head_width),
        box_predictor=FastRCNNPredictor(cfg.box_head_width, num_classes + 1),
        min_size=image_size,
        max_size=max_size or image_size,
        image_mean=list(config["mean"]),
        image_std=list(config["std"]),
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=cfg.roi_sampling_ratio),
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        # torchvision's own switch for data pipelines that resize (its detection references use it for LSJ and
        # multi-scale training); evaluation still resizes.
        _skip_resize=not resize_in_training,
    )
    if not masks:
        return FasterRCNN(feature_net, **common)
    return MaskRCNN(
        feature_net,
        mask_roi_pool=MultiScaleRoIAlign(levels, output_size=14, sampling_ratio=cfg.roi_sampling_ratio),
        mask_head=MaskRCNNHeads(cfg.fpn_channels, (cfg.mask_head_width,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(cfg.mask_head_width, cfg.mask_head_width, num_classes + 1),
        **common,
    )


def head_widths(model: FasterRCNN) -> dict[str, float]:
    """The widths the detector was built with, read from its modules (run descriptors ``detector_*``)."""
    widths = {
        "detector_fpn_channels": float(model.backbone.out_channels),
        "detector_box_head_width": float(model.roi_heads.box_head.fc7.out_features),
    }
    mask_head = model.roi_heads.mask_head
    if mask_head is not None:
        widths["detector_mask_head_width"] = float(mask_head[0][0].out_channels)
    return widths


def feature_precision(model: FasterRCNN) -> str:
    """The autocast precision of the detector's feature network (``fp32`` for a plain torchvision backbone)."""
    return str(getattr(model.backbone, "precision", "fp32"))


def set_body_grad_checkpointing(body: nn.Module, enable: bool = True) -> None:
    """Turn timm's gradient checkpointing on (or off) in a ``features_only`` trunk.

    CNN and Swin feature nets have ``set_grad_checkpointing`` themselves; plain ViTs come wrapped (timm's
    ``FeatureGetterNet``) around a model that has it.

    Raises
    ------
    ValueError
        When neither the trunk nor the model it wraps supports checkpointing.
    """
    inner = getattr(body, "_orig_mod", body)
    for candidate in (inner, getattr(inner, "model", None)):
        if candidate is not None and hasattr(candidate, "set_grad_checkpointing"):
            candidate.set_grad_checkpointing(enable)
            return
    raise ValueError(f"{type(inner).__name__} has no set_grad_checkpointing (timm feature models have it)")


def prepare_detector(model: FasterRCNN, execution: Execution) -> FasterRCNN:
    """Move the detector to the run's device and apply the execution's trunk settings, in place.

    Only the trunk (``model.backbone.body``) is touched: channels_last weights when ``execution.channels_last``,
    gradient checkpointing when ``execution.grad_checkpointing``, and ``torch.compile`` when
    ``execution.compile`` (the trunk sees a fixed input size on the offline scenes; torchvision's RPN and RoI
    heads, with data-dependent shapes, stay eager). The precision is set when building
    (:func:`build_detector`'s ``precision``). cuDNN autotuning stays off: real datasets vary the input size.
    """
    model.to(execution.device)
    body = model.backbone.body
    if execution.channels_last:
        body.to(memory_format=torch.channels_last)
    if execution.grad_checkpointing:
        set_body_grad_checkpointing(body)
    if execution.compile:
        model.backbone.body = torch.compile(body)
    return model


def detector_layer_of(model: FasterRCNN, backbone: str) -> Callable[[str], float]:
    """Parameter name -> layer ordinal for layer decay: trunk parameters at their depth in timm's classifier of
    the same architecture, the FPN, RPN and RoI heads one layer above the trunk (full lr).

    Call it on the model as built (before :func:`prepare_detector` compiles the trunk)."""
    return trunk_layer_of(_timm_arch(backbone), model.backbone.body, "backbone.body.")
