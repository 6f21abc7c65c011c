"""Stand-ins of the retrieval ground truth and the detection datasets, each in its published layout.

Revisited Oxford / Paris: ``jpg/`` plus the ``gnd_<name>.pkl`` pickle (a dict of ``imlist``, ``qimlist`` and per-query
``bbx`` / ``easy`` / ``hard`` / ``junk``), which bobkit verifies and unpickles under an allow-list. COCO 2017: the
instances json with the real 80 categories and their ids (gaps included), polygon masks, a crowd annotation in
uncompressed RLE, an image without objects and a grayscale photo. Sim10k: VOC XML. Cityscapes:
``gtFine`` polygon json next to ``leftImg8bit`` PNGs.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from bobkit.rehearsal.images import write_picture

# COCO 2017 category ids and names (ids run 1..90 with gaps: 12, 26, 29, 30, 45, 66, 68, 69, 71, 83).
COCO_CATEGORIES = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"),
    (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"),
    (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"),
    (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"),
    (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"),
    (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"),
    (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)
CITYSCAPES_CITIES = {"train": "aachen", "val": "frankfurt"}


# ----------------------------------------------------------------------------------------------------------------
# Revisited Oxford / Paris
# ----------------------------------------------------------------------------------------------------------------


def write_revisited(root: Path, rng: np.random.Generator, name: str) -> None:
    """``<name>/{jpg/<image>.jpg, gnd_<name>.pkl}``; queries are separate images (not in ``imlist``), ground
    truth indexes ``imlist`` (0-based numpy arrays), ``bbx`` is ``[x1, y1, x2, y2]`` in query pixels."""
    stem = "all_souls" if name == "roxford5k" else "paris_defense"
    base = root / name
    imlist = [f"{stem}_{k:06d}" for k in range(8)]
    qimlist = [f"{stem}_{k:06d}" for k in (100, 101)]
    for image in [*imlist, *qimlist]:
        write_picture(base / "jpg" / f"{image}.jpg", rng, (96, 72))
    gnd = [
        {"bbx": [10.0, 8.0, 80.5, 60.5], "easy": np.array([0, 1]), "hard": np.array([2]), "junk": np.array([3])},
        {"bbx": [4.0, 4.0, 50.0, 40.0], "easy": np.array([4]), "hard": np.array([5, 6]),
         "junk": np.array([], dtype=np.int64)},
    ]
    (base / f"gnd_{name}.pkl").write_bytes(pickle.dumps({"imlist": imlist, "qimlist": qimlist, "gnd": gnd},
                                                        protocol=2))


# ----------------------------------------------------------------------------------------------------------------
# COCO 2017
# ----------------------------------------------------------------------------------------------------------------


def _polygon_annotation(ann_id: int, image_id: int, category: int, box: tuple[float, float, float, float]) -> dict:
    """An object with a five-point polygon inside ``box`` (x, y, w, h), as COCO stores ``iscrowd=0`` masks."""
    x, y, w, h = box
    polygon = [x, y, x + w, y, x + w, y + h, x + w / 2, y + h, x, y + 0.7 * h]
    return {"id": ann_id, "image_id": image_id, "category_id": category, "segmentation": [polygon],
            "area": 0.925 * w * h, "bbox": [x, y, w, h], "iscrowd": 0}


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE of a binary mask: run lengths in column-major order, starting with background."""
    flat = mask.flatten(order="F").astype(np.int8)
    bounds = [0, *(np.flatnonzero(np.diff(flat)) + 1), flat.size]
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def _crowd_annotation(ann_id: int, image_id: int, category: int, size: tuple[int, int]) -> dict:
    """A crowd region (``iscrowd=1``) in uncompressed RLE, as COCO stores crowds."""
    width, height = size
    mask = np.zeros((height, width), np.uint8)
    mask[20:32, 5:15] = 1
    return {"id": ann_id, "image_id": image_id, "category_id": category,
            "segmentation": {"counts": rle_counts(mask), "size": [height, width]},
            "area": float(mask.sum()), "bbox": [5.0, 20.0, 10.0, 12.0], "iscrowd": 1}


