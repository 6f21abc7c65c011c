"""CLIP-family image towers through ``open_clip`` (PyPI ``open-clip-torch``, extra ``bobkit[clip]``).

For CLIP models timm does not host, a declared backbone (``open_clip: ViT-B-32``) builds open_clip's model and
keeps its image tower: the module returns the tower's image embedding (what CLIP benchmarks evaluate) as the
pooled feature, ``num_features`` wide, with a fresh linear head when ``num_classes > 0``. Weights come from the
open_clip hub tag (``pretrained: laion2b_s34b_b79k``; a download, so not offline) or a local checkpoint read
safely (:func:`bobkit.backbones.weights.load_checkpoint`: safetensors or ``torch.load(weights_only=True)``), as a
whole CLIP state dict (``visual.*`` keys are kept) or an image tower's own.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from bobkit.backbones.registry import Backbone
from bobkit.backbones.weights import (
    UnsupportedBackboneError,
    WeightsConversionError,
    WeightsUnavailableError,
    load_checkpoint,
)

__all__ = ["OpenClipTower", "available", "build_tower", "check_checkpoint", "model_names", "preprocess_config",
           "tower_params_millions"]

_INSTALL = "pip install open-clip-torch (or pip install 'bobkit[clip]')"


class OpenClipTower(nn.Module):
    """An open_clip image tower as a backbone: images -> embedding (``num_features``) -> optional linear head."""

    def __init__(self, visual: nn.Module, num_classes: int = 0) -> None:
        super().__init__()
        self.visual = visual
        self.num_features = int(visual.output_dim)
        self.num_classes = int(num_classes)
        self.head: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(images))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the tower's activations in the backward pass (fine-tuning in less memory)."""
        self.visual.set_grad_checkpointing(enable)


def _open_clip() -> Any:
    try:
        import open_clip
    except ImportError:
        raise WeightsUnavailableError(f"open_clip backbones need the open_clip package: {_INSTALL}") from None
    return open_clip


def available() -> bool:
    """Whether open_clip is installed."""
    try:
        _open_clip()
    except WeightsUnavailableError:
        return False
    return True


def model_names() -> list[str]:
    """open_clip's model names (``ViT-B-32``, ``RN50``, ``ViT-B-16-SigLIP``, ...)."""
    return list(_open_clip().list_models())


def pretrained_tags(model: str) -> list[str]:
    """The pretrained tags open_clip knows for ``model`` (``openai``, ``laion2b_s34b_b79k``, ...)."""
    return list(_open_clip().list_pretrained_tags_by_model(model))


def native_size(model: str) -> int:
    """The image side the model was built for (its ``vision_cfg.image_size``)."""
    size = _open_clip().get_model_config(model)["vision_cfg"]["image_size"]
    return int(size if isinstance(size, int) else size[0])


def preprocess_config(model: str, tag: str | None) -> dict[str, Any]:
    """A timm-style data config: the tag's mean/std/interpolation where open_clip records them, else OpenAI's;
    resize to the native side, no crop margin (open_clip resizes the shorter side and centre-crops)."""
    oc = _open_clip()
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    cfg = dict(oc.get_pretrained_cfg(model, tag) or {}) if tag else {}
    size = native_size(model)
    interpolation = cfg.get("interpolation", "bicubic")
    return {"input_size": (3, size, size), "mean": tuple(cfg.get("mean", OPENAI_DATASET_MEAN)),
            "std": tuple(cfg.get("std", OPENAI_DATASET_STD)),
            "interpolation": interpolation if interpolation in ("bicubic", "bilinear") else "bicubic",
            "crop_pct": 1.0, "crop_mode": "center"}


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _clip_model(model: str, image_size: int | None, pretrained: str | None = None, device: str = "cpu") -> nn.Module:
    kwargs: dict[str, Any] = {}
    if image_size is not None and int(image_size) != native_size(model):
        kwargs["force_image_size"] = int(image_size)
    # open_clip logs "No pretrained weights loaded" on the root logger for every random build; ours are on purpose.
    logging.disable(logging.WARNING if pretrained is None else logging.NOTSET)
    try:
        return _open_clip().create_model(model, pretrained=pretrained, device=device, **kwargs)
    finally:
        logging.disable(logging.NOTSET)


def tower_params_millions(model: str) -> float:
    """Parameters of the image tower in millions (built on the meta device: nothing allocated)."""
    with torch.device("meta"):
        visual = _clip_model(model, None, device="meta").visual
    return round(sum(p.numel() for p in visual.parameters()) / 1e6, 2)


def _tower_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A tower's state dict from a whole CLIP checkpoint (``visual.*``) or a tower-only one; wrapper prefixes
    (``module.``, ``model.``) removed."""
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    if any(k.startswith("visual.") for k in state):
        return {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    return dict(state)


def _load_file(clip: nn.Module, path: Path, label: str) -> None:
    """Load a checkpoint into ``clip.visual`` strictly (position embeddings resized to the built image size)."""
    oc = _open_clip()
    tower = _tower_state(load_checkpoint(path))
    full = {f"visual.{k}": v for k, v in tower.items()}
    oc.model.resize_pos_embed(full, clip)  # in place; a no-op at the native size
    tower = {k[len("visual."):]: v for k, v in full.items()}
    target = clip.visual.state_dict()
    missing = [k for k in target if k not in tower]
    unexpected = [k for k in tower if k not in target]
    shape = [k for k in tower if k in target and tuple(tower[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or shape:
        raise WeightsConversionError(
            f"checkpoint {path} does not fit the image tower of {label}: {len(missing)} missing {missing[:10]}, "
            f"{len(unexpected)} unexpected {unexpected[:10]}, {len(shape)} shape mismatches {shape[:10]}")
    clip.visual.load_state_dict(tower, strict=True)


def check_checkpoint(entry: Backbone) -> None:
    """Raise :class:`WeightsConversionError` (naming missing / unexpected keys) unless the entry's file fits."""
    build_tower(entry, num_classes=0, image_size=None, seed=0, pretrained=True)


def build_tower(entry: Backbone, *, num_classes: int, image_size: int | None, seed: int, pretrained: bool,
                features_only: bool = False) -> OpenClipTower:
    """The entry's image tower with its weights (``pretrained``) or randomly initialised from ``seed``, in eval mode.

    Raises
    ------
    UnsupportedBackboneError
        ``features_only`` (detection): open_clip towers return no multi-scale feature maps.
    WeightsUnavailableError
        open_clip is not installed, or the hub weights cannot be fetched (offline); the message says what to do.
    WeightsConversionError
        A local checkpoint that does not fit (missing / unexpected keys listed).
    """
    label = f"open_clip {entry.open_clip_model} (backbone {entry.name!r})"
    if features_only:
        raise UnsupportedBackboneError(f"{label} has no multi-scale feature maps: detection needs a timm backbone")
    model = str(entry.open_clip_model)
    hub = entry.open_clip_pretrained if pretrained and not entry.weights_file else None
    with _seeded(seed):
        try:
            clip = _clip_model(model, image_size, hub)
        except (OSError, RuntimeError) as exc:
            if hub is None:
                raise
            raise WeightsUnavailableError(
                f"could not load {label} weights {hub!r} from the open_clip hub: {type(exc).__name__}: {exc}. "
                f"Offline, declare a local checkpoint instead (checkpoint: FILE)") from exc
        if pretrained and entry.weights_file:
            _load_file(clip, Path(entry.weights_file), label)
        tower = OpenClipTower(clip.visual, num_classes)
    return tower.eval()
