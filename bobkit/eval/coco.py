"""Box and mask AP through pycocotools' ``COCOeval`` (no hand-written metrics).

Predictions are COCO result dicts (``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]``, ``score`` and, for
masks, ``segmentation`` as RLE). :func:`detections_to_coco` turns torchvision detector outputs into them.

Sampling uncertainty: with ``bootstrap=B``, :func:`evaluate` resamples the evaluated images with replacement ``B``
times (seeded) and reports the standard deviation of AP, AP50 and AP75 over the resamples as ``se/<metric>``.
COCOeval matches detections to ground truth per image, so a resample reuses those per-image matches and only
re-accumulates the precision-recall curves (restricted to all areas and 100 detections, what the reported APs
read): about 5 ms per resample for 10 categories.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bobkit.eval.uncertainty import bootstrap_counts

#: COCOeval ``stats`` index of each reported number (AP at IoU .50:.95, .50, .75; all areas, 100 detections).
_STATS = {"ap": 0, "ap50": 1, "ap75": 2}
#: iouType -> metric name prefix.
_PREFIX = {"bbox": "box", "segm": "mask"}


def coco_from_dict(dataset: Mapping[str, Any]) -> COCO:
    """A pycocotools ``COCO`` index built from an in-memory instances dict (no file, no prints)."""
    coco = COCO()
    coco.dataset = copy.deepcopy(dict(dataset))
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def masks_to_rle(masks: np.ndarray | torch.Tensor) -> list[dict[str, Any]]:
    """Compressed RLE (json-ready: ``counts`` as str) of each bool mask in ``masks`` (N, H, W)."""
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    masks = np.asfortranarray(np.asarray(masks, dtype=np.uint8).transpose(1, 2, 0))
    if masks.shape[2] == 0:
        return []
    rles = mask_utils.encode(masks)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return list(rles)


def detections_to_coco(
    image_id: int,
    output: Mapping[str, torch.Tensor],
    label_to_category_id: Mapping[int, int],
    *,
    mask_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """COCO result dicts for one image from a torchvision detector output.

    Parameters
    ----------
    image_id : int
        COCO image id.
    output : mapping
        ``boxes`` (N, 4) xyxy in pixels, ``labels`` (N,), ``scores`` (N,), optional ``masks`` (N, 1, H, W)
        probabilities.
    label_to_category_id : mapping
        Model label -> COCO category id.
    mask_threshold : float
        Probability above which a pixel is in a predicted mask.

    Returns
    -------
    list of dict
    """
    boxes = output["boxes"].detach().cpu().numpy().astype(float)
    labels = output["labels"].detach().cpu().numpy()
    scores = output["scores"].detach().cpu().numpy().astype(float)
    rles: Sequence[dict[str, Any]] | None = None
    if "masks" in output:
        rles = masks_to_rle(output["masks"][:, 0] > mask_threshold)
    results = []
    for k in range(len(boxes)):
        x0, y0, x1, y1 = boxes[k]
        result = {
            "image_id": int(image_id),
            "category_id": int(label_to_category_id[int(labels[k])]),
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            "score": float(scores[k]),
        }
        if rles is not None:
            result["segmentation"] = rles[k]
        results.append(result)
    return results


def evaluate(
    coco_gt: COCO,
    predictions: Iterable[Mapping[str, Any]],
    *,
    iou_types: Sequence[str] = ("bbox", "segm"),
    image_ids: Sequence[int] | None = None,
    bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, float]:
    """COCO AP, AP50 and AP75 of ``predictions`` against ``coco_gt``, for boxes and/or masks.

    Parameters
    ----------
    coco_gt : pycocotools.coco.COCO
        Ground truth.
    predictions : iterable of mapping
        COCO result dicts; ``segmentation`` is needed for ``"segm"``.
    iou_types : sequence of {"bbox", "segm"}
        Which APs to compute.
    image_ids : sequence of int, optional
        Restrict evaluation to these images (default: every ground-truth image).
    bootstrap : int
        Resamples of the images for the standard errors ``se/<metric>`` (0: none reported).
    seed : int
        Seeds the resampling.

    Returns
    -------
    dict of str to float
        ``box_ap, box_ap50, box_ap75`` and/or ``mask_ap, mask_ap50, mask_ap75`` in [0, 1] (and their ``se/...``
        with ``bootstrap``). No predictions at all scores 0.0 (SE 0); a metric that COCOeval cannot define (no
        ground-truth objects) is NaN.
    """
    predictions = [dict(p) for p in predictions]
    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        if iou_type not in _PREFIX:
            raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
        prefix = _PREFIX[iou_type]
        if not coco_gt.getAnnIds():
            metrics.update({f"{prefix}_{k}": float("nan") for k in _STATS})
            metrics.update({f"se/{prefix}_{k}": float("nan") for k in _STATS} if bootstrap else {})
            continue
        if not predictions:
            # COCO.loadRes rejects an empty list; a detector that finds nothing has AP 0.
            metrics.update({f"{prefix}_{k}": 0.0 for k in _STATS})
            metrics.update({f"se/{prefix}_{k}": 0.0 for k in _STATS} if bootstrap else {})
            continue
        # Give loadRes one kind of geometry per evaluation: with both, it takes the box area even for masks.
        if iou_type == "bbox":
            preds = [{k: v for k, v in p.items() if k != "segmentation"} for p in predictions]
        else:
            if any("segmentation" not in p for p in predictions):
                raise ValueError("mask AP needs a 'segmentation' in every prediction")
            preds = [{k: v for k, v in p.items() if k != "bbox"} for p in predictions]
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(copy.deepcopy(preds))
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
            if image_ids is not None:
                evaluator.params.imgIds = list(image_ids)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        for key, idx in _STATS.items():
            value = float(evaluator.stats[idx])
            metrics[f"{prefix}_{key}"] = value if value >= 0 else float("nan")  # COCOeval uses -1 for undefined
        if bootstrap:
            metrics.update({f"se/{prefix}_{k}": v for k, v in bootstrap_ap_se(evaluator, bootstrap, seed).items()})
    return metrics


def bootstrap_ap_se(evaluator: COCOeval, resamples: int, seed: int = 0) -> dict[str, float]:
    """Standard errors of AP, AP50, AP75 over ``resamples`` seeded bootstrap draws of an evaluated COCOeval's images.

    Reuses the per-image matches of ``evaluator.evaluate()`` and re-accumulates each resample (an image drawn
    twice counts its ground truth and detections twice). Keys ``ap``, ``ap50``, ``ap75``.
    """
    counts = bootstrap_counts(len(evaluator._paramsEval.imgIds), resamples, seed)
    draws = [np.repeat(np.arange(counts.shape[1]), row) for row in counts]
    values = np.array([resampled_ap(evaluator, draw) for draw in draws])  # (resamples, 3)
    out = {}
    for col, key in enumerate(_STATS):
        finite = values[:, col][np.isfinite(values[:, col])]
        out[key] = float(finite.std(ddof=1)) if finite.size > 1 else float("nan")
    return out


def resampled_ap(evaluator: COCOeval, draw: Sequence[int] | np.ndarray) -> tuple[float, float, float]:
    """AP, AP50, AP75 (all areas, 100 detections) of an evaluated COCOeval over the image positions ``draw``
    (positions in its evaluated image list; repeats allowed). All positions once gives COCOeval's own stats."""
    pe = evaluator._paramsEval
    n_images, n_areas = len(pe.imgIds), len(pe.areaRng)
    n_cats = len(pe.catIds) if pe.useCats else 1
    params = copy.copy(pe)
    params.imgIds = list(range(len(draw)))
    params.areaRng, params.areaRngLbl, params.maxDets = [pe.areaRng[0]], [pe.areaRngLbl[0]], [max(pe.maxDets)]
    clone = copy.copy(evaluator)
    clone.params, clone._paramsEval = params, copy.copy(params)
    # evalImgs is laid out [category][area][image]; keep area 0 ("all") and the drawn images
    clone.evalImgs = [evaluator.evalImgs[k * n_areas * n_images + int(i)] for k in range(n_cats) for i in draw]
    with contextlib.redirect_stdout(io.StringIO()):
        clone.accumulate()
    precision = clone.eval["precision"][:, :, :, 0, 0]  # (IoU thresholds, recall thresholds, categories)
    iou = list(np.round(pe.iouThrs, 2))
    return tuple(_mean_defined(p) for p in (precision, precision[iou.index(0.5)], precision[iou.index(0.75)]))


def _mean_defined(values: np.ndarray) -> float:
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else float("nan")
