"""COCO-format detection / instance-segmentation datasets.

Two sources, one loader:

* **Offline scenes** (:func:`compose_scenes`, :func:`build_fmnist_scenes`): real Fashion-MNIST items pasted on black
  canvases. Boxes and masks are exact (a mask is the item's pixels above a threshold, a box is the tight box around
  the visible mask), the result is written as a COCO ``instances.json`` plus an ``images.npz``, deterministic by seed
  and cached under :func:`bobkit.utils.paths.data_cache_dir` (with the files' sizes and sha256 in ``meta.json``,
  checked on every reuse: a damaged split is moved aside and composed again).
* **Real datasets** found through the data manifest (:func:`resolve_coco_split`): COCO 2017 as is; Sim10k (VOC
  XML) and Cityscapes (gtFine polygons) converted once to COCO instances files; or any folder holding
  ``instances_{split}.json`` and its images.

:class:`CocoDataset` reads either and yields ``(image float tensor (3,H,W) in [0,1], target dict)`` in torchvision's
detection format.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from bobkit.data import datasets as _datasets
from bobkit.data import sources as _sources
from bobkit.data import user as _user
from bobkit.data.coco_real import CITYSCAPES_INSTANCE_CLASSES as CITYSCAPES_INSTANCE_CLASSES  # re-export
from bobkit.data.coco_real import cityscapes_to_coco, sim10k_to_coco
from bobkit.data.images import to_rgb
from bobkit.data.verify import file_digest
from bobkit.utils import paths
from bobkit.utils.files import (
    atomic_dir,
    atomic_path,
    file_record,
    move_aside,
    record_problems,
    sha256_bytes,
    source_fingerprint,
)

#: The files of a written split; their sizes and sha256 go into its ``meta.json``.
SCENE_FILES = ("instances.json", "images.npz")

#: Offline scene datasets: name -> source image dataset in :mod:`bobkit.data` (train scenes come from its train
#: split, validation scenes from its test split, so no source item is shared between them).
SCENE_DATASETS: dict[str, str] = {"fmnist_scenes": "fashion_mnist"}

#: Real datasets, found through the data manifest (``bobkit.data.manifest.resolve_dir``): name -> how its splits
#: become COCO instances files. COCO 2017 is COCO already; Sim10k (VOC XML, cars) and Cityscapes (gtFine polygons)
#: are converted once into ``data_cache_dir()/coco/<name>/instances_<split>.json``.
REAL_DATASETS: dict[str, str] = {
    "coco2017": "COCO 2017 instances (80 categories, boxes and masks)",
    "sim10k": "Sim10k cars (boxes only); val is every 10th frame by name, train the rest",
    "cityscapes": "Cityscapes gtFine instances (8 classes, polygon masks); Sim10k -> Cityscapes evaluates its cars",
}



@dataclass(frozen=True)
class SceneConfig:
    """How scenes are composed. The defaults are the offline configuration measured on a 2-core CPU: 1-4 items of
    28-56 px on 128x128 canvases, masks from item pixels above 0.2, box overlap capped at 15%; with them a Mask R-CNN
    over a small pretrained backbone reaches a box AP far above its random-init control in three epochs.

    Attributes
    ----------
    canvas_size : int
        Side of the square canvas in pixels.
    min_items, max_items : int
        Number of items per scene, drawn uniformly in ``[min_items, max_items]``.
    min_item_size, max_item_size : int
        Side of a pasted item (a resized 28x28 source image), drawn uniformly.
    mask_threshold : float
        An item pixel belongs to the mask when its intensity exceeds this fraction of 255.
    max_overlap : float
        Largest allowed intersection of two item boxes, as a fraction of the smaller box's area.
    min_mask_area : int
        Items whose visible mask is smaller than this are not pasted.
    """

    canvas_size: int = 128
    min_items: int = 1
    max_items: int = 4
    min_item_size: int = 28
    max_item_size: int = 56
    mask_threshold: float = 0.2
    max_overlap: float = 0.15
    min_mask_area: int = 20

    def __post_init__(self) -> None:
        if not 1 <= self.min_items <= self.max_items:
            raise ValueError(f"need 1 <= min_items <= max_items, got {self.min_items}, {self.max_items}")
        if not 1 <= self.min_item_size <= self.max_item_size <= self.canvas_size:
            raise ValueError(
                "need 1 <= min_item_size <= max_item_size <= canvas_size, got "
                f"{self.min_item_size}, {self.max_item_size}, {self.canvas_size}"
            )


@dataclass
class Scenes:
    """Composed scenes in memory.

    Attributes
    ----------
    images : numpy.ndarray
        uint8 canvases, shape (N, S, S), single channel.
    annotations : list of list of dict
        Per image, its objects: ``category`` (0-based source class), ``mask`` (bool (S, S), visible pixels),
        ``bbox`` (COCO ``[x, y, w, h]``, tight around the mask), ``source_index`` (index of the item in the source
        images) and ``paste_box`` (``[x0, y0, x1, y1]`` of the square the resized item was pasted into).
    classes : list of str
        Source class names; COCO category ids are ``index + 1``.
    """

    images: np.ndarray
    annotations: list[list[dict[str, Any]]]
    classes: list[str]


# --------------------------------------------------------------------------------------------------- composition


def tight_bbox(mask: np.ndarray) -> list[float]:
    """COCO ``[x, y, w, h]`` of the smallest pixel-aligned box holding every true pixel of ``mask``.

    A box covers whole pixels, so a single pixel at (x, y) has box ``[x, y, 1, 1]`` (the convention of
    ``pycocotools.mask.toBbox``).
    """
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        raise ValueError("empty mask has no bounding box")
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    return [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]


def _overlap_fraction(a: Sequence[int], b: Sequence[int]) -> float:
    """Intersection of two ``(x0, y0, x1, y1)`` boxes over the smaller one's area."""
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller if smaller else 1.0


