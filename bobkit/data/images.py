"""Decoding image files of any format PIL opens, mode and size, into the uint8 RGB squares datasets hold."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageOps

from bobkit.data.errors import DataError

__all__ = ["UnreadableImageError", "decode_image", "to_rgb"]

_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB.

    Gray, CMYK, YCbCr and LAB convert as PIL converts them; transparency (RGBA, LA, palette with a transparent
    colour) is composited on white instead of dropped (dropping it would show whatever colour the transparent
    pixels happen to hold); 16-bit and float images are stretched from their own minimum and maximum to 0-255
    (PIL's own conversion clips everything above 255 to white).
    """
    if im.mode == "RGB":
        return im
    if im.mode in _HIGH_DEPTH_MODES:
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        im = Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return im.convert("RGB")


class UnreadableImageError(DataError, OSError):
    """An image file that does not decode; the message names the file and why."""


def decode_image(path: Any, size: int, crop_bottom: int = 0, *, exif_transpose: bool = False) -> np.ndarray:
    """Decode one image file as RGB (:func:`to_rgb`), resize its shorter side to ``size`` and centre-crop a square.

    ``exif_transpose`` turns photos upright by their EXIF orientation (user datasets: phone photos). Any failure
    raises :class:`UnreadableImageError` naming the file.
    """
    try:
        return _decode(path, size, crop_bottom, exif_transpose)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        if isinstance(exc, UnreadableImageError):
            raise
        raise UnreadableImageError(f"cannot decode image {path}: {type(exc).__name__}: {exc}") from exc


def _decode(path: Any, size: int, crop_bottom: int = 0, exif_transpose: bool = False) -> np.ndarray:
    with Image.open(path) as im:
        if not crop_bottom:
            im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale that is still >= size (fast)
        if exif_transpose:
            im = ImageOps.exif_transpose(im)
        im = to_rgb(im)
        if crop_bottom:
            im = im.crop((0, 0, im.width, im.height - crop_bottom))
        scale = size / min(im.width, im.height)
        w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
        im = im.resize((w, h), Image.BICUBIC, reducing_gap=None if scale > 0.5 else 3.0)
        left, top = (w - size) // 2, (h - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
