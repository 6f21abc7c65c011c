"""Box and mask AP through pycocotools' ``COCOeval`` (no hand-written metrics).

Predictions are COCO result dicts (``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]``, ``score`` and, for
masks, ``segmentation`` as RLE). :func:`detections_to_coco` turns torchvision detector outputs into them.
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

    Returns
    -------
    dict of str to float
        ``box_ap, box_ap50, box_ap75`` and/or ``mask_ap, mask_ap50, mask_ap75`` in [0, 1]. No predictions at all
        scores 0.0; a metric that COCOeval cannot define (no ground-truth objects) is NaN.
    """
    predictions = [dict(p) for p in predictions]
    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        if iou_type not in _PREFIX:
            raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
        prefix = _PREFIX[iou_type]
        if not coco_gt.getAnnIds():
            metrics.update({f"{prefix}_{k}": float("nan") for k in _STATS})
            continue
        if not predictions:
            # COCO.loadRes rejects an empty list; a detector that finds nothing has AP 0.
            metrics.update({f"{prefix}_{k}": 0.0 for k in _STATS})
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
    return metrics