def resize_item(item: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a uint8 item to ``size`` x ``size``."""
    return np.asarray(Image.fromarray(item).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def _keeps_visible(owner: np.ndarray, item_mask: np.ndarray, x0: int, y0: int, n_placed: int, min_area: int) -> bool:
    """Whether every placed item keeps at least ``min_area`` visible pixels once ``item_mask`` covers its square."""
    if n_placed == 0:
        return True
    side = item_mask.shape[0]
    covered = owner[y0 : y0 + side, x0 : x0 + side][item_mask]
    lost = np.bincount(covered[covered >= 0], minlength=n_placed)
    if not lost.any():
        return True
    area = np.bincount(owner[owner >= 0], minlength=n_placed)
    return bool((area - lost >= min_area).all())


def compose_scenes(
    source_images: np.ndarray,
    source_labels: np.ndarray,
    classes: Sequence[str],
    n_scenes: int,
    config: SceneConfig = SceneConfig(),
    *,
    seed: int = 0,
    max_tries: int = 50,
) -> Scenes:
    """Paste source items on black canvases, recording exact masks and boxes.

    Items are pasted in order; a later item occludes earlier ones only on its own mask pixels, and elsewhere in its
    square it is blended with ``max`` so its faint (sub-threshold) border never covers another item. Hence, for every
    canvas, the pixels above the threshold are exactly the union of the (disjoint, visible) masks, and each mask's
    canvas pixels are the pasted item's pixels.

    Parameters
    ----------
    source_images : numpy.ndarray
        uint8 grayscale items, shape (M, h, w), bright object on a dark background (Fashion-MNIST style).
    source_labels : numpy.ndarray
        int class of each item, shape (M,).
    classes : sequence of str
        Class names, indexed by label.
    n_scenes : int
        Number of canvases.
    config : SceneConfig
        Composition parameters.
    seed : int
        Seed of the generator that draws items, sizes and positions: equal seeds give identical scenes.
    max_tries : int
        Placement attempts per item before it is skipped (a scene keeps at least one item).

    Returns
    -------
    Scenes
    """
    if source_images.ndim != 3 or source_images.dtype != np.uint8:
        raise ValueError(f"source_images must be uint8 (M, h, w), got {source_images.dtype} {source_images.shape}")
    rng = np.random.default_rng(seed)
    size, thr = config.canvas_size, config.mask_threshold * 255.0
    images = np.zeros((n_scenes, size, size), dtype=np.uint8)
    all_annotations: list[list[dict[str, Any]]] = []
    for i in range(n_scenes):
        canvas = images[i]
        owner = np.full((size, size), -1, dtype=np.int32)  # which item owns each mask pixel
        placed: list[tuple[int, tuple[int, int, int, int], int]] = []  # (label, square x0,y0,x1,y1, source index)
        n_items = int(rng.integers(config.min_items, config.max_items + 1))
        while not placed or len(placed) < n_items:
            # Draw until an item fits; the first item always fits on an empty canvas unless its mask is tiny.
            for _ in range(max_tries):
                idx = int(rng.integers(len(source_images)))
                side = int(rng.integers(config.min_item_size, config.max_item_size + 1))
                x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
                box = (x0, y0, x0 + side, y0 + side)
                if all(_overlap_fraction(box, other) <= config.max_overlap for _, other, _ in placed):
                    item = resize_item(source_images[idx], side)
                    if int((item > thr).sum()) >= config.min_mask_area and _keeps_visible(
                        owner, item > thr, x0, y0, len(placed), config.min_mask_area
                    ):
                        break
            else:
                if placed:
                    break  # canvas is full enough
                continue
            item_mask = item > thr
            region = canvas[y0 : y0 + side, x0 : x0 + side]
            region_owner = owner[y0 : y0 + side, x0 : x0 + side]
            blended = np.where(item_mask, item, np.maximum(region, item))
            # Sub-threshold border pixels must not lower (or raise past threshold) another item's mask pixels.
            blended = np.where(~item_mask & (region_owner >= 0), region, blended)
            region[...] = blended
            region_owner[item_mask] = len(placed)
            placed.append((int(source_labels[idx]), box, idx))
        annotations = [
            {
                "category": label,
                "mask": owner == k,
                "bbox": tight_bbox(owner == k),
                "source_index": idx,
                "paste_box": [int(v) for v in box],
            }
            for k, (label, box, idx) in enumerate(placed)
        ]
        all_annotations.append(annotations)
    return Scenes(images=images, annotations=all_annotations, classes=list(classes))


def scenes_to_coco(scenes: Scenes, *, description: str = "") -> dict[str, Any]:
    """A COCO instances dict for ``scenes`` (masks as compressed RLE, image ids ``1..N``, category ids ``1..K``).

    Parameters
    ----------
    scenes : Scenes
        Composed scenes.
    description : str
        Free text stored under ``info``.

    Returns
    -------
    dict
        With ``info``, ``images`` (``file_name`` = ``"{id:06d}.png"``, the key of the image in ``images.npz``),
        ``annotations`` and ``categories``.
    """
    n, h, w = scenes.images.shape
    images, annotations = [], []
    ann_id = 1
    for i in range(n):
        image_id = i + 1
        images.append({"id": image_id, "file_name": f"{image_id:06d}.png", "height": int(h), "width": int(w)})
        for obj in scenes.annotations[i]:
            rle = mask_utils.encode(np.asfortranarray(obj["mask"].astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": int(obj["category"]) + 1,
                    "bbox": [float(v) for v in obj["bbox"]],
                    "area": float(obj["mask"].sum()),
                    "segmentation": rle,
                    "iscrowd": 0,
                    "source_index": int(obj["source_index"]),  # provenance: which source item was pasted
                    "paste_box": list(obj["paste_box"]),
                }
            )
            ann_id += 1
    categories = [{"id": k + 1, "name": name, "supercategory": "object"} for k, name in enumerate(scenes.classes)]
    return {
        "info": {"description": description, "version": scene_code_version()},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


# ------------------------------------------------------------------------------------------------ cached builder


@cache
def scene_code_version() -> str:
    """Fingerprint of the code that composes scenes (this module and the source-image readers)."""
    return source_fingerprint(sys.modules[__name__], _datasets, _sources)


def _scene_key(dataset: str, split: str, n: int, config: SceneConfig, seed: int) -> str:
    """Cache folder name: the parameters and the composing code's fingerprint hashed."""
    payload = json.dumps(
        {"dataset": dataset, "split": split, "n": n, "config": config.__dict__, "seed": seed,
         "code": scene_code_version()},
        sort_keys=True,
    )
    return f"{dataset}-{split}-{n}-{config.canvas_size}px-s{seed}-{sha256_bytes(payload)[:12]}"


def scene_problems(folder: str | os.PathLike[str]) -> list[str] | None:
    """What is wrong with a written split: None when absent, ``[]`` when its files match ``meta.json``'s records."""
    folder = Path(folder)
    if not folder.exists():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"meta.json unreadable: {exc}"]
    return record_problems(folder, meta.get("files") if isinstance(meta, dict) else None, sha256=file_digest)


