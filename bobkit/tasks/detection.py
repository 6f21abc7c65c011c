"""Detection and instance segmentation: a registry backbone + FPN inside torchvision's Mask R-CNN
(:mod:`bobkit.tasks.detector` builds it; this module trains, evaluates and runs the task).

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
come from pycocotools (:mod:`bobkit.eval.coco`), each with a bootstrap standard error over the evaluated images
(``se/<metric>``, :data:`AP_BOOTSTRAP` resamples).

Training is AdamW (betas 0.9, 0.999; no weight decay on biases and norms, :func:`bobkit.tasks.training.make_optimizer`)
with one of two per-step schedules (timm's schedulers, so layer decay's ``lr_scale`` applies): ``step``, the
paper's (linear warm-up from 0.001 x lr over ``warmup_iters``, then lr x0.1 at each of ``lr_steps``: epochs 27 and
33 of 36), and ``cosine``, the demo's (linear warm-up from 0 over 10% of the steps, then cosine to 0). With
``layer_decay`` the trunk's layers train at ``lr * layer_decay ** depth`` below the FPN and heads. ``augment``
adds the paper's training augmentation (:func:`train_transform`, torchvision transforms v2 on images, boxes and
masks): DETR-style multi-scale resize and crop for CNNs and Swin, ViTDet's large-scale jitter for plain ViTs
(``paper`` picks by family); evaluation is at the fixed size. ``heads`` picks the head widths
(:data:`bobkit.tasks.detector.HEAD_CONFIGS`): ``full`` on real datasets, ``narrow_cpu`` on the offline scenes.
A list of learning rates is a selection: each is trained on 80% of the training images and scored (box AP) on
the other 20%, the winner is trained again on all of them, and the cell reports its AP on the evaluation split
with ``selected_lr``.

A cell trains in ``$BOB_PROCESSES`` data-parallel processes (its ``processes`` resource; ``gpus: N`` gives N), as
every fine-tune does: :func:`train_job` is run by :func:`bobkit.tasks.distributed.train` in the cell's process or
through torch's elastic launcher in N ranks (DDP; NCCL on GPUs, gloo on the CPU). ``batch_size`` is the global
batch: every epoch's batches are full (:func:`epoch_batches`), each rank takes a fixed slice of each and splits it
into ``accum_steps`` micro-batches (``batch_size`` must divide into ``processes x accum_steps``), and an image's
anchors and RoIs are sampled from its own key (:class:`KeyedSampler`), so N ranks are one process with N x
``accum_steps`` micro-batches. Rank 0 alone saves the training state and returns the weights; the cell's own
process evaluates, every validation image once. The pretrained protocols keep BatchNorm frozen, so the split does
not touch it; ``random_init`` synchronises it over the ranks on GPUs (:func:`data_parallel`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.transforms import v2

from bobkit.data import scenes
from bobkit.eval import coco as coco_eval
from bobkit.features.device import Execution, as_execution, resolve_execution
from bobkit.tasks import blocks, distributed
from bobkit.tasks.contract import MEMORY_NOTE, Metric, Param, ParameterError, TaskSpec, descriptor
from bobkit.tasks.detector import (
    COCO_ANCHORS,
    HEADS,
    PROTOCOLS,
    SCENE_ANCHORS,
    build_detector,
    detector_layer_of,
    feature_precision,
    head_widths,
    is_plain_vit,
    prepare_detector,
)
from bobkit.tasks.distributed import World, micro_batch_size, rank_share, wrap_ddp
from bobkit.tasks.harness import task_entry
from bobkit.tasks.train_state import TrainState
from bobkit.tasks.training import (
    VALIDATION_FRACTION,
    learning_rates,
    make_optimizer,
    select_on_validation,
    warmup_cosine,
)
from bobkit.utils.files import source_fingerprint

#: Bootstrap resamples of the evaluated images behind ``se/<AP metric>`` (about 1 s per AP type on 80 images).
AP_BOOTSTRAP = 200
#: Datasets this task accepts (besides a folder holding ``instances_{train,val}.json``).
DATASETS = (*scenes.SCENE_DATASETS, *scenes.REAL_DATASETS)
#: Detector input short side bound (the paper: 800, or 1024 for plain ViTs; the long side is up to 1333/800 of it).
MAX_DETECTION_SIZE = 2048

# The paper's schedule (hsouri/bob-detection configs: ``lr_config = dict(warmup_iters=1000, step=[27, 33])``,
# ``max_epochs=36`` over mmdetection 2.x's schedule_1x, whose linear warm-up starts at ``warmup_ratio=0.001``).
SCHEDULES = ("step", "cosine")
#: Where the step schedule divides the lr by 10 when ``lr_steps`` is None: the paper's epochs 27 and 33 of 36.
PAPER_LR_STEP_FRACTIONS = (27 / 36, 33 / 36)
STEP_DECAY = 0.1
WARMUP_RATIO = 0.001
#: Warm-up of either schedule when ``warmup_iters`` is None: this fraction of the optimizer steps.
DEFAULT_WARMUP_FRACTION = 0.1

# The paper's training augmentation (hsouri/bob-detection configs). CNNs and Swin, "from DETR / Sparse R-CNN":
# flip, then either a resize of the short side to one of 480..800 (step 32, long side at most 1333) or a resize to
# 400/500/600, a random 384-600 px crop and the first resize again. Plain ViTs (ViTDet's lsj_coco_instance_r1024):
# resize to 0.1-2.0 x 1024 (long side), a crop of at most 1024 x 1024 with boxes recomputed from the masks, flip.
AUGMENTS = ("none", "multiscale", "lsj", "paper")
REFERENCE_SHORT_SIDE = 800  # multi-scale sizes below are for an 800 px short side; scaled with image_size
REFERENCE_MAX_SIZE = 1333
DETR_SCALES = tuple(range(480, 801, 32))
DETR_CROP_RESIZE = (400, 500, 600)
DETR_CROP_RANGE = (384, 600)
LSJ_SCALE_RANGE = (0.1, 2.0)
LSJ_SIZE = 1024  # the default image_size under large-scale jitter


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


def _check(p: dict[str, Any]) -> None:
    """Rules between parameters: schedule and augmentation options only where they take effect."""
    steps = p["lr_steps"]
    if steps is not None:
        if p["schedule"] != "step":
            raise ParameterError(f"detection parameter lr_steps={steps!r} needs schedule='step' "
                                 f"(schedule={p['schedule']!r} ignores it)")
        if steps and (list(steps) != sorted(steps) or steps[-1] >= p["epochs"]):  # []: no decay
            raise ParameterError(f"detection parameter lr_steps={steps!r} must increase and stay below "
                                 f"epochs={p['epochs']!r}")
    if p["train_scales"] is not None and p["augment"] not in ("multiscale", "paper"):
        raise ParameterError(f"detection parameter train_scales={p['train_scales']!r} needs augment='multiscale' or "
                             f"'paper' (augment={p['augment']!r} ignores it)")
    if p["batch_size"] % p["accum_steps"]:
        raise ParameterError(f"detection: batch_size={p['batch_size']} (images per optimizer step) does not split "
                             f"into accum_steps={p['accum_steps']} equal micro-batches; choose a batch_size "
                             f"divisible by {p['accum_steps']}")


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
        Param("heads", str, None, "head widths: full = the paper's (256-channel FPN, torchvision's default heads), "
                                  "narrow_cpu = offline scenes on a CPU; None: narrow_cpu on the scenes, full on real "
                                  "datasets", choices=HEADS),
        Param("epochs", int, 3, "the paper: 36 (Cascade Mask R-CNN, lr swept over 8e-5 .. 3e-4)", low=1, high=1000),
        Param("lr", float, 2e-3, "AdamW peak lr; a list: the one with the best box AP on held-out training images",
              low=0.0, low_open=True, or_list=True),
        Param("schedule", str, "cosine", "per-step lr schedule: step = the paper's (warm-up, then x0.1 at lr_steps), "
                                         "cosine = warm-up, then cosine to 0", choices=SCHEDULES),
        Param("lr_steps", list, None, "step schedule: epochs after which lr x0.1 (None: at 27/36 and 33/36 of "
                                      "epochs, the paper's 27 and 33 of 36)", item=float, low=0.0, low_open=True),
        Param("warmup_iters", int, None, "linear warm-up optimizer steps (the paper: 1000; None: 10% of the steps)",
              low=0),
        Param("weight_decay", float, 1e-4, "AdamW weight decay (the paper: 0.05)", low=0.0),
        Param("layer_decay", float, None, "layer-wise lr decay of the trunk, e.g. 0.75; None disables (frozen: "
                                          "the trunk does not train)", low=0.0, low_open=True, high=1.0),
        blocks.batch_size_param(4, doc="images per training step", high=256),
        Param("accum_steps", int, 1, "gradient accumulation: each step's batch_size images in this many equal "
              "micro-batches (less memory; the heads sample their anchors and RoIs per image, so the losses are "
              "the same up to how they are averaged)", kind="execution", low=1, high=256),
        Param("canvas_size", int, 96, "offline scenes only: canvas side in pixels", low=32, high=1024,
              high_note=MEMORY_NOTE),
        blocks.size_param("n_train", 240, "scenes to compose / images to subsample (None: all)"),
        blocks.size_param("n_val", 80, "validation scenes / images (None: all)"),
        blocks.image_size_param(None, high=MAX_DETECTION_SIZE, doc="evaluation short side (lsj: long side) (None: "
                                                                   "canvas_size for scenes, 800 for real datasets, "
                                                                   "1024 with lsj)"),
        Param("augment", str, "none", "training augmentation: multiscale = DETR-style resize and crop, lsj = "
                                      "large-scale jitter, paper = lsj for plain ViTs, multiscale otherwise",
              choices=AUGMENTS),
        Param("train_scales", list, None, "multiscale: training short sides (None: 480..800 step 32, scaled by "
                                          "image_size / 800)", item=int, low=8, high=MAX_DETECTION_SIZE,
              high_note=MEMORY_NOTE),
        blocks.seed_param(),
        *blocks.device_params(1, "CPU threads (None: $BOB_NUM_THREADS or torch's default; 1 measured fastest on "
                                 "2 shared cores)"),
        *blocks.EXECUTION,
        Param("output_dir", str, None, "set by `bob run`: metrics and predictions are written there",
              kind="execution"),
        blocks.STATE_DIR,
        blocks.STATE_EVERY,
    ),
    metrics=(
        Metric("box_ap", "COCO box AP (IoU 0.5:0.95)", primary=True, n_items="n_test"),
        Metric("box_ap50", "COCO box AP at IoU 0.5", n_items="n_test"),
        Metric("box_ap75", "COCO box AP at IoU 0.75", n_items="n_test"),
        Metric("mask_ap", "COCO mask AP (IoU 0.5:0.95)", primary=True, n_items="n_test"),
        Metric("mask_ap50", "COCO mask AP at IoU 0.5", n_items="n_test"),
        Metric("mask_ap75", "COCO mask AP at IoU 0.75", n_items="n_test"),
        *blocks.COMMON_DESCRIPTORS,
        descriptor("detector_*", "what the detector was built and trained with: head widths, evaluation sizes, "
                                 "augmentation (1.0: on)"),
        descriptor("train_*", "the training's data-parallel processes, attempts, the step this run resumed from, "
                              "steps redone"),
    ),
    resolve_execution=detection_execution,
    check=_check,
)
# Why one thread: a detection step is many small ops; measured on 2 shared cores, a second thread gave 0.25 s/step
# against 0.21-0.33 s with one, and 2 s (8x slower) whenever another process held the other core.
#: The declared defaults (what the notebook's parameters cell holds).
PARAMETERS: dict[str, Any] = SPEC.defaults()
validate_params = SPEC.validate


# ------------------------------------------------------------------------------------------------------- loading


def _collate(batch: list[Any]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images, targets = zip(*batch)
    return list(images), list(targets)


def _loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    execution: Execution,
    *,
    shuffle: bool = False,
    batches: Sequence[Sequence[int]] | None = None,
    generator: torch.Generator | None = None,
) -> torch.utils.data.DataLoader:
    """Batches of ``(images, targets)`` lists; ``loader_workers`` worker processes decode images ahead.

    Workers are processes here (a detection item decodes an image and rasterises its masks in Python, which
    threads would serialise on the GIL); the order is ``batches`` (item indices, e.g. :func:`epoch_batches`) when
    given, else sequential or shuffled by ``generator``, and never depends on the workers. ``generator`` also
    seeds the workers (so the global RNG, which the detector's samplers draw from, is left alone).
    """
    pin = execution.pin_memory and execution.device.type == "cuda"
    if batches is not None:
        return torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=_collate, generator=generator,
                                           num_workers=execution.loader_workers, pin_memory=pin)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=_collate, generator=generator,
        num_workers=execution.loader_workers, pin_memory=pin,
    )


# ------------------------------------------------------------------------------------------------- augmentation


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight ``xyxy`` boxes of instance masks ``(N, H, W)`` in pixel-edge coordinates (a mask covering columns 3..5
    spans x 3 to 6, as COCO boxes do); an empty mask gets a zero-size box (removed by sanitising)."""
    n = masks.shape[0]
    boxes = torch.zeros((n, 4), dtype=torch.float32)
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    for k in range(n):
        ys, xs = torch.nonzero(rows[k]).flatten(), torch.nonzero(cols[k]).flatten()
        if len(ys):
            boxes[k] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
    return boxes


class RandomSizeCrop(v2.Transform):
    """A crop of random height and width in ``[low, high]`` px (at most the image's) at a random place:
    mmdetection's ``RandomCrop(crop_type="absolute_range")``. Boxes are clipped to the crop, or, with
    ``recompute_boxes`` and instance masks present, replaced by the tight boxes of the cropped masks
    (mmdetection's ``recompute_bbox``, as ViTDet's pipeline sets it)."""

    def __init__(self, low: int, high: int, *, recompute_boxes: bool = False) -> None:
        super().__init__()
        self.low, self.high, self.recompute_boxes = int(low), int(high), recompute_boxes

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        crop_h = int(torch.randint(min(height, self.low), min(height, self.high) + 1, ()))
        crop_w = int(torch.randint(min(width, self.low), min(width, self.high) + 1, ()))
        top = int(torch.randint(0, height - crop_h + 1, ()))
        left = int(torch.randint(0, width - crop_w + 1, ()))
        crop: dict[str, Any] = dict(top=top, left=left, height=crop_h, width=crop_w)
        masks = [x for x in flat_inputs if isinstance(x, tv_tensors.Mask) and x.ndim == 3]
        if self.recompute_boxes and masks:
            crop["boxes"] = mask_boxes(masks[0][:, top:top + crop_h, left:left + crop_w])
        return crop

    def transform(self, inpt: Any, crop: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.BoundingBoxes) and "boxes" in crop:
            return tv_tensors.wrap(crop["boxes"].to(inpt.dtype), like=inpt,
                                   canvas_size=(crop["height"], crop["width"]))
        return self._call_kernel(v2.functional.crop, inpt, top=crop["top"], left=crop["left"],
                                 height=crop["height"], width=crop["width"])


def resolve_augment(augment: str, backbone: str) -> str:
    """``paper`` -> the paper's choice for the backbone's family (``lsj`` for plain ViTs, ``multiscale`` for CNNs and
    Swin); other values unchanged."""
    if augment != "paper":
        return augment
    return "lsj" if is_plain_vit(backbone) else "multiscale"


def train_transform(
    augment: str,
    image_size: int,
    *,
    max_size: int | None = None,
    train_scales: Sequence[int] | None = None,
) -> v2.Transform | None:
    """The training augmentation of ``augment`` (resolved: ``none``, ``multiscale`` or ``lsj``), on an
    ``(image, target)`` pair of tv_tensors (:class:`AugmentedDetection` wraps a dataset in it).

    Parameters
    ----------
    augment : {"none", "multiscale", "lsj"}
        ``multiscale``: DETR-style (horizontal flip; then, with equal chance, a resize of the short side to one of
        ``train_scales``, or a resize to one of :data:`DETR_CROP_RESIZE`, a :data:`DETR_CROP_RANGE` crop and the
        first resize). ``lsj``: large-scale jitter (long side to :data:`LSJ_SCALE_RANGE` x ``image_size``, a crop
        of at most ``image_size`` square with boxes recomputed from masks, horizontal flip).
    image_size : int
        Evaluation short side (multiscale) or square side (lsj); the reference sizes are for 800 px and scale by
        ``image_size / 800`` (multiscale).
    max_size : int, optional
        Long-side cap of the multi-scale resizes (default ``image_size * 1333 / 800``).
    train_scales : sequence of int, optional
        Multiscale short sides (default :data:`DETR_SCALES` scaled by ``image_size / 800``).

    Returns
    -------
    torchvision.transforms.v2.Transform or None
        None for ``none``: the detector resizes to the fixed size itself.
    """
    if augment == "none":
        return None
    sanitize = v2.SanitizeBoundingBoxes()  # drops boxes (with their labels and masks) cut below 1 px
    if augment == "lsj":
        return v2.Compose([
            v2.ScaleJitter((image_size, image_size), scale_range=LSJ_SCALE_RANGE),
            RandomSizeCrop(image_size, image_size, recompute_boxes=True),
            v2.RandomHorizontalFlip(0.5),
            sanitize,
        ])
    if augment != "multiscale":
        raise ValueError(f"augment must be none, multiscale or lsj (resolved), got {augment!r}")
    ratio = image_size / REFERENCE_SHORT_SIDE
    scales = list(train_scales) if train_scales else sorted({round(s * ratio) for s in DETR_SCALES})
    cap = max_size or round(image_size * REFERENCE_MAX_SIZE / REFERENCE_SHORT_SIDE)
    return v2.Compose([
        v2.RandomHorizontalFlip(0.5),
        v2.RandomChoice([
            v2.RandomShortestSize(scales, max_size=cap),
            v2.Compose([
                v2.RandomShortestSize([round(s * ratio) for s in DETR_CROP_RESIZE], max_size=cap),
                RandomSizeCrop(*(round(s * ratio) for s in DETR_CROP_RANGE)),
                v2.RandomShortestSize(scales, max_size=cap),
            ]),
        ]),
        sanitize,
    ])


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one training item: a pure function of (seed, epoch, item index), so the
    augmentation does not depend on the loader's worker processes or the order items are fetched in."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class AugmentedDetection(torch.utils.data.Dataset):
    """A detection dataset with a training transform applied to each ``(image, target)``, seeded per item
    (:func:`item_seed`; the training loop sets :attr:`epoch` before each epoch's loader starts its workers).

    Targets become tv_tensors for the transform (``boxes`` :class:`~torchvision.tv_tensors.BoundingBoxes` in
    ``xyxy``, ``masks`` :class:`~torchvision.tv_tensors.Mask`) and plain tensors again afterwards.
    """

    def __init__(self, base: torch.utils.data.Dataset, transform: Callable[..., Any], seed: int = 0) -> None:
        self.base, self.transform, self.seed = base, transform, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, target = self.base[index]
        height, width = image.shape[-2:]
        wrapped = dict(target, boxes=tv_tensors.BoundingBoxes(target["boxes"], format="XYXY",
                                                               canvas_size=(height, width)))
        if "masks" in target:
            wrapped["masks"] = tv_tensors.Mask(target["masks"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(self.seed, self.epoch, index))
            image, wrapped = self.transform(tv_tensors.Image(image), wrapped)
        return image.as_subclass(torch.Tensor), {k: v.as_subclass(torch.Tensor) for k, v in wrapped.items()}


# ------------------------------------------------------------------------------------------------------ schedule


def step_schedule(
    optimizer: torch.optim.Optimizer,
    *,
    milestones: Sequence[int],
    warmup_steps: int = 0,
    warmup_ratio: float = WARMUP_RATIO,
    decay: float = STEP_DECAY,
):
    """timm's per-step multi-step schedule, as mmdetection steps it: optimizer step ``s`` runs at
    ``lr * lr_scale * decay ** (number of milestones <= s)``, and during warm-up (``s < warmup_steps``) at
    ``lr * lr_scale * (warmup_ratio + (1 - warmup_ratio) * s / warmup_steps)``.

    Call ``scheduler.step_update(s + 1)`` after optimizer step ``s``; the learning rates of step 0 are set here.
    ``lr_scale`` (layer decay, :func:`bobkit.tasks.training.make_optimizer`) multiplies in as in
    :func:`bobkit.tasks.training.warmup_cosine`.
    """
    from timm.scheduler import MultiStepLRScheduler

    lr = optimizer.defaults["lr"]
    # timm applies milestone m from step m - 1 (its convention); + 1 makes it from step m, as mmdetection's epochs.
    scheduler = MultiStepLRScheduler(optimizer, decay_t=[int(m) + 1 for m in sorted(milestones)], decay_rate=decay,
                                     warmup_t=int(warmup_steps), warmup_lr_init=warmup_ratio * lr,
                                     warmup_prefix=False, t_in_epochs=False)
    scheduler.step_update(0)
    return scheduler


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    schedule: str,
    epochs: int,
    steps_per_epoch: int,
    lr_steps: Sequence[float] | None = None,
    warmup_iters: int | None = None,
):
    """The per-step scheduler of ``schedule`` (``step`` or ``cosine``) for ``epochs`` of ``steps_per_epoch``.

    ``lr_steps`` are epochs (None: :data:`PAPER_LR_STEP_FRACTIONS` of ``epochs``), turned into optimizer steps
    (``round(epoch * steps_per_epoch)``); ``warmup_iters`` is None for :data:`DEFAULT_WARMUP_FRACTION` of the steps
    (at least one), and at most the run's steps less one (a run shorter than its warm-up still ends at the full lr).
    """
    total = max(1, int(epochs) * int(steps_per_epoch))
    warmup = max(1, round(DEFAULT_WARMUP_FRACTION * total)) if warmup_iters is None else int(warmup_iters)
    warmup = max(0, min(warmup, total - 1))
    if schedule == "cosine":
        return warmup_cosine(optimizer, total_steps=total, warmup_steps=warmup)
    if schedule != "step":
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    epochs_at = list(lr_steps) if lr_steps is not None else [f * epochs for f in PAPER_LR_STEP_FRACTIONS]
    return step_schedule(optimizer, milestones=[round(e * steps_per_epoch) for e in epochs_at],
                         warmup_steps=warmup)


# --------------------------------------------------------------------------------------------- train / evaluate


class KeyedSampler(BalancedPositiveNegativeSampler):
    """torchvision's sampler of positive and negative anchors (RPN) or proposals (RoI heads), drawing each image's
    sample from the image's own key (:func:`sample_key`) when :attr:`keys` is set.

    torchvision draws every image's sample from the global RNG in batch order, so which anchors an image samples
    depends on the images before it in its (micro-)batch and on the process it runs in; keyed, it depends on the
    image and the step alone, so a global batch samples the same anchors and RoIs whether it runs in one process, as
    micro-batches, or split over data-parallel processes. Without keys (e.g. a caller of :func:`training_step` that
    gives none) it is torchvision's sampler.
    """

    def __init__(self, base: BalancedPositiveNegativeSampler, salt: int) -> None:
        super().__init__(base.batch_size_per_image, base.positive_fraction)
        self.salt = int(salt)  # the RPN's and the RoI heads' samplers draw different permutations from one key
        self.keys: list[int] | None = None

    def __call__(self, matched_idxs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if self.keys is None:
            return super().__call__(matched_idxs)
        if len(self.keys) != len(matched_idxs):
            raise RuntimeError(f"{len(self.keys)} sampling keys for {len(matched_idxs)} images")
        pos_idx, neg_idx = [], []
        for key, matched in zip(self.keys, matched_idxs):  # torchvision's sampler, one generator per image
            positive = torch.where(matched >= 1)[0]
            negative = torch.where(matched == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            # torch's CPU generator keeps 32 bits of a seed: the salt goes in through a SeedSequence
            seed = int(np.random.SeedSequence([int(key), self.salt]).generate_state(1)[0])
            generator = torch.Generator(device=matched.device).manual_seed(seed)
            perm1 = torch.randperm(positive.numel(), device=matched.device, generator=generator)[:num_pos]
            perm2 = torch.randperm(negative.numel(), device=matched.device, generator=generator)[:num_neg]
            pos_mask = torch.zeros_like(matched, dtype=torch.uint8)
            neg_mask = torch.zeros_like(matched, dtype=torch.uint8)
            pos_mask[positive[perm1]] = 1
            neg_mask[negative[perm2]] = 1
            pos_idx.append(pos_mask)
            neg_idx.append(neg_mask)
        return pos_idx, neg_idx


def keyed_samplers(model: FasterRCNN) -> tuple[KeyedSampler, KeyedSampler]:
    """Replace the detector's RPN and RoI-head samplers by :class:`KeyedSampler` (in place; the samplers hold no
    weights) and return them; samplers already keyed are kept."""
    samplers = []
    for salt, owner in enumerate((model.rpn, model.roi_heads)):
        if not isinstance(owner.fg_bg_sampler, KeyedSampler):
            owner.fg_bg_sampler = KeyedSampler(owner.fg_bg_sampler, salt)
        samplers.append(owner.fg_bg_sampler)
    return samplers[0], samplers[1]


def sample_key(seed: int, step: int, index: int) -> int:
    """The key of training item ``index``'s anchor and RoI sampling at optimizer step ``step`` (see
    :class:`KeyedSampler`): a pure function of (seed, step, item), apart from the augmentation's (:func:`item_seed`)."""
    return int(np.random.SeedSequence([seed, step, index, 1]).generate_state(1)[0])


@dataclass
class DetectorTraining:
    """Everything a detection training loop carries from one optimizer step to the next.

    ``step`` counts the optimizer steps taken; :func:`training_step` takes the next one. ``model`` is what the
    step calls (in data-parallel training the detector wrapped in DDP); ``samplers`` are its keyed samplers.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    params: list[torch.nn.Parameter]
    device: torch.device
    max_grad_norm: float = 10.0
    step: int = 0
    samplers: tuple[KeyedSampler, ...] = ()
    world: World = field(default_factory=World)


def start_training(
    model: FasterRCNN,
    *,
    lr: float,
    weight_decay: float,
    epochs: int,
    steps_per_epoch: int,
    schedule: str = "cosine",
    lr_steps: Sequence[float] | None = None,
    warmup_iters: int | None = None,
    layer_decay: float | None = None,
    layer_of: Callable[[str], float] | None = None,
    device: torch.device | str = "cpu",
    max_grad_norm: float = 10.0,
) -> DetectorTraining:
    """A fresh :class:`DetectorTraining` at step 0: AdamW (:func:`bobkit.tasks.training.make_optimizer`: betas
    0.9, 0.999, no weight decay on biases and norms, layer decay's ``lr_scale``), :func:`make_scheduler` and the
    detector's samplers keyed (:func:`keyed_samplers`). Wrap ``model`` for data-parallel training afterwards
    (:func:`data_parallel`)."""
    if layer_decay is not None and layer_of is None:
        raise ValueError(f"layer_decay={layer_decay!r} needs layer_of (see detector_layer_of)")
    device = torch.device(device)
    model.to(device).train()
    optimizer = make_optimizer(model, lr=lr, weight_decay=weight_decay, layer_decay=layer_decay, layer_of=layer_of)
    scheduler = make_scheduler(optimizer, schedule=schedule, epochs=epochs, steps_per_epoch=steps_per_epoch,
                               lr_steps=lr_steps, warmup_iters=warmup_iters)
    # fp16 activations in the trunk can underflow their gradients: scale the loss (a no-op otherwise).
    scaler = torch.amp.GradScaler(device.type, enabled=feature_precision(model) == "fp16")
    return DetectorTraining(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                            params=[p for p in model.parameters() if p.requires_grad], device=device,
                            max_grad_norm=max_grad_norm, samplers=keyed_samplers(model))


def data_parallel(training: DetectorTraining, world: World) -> DetectorTraining:
    """``training`` on ``world``'s ranks: the detector in DDP (gradients averaged over the ranks once per step).

    BatchNorm: the pretrained protocols keep the trunk's BatchNorm in eval mode
    (:class:`~bobkit.tasks.detector.TimmFPN`), so the split of a batch over the ranks does not touch it. ``random_init`` trains it in train mode:
    on GPUs its layers become synchronised BatchNorm (timm's ``convert_sync_batchnorm``), normalising over every
    rank's images of a micro-batch together; torch has no CPU kernel for that, so with gloo each rank normalises
    its own images (as each micro-batch of ``accum_steps`` does in one process).
    """
    training.world = world
    if world.size == 1:
        return training
    model = training.model
    if world.device.startswith("cuda") and not model.backbone.freeze_bn:
        from timm.layers import convert_sync_batchnorm

        model.backbone.body = convert_sync_batchnorm(model.backbone.body)  # same parameters, in the optimizer
    training.model = wrap_ddp(model, world)
    return training


def training_step(state: DetectorTraining, images: list[torch.Tensor],
                  targets: list[dict[str, torch.Tensor]], accum_steps: int = 1,
                  keys: Sequence[int] | None = None) -> float:
    """One optimizer step on one batch (loss, backward, gradient-norm clip, AdamW step, schedule); returns the loss.

    ``images`` is this process's share of the step's global batch (all of it in one process). With ``accum_steps``
    the share runs as that many equal micro-batches, each loss weighted by its share of the images and its gradients
    accumulated (less activation memory for the same step); in data-parallel training DDP averages the gradients
    over the ranks at the last micro-batch, and the loss returned is the mean over the ranks (equal shares: the
    global batch's). ``keys`` (:func:`sample_key`, one per image) key the anchor and RoI sampling.

    Raises ``FloatingPointError`` when the loss is NaN or infinite, naming the step and the per-head losses.
    """
    device = state.device
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
    if keys is not None and len(keys) != len(images):
        raise ValueError(f"{len(keys)} sampling keys for {len(images)} images")
    size = -(-len(images) // accum_steps)
    starts = range(0, len(images), size)
    state.optimizer.zero_grad(set_to_none=True)
    loss = torch.zeros(())
    try:
        for lo in starts:
            for sampler in state.samplers:
                sampler.keys = None if keys is None else list(keys[lo:lo + size])
            # DDP averages the gradients over the ranks once per step, at the last micro-batch's backward
            last = lo == starts[-1]
            sync = contextlib.nullcontext() if last or not hasattr(state.model, "no_sync") else state.model.no_sync()
            with sync:
                losses = state.model(images[lo:lo + size], targets[lo:lo + size])
                part = sum(losses.values())
                if not torch.isfinite(part):
                    parts = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
                    raise FloatingPointError(f"non-finite detection loss {part.item()} at step {state.step}: "
                                             f"{parts}")
                share = part * (len(images[lo:lo + size]) / len(images))
                state.scaler.scale(share).backward()
            loss = loss + share.detach().cpu()
    finally:
        for sampler in state.samplers:
            sampler.keys = None
    state.scaler.unscale_(state.optimizer)  # clip the true gradients
    torch.nn.utils.clip_grad_norm_(state.params, state.max_grad_norm)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.step += 1
    state.scheduler.step_update(state.step)
    return state.world.mean(loss.item())


def train_detector(
    model: FasterRCNN,
    dataset: torch.utils.data.Dataset,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float = 1e-4,
    schedule: str = "cosine",
    lr_steps: Sequence[float] | None = None,
    warmup_iters: int | None = None,
    layer_decay: float | None = None,
    layer_of: Callable[[str], float] | None = None,
    transform: Callable[..., Any] | None = None,
    seed: int = 0,
    execution: Execution | torch.device | str = "cpu",
    max_grad_norm: float = 10.0,
    state: Any = None,
    accum_steps: int = 1,
    world: World | None = None,
) -> list[float]:
    """Train with AdamW and a per-step schedule (:func:`start_training`), one :func:`training_step` per batch;
    returns the mean loss per epoch (:func:`fit_detector` returns each step's).

    The data order is a pure function of ``(seed, epoch)`` (:func:`epoch_batches`), so a run resumed at a step
    continues the same order, and each item's augmentation and anchor / RoI sampling are functions of the item and
    the epoch / step (:func:`item_seed`, :func:`sample_key`). With a ``world`` of several ranks each takes its fixed
    share of every global batch (:func:`bobkit.tasks.distributed.rank_share`) and DDP averages the gradients, so N
    ranks at ``batch_size / N`` take the steps of one process at ``batch_size``; ``state`` (a :class:`bobkit.tasks.train_state.TrainState` the caller entered) restores
    the newest intact state (model, AdamW, schedule, scaler, RNGs, the step), saves when due and on a stop signal
    (raising :class:`~bobkit.tasks.train_state.TrainingPreempted`), and saves the final state.

    Parameters
    ----------
    model : MaskRCNN
        From :func:`build_detector`; only parameters with ``requires_grad`` are optimised.
    dataset : torch.utils.data.Dataset
        Yields ``(image, target)`` in torchvision's detection format.
    epochs, lr, batch_size, weight_decay : number
        Optimisation settings (:func:`bobkit.tasks.training.make_optimizer`: no weight decay on biases and norms).
    schedule, lr_steps, warmup_iters
        The lr schedule (:func:`make_scheduler`): ``cosine`` (the default) or the paper's ``step``.
    layer_decay : float, optional
        Layer-wise lr decay: parameter ``name`` trains at ``lr * layer_decay ** (top - layer_of(name))``.
    layer_of : callable, optional
        Parameter name -> layer ordinal (:func:`detector_layer_of`); needed with ``layer_decay``.
    transform : callable, optional
        Training augmentation (:func:`train_transform`), applied per item with a seed from ``(seed, epoch, item)``
        (:class:`AugmentedDetection`); build the model with ``resize_in_training=False`` when it resizes.
    seed : int
        Seeds the shuffling and the augmentation.
    state : TrainState, optional
        Where the training state survives (default: nothing kept).
    accum_steps : int
        Each step's batch (a rank's share) as this many micro-batches with accumulated gradients
        (:func:`training_step`).
    world : World, optional
        This process among the data-parallel ranks (default: one process); ``state`` must be entered with it.
    execution : Execution, torch.device or str
        Where to train, with ``loader_workers`` decoding processes and pinned batches on a GPU (a bare device:
        neither). The autocast precision is the feature network's own (:func:`build_detector`); fp16 adds a
        gradient scaler.
    max_grad_norm : float
        Gradient-norm clip (keeps random-init runs stable at detection learning rates).

    Returns
    -------
    list of float
        Mean loss per epoch (over the ranks: the global batches').

    Raises
    ------
    FloatingPointError
        When a loss is NaN or infinite, naming the step and the per-head losses.
    """
    step_losses = fit_detector(
        model, dataset, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, schedule=schedule,
        lr_steps=lr_steps, warmup_iters=warmup_iters, layer_decay=layer_decay, layer_of=layer_of,
        transform=transform, seed=seed, execution=execution, max_grad_norm=max_grad_norm, state=state,
        accum_steps=accum_steps, world=world)
    per_epoch = steps_per_epoch(len(dataset), batch_size)
    return [float(np.mean(step_losses[e * per_epoch:(e + 1) * per_epoch])) if step_losses[e * per_epoch:] else
            float("nan") for e in range(epochs)]


def fit_detector(
    model: FasterRCNN,
    dataset: torch.utils.data.Dataset,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float = 1e-4,
    schedule: str = "cosine",
    lr_steps: Sequence[float] | None = None,
    warmup_iters: int | None = None,
    layer_decay: float | None = None,
    layer_of: Callable[[str], float] | None = None,
    transform: Callable[..., Any] | None = None,
    seed: int = 0,
    execution: Execution | torch.device | str = "cpu",
    max_grad_norm: float = 10.0,
    state: Any = None,
    accum_steps: int = 1,
    world: World | None = None,
) -> list[float]:
    """:func:`train_detector`, returning every optimizer step's loss (the mean over the ranks: the global batch's),
    those of earlier attempts included when ``state`` resumed."""
    ex = as_execution(execution)
    world = world or World(device=str(ex.device))
    micro_batch_size(batch_size, world.size, accum_steps)  # the global batch splits equally, or a ParameterError
    if layer_decay is not None and layer_of is None:
        raise ValueError(f"layer_decay={layer_decay!r} needs layer_of (see detector_layer_of)")
    if transform is not None:
        dataset = AugmentedDetection(dataset, transform, seed)
    state = state if state is not None else TrainState(None)
    n_items = len(dataset)
    per_epoch = steps_per_epoch(n_items, batch_size)
    training = start_training(model, lr=lr, weight_decay=weight_decay, epochs=epochs, steps_per_epoch=per_epoch,
                              schedule=schedule, lr_steps=lr_steps, warmup_iters=warmup_iters,
                              layer_decay=layer_decay, layer_of=layer_of, device=ex.device,
                              max_grad_norm=max_grad_norm)
    training.step = state.restore(model, training.optimizer, training.scheduler, training.scaler)
    step_losses = [float(v) for v in state.extra.get("losses", [])][:training.step]
    data_parallel(training, world)
    for epoch in range(training.step // per_epoch, epochs):
        if isinstance(dataset, AugmentedDetection):
            dataset.epoch = epoch  # before the loader's workers copy the dataset
        first = training.step
        shares = [rank_share(batch, world) for batch in epoch_batches(n_items, batch_size, seed, epoch)]
        shares = shares[first - epoch * per_epoch:]
        loader = _loader(dataset, batch_size, ex, batches=shares,
                         generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for step, (share, (images, targets)) in enumerate(zip(shares, loader), start=first):
            keys = [sample_key(seed, step, index) for index in share]
            step_losses.append(training_step(training, images, targets, accum_steps, keys=keys))
            state.after_step(training.step, extra=lambda: {"losses": step_losses})
    state.finish(training.step, extra={"losses": step_losses})
    training.model = model  # the plain detector again (DDP holds it)
    return step_losses


def steps_per_epoch(n_items: int, batch_size: int) -> int:
    """Optimizer steps of one epoch: every item once, the last global batch completed (:func:`epoch_batches`)."""
    return max(1, math.ceil(n_items / batch_size))


def epoch_batches(n_items: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of item indices of training epoch ``epoch``: a permutation drawn from ``(seed, epoch)``
    cut into ``batch_size`` pieces, the last one completed with the permutation's first items (as torch's
    ``DistributedSampler`` and mmdetection's samplers pad an epoch), so every step's batch is full and splits into
    equal rank shares and micro-batches, and any step's batch is known without replaying the ones before."""
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    order = torch.randperm(int(n_items), generator=generator).tolist()
    padded = np.resize(order, steps_per_epoch(n_items, batch_size) * batch_size).tolist()  # wraps around
    return [padded[i:i + batch_size] for i in range(0, len(padded), batch_size)]


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


def split_images(dataset: scenes.CocoDataset, fraction: float,
                 seed: int) -> tuple[scenes.CocoDataset, scenes.CocoDataset]:
    """Two views of ``dataset`` over disjoint images: a seeded ``fraction`` held out and the rest (at least one
    image on each side). The ground truth (``coco``) is shared."""
    ids = np.asarray(dataset.image_ids)
    if len(ids) < 2:
        raise ValueError(f"cannot hold out images for a selection from {len(ids)} training image(s)")
    n_held = min(max(1, round(fraction * len(ids))), len(ids) - 1)
    held = set(np.random.default_rng(seed).choice(ids, size=n_held, replace=False).tolist())
    fit_part, held_out = copy.copy(dataset), copy.copy(dataset)
    fit_part.image_ids = [int(i) for i in ids if int(i) not in held]
    held_out.image_ids = [int(i) for i in ids if int(i) in held]
    return fit_part, held_out


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


@dataclass(frozen=True)
class DetectorSetup:
    """What a cell's detector is built and trained with, resolved from its parameters (:func:`detector_setup`)."""

    heads: str
    image_size: int
    max_size: int
    anchors: tuple[float, ...]
    augment: str  # resolved: none | multiscale | lsj

    def as_metrics(self) -> dict[str, float]:
        """Run descriptors (``detector_*``; the head widths come from the built model, :func:`head_widths`)."""
        return {"detector_image_size": float(self.image_size), "detector_max_size": float(self.max_size),
                "detector_narrow_heads": float(self.heads == "narrow_cpu"),
                "detector_multiscale": float(self.augment == "multiscale"),
                "detector_lsj": float(self.augment == "lsj")}


def detector_setup(p: dict[str, Any]) -> DetectorSetup:
    """Heads, evaluation sizes, anchors and augmentation of a cell with (validated) parameters ``p``.

    * ``heads`` None: ``narrow_cpu`` on the offline scenes, ``full`` on real datasets. Narrow heads on a real
      dataset run only when asked for by name (a CPU rehearsal; never the paper's detector).
    * ``augment`` ``paper``: ``lsj`` for plain ViTs, ``multiscale`` otherwise (:func:`resolve_augment`).
    * ``image_size`` None: ``canvas_size`` on the scenes; else 1024 with ``lsj`` (ViTDet), 800 otherwise.
    * Long-side cap: the square canvas on the scenes; ``image_size`` with ``lsj`` (the image fits a square, as
      ViTDet tests at 1024 x 1024); else ``image_size * 1333 / 800`` (mmdetection's 1333 x 800).
    * Anchors: the scenes' scale with the canvas; real datasets use mmdetection's 32-512 px.
    """
    offline = p["dataset"] in scenes.SCENE_DATASETS
    heads = p["heads"] or ("narrow_cpu" if offline else "full")
    augment = resolve_augment(p["augment"], p["backbone"])
    if offline:
        size = int(p["image_size"] or p["canvas_size"])
        return DetectorSetup(heads, size, size, tuple(a * size / 128 for a in SCENE_ANCHORS), augment)
    size = int(p["image_size"] or (LSJ_SIZE if augment == "lsj" else REFERENCE_SHORT_SIDE))
    max_size = size if augment == "lsj" else round(size * REFERENCE_MAX_SIZE / REFERENCE_SHORT_SIDE)
    return DetectorSetup(heads, size, max_size, tuple(float(a) for a in COCO_ANCHORS), augment)


@task_entry(SPEC)
def run(p: dict[str, Any], ex: Execution) -> dict[str, float]:
    """Train Mask R-CNN on ``dataset`` with ``backbone`` under ``protocol``; return COCO box and mask AP.

    Protocols: see the module docstring. ``dataset`` is ``"fmnist_scenes"`` (offline, composed on first use and
    cached), a manifest COCO-format dataset (:data:`bobkit.data.scenes.REAL_DATASETS`) or a folder with
    ``instances_{train,val}.json``; ``eval_dataset`` evaluates on another dataset's validation split (domain
    shift). Heads, sizes and augmentation as :func:`detector_setup` resolves them; AdamW with the ``schedule``
    (:func:`make_scheduler`), the trunk's layers at ``lr * layer_decay ** depth`` with ``layer_decay``; a list of
    ``lr`` is a selection on a held-out 20% of the training images. Training runs in ``$BOB_PROCESSES``
    data-parallel processes (:func:`train_job`), evaluation in this one. The trunk and
    FPN autocast to ``precision``; the RPN and RoI heads always run in fp32 (see
    :class:`~bobkit.tasks.detector.TimmFPN`); ``channels_last=None`` (auto) is off here (not measured for
    detection); gradient checkpointing stays off for ``frozen`` (no backward through the trunk). With
    ``output_dir`` the validation predictions are also written there as ``detections_val.json``.

    Returns ``box_ap, box_ap50, box_ap75, mask_ap, mask_ap50, mask_ap75`` (0-1, pycocotools; no mask AP for
    box-only datasets) with their bootstrap standard errors ``se/<metric>``, ``n_train``, ``n_test`` (validation
    images), ``selected_lr`` when ``lr`` is a list, what the detector was built with (``detector_*``: head widths,
    evaluation sizes, augmentation), ``train_seconds``, ``eval_seconds`` and the execution settings (``exec_*``).
    Raises ``FloatingPointError`` on a non-finite training loss (named by step).
    """
    seed, batch_size, rates = p["seed"], p["batch_size"], learning_rates(p["lr"])
    processes = distributed.processes_requested()
    micro_batch_size(batch_size, processes, p["accum_steps"])  # a batch that does not split fails before any work
    train, val = cell_datasets(p)
    setup = detector_setup(p)
    setting = {q.name: p[q.name] for q in SPEC.parameters if q.kind != "execution" and q.name != "lr"}

    def trained(rate: float, part: str | None = None) -> FasterRCNN:
        """A fresh detector (same seed) trained at ``rate`` on the training images (``part``: less the held-out
        share of a selection) by :func:`train_job` in ``processes`` processes, on the device for evaluation; its
        training state survives in the cell's ``state_dir`` (a selection's candidate: in a folder of its own)."""
        folder = p["state_dir"] if part is None or p["state_dir"] is None else f"{p['state_dir']}/{part}"
        identity = {"setting": setting, "lr": rate, "part": part, "code": source_fingerprint(fit_detector)}
        params = job_params(p, ex, lr=rate, held_out=part is not None, identity=identity)
        result = distributed.train(TRAIN_JOB, params, processes, state_dir=folder, threads=job_threads(p, processes),
                                   device=str(ex.device))
        assert result.weights is not None
        model = cell_detector(p, ex, train)
        model.load_state_dict(result.weights)
        summary.clear()
        summary.update({k: float(result.record[k]) for k in TRAIN_SUMMARY if k in result.record})
        return prepare_detector(model, ex)

    start = time.perf_counter()
    summary: dict[str, float] = {}  # the final training's attempts (train_attempts, train_resumed_step, ...)
    selection: dict[str, float] = {}
    if len(rates) > 1:
        _, held_out = split_images(train, VALIDATION_FRACTION, seed)

        def held_out_box_ap(rate: float) -> float:
            predictions = predict(trained(rate, f"lr-fit-{rate:g}"), held_out, batch_size=batch_size, execution=ex)
            return coco_eval.evaluate(train.coco, predictions, iou_types=("bbox",),
                                      image_ids=held_out.image_ids)["box_ap"]

        best, _ = select_on_validation(rates, held_out_box_ap)
        selection = {"selected_lr": best, "n_validation": float(len(held_out))}
    else:
        best = rates[0]
    model = trained(best)
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    predictions = predict(model, val, batch_size=batch_size, execution=ex)
    with_masks = train.has_masks and val.has_masks
    metrics = coco_eval.evaluate(
        val.coco, predictions, iou_types=("bbox", "segm") if with_masks else ("bbox",), image_ids=val.image_ids,
        bootstrap=AP_BOOTSTRAP, seed=seed,
    )
    eval_seconds = time.perf_counter() - start
    # Box-only datasets (Sim10k) report no mask AP at all: a NaN score would fail the cell in the runner.
    metrics.update(selection, n_train=float(len(train)), n_test=float(len(val)))

    if p["output_dir"] is not None:
        from pathlib import Path

        from bobkit.utils.files import write_json

        write_json(Path(p["output_dir"]) / "detections_val.json", predictions)
    return {**metrics, **head_widths(model), **setup.as_metrics(), "train_seconds": train_seconds,
            "eval_seconds": eval_seconds, **summary, **ex.as_metrics()}


# ----------------------------------------------------------------------------------------------- the training job

#: The job :func:`bobkit.tasks.distributed.train` runs for a detection cell's training (in the cell's process, or
#: in each of ``$BOB_PROCESSES`` data-parallel ranks).
TRAIN_JOB = "bobkit.tasks.detection:train_job"
#: What a training's record adds to the cell's run descriptors.
TRAIN_SUMMARY = ("train_attempts", "train_resumed_step", "train_steps_redone", "train_processes")


def cell_datasets(p: dict[str, Any]) -> tuple[scenes.CocoDataset, scenes.CocoDataset]:
    """The training and validation images of a cell with (validated) parameters ``p`` (:func:`load_datasets`)."""
    return load_datasets(p["dataset"], eval_dataset=p["eval_dataset"], n_train=p["n_train"], n_val=p["n_val"],
                         canvas_size=p["canvas_size"], seed=p["seed"])


def cell_detector(p: dict[str, Any], ex: Execution, train: scenes.CocoDataset) -> FasterRCNN:
    """A cell's detector as built (seeded by ``seed``; not yet on the device), for its training images ``train``."""
    setup = detector_setup(p)
    return build_detector(p["backbone"], p["protocol"], len(train.category_names), heads=setup.heads,
                          image_size=setup.image_size, anchor_sizes=setup.anchors, max_size=setup.max_size,
                          seed=p["seed"], masks=train.has_masks, precision=ex.precision,
                          resize_in_training=setup.augment == "none")


def job_params(p: dict[str, Any], ex: Execution, *, lr: float, held_out: bool,
               identity: dict[str, Any]) -> dict[str, Any]:
    """The JSON parameters of a :func:`train_job`: the cell's parameters, the learning rate, whether a selection's
    held-out images are left out, the execution settings and the identity its training state is saved under."""
    cell = json.loads(json.dumps({k: v for k, v in p.items() if k not in ("state_dir", "output_dir")}, default=str))
    execution = {"device": str(ex.device), "precision": ex.precision, "channels_last": bool(ex.channels_last),
                 "compile": bool(ex.compile), "grad_checkpointing": bool(ex.grad_checkpointing),
                 "loader_workers": int(ex.loader_workers), "pin_memory": bool(ex.pin_memory)}
    return {**cell, "lr": float(lr), "held_out": bool(held_out), "execution": execution,
            "identity": json.loads(json.dumps(identity, default=str))}


def job_threads(p: dict[str, Any], processes: int) -> int | None:
    """torch threads of each training process: ``num_threads`` when set, else the cores shared out (in the
    cell's own process: None, as the task harness set them)."""
    if processes == 1:
        return None
    return p["num_threads"] or max(1, int(os.environ.get("BOB_NUM_THREADS") or os.cpu_count() or 1) // processes)


def train_job(job: distributed.Job, world: World) -> distributed.JobResult:
    """A detection cell's training (:func:`bobkit.tasks.distributed.train` runs it in the cell's process or in each
    rank): the images and the detector rebuilt from the parameters, :func:`fit_detector` with the training state
    in ``job.state_dir``; returns the trained weights (CPU copies, without ``torch.compile``'s prefix) and a
    record of the step losses, the processes and the attempts. Every rank returns them; rank 0's are written."""
    p = job.params  # the cell's parameters; the job's own (execution, held_out, identity) are read as job.params
    run = job.params["execution"]
    device = torch.device(world.device if world.size > 1 else run["device"])
    ex = Execution(device=device, precision=run["precision"] if device.type == run["device"].split(":")[0] else "fp32",
                   channels_last=run["channels_last"], compile=run["compile"], loader_workers=run["loader_workers"],
                   pin_memory=run["pin_memory"] and device.type == "cuda",
                   grad_checkpointing=run["grad_checkpointing"])
    train, _ = cell_datasets(p)
    if job.params["held_out"]:
        train, _ = split_images(train, VALIDATION_FRACTION, p["seed"])
    setup = detector_setup(p)
    transform = train_transform(setup.augment, setup.image_size, max_size=setup.max_size,
                                train_scales=p["train_scales"])
    model = cell_detector(p, ex, train)
    layer_of = detector_layer_of(model, p["backbone"]) if p["layer_decay"] is not None else None
    prepare_detector(model, ex)
    every = 60.0 * float(p["state_every_min"])
    with TrainState(job.state_dir, every_seconds=every, world=world, identity=job.params["identity"]) as state:
        losses = fit_detector(model, train, epochs=p["epochs"], lr=p["lr"], batch_size=p["batch_size"],
                              weight_decay=p["weight_decay"], schedule=p["schedule"], lr_steps=p["lr_steps"],
                              warmup_iters=p["warmup_iters"], layer_decay=p["layer_decay"], layer_of=layer_of,
                              transform=transform, seed=p["seed"], execution=ex, state=state,
                              accum_steps=p["accum_steps"], world=world)
        summary = state.summary()
    weights = {k.replace("_orig_mod.", ""): v.detach().to("cpu").contiguous().clone()
               for k, v in model.state_dict().items()}
    return distributed.JobResult(weights, {"losses": losses, "train_processes": world.size, **summary})
