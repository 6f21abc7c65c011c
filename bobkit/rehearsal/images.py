"""Generated pictures for the stand-ins: small, seeded, in the file formats and colour modes real datasets hold.

Real collections are not uniform: ImageNet's train set has grayscale and CMYK JPEGs (and a PNG named ``.JPEG``),
COCO has grayscale photos, CheXpert is grayscale. :func:`write_picture` writes each of those kinds, so a loader
that only handles clean RGB JPEGs fails in the rehearsal instead of hours into a real run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: Colour modes a stand-in picture can have (PIL mode names).
MODES = ("RGB", "L", "CMYK")


def picture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth random RGB picture ``(height, width, 3)`` uint8: an upscaled 4x4 colour grid plus mild noise."""
    grid = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(grid).resize((width, height), Image.BILINEAR), dtype=np.int16)
    noise = rng.integers(-12, 13, size=base.shape, dtype=np.int16)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_picture(path: Path, rng: np.random.Generator, size: tuple[int, int] = (80, 60), *, mode: str = "RGB",
                  image_format: str | None = None) -> Path:
    """Write one generated picture of ``size`` (width, height) at ``path``.

    Parameters
    ----------
    path
        Target file; parent folders are made. The suffix picks the format unless ``image_format`` is given
        (``image_format="PNG"`` with a ``.JPEG`` name writes a PNG under a JPEG name, as ImageNet has one).
    rng
        Seeded generator (same seed, same bytes).
    mode
        ``RGB``, ``L`` (grayscale) or ``CMYK`` (JPEG only).
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {MODES}")
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(picture(rng, *size)).convert(mode)
    fmt = image_format or {".png": "PNG", ".bmp": "BMP"}.get(path.suffix.lower(), "JPEG")
    image.save(path, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return path


def banner(path: Path, rng: np.random.Generator, size: tuple[int, int], banner_height: int) -> Path:
    """A JPEG with a white strip of ``banner_height`` pixels at the bottom (FGVC-Aircraft's copyright banner)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = picture(rng, *size)
    pixels[-banner_height:] = 255
    pixels[-banner_height + 4 : -4, 4 : size[0] // 2] = 0  # the banner's text line
    Image.fromarray(pixels).save(path, format="JPEG", quality=85)
    return path