def build_scene_split(
    dataset: str,
    split: str,
    n: int,
    config: SceneConfig = SceneConfig(),
    *,
    seed: int = 0,
    cache_root: str | os.PathLike[str] | None = None,
) -> Path:
    """Compose (or reuse from cache) an offline scene split written as a COCO-format folder.

    Parameters
    ----------
    dataset : str
        A key of :data:`SCENE_DATASETS` (e.g. ``"fmnist_scenes"``).
    split : {"train", "val"}
        ``train`` draws items from the source's train split, ``val`` from its test split.
    n : int
        Number of scenes.
    config : SceneConfig
        Composition parameters.
    seed : int
        Composition seed (the split name is mixed in so train and val never share a random stream).
    cache_root : path-like, optional
        Where cached splits live; default ``data_cache_dir()/scenes``.

    Returns
    -------
    pathlib.Path
        Folder with ``instances.json`` and ``images.npz``; complete folders appear atomically (renamed into place).
    """
    if dataset not in SCENE_DATASETS:
        raise ValueError(f"unknown scene dataset {dataset!r}; known: {', '.join(SCENE_DATASETS)}")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = Path(cache_root) if cache_root is not None else paths.data_cache_dir() / "scenes"
    target = root / _scene_key(dataset, split, n, config, seed)
    problems = scene_problems(target)
    if problems == []:
        return target
    if problems:
        aside = move_aside(target)
        warnings.warn(f"scene cache {target} is damaged ({'; '.join(problems)}); moved to {aside.name}, composing "
                      f"it again", stacklevel=2)

    from bobkit.data import get_dataset  # local import: keeps scene loading usable without the data package

    source = get_dataset(SCENE_DATASETS[dataset], "train" if split == "train" else "test")
    split_seed = int(np.random.SeedSequence([seed, 0 if split == "train" else 1]).generate_state(1)[0])
    scenes = compose_scenes(source.images, source.labels, source.classes, n, config, seed=split_seed)
    write_scenes(scenes, target, description=f"{dataset} {split}: {SCENE_DATASETS[dataset]} items, seed {seed}")
    return target


