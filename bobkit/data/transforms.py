"""Image preprocessing from a backbone's data config (mean, std, interpolation; never hard-coded constants).

Two paths that give the same tensors for the same input (up to resampling-kernel differences):

* :func:`build_transform`: a torchvision PIL pipeline per image (training augmentation, ``Dataset`` use);
* :func:`to_tensor_batch`: a whole uint8 batch at once with ``torch.nn.functional.interpolate(antialias=True)``,
  which is what frozen-feature extraction uses (no per-image PIL work).

Both resize the whole image to ``image_size x image_size`` (no crop): the small offline images are square, and
file-backed datasets are already centre-cropped to a square when decoded.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["build_transform", "to_tensor_batch", "resolve_image_size", "interpolation_mode"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def resolve_image_size(data_config: Mapping[str, Any], image_size: int | Sequence[int] | None) -> tuple[int, int]:
    """``image_size`` as (H, W); None falls back to the data config's ``input_size`` (C, H, W)."""
    if image_size is None:
        size = data_config.get("input_size", (3, 224, 224))
        return int(size[-2]), int(size[-1])
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    h, w = image_size
    return int(h), int(w)


def interpolation_mode(data_config: Mapping[str, Any]) -> str:
    """``'bicubic'`` or ``'bilinear'`` from the data config (timm uses 'bicubic', 'bilinear', 'random', ...)."""
    mode = str(data_config.get("interpolation", "bilinear")).lower()
    return mode if mode in ("bicubic", "bilinear", "nearest") else "bilinear"


def _mean_std(data_config: Mapping[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = tuple(float(v) for v in data_config.get("mean", _IMAGENET_MEAN))
    std = tuple(float(v) for v in data_config.get("std", _IMAGENET_STD))
    if len(mean) == 1:
        mean = mean * 3
    if len(std) == 1:
        std = std * 3
    return mean, std


def build_transform(data_config: Mapping[str, Any], image_size: int | Sequence[int] | None = None,
                    train: bool = False, *, hflip: bool = True, scale: tuple[float, float] = (0.8, 1.0)):
    """A torchvision transform: PIL image (gray or RGB) -> normalised float tensor (3, H, W).

    Parameters
    ----------
    data_config : mapping
        The backbone's data config (``mean``, ``std``, ``interpolation``, ``input_size``), e.g. from
        ``bobkit.backbones.data_config(name)`` or ``timm.data.resolve_data_config``.
    image_size : int or (H, W), optional
        Output size; defaults to the config's ``input_size``.
    train : bool
        Light augmentation: random resized crop (``scale``, ratio 3/4-4/3) and an optional horizontal flip.
    hflip : bool
        Use the flip when ``train`` (turn off for digits).
    scale : (float, float)
        Area range of the random resized crop.
    """
    from torchvision import transforms as T

    size = resolve_image_size(data_config, image_size)
    interp = T.InterpolationMode(interpolation_mode(data_config))
    mean, std = _mean_std(data_config)
    steps: list[Any] = [T.Lambda(_to_rgb)]
    if train:
        steps.append(T.RandomResizedCrop(size, scale=scale, interpolation=interp, antialias=True))
        if hflip:
            steps.append(T.RandomHorizontalFlip())
    else:
        steps.append(T.Resize(size, interpolation=interp, antialias=True))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def _to_rgb(im):
    # A named function rather than a lambda so the transform pickles into DataLoader workers.
    return im if im.mode == "RGB" else im.convert("RGB")


def to_tensor_batch(images_uint8: np.ndarray | torch.Tensor, data_config: Mapping[str, Any],
                    image_size: int | Sequence[int] | None = None, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Convert a uint8 batch (N,H,W) or (N,H,W,3) into a normalised float tensor (N,3,H',W').

    Gray is replicated to three channels, the batch is resized with antialiased interpolation (mode from the
    data config), clamped to [0, 1] (bicubic overshoot, as PIL's uint8 output is) and normalised with the
    config's mean and std.

    Parameters
    ----------
    images_uint8 : ndarray or Tensor, uint8
    data_config : mapping
        ``mean``, ``std``, ``interpolation``, ``input_size``.
    image_size : int or (H, W), optional
        Defaults to the config's ``input_size``.
    device, dtype
        Where and in what precision to return the batch (the resize runs in float32 on ``device``).
    """
    x = torch.as_tensor(np.ascontiguousarray(images_uint8) if isinstance(images_uint8, np.ndarray) else images_uint8)
    if x.dtype != torch.uint8:
        raise TypeError(f"to_tensor_batch expects uint8 images, got {x.dtype}")
    if x.ndim == 3:
        x = x.unsqueeze(-1)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"expected (N,H,W) or (N,H,W,3) images, got shape {tuple(images_uint8.shape)}")
    x = x.to(device).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    size = resolve_image_size(data_config, image_size)
    if tuple(x.shape[-2:]) != size:
        mode = interpolation_mode(data_config)
        kwargs = {} if mode == "nearest" else {"align_corners": False, "antialias": True}
        x = F.interpolate(x, size=size, mode=mode, **kwargs).clamp_(0.0, 1.0)
    mean, std = _mean_std(data_config)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return ((x - m) / s).to(dtype)
