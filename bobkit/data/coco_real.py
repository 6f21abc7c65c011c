"""Real detection datasets in their own formats, converted to COCO instances (Sim10k VOC XML, Cityscapes polygons).

:func:`bobkit.data.scenes.resolve_coco_split` converts a split once into the data cache and reads it with the same
loader as the offline scenes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_utils

__all__ = ["CITYSCAPES_INSTANCE_CLASSES", "sim10k_to_coco", "cityscapes_to_coco"]

#: Cityscapes classes that have instances (the standard 8 of its instance-segmentation benchmark).
CITYSCAPES_INSTANCE_CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")


def sim10k_to_coco(root: str | os.PathLike[str], split: str) -> dict[str, Any]:
    """COCO instances of Sim10k's cars from its VOC XML (``Annotations/*.xml``, images in ``JPEGImages/``).

    Sim10k has no official split: ``val`` is every 10th frame in name order, ``train`` the rest. Sim10k has boxes
    only, so annotations carry no ``segmentation`` (the detector then trains without a mask head).
    """
    import xml.etree.ElementTree as ET  # local, user-supplied annotation files

    root = Path(root)
    files = sorted((root / "Annotations").glob("*.xml"))
    if not files:
        raise FileNotFoundError(f"no Sim10k annotations in {root / 'Annotations'}")
    files = [f for k, f in enumerate(files) if (k % 10 == 0) == (split == "val")]
    images, annotations = [], []
    for image_id, path in enumerate(files, start=1):
        doc = ET.parse(path).getroot()
        size = doc.find("size")
        width, height = int(size.findtext("width")), int(size.findtext("height"))
        name = doc.findtext("filename") or f"{path.stem}.jpg"
        images.append({"id": image_id, "file_name": f"JPEGImages/{name}", "width": width, "height": height})
        for obj in doc.iter("object"):
            if (obj.findtext("name") or "").strip().lower() != "car":
                continue
            bb = obj.find("bndbox")
            x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            if x1 <= x0 or y1 <= y0:
                continue
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": f"Sim10k cars, {split} (converted from VOC XML)"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "car", "supercategory": "vehicle"}],
    }


def cityscapes_to_coco(root: str | os.PathLike[str], split: str) -> dict[str, Any]:
    """COCO instances of Cityscapes from ``gtFine/<split>/<city>/*_gtFine_polygons.json``.

    Objects of :data:`CITYSCAPES_INSTANCE_CLASSES` become instances with their polygon as segmentation (``group``
    labels such as ``cargroup`` are crowd regions, as in Cityscapes' own instance benchmark they are ignored).
    """
    root = Path(root)
    files = sorted((root / "gtFine" / split).glob("*/*_gtFine_polygons.json"))
    if not files:
        raise FileNotFoundError(f"no Cityscapes polygons in {root / 'gtFine' / split}")
    categories = [
        {"id": k + 1, "name": n, "supercategory": "cityscapes"} for k, n in enumerate(CITYSCAPES_INSTANCE_CLASSES)
    ]
    cat_id = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    for image_id, path in enumerate(files, start=1):
        doc = json.loads(path.read_text())
        height, width = int(doc["imgHeight"]), int(doc["imgWidth"])
        stem = path.name[: -len("_gtFine_polygons.json")]
        file_name = f"leftImg8bit/{split}/{path.parent.name}/{stem}_leftImg8bit.png"
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for obj in doc.get("objects", []):
            if obj.get("label") not in cat_id or len(obj.get("polygon", [])) < 3:
                continue
            poly = [float(v) for xy in obj["polygon"] for v in xy]
            rle = mask_utils.frPyObjects([poly], height, width)
            area = float(mask_utils.area(mask_utils.merge(rle)))
            if area <= 0:
                continue
            x, y, w, h = (float(v) for v in mask_utils.toBbox(mask_utils.merge(rle)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat_id[obj["label"]],
                    "bbox": [x, y, w, h],
                    "area": area,
                    "segmentation": [poly],
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": f"Cityscapes gtFine instances, {split}"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