def write_scenes(scenes: Scenes, target: str | os.PathLike[str], *, description: str = "") -> Path:
    """Write ``scenes`` as ``target/{instances.json, images.npz, meta.json}``, renamed into place when complete.

    ``meta.json`` records the size and sha256 of the two data files (checked by :func:`scene_problems`). The
    folder appears atomically and durably (:func:`bobkit.utils.files.atomic_dir`); if a concurrent writer
    finished the same deterministic split first, theirs is kept.

    Parameters
    ----------
    scenes : Scenes
        Composed scenes.
    target : path-like
        Destination folder.
    description : str
        Stored in the json's ``info``.

    Returns
    -------
    pathlib.Path
        ``target``.
    """
    target = Path(target)
    with atomic_dir(target) as tmp:
        coco = scenes_to_coco(scenes, description=description)
        (tmp / "instances.json").write_text(json.dumps(coco))
        arrays = {img["file_name"]: scenes.images[k] for k, img in enumerate(coco["images"])}
        np.savez_compressed(tmp / "images.npz", **arrays)
        files = {name: file_record(tmp / name, sha256=file_digest) for name in SCENE_FILES}
        (tmp / "meta.json").write_text(json.dumps({"files": files, "description": description}, indent=2))
    return target


# -------------------------------------------------------------------------------------------------------- loader


