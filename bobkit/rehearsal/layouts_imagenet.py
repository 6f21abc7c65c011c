"""Stand-ins of ImageNet-1k, its SimCLR low-shot lists and its shifted test sets (-A, -R, -Sketch, -V2).

Each writer puts a few generated pictures under a data directory in the layout the dataset's own documentation
gives (cited as ``layout_source`` in ``data_manifest.yaml``), with the quirks of the real files: ImageNet's
``.JPEG`` suffix and its grayscale, CMYK and PNG-named-JPEG train images; ImageNet-A file names with spaces;
ImageNetV2 folders named by class index with hash file names.
"""

from __future__ import annotations

import importlib.resources
from functools import lru_cache
from pathlib import Path

import numpy as np

from bobkit.data.sources import imagenet_wnids
from bobkit.rehearsal.images import write_picture

#: Train / val pictures per stand-in class (robustness holds one train picture of each class out to calibrate).
IMAGENET_TRAIN_PER_CLASS = 3
IMAGENET_VAL_PER_CLASS = 2


@lru_cache(maxsize=2)
def shifted_wnids(name: str) -> tuple[str, ...]:
    """The 200 WordNet ids of ImageNet-A (``"a"``) or ImageNet-R (``"r"``), from the lists timm ships."""
    text = (importlib.resources.files("timm.data") / "_info" / f"imagenet_{name}_synsets.txt").read_text()
    return tuple(text.split())


def standin_wnids() -> tuple[str, ...]:
    """Three ImageNet classes: two that ImageNet-A and -R both cover (their 200-class masks apply) and the last
    class of the 1000, which neither covers."""
    both = [w for w in shifted_wnids("a") if w in set(shifted_wnids("r"))]
    return both[0], both[1], imagenet_wnids()[-1]


def write_imagenet(root: Path, rng: np.random.Generator) -> None:
    """``imagenet/{train,val}/<wnid>/*.JPEG``: the layout torchvision's ``ImageNet`` (and the devkit's val
    labels) leave; val files keep their ``ILSVRC2012_val_<8 digits>.JPEG`` names."""
    base = root / "imagenet"
    odd = iter([dict(mode="L"), dict(mode="CMYK"), dict(image_format="PNG")])  # ImageNet's odd train files
    for wnid in standin_wnids():
        for k in range(IMAGENET_TRAIN_PER_CLASS):
            kind = next(odd, {}) if k == 0 else {}
            write_picture(base / "train" / wnid / f"{wnid}_{1000 + k}.JPEG", rng, (96, 72), **kind)
    serial = 0
    for wnid in standin_wnids():
        for _ in range(IMAGENET_VAL_PER_CLASS):
            serial += 1
            write_picture(base / "val" / wnid / f"ILSVRC2012_val_{serial:08d}.JPEG", rng, (72, 96))


def write_imagenet_subset(root: Path, percent: int) -> None:
    """``imagenet_subsets/{1,10}percent.txt``: one ImageNet train file name per line (SimCLR's lists); the listed
    files are those :func:`write_imagenet` wrote: two per class for 1% (the real list has about 13, enough to
    hold some out for a selection), all three for 10%."""
    per_class = 2 if percent == 1 else IMAGENET_TRAIN_PER_CLASS
    names = [f"{wnid}_{1000 + k}.JPEG" for wnid in standin_wnids() for k in range(per_class)]
    path = root / "imagenet_subsets" / f"{percent}percent.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(names) + "\n")


def write_imagenet_a(root: Path, rng: np.random.Generator) -> None:
    """``imagenet_a/imagenet-a/<wnid>/*.jpg`` over ImageNet-A's 200 classes; names like the real ones
    (``0.000116_digital clock _ digital clock_0.865662.jpg``: spaces included)."""
    for k, wnid in enumerate(shifted_wnids("a")[:2]):
        write_picture(root / "imagenet_a" / "imagenet-a" / wnid / f"0.00{k}116_digital clock _ clock_0.86{k}.jpg",
                      rng, (100, 75))


def write_imagenet_r(root: Path, rng: np.random.Generator) -> None:
    """``imagenet_r/imagenet-r/<wnid>/<rendition>_<n>.jpg`` over ImageNet-R's 200 classes."""
    for k, wnid in enumerate(shifted_wnids("r")[:2]):
        write_picture(root / "imagenet_r" / "imagenet-r" / wnid / f"{('art', 'cartoon')[k]}_{k}.jpg", rng, (90, 90))


def write_imagenet_sketch(root: Path, rng: np.random.Generator) -> None:
    """``imagenet_sketch/sketch/<wnid>/sketch_<n>.JPEG``: grayscale-looking sketches of the 1000 classes."""
    for k, wnid in enumerate(standin_wnids()[:2]):
        write_picture(root / "imagenet_sketch" / "sketch" / wnid / f"sketch_{k}.JPEG", rng, (120, 80), mode="L")


def write_imagenet_v2(root: Path, rng: np.random.Generator) -> None:
    """``imagenet_v2/imagenetv2-matched-frequency-format-val/<class index>/<40 hex>.jpeg``."""
    folder = root / "imagenet_v2" / "imagenetv2-matched-frequency-format-val"
    for index in (0, 999):
        write_picture(folder / str(index) / f"{rng.bytes(20).hex()}.jpeg", rng, (80, 100))
