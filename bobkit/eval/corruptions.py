"""Image corruptions at five severities for the offline OOD benchmark (Fashion-MNIST-C style).

Each corruption maps uint8 images ``(N, H, W)`` or ``(N, H, W, 3)`` to uint8 images of the same shape. Severity 0
returns an unchanged copy; 1-5 follow the ImageNet-C / CIFAR-10-C recipes (Hendrycks & Dietterich, 2019). Spatial
parameters (blur sigma) are given for 32 px images, as in CIFAR-10-C, and scaled by the image side, so 28 px
Fashion-MNIST and 224 px photos get comparable strength. Random corruptions draw from
``numpy.random.default_rng((seed, severity, corruption index))``: the same call gives the same images.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

SEVERITIES = (1, 2, 3, 4, 5)

# Severity 1..5 parameters (CIFAR-10-C values unless noted).
_PARAMS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # std on [0, 1]
    "shot_noise": (500.0, 250.0, 100.0, 75.0, 50.0),  # photons at full intensity
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # sigma at 32 px
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor towards the image mean
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to [0, 1] intensity (HSV value for colour)
    "jpeg": (80.0, 65.0, 58.0, 50.0, 40.0),  # JPEG quality
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # down-sampling factor
}
CORRUPTIONS: tuple[str, ...] = tuple(_PARAMS)
DEFAULT_CORRUPTIONS: tuple[str, ...] = ("gaussian_noise", "gaussian_blur", "contrast", "jpeg", "pixelate")


def _to_float(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / 255.0


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _gaussian_noise(images: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    x = _to_float(images)
    return _to_uint8(x + rng.normal(0.0, c, size=x.shape).astype(np.float32))


def _shot_noise(images: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    x = _to_float(images)
    return _to_uint8(rng.poisson(x * c).astype(np.float32) / c)


def _gaussian_blur(images: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    sigma = c * min(images.shape[1], images.shape[2]) / 32.0
    x = _to_float(images)
    # Blur the two spatial axes only (not across images or channels).
    sigmas = (0, sigma, sigma) + ((0,) if x.ndim == 4 else ())
    return _to_uint8(gaussian_filter(x, sigma=sigmas, mode="reflect"))


def _contrast(images: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    x = _to_float(images)
    axes = tuple(range(1, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    return _to_uint8((x - mean) * c + mean)


def _brightness(images: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    x = _to_float(images)
    if x.ndim == 3:
        return _to_uint8(x + c)
    from skimage.color import hsv2rgb, rgb2hsv

    out = np.empty_like(x)
    for i, img in enumerate(x):
        hsv = rgb2hsv(img)
        hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
        out[i] = hsv2rgb(hsv)
    return _to_uint8(out)


def _jpeg(images: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    out = np.empty_like(images)
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(c))
        out[i] = np.asarray(Image.open(buf)).reshape(img.shape)
    return out


def _pixelate(images: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    h, w = images.shape[1:3]
    small = (max(1, int(w * c)), max(1, int(h * c)))
    out = np.empty_like(images)
    for i, img in enumerate(images):
        pil = Image.fromarray(img).resize(small, Image.Resampling.BOX)
        out[i] = np.asarray(pil.resize((w, h), Image.Resampling.BOX)).reshape(img.shape)
    return out


_FUNCTIONS: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "gaussian_blur": _gaussian_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "jpeg": _jpeg,
    "pixelate": _pixelate,
}


def corrupt(images: np.ndarray, name: str, severity: int, *, seed: int = 0) -> np.ndarray:
    """Apply corruption ``name`` at ``severity`` (0 = identity, 1-5 increasingly strong) to uint8 ``images``.

    Parameters
    ----------
    images
        uint8 array ``(N, H, W)`` (grey) or ``(N, H, W, 3)`` (RGB).
    name
        One of :data:`CORRUPTIONS`.
    severity
        0 to 5.
    seed
        Seed of the random corruptions (noise); the same arguments always give the same output.

    Returns
    -------
    numpy.ndarray
        New uint8 array of the same shape.
    """
    if name not in _FUNCTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if int(severity) != severity or not 0 <= severity <= len(SEVERITIES):
        raise ValueError(f"severity={severity!r} must be an integer in 0..{len(SEVERITIES)}")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise ValueError(f"expected uint8 images (N,H,W) or (N,H,W,3), got {images.dtype} {images.shape}")
    if severity == 0 or len(images) == 0:
        return images.copy()
    rng = np.random.default_rng((int(seed), int(severity), CORRUPTIONS.index(name)))
    return _FUNCTIONS[name](images, _PARAMS[name][int(severity) - 1], rng)