def _is_json(path: Path) -> bool:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def resolve_coco_split(dataset: str, split: str) -> tuple[Path, Path]:
    """Instances json and image folder of a COCO-format dataset split.

    Parameters
    ----------
    dataset : str
        An offline scene dataset (composed on demand with default parameters, for inspection), a name of
        :data:`REAL_DATASETS` found through the data manifest, a declared COCO dataset (:mod:`bobkit.data.user`),
        or a folder holding ``instances_{split}.json`` and ``{split}/`` (or ``images/``) with the images.
    split : {"train", "val"}
        Which split.

    Returns
    -------
    (annotation_file, image_dir) : tuple of pathlib.Path
        ``file_name`` entries of the json are relative to ``image_dir``.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if dataset in SCENE_DATASETS:
        folder = build_scene_split(dataset, split, 600 if split == "train" else 150)
        return folder / "instances.json", folder
    if dataset in REAL_DATASETS:
        from bobkit.data.manifest import resolve_dir  # verified location, or an error naming where to get it

        root = Path(resolve_dir(dataset))
        if dataset == "coco2017":
            return root / "annotations" / f"instances_{split}2017.json", root / f"{split}2017"
        target = paths.data_cache_dir() / "coco" / dataset / f"instances_{split}.json"
        if target.is_file() and not _is_json(target):
            move_aside(target)  # damaged (e.g. zero-filled by a crash before writes were fsynced): convert again
        if not target.is_file():
            coco = sim10k_to_coco(root, split) if dataset == "sim10k" else cityscapes_to_coco(root, split)
            with atomic_path(target) as tmp:
                tmp.write_text(json.dumps(coco))
        return target, root
    if dataset in _user.coco_dataset_names():  # declared in a grid or a $BOB_REGISTRY file
        return _user.coco_split(dataset, split)
    if os.path.isdir(dataset):
        root = Path(dataset)
        ann = root / f"instances_{split}.json"
        if not ann.is_file():
            raise FileNotFoundError(f"{ann} not found (expected a COCO instances json per split in {root})")
        return ann, root / split if (root / split).is_dir() else root / "images"
    known = ", ".join([*SCENE_DATASETS, *REAL_DATASETS])
    raise ValueError(f"unknown detection dataset {dataset!r}; known: {known}, or a folder with instances_<split>.json")


def load_coco(annotation_file: str | os.PathLike[str]) -> COCO:
    """A pycocotools ``COCO`` index of ``annotation_file``, without pycocotools' progress prints."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(annotation_file))


