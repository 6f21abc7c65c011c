"""``bob data --example-folder DIR``: an image folder "of your own", written from images that ship with the setup.

It is what ``params/examples/own-data.yaml`` runs on, offline, and looks like a user's folder: six classes of
real photos and textures (scikit-image's brick / grass / gravel textures, LFW faces, crops of the chelsea cat and
coffee photos), files of mixed sizes and formats (PNG, JPEG, WebP, BMP, TIFF), gray, RGBA, CMYK and 16-bit files,
and one corrupt file (skipped and reported by name). Beside it:

* ``sketches/``: the same classes drawn as contour sketches from other crops, an OOD target mapped by class name;
* ``my_checkpoint.safetensors``: a stand-in for a checkpoint you trained: the packaged MobileNetV2 ImageNet weights
  re-saved in timm's key names (so the example places a "user backbone" loaded from a local file).

Everything is deterministic (seeded crops), so two runs write the same images.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from bobkit.data.manifest import resolve

__all__ = ["CLASSES", "write_example_folder"]

CLASSES = ("brick", "grass", "gravel", "face", "cat", "coffee")
PER_CLASS = 40
SKETCHES_PER_CLASS = 12
_FORMATS = ((".png", "PNG"), (".jpg", "JPEG"), (".webp", "WEBP"), (".bmp", "BMP"), (".tif", "TIFF"))
CHECKPOINT = "my_checkpoint.safetensors"


def _sources() -> dict[str, np.ndarray]:
    """Big source images per class (uint8; gray 2-D or RGB 3-D) and the LFW faces (N, 25, 25)."""
    out: dict[str, np.ndarray] = {}
    for name in ("brick", "grass", "gravel"):
        with Image.open(resolve("skimage_textures", f"{name}.png")) as im:
            out[name] = np.asarray(im.convert("L"))
    for name, photo in (("cat", "chelsea"), ("coffee", "coffee")):
        with Image.open(resolve("skimage_photos", f"{photo}.png")) as im:
            out[name] = np.asarray(im.convert("RGB"))
    faces = np.load(resolve("lfw_subset"), allow_pickle=False)[:100]
    out["face"] = (np.clip(np.round(faces * 255.0), 0, 255) if faces.dtype.kind == "f" else faces).astype(np.uint8)
    return out


def _crop(source: np.ndarray, rng: np.random.Generator, half: str) -> Image.Image:
    """A random square crop from the left (``a``) or right (``b``) half, so images and sketches never overlap."""
    h, w = source.shape[:2]
    side = int(rng.integers(min(h, w) // 4, min(h, w // 2) + 1))
    x0 = 0 if half == "a" else w // 2
    x = int(rng.integers(x0, x0 + w // 2 - side + 1))
    y = int(rng.integers(0, h - side + 1))
    return Image.fromarray(source[y:y + side, x:x + side])


def _image(sources: dict[str, np.ndarray], cls: str, index: int, rng: np.random.Generator, half: str) -> Image.Image:
    if cls == "face":  # faces: the first 70 for images, the last 30 for sketches
        face = sources["face"][index % 70 if half == "a" else 70 + index % 30]
        im = Image.fromarray(face)
    else:
        im = _crop(sources[cls], rng, half)
    side = int(rng.integers(48, 200))  # mixed sizes, not always square
    return im.resize((side, int(side * rng.uniform(0.75, 1.33))), Image.BICUBIC)


def _save_variant(im: Image.Image, folder: Path, index: int) -> None:
    """Save in a rotating format; a few files in the modes users' folders hold (gray, RGBA, CMYK, 16-bit)."""
    suffix, fmt = _FORMATS[index % len(_FORMATS)]
    if index == 3:
        im = im.convert("RGBA")
        im.putalpha(Image.new("L", im.size, 200))
        suffix, fmt = ".png", "PNG"
    elif index == 5:
        im, suffix, fmt = im.convert("CMYK"), ".jpg", "JPEG"
    elif index == 7:
        im = Image.fromarray(np.asarray(im.convert("L"), dtype=np.uint16) * 257)
        suffix, fmt = ".png", "PNG"
    elif index % 4 == 1:
        im = im.convert("L")
    elif im.mode not in ("RGB", "L"):
        im = im.convert("RGB")
    im.save(folder / f"{index:03d}{suffix}", fmt)


def _sketch(im: Image.Image) -> Image.Image:
    """A contour drawing of the image: the shapes stay, the photographic texture and colour go."""
    gray = ImageOps.autocontrast(im.convert("L"))
    return ImageOps.invert(gray.filter(ImageFilter.FIND_EDGES)).filter(ImageFilter.SMOOTH)


def write_example_folder(folder: str | Path, *, checkpoint: Callable[[Path], Path] | None = None) -> dict[str, int]:
    """Write the example folder (see the module docstring); returns file counts per part.

    Parameters
    ----------
    folder
        Created if missing; existing files of the same names are overwritten.
    checkpoint
        Writes the stand-in checkpoint to the path it is given (``bob data --example-folder`` passes
        :func:`bobkit.backbones.declared.write_stand_in_checkpoint`: the data stage builds no model); None: none.
    """
    root = Path(folder)
    sources = _sources()
    rng = np.random.default_rng(0)
    counts = {"images": 0, "sketches": 0}
    for cls in CLASSES:
        for part, n, half in (("images", PER_CLASS, "a"), ("sketches", SKETCHES_PER_CLASS, "b")):
            target = root / part / cls
            target.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                im = _image(sources, cls, i, rng, half)
                if part == "images":
                    _save_variant(im, target, i)
                else:
                    _sketch(im).save(target / f"{i:03d}.png")
                counts[part] += 1
    broken = root / "images" / "cat" / "broken.jpg"  # a truncated JPEG: reported by name and skipped
    with open(next((root / "images" / "cat").glob("*.jpg")), "rb") as handle:
        broken.write_bytes(handle.read()[:300])
    counts["unreadable"] = 1
    if checkpoint is not None:
        checkpoint(root / CHECKPOINT)
        counts["checkpoint"] = 1
    return counts