def write_coco2017(root: Path, rng: np.random.Generator) -> None:
    """``coco2017/{train2017,val2017}/<12-digit id>.jpg`` and ``annotations/instances_{train,val}2017.json``."""
    base = root / "coco2017"
    categories = [{"id": i, "name": n, "supercategory": "object"} for i, n in COCO_CATEGORIES]
    plan = {"train": [(139, (160, 120), "RGB", [(1, (20, 30, 40, 50)), (3, (80, 40, 50, 30))], True),
                      (285, (120, 160), "L", [(18, (10, 20, 60, 70))], False),
                      (632, (160, 106), "RGB", [], False)],  # COCO keeps images without objects
            "val": [(724, (160, 120), "RGB", [(1, (30, 20, 40, 60)), (90, (100, 60, 30, 30))], False),
                    (776, (150, 100), "RGB", [(62, (40, 30, 50, 40))], False)]}
    ann_id = 1
    for split, images in plan.items():
        doc = {"info": {"description": "COCO 2017 stand-in", "version": "1.0", "year": 2017},
               "licenses": [{"id": 1, "name": "Attribution License", "url": "http://creativecommons.org/"}],
               "images": [], "annotations": [], "categories": categories}
        for image_id, size, mode, objects, crowd in images:
            file_name = f"{image_id:012d}.jpg"
            write_picture(base / f"{split}2017" / file_name, rng, size, mode=mode)
            doc["images"].append({"id": image_id, "file_name": file_name, "width": size[0], "height": size[1],
                                  "license": 1, "date_captured": "2013-11-14 11:18:45"})
            for category, box in objects:
                doc["annotations"].append(_polygon_annotation(ann_id, image_id, category, box))
                ann_id += 1
            if crowd:
                doc["annotations"].append(_crowd_annotation(ann_id, image_id, 1, size))
                ann_id += 1
        path = base / "annotations" / f"instances_{split}2017.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))


# ----------------------------------------------------------------------------------------------------------------
# Sim10k and Cityscapes
# ----------------------------------------------------------------------------------------------------------------


def _voc_xml(filename: str, size: tuple[int, int], objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    parts = [f"<annotation><folder>VOC2012</folder><filename>{filename}</filename>",
             f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"]
    for name, (x0, y0, x1, y1) in objects:
        parts.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                     f"<difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
                     f"<ymax>{y1}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>\n"


def write_sim10k(root: Path, rng: np.random.Generator) -> None:
    """``sim10k/{JPEGImages/<frame>.jpg, Annotations/<frame>.xml}`` (VOC XML: cars, and the motorbikes and
    persons Sim10k also boxes); 11 frames, so every 10th (the validation rule) leaves both splits non-empty."""
    size = (191, 105)  # the 1914 x 1052 frames' aspect
    for k in range(11):
        frame = f"{3384645 + k}"
        write_picture(root / "sim10k" / "JPEGImages" / f"{frame}.jpg", rng, size)
        objects = [("car", (10 + k, 40, 60 + k, 80)), ("person", (120, 30, 130, 60))]
        path = root / "sim10k" / "Annotations" / f"{frame}.xml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_voc_xml(f"{frame}.jpg", size, objects))


def write_cityscapes(root: Path, rng: np.random.Generator) -> None:
    """``cityscapes/{leftImg8bit/<split>/<city>/<frame>_leftImg8bit.png,
    gtFine/<split>/<city>/<frame>_gtFine_polygons.json}``; 2:1 frames, instance classes plus a crowd
    ``cargroup`` and stuff (``road``) that are not instances."""
    size = (128, 64)
    for split, city in CITYSCAPES_CITIES.items():
        for k in range(2):
            frame = f"{city}_{k:06d}_000019"
            write_picture(root / "cityscapes" / "leftImg8bit" / split / city / f"{frame}_leftImg8bit.png", rng, size)
            objects = [{"label": "road", "polygon": [[0, 40], [127, 40], [127, 63], [0, 63]]},
                       {"label": "car", "polygon": [[10, 30], [50, 30], [50, 50], [10, 50]]},
                       {"label": "person", "polygon": [[70, 10], [80, 10], [80, 45], [70, 45]]},
                       {"label": "cargroup", "polygon": [[90, 30], [120, 30], [120, 50], [90, 50]]}]
            doc = {"imgHeight": size[1], "imgWidth": size[0], "objects": objects}
            path = root / "cityscapes" / "gtFine" / split / city / f"{frame}_gtFine_polygons.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(doc))