class CocoDataset(torch.utils.data.Dataset):
    """A COCO-format instance dataset in torchvision's detection format.

    Images come from ``images.npz`` in ``image_dir`` when present (offline scenes, all held in memory) and are
    otherwise read from ``image_dir / file_name``. Crowd annotations and ones with empty boxes are skipped; images
    without any remaining object are kept only when ``keep_empty``.

    Parameters
    ----------
    annotation_file : path-like
        COCO instances json.
    image_dir : path-like
        Folder of the images (or of ``images.npz``).
    keep_empty : bool
        Keep images without objects (needed for evaluation, optional for training).
    category_names : sequence of str, optional
        Label space to use (contiguous labels ``1..K`` in this order, matched by name), e.g. the training set's
        categories when evaluating on another dataset (Sim10k -> Cityscapes); objects of other categories are
        dropped. Default: the file's own categories in id order.

    Attributes
    ----------
    coco : pycocotools.coco.COCO
        The ground truth (for :func:`bobkit.eval.coco.evaluate`).
    category_names : list of str
        Label ``k`` (1-based) is ``category_names[k - 1]``.
    label_to_category_id : dict of int to int
        Contiguous model label -> COCO category id of this file.
    has_masks : bool
        Every annotation has a segmentation (box-only datasets such as Sim10k have none; targets then hold no
        ``masks``).
    """

    def __init__(
        self,
        annotation_file: str | os.PathLike[str],
        image_dir: str | os.PathLike[str],
        *,
        keep_empty: bool = True,
        category_names: Sequence[str] | None = None,
    ) -> None:
        self.coco = load_coco(annotation_file)
        self.image_dir = Path(image_dir)
        cats = sorted(self.coco.loadCats(self.coco.getCatIds()), key=lambda c: c["id"])
        by_name = {c["name"]: c["id"] for c in cats}
        self.category_names = list(category_names) if category_names is not None else [c["name"] for c in cats]
        self.label_to_category_id = {k + 1: by_name[n] for k, n in enumerate(self.category_names) if n in by_name}
        if not self.label_to_category_id:
            raise ValueError(f"none of the categories {self.category_names} occur in {annotation_file}")
        self._category_to_label = {c: k for k, c in self.label_to_category_id.items()}
        anns = [a for a in self.coco.dataset.get("annotations", []) if a["category_id"] in self._category_to_label]
        self.has_masks = bool(anns) and all(a.get("segmentation") for a in anns)
        ids = sorted(self.coco.getImgIds())
        if not keep_empty:
            ids = [i for i in ids if self._annotations(i)]
        self.image_ids = ids
        npz = self.image_dir / "images.npz"
        self._arrays: dict[str, np.ndarray] | None = None
        if npz.is_file():
            with np.load(npz) as data:
                self._arrays = {k: data[k] for k in data.files}

    def _annotations(self, image_id: int) -> list[dict[str, Any]]:
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=[image_id], iscrowd=False))
        return [
            a
            for a in anns
            if a["category_id"] in self._category_to_label and a["bbox"][2] > 0 and a["bbox"][3] > 0
        ]

    def __len__(self) -> int:
        return len(self.image_ids)

    def load_image(self, index: int) -> np.ndarray:
        """The image as uint8 (H, W, 3)."""
        info = self.coco.loadImgs([self.image_ids[index]])[0]
        if self._arrays is not None:
            array = self._arrays[info["file_name"]]
        else:
            with Image.open(self.image_dir / info["file_name"]) as img:
                array = np.asarray(to_rgb(img))  # transparency on white, 16-bit stretched (bobkit.data.images)
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        return array

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image_id = self.image_ids[index]
        array = self.load_image(index)
        h, w = array.shape[:2]
        anns = self._annotations(image_id)
        boxes = torch.tensor(
            [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns],
            dtype=torch.float32,
        ).reshape(-1, 4)
        labels = torch.tensor([self._category_to_label[a["category_id"]] for a in anns], dtype=torch.int64)
        image = torch.from_numpy(np.array(array)).permute(2, 0, 1).float().div_(255.0)  # copy: PIL arrays are read-only
        target = {"boxes": boxes, "labels": labels, "image_id": torch.tensor(image_id)}
        if self.has_masks:
            target["masks"] = (
                torch.from_numpy(np.stack([self.coco.annToMask(a) for a in anns]))
                if anns
                else torch.zeros((0, h, w), dtype=torch.uint8)
            )
        return image, target
