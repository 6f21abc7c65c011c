"""Detection and instance segmentation: a registry backbone + FPN inside torchvision's Mask R-CNN.

Three protocols, as in the paper:

* ``finetune``: pretrained backbone trained end to end (its BatchNorm kept in eval mode: small detection batches
  would ruin the pretrained statistics);
* ``frozen``: pretrained backbone fixed (no gradients, eval mode); only FPN, RPN and heads train;
* ``random_init``: the same architecture with its pretrained weights not loaded (initialised from ``seed``),
  trained end to end with BatchNorm in train mode.

The paper trains Cascade Mask R-CNN; on CPU this module trains plain Mask R-CNN (torchvision has no Cascade head).
The offline default dataset ``fmnist_scenes`` is composed by :mod:`bobkit.data.scenes`; real COCO-format datasets
(``coco2017``, ``sim10k``, ``cityscapes``) come through the data manifest, and ``eval_dataset`` evaluates on a
different dataset than the one trained on (Sim10k -> Cityscapes cars, categories matched by name). Box and mask AP
come from pycocotools (:mod:`bobkit.eval.coco`).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from bobkit.data import scenes
from bobkit.eval import coco as coco_eval
from bobkit.features.device import Execution, as_execution, autocast, resolve_execution
from bobkit.tasks import blocks
from bobkit.tasks.contract import MEMORY_NOTE, Metric, Param, TaskSpec
from bobkit.tasks.harness import task_entry

VERSION = "1"
PROTOCOLS = ("finetune", "frozen", "random_init")
#: Datasets this task accepts (besides a folder holding ``instances_{train,val}.json``).
DATASETS = (*scenes.SCENE_DATASETS, *scenes.REAL_DATASETS)
#: Detector input short side bound (the paper: 1024 on COCO; the long side is up to 1333/800 of it).
MAX_DETECTION_SIZE = 2048


def detection_execution(p: dict[str, Any]) -> Execution:
    """The run's :class:`Execution` from (validated) ``protocol``, ``device`` and execution parameters.

    As every task's (``auto``: the device's measured defaults: bf16 on a GPU, fp32 on CPU), except that
    ``channels_last=None`` means off (not measured for detection) and gradient checkpointing is off for the
    ``frozen`` protocol, whose trunk has no backward pass: the ``exec_*`` metrics record what ran.
    """
    return resolve_execution(
        p["device"], p["precision"], channels_last=bool(p["channels_last"]), compile=p["compile"],
        loader_workers=p["loader_workers"], grad_checkpointing=p["grad_checkpointing"] and p["protocol"] != "frozen",
    )


SPEC = TaskSpec(
    name="detection",
    summary="Detection and instance segmentation: a registry backbone + FPN inside torchvision's Mask R-CNN.",
    parameters=(
        blocks.backbone_param(),
        Param("protocol", str, "frozen", "backbone treatment", choices=PROTOCOLS),
        blocks.dataset_param("fmnist_scenes", "fmnist_scenes (offline) | coco2017 | sim10k | cityscapes | a "
                                              "COCO-format folder", blocks.dataset_lookup(
                                                  DATASETS, registry=False, folder_file="instances_train.json")),
        blocks.dataset_param(None, "evaluate on another dataset's val split, e.g. 'cityscapes' after training on "
                                   "'sim10k'", blocks.dataset_lookup(DATASETS, registry=False,
                                                                     folder_file="instances_val.json"),
                             name="eval_dataset"),
        Param("epochs", int, 3, "the paper: 36 (Cascade Mask R-CNN, lr swept over 8e-5 .. 3e-4)", low=1, high=1000),
        Param("lr", float, 2e-3, "AdamW, 10% linear warm-up then cosine", low=0.0, low_open=True),
        Param("weight_decay", float, 1e-4, "AdamW weight decay", low=0.0),
        blocks.batch_size_param(4, doc="images per training step", high=256),
        Param("canvas_size", int, 96, "offline scenes only: canvas side in pixels", low=32, high=1024,
              high_note=MEMORY_NOTE),
        blocks.size_param("n_train", 240, "scenes to compose / images to subsample (None: all)"),
        blocks.size_param("n_val", 80, "validation scenes / images (None: all)"),
        blocks.image_size_param(None, high=MAX_DETECTION_SIZE, doc="detector input short side (None: canvas_size "
                                                                   "for scenes, 800 for real datasets)"),
        blocks.seed_param(),
        *blocks.device_params(1, "CPU threads (None: $BOB_NUM_THREADS or torch's default; 1 measured fastest on "
                                 "2 shared cores)"),
        *blocks.EXECUTION,
        Param("output_dir", str, None, "set by `bob run`: metrics and predictions are written there",
              kind="execution"),
    ),
    metrics=(
        Metric("box_ap", "COCO box AP (IoU 0.5:0.95)", primary=True, n_items="n_test"),
        Metric("box_ap50", "COCO box AP at IoU 0.5", n_items="n_test"),
        Metric("box_ap75", "COCO box AP at IoU 0.75", n_items="n_test"),
        Metric("mask_ap", "COCO mask AP (IoU 0.5:0.95)", primary=True, n_items="n_test"),
        Metric("mask_ap50", "COCO mask AP at IoU 0.5", n_items="n_test"),
        Metric("mask_ap75", "COCO mask AP at IoU 0.75", n_items="n_test"),
        *blocks.COMMON_DESCRIPTORS,
    ),
    resolve_execution=detection_execution,
)
# Why one thread: a detection step is many small ops; measured on 2 shared cores, a second thread gave 0.25 s/step
# against 0.21-0.33 s with one, and 2 s (8x slower) whenever another process held the other core.
#: The declared defaults (what the notebook's parameters cell holds).
PARAMETERS: dict[str, Any] = SPEC.defaults()
validate_params = SPEC.validate


#: Anchor sizes (one per pyramid level, 4 FPN levels + max-pool) for 28-56 px items on a 128 px canvas; scaled with
#: the input size. Real datasets use torchvision's COCO anchors at an 800 px short side.
SCENE_ANCHORS = (12, 24, 40, 64, 96)
COCO_ANCHORS = (32, 64, 128, 256, 512)
FPN_CHANNELS = 64
#: Head widths. With torchvision's defaults (1024-wide box MLP, four 256-channel mask convs) the mask convolutions
#: were most of a profiled CPU step on the scenes; these narrower heads cut that step's CPU time by about 45%.
BOX_HEAD_WIDTH = 256
MASK_HEAD_WIDTH = 64


# ------------------------------------------------------------------------------------------------------ backbone


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
        out_channels: int = FPN_CHANNELS,
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


def build_detector(
    backbone: str,
    protocol: str,
    num_classes: int,
    *,
    image_size: int,
    anchor_sizes: Sequence[float] = SCENE_ANCHORS,
    max_size: int | None = None,
    seed: int = 0,
    masks: bool = True,
    precision: str = "fp32",
) -> FasterRCNN:
    """Mask R-CNN over a registry backbone, sized for CPU training on small images.

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

    Returns
    -------
    torchvision.models.detection.MaskRCNN or FasterRCNN
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    from bobkit import backbones

    out_indices, scales = plan_levels(_all_reductions(_timm_arch(backbone)))
    body = create_body(backbone, protocol, out_indices=out_indices, image_size=image_size, seed=seed)
    config = backbones.data_config(backbone, image_size=image_size)
    torch.manual_seed(seed)  # the heads: same initialisation for every protocol at a given seed
    feature_net = TimmFPN(body, scales, frozen=protocol == "frozen", freeze_bn=protocol != "random_init",
                          precision=precision)
    levels = [str(k) for k in range(len(out_indices))]
    anchors = AnchorGenerator(
        sizes=tuple((float(s),) for s in anchor_sizes), aspect_ratios=((0.5, 1.0, 2.0),) * len(anchor_sizes)
    )
    common: dict[str, Any] = dict(
        num_classes=None,  # given by the predictors
        box_head=TwoMLPHead(FPN_CHANNELS * 7 * 7, BOX_HEAD_WIDTH),
        box_predictor=FastRCNNPredictor(BOX_HEAD_WIDTH, num_classes + 1),
        min_size=image_size,
        max_size=max_size or image_size,
        image_mean=list(config["mean"]),
        image_std=list(config["std"]),
        rpn_anchor_generator=anchors,
        # RoIAlign's backward dominates a CPU step: one sample per bin and 64 RoIs per image halve it (DESIGN 8).
        box_roi_pool=MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=1),
        box_batch_size_per_image=64,
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_test=300,
    )
    if not masks:
        return FasterRCNN(feature_net, **common)
    return MaskRCNN(
        feature_net,
        mask_roi_pool=MultiScaleRoIAlign(levels, output_size=14, sampling_ratio=1),
        mask_head=MaskRCNNHeads(FPN_CHANNELS, (MASK_HEAD_WIDTH,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(MASK_HEAD_WIDTH, MASK_HEAD_WIDTH, num_classes + 1),
        **common,
    )


# --------------------------------------------------------------------------------------------- train / evaluate


def _collate(batch: list[Any]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images, targets = zip(*batch)
    return list(images), list(targets)


def _loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    execution: Execution,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
) -> torch.utils.data.DataLoader:
    """Batches of ``(images, targets)`` lists; ``loader_workers`` worker processes decode images ahead.

    Workers are processes here (a detection item decodes an image and rasterises its masks in Python, which
    threads would serialise on the GIL); the shuffling order depends only on ``generator``, not on the workers.
    """
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=_collate, generator=generator,
        num_workers=execution.loader_workers, pin_memory=execution.pin_memory and execution.device.type == "cuda",
    )


def _feature_precision(model: FasterRCNN) -> str:
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


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train_detector(
    model: FasterRCNN,
    dataset: torch.utils.data.Dataset,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float = 1e-4,
    seed: int = 0,
    execution: Execution | torch.device | str = "cpu",
    max_grad_norm: float = 10.0,
) -> list[float]:
    """Train with AdamW, linear warm-up (10% of steps) and cosine decay.

    Parameters
    ----------
    model : MaskRCNN
        From :func:`build_detector`; only parameters with ``requires_grad`` are optimised.
    dataset : torch.utils.data.Dataset
        Yields ``(image, target)`` in torchvision's detection format.
    epochs, lr, batch_size, weight_decay : number
        Optimisation settings.
    seed : int
        Seeds the shuffling.
    execution : Execution, torch.device or str
        Where to train, with ``loader_workers`` decoding processes and pinned batches on a GPU (a bare device:
        neither). The autocast precision is the feature network's own (:func:`build_detector`); fp16 adds a
        gradient scaler.
    max_grad_norm : float
        Gradient-norm clip (keeps random-init runs stable at detection learning rates).

    Returns
    -------
    list of float
        Mean loss per epoch.

    Raises
    ------
    FloatingPointError
        When a loss is NaN or infinite, naming the epoch and step and the per-head losses.
    """
    ex = as_execution(execution)
    device = ex.device
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    loader = _loader(dataset, batch_size, ex, shuffle=True, generator=generator)
    total = max(1, epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, max(1, round(0.1 * total))))
    # fp16 activations in the trunk can underflow their gradients: scale the loss (a no-op otherwise).
    scaler = torch.amp.GradScaler(device.type, enabled=_feature_precision(model) == "fp16")
    epoch_losses: list[float] = []
    step = 0
    for epoch in range(epochs):
        running = []
        for images, targets in loader:
            images = [img.to(device, non_blocking=True) for img in images]
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
            losses = model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                parts = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
                raise FloatingPointError(
                    f"non-finite detection loss {loss.item()} at step {step} (epoch {epoch}): {parts}"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # clip the true gradients
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            running.append(loss.item())
            step += 1
        epoch_losses.append(float(np.mean(running)) if running else float("nan"))
    return epoch_losses


@torch.inference_mode()
def predict(
    model: FasterRCNN,
    dataset: scenes.CocoDataset,
    *,
    batch_size: int = 8,
    execution: Execution | torch.device | str = "cpu",
    label_to_category_id: dict[int, int] | None = None,
) -> list[dict[str, Any]]:
    """COCO result dicts (boxes, scores and RLE masks) of ``model`` on every image of ``dataset``, in order.

    ``execution`` gives the device and the decoding workers (see :func:`train_detector`); the feature network
    autocasts to its own precision. ``label_to_category_id`` maps model labels to the dataset's category ids
    (default: the dataset's own).
    """
    ex = as_execution(execution)
    model.to(ex.device).eval()
    mapping = label_to_category_id or dataset.label_to_category_id
    results: list[dict[str, Any]] = []
    for images, targets in _loader(dataset, batch_size, ex, shuffle=False):
        outputs = model([img.to(ex.device, non_blocking=True) for img in images])
        for target, output in zip(targets, outputs):
            keep = torch.tensor([int(lbl) in mapping for lbl in output["labels"]], dtype=torch.bool)
            output = {k: v[keep.to(v.device)] for k, v in output.items()}
            results.extend(coco_eval.detections_to_coco(int(target["image_id"]), output, mapping))
    return results


# ---------------------------------------------------------------------------------------------------------- run


def _subset(dataset: scenes.CocoDataset, n: int | None, seed: int) -> scenes.CocoDataset:
    """Keep a seeded random ``n`` of the dataset's images (all when ``n`` is None or larger)."""
    if n is None or n >= len(dataset.image_ids):
        return dataset
    rng = np.random.default_rng(seed)
    dataset.image_ids = sorted(rng.choice(dataset.image_ids, size=n, replace=False).tolist())
    return dataset


def load_datasets(
    dataset: str,
    *,
    eval_dataset: str | None,
    n_train: int | None,
    n_val: int | None,
    canvas_size: int,
    seed: int,
) -> tuple[scenes.CocoDataset, scenes.CocoDataset]:
    """Train and validation :class:`bobkit.data.scenes.CocoDataset` for ``dataset`` (validation from ``eval_dataset``
    when given, its categories matched to the training ones by name)."""
    # Items scale with the canvas (28-56 px on 128 px, as measured in DESIGN 8).
    config = scenes.SceneConfig(
        canvas_size=canvas_size,
        min_item_size=max(8, round(28 * canvas_size / 128)),
        max_item_size=max(8, round(56 * canvas_size / 128)),
    )
    if dataset in scenes.SCENE_DATASETS:
        folder = scenes.build_scene_split(dataset, "train", int(n_train or 600), config, seed=seed)
        train = scenes.CocoDataset(folder / "instances.json", folder, keep_empty=False)
    else:
        ann, image_dir = scenes.resolve_coco_split(dataset, "train")
        train = _subset(scenes.CocoDataset(ann, image_dir, keep_empty=False), n_train, seed)
    source = eval_dataset or dataset
    if source in scenes.SCENE_DATASETS:
        folder = scenes.build_scene_split(source, "val", int(n_val or 150), config, seed=seed)
        ann, image_dir = folder / "instances.json", folder
    else:
        ann, image_dir = scenes.resolve_coco_split(source, "val")
    val = _subset(scenes.CocoDataset(ann, image_dir, category_names=train.category_names), n_val, seed + 1)
    return train, val


@task_entry(SPEC)
def run(p: dict[str, Any], ex: Execution) -> dict[str, float]:
    """Train Mask R-CNN on ``dataset`` with ``backbone`` under ``protocol``; return COCO box and mask AP.

    Protocols: see the module docstring. ``dataset`` is ``"fmnist_scenes"`` (offline, composed on first use and
    cached), a manifest COCO-format dataset (:data:`bobkit.data.scenes.REAL_DATASETS`) or a folder with
    ``instances_{train,val}.json``; ``eval_dataset`` evaluates on another dataset's validation split (domain
    shift). AdamW with 10% linear warm-up then cosine decay. The trunk and FPN autocast to ``precision``; the RPN
    and RoI heads always run in fp32 (see :class:`TimmFPN`); ``channels_last=None`` (auto) is off here (not
    measured for detection); gradient checkpointing stays off for ``frozen`` (no backward through the trunk).
    With ``output_dir`` the validation predictions are also written there as ``detections_val.json``.

    Returns ``box_ap, box_ap50, box_ap75, mask_ap, mask_ap50, mask_ap75`` (0-1, pycocotools; no mask AP for
    box-only datasets), ``n_train``, ``n_test`` (validation images), ``train_seconds``, ``eval_seconds`` and the
    execution settings (``exec_*``). Raises ``FloatingPointError`` on a non-finite training loss (named by step).
    """
    train, val = load_datasets(
        p["dataset"], eval_dataset=p["eval_dataset"], n_train=p["n_train"], n_val=p["n_val"],
        canvas_size=p["canvas_size"], seed=p["seed"],
    )
    offline = p["dataset"] in scenes.SCENE_DATASETS
    size = int(p["image_size"] or (p["canvas_size"] if offline else 800))
    if offline:
        anchors = tuple(a * size / 128 for a in SCENE_ANCHORS)
        max_size = size
    else:
        anchors = tuple(a * size / 800 for a in COCO_ANCHORS)
        max_size = round(size * 1333 / 800)
    model = build_detector(
        p["backbone"],
        p["protocol"],
        len(train.category_names),
        image_size=size,
        anchor_sizes=anchors,
        max_size=max_size,
        seed=p["seed"],
        masks=train.has_masks,
        precision=ex.precision,
    )
    prepare_detector(model, ex)

    start = time.perf_counter()
    train_detector(
        model, train, epochs=p["epochs"], lr=p["lr"], batch_size=p["batch_size"], weight_decay=p["weight_decay"],
        seed=p["seed"], execution=ex,
    )
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    predictions = predict(model, val, batch_size=p["batch_size"], execution=ex)
    with_masks = train.has_masks and val.has_masks
    metrics = coco_eval.evaluate(
        val.coco, predictions, iou_types=("bbox", "segm") if with_masks else ("bbox",), image_ids=val.image_ids
    )
    eval_seconds = time.perf_counter() - start
    # Box-only datasets (Sim10k) report no mask AP at all: a NaN score would fail the cell in the runner.

    if p["output_dir"] is not None:
        from pathlib import Path

        from bobkit.utils.files import write_json

        write_json(Path(p["output_dir"]) / "detections_val.json", predictions)
    return {**metrics, "n_train": float(len(train.image_ids)), "n_test": float(len(val.image_ids)),
            "train_seconds": train_seconds, "eval_seconds": eval_seconds, **ex.as_metrics()}
