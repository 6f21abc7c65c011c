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

Training is the shared fine-tuning recipe (:mod:`bobkit.tasks.training`): AdamW, 10% linear warm-up then cosine
per step (timm's scheduler), and with ``layer_decay`` the trunk's layers at ``lr * layer_decay ** depth`` below
the FPN and heads. A list of learning rates is a selection: each is trained on 80% of the training images and
scored (box AP) on the other 20%, the winner is trained again on all of them, and the cell reports its AP on the
evaluation split with ``selected_lr``.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable

import numpy as np
import torch
from torchvision.models.detection import FasterRCNN

from bobkit.data import scenes
from bobkit.eval import coco as coco_eval
from bobkit.features.device import Execution, as_execution, resolve_execution
from bobkit.tasks import blocks
from bobkit.tasks.contract import MEMORY_NOTE, Metric, Param, TaskSpec
from bobkit.tasks.detector import (
    COCO_ANCHORS,
    PROTOCOLS,
    SCENE_ANCHORS,
    build_detector,
    detector_layer_of,
    feature_precision,
    prepare_detector,
)
from bobkit.tasks.harness import task_entry
from bobkit.tasks.training import (
    VALIDATION_FRACTION,
    learning_rates,
    make_optimizer,
    select_on_validation,
    warmup_cosine,
)

#: Bootstrap resamples of the evaluated images behind ``se/<AP metric>`` (about 1 s per AP type on 80 images).
AP_BOOTSTRAP = 200
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
        Param("lr", float, 2e-3, "AdamW, 10% linear warm-up then cosine; a list: the one with the best box AP on "
                                 "held-out training images", low=0.0, low_open=True, or_list=True),
        Param("weight_decay", float, 1e-4, "AdamW weight decay", low=0.0),
        Param("layer_decay", float, None, "layer-wise lr decay of the trunk, e.g. 0.75; None disables (frozen: "
                                          "the trunk does not train)", low=0.0, low_open=True, high=1.0),
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


def train_detector(
    model: FasterRCNN,
    dataset: torch.utils.data.Dataset,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float = 1e-4,
    layer_decay: float | None = None,
    layer_of: Callable[[str], float] | None = None,
    seed: int = 0,
    execution: Execution | torch.device | str = "cpu",
    max_grad_norm: float = 10.0,
) -> list[float]:
    """Train with AdamW, linear warm-up (10% of steps) and cosine decay, stepped per optimizer step.

    Parameters
    ----------
    model : MaskRCNN
        From :func:`build_detector`; only parameters with ``requires_grad`` are optimised.
    dataset : torch.utils.data.Dataset
        Yields ``(image, target)`` in torchvision's detection format.
    epochs, lr, batch_size, weight_decay : number
        Optimisation settings (:func:`bobkit.tasks.training.make_optimizer`: no weight decay on biases and norms).
    layer_decay : float, optional
        Layer-wise lr decay: parameter ``name`` trains at ``lr * layer_decay ** (top - layer_of(name))``.
    layer_of : callable, optional
        Parameter name -> layer ordinal (:func:`detector_layer_of`); needed with ``layer_decay``.
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
    if layer_decay is not None and layer_of is None:
        raise ValueError(f"layer_decay={layer_decay!r} needs layer_of (see detector_layer_of)")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(model, lr=lr, weight_decay=weight_decay, layer_decay=layer_decay, layer_of=layer_of)
    generator = torch.Generator().manual_seed(seed)
    loader = _loader(dataset, batch_size, ex, shuffle=True, generator=generator)
    total = max(1, epochs * len(loader))
    scheduler = warmup_cosine(optimizer, total_steps=total, warmup_steps=max(1, round(0.1 * total)))
    # fp16 activations in the trunk can underflow their gradients: scale the loss (a no-op otherwise).
    scaler = torch.amp.GradScaler(device.type, enabled=feature_precision(model) == "fp16")
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
            step += 1
            scheduler.step_update(step)
            running.append(loss.item())
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


@task_entry(SPEC)
def run(p: dict[str, Any], ex: Execution) -> dict[str, float]:
    """Train Mask R-CNN on ``dataset`` with ``backbone`` under ``protocol``; return COCO box and mask AP.

    Protocols: see the module docstring. ``dataset`` is ``"fmnist_scenes"`` (offline, composed on first use and
    cached), a manifest COCO-format dataset (:data:`bobkit.data.scenes.REAL_DATASETS`) or a folder with
    ``instances_{train,val}.json``; ``eval_dataset`` evaluates on another dataset's validation split (domain
    shift). AdamW with 10% linear warm-up then cosine decay, the trunk's layers at ``lr * layer_decay ** depth``
    with ``layer_decay``; a list of ``lr`` is a selection on a held-out 20% of the training images. The trunk and
    FPN autocast to ``precision``; the RPN and RoI heads always run in fp32 (see
    :class:`~bobkit.tasks.detector.TimmFPN`); ``channels_last=None`` (auto) is off here (not measured for
    detection); gradient checkpointing stays off for ``frozen`` (no backward through the trunk). With
    ``output_dir`` the validation predictions are also written there as ``detections_val.json``.

    Returns ``box_ap, box_ap50, box_ap75, mask_ap, mask_ap50, mask_ap75`` (0-1, pycocotools; no mask AP for
    box-only datasets) with their bootstrap standard errors ``se/<metric>``, ``n_train``, ``n_test`` (validation
    images), ``selected_lr`` when ``lr`` is a list, ``train_seconds``, ``eval_seconds`` and the execution settings
    (``exec_*``). Raises ``FloatingPointError`` on a non-finite training loss (named by step).
    """
    backbone, protocol, seed, batch_size = p["backbone"], p["protocol"], p["seed"], p["batch_size"]
    layer_decay, rates = p["layer_decay"], learning_rates(p["lr"])
    train, val = load_datasets(
        p["dataset"], eval_dataset=p["eval_dataset"], n_train=p["n_train"], n_val=p["n_val"],
        canvas_size=p["canvas_size"], seed=seed,
    )
    offline = p["dataset"] in scenes.SCENE_DATASETS
    size = int(p["image_size"] or (p["canvas_size"] if offline else 800))
    if offline:
        anchors = tuple(a * size / 128 for a in SCENE_ANCHORS)
        max_size = size
    else:
        anchors = tuple(a * size / 800 for a in COCO_ANCHORS)
        max_size = round(size * 1333 / 800)

    def trained(images: scenes.CocoDataset, rate: float) -> FasterRCNN:
        """A fresh detector (same seed) trained on ``images`` at ``rate``."""
        model = build_detector(backbone, protocol, len(train.category_names), image_size=size, anchor_sizes=anchors,
                               max_size=max_size, seed=seed, masks=train.has_masks, precision=ex.precision)
        layer_of = detector_layer_of(model, backbone) if layer_decay is not None else None
        prepare_detector(model, ex)
        train_detector(model, images, epochs=p["epochs"], lr=rate, batch_size=batch_size,
                       weight_decay=p["weight_decay"], layer_decay=layer_decay, layer_of=layer_of, seed=seed,
                       execution=ex)
        return model

    start = time.perf_counter()
    selection: dict[str, float] = {}
    if len(rates) > 1:
        fit_part, held_out = split_images(train, VALIDATION_FRACTION, seed)

        def held_out_box_ap(rate: float) -> float:
            predictions = predict(trained(fit_part, rate), held_out, batch_size=batch_size, execution=ex)
            return coco_eval.evaluate(train.coco, predictions, iou_types=("bbox",),
                                      image_ids=held_out.image_ids)["box_ap"]

        best, _ = select_on_validation(rates, held_out_box_ap)
        selection = {"selected_lr": best, "n_validation": float(len(held_out))}
    else:
        best = rates[0]
    model = trained(train, best)
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
    return {**metrics, "train_seconds": train_seconds, "eval_seconds": eval_seconds, **ex.as_metrics()}
