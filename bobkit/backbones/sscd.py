"""SSCD copy-detection descriptors (Pizzi et al. 2022) as timm models, and the key map of their weight files.

SSCD's model (``sscd/models/model.py`` in facebookresearch/sscd-copy-detection) is a ResNe(X)t trunk, GeM pooling
(p = 3), a linear projection to the descriptor size and L2 normalisation. Here the trunk is timm's ResNet of the
same layout, so the descriptor is the pooled feature (``num_features`` = the descriptor size) and a classifier,
when asked for, sits on top of it.

Weights come from SSCD's ``.classy.pt`` files: plain state dicts (read with ``torch.load(weights_only=True)``,
nothing executed) of the Classy Vision ResNe(X)t the models were trained with. The release's TorchScript files
hold the same weights but are programs; they are not read. :func:`classy_to_timm` renames the Classy Vision keys
into timm's.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["SSCDDescriptor", "classy_to_timm", "gem"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def gem(x: torch.Tensor, p: float, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling over the spatial positions of ``(B, C, H, W)``: ``mean(x.clamp(eps) ** p) ** (1/p)``
    (SSCD's ``GlobalGeMPool2d``)."""
    return x.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class SSCDDescriptor(nn.Module):
    """ResNe(X)t trunk -> GeM -> linear projection -> L2 norm (the SSCD descriptor), then an optional classifier.

    Parameters
    ----------
    trunk
        timm architecture of the trunk (``resnet50``, ``resnext101_32x4d``).
    embed_dim
        Descriptor size (512 for the ResNet-50 models, 1024 for ``sscd_disc_large``).
    gem_p
        GeM exponent (3 in every released model).
    num_classes
        0: the model returns the descriptor; otherwise logits of a linear head on it.
    """

    def __init__(self, trunk: str = "resnet50", embed_dim: int = 512, gem_p: float = 3.0, num_classes: int = 0,
                 in_chans: int = 3, drop_rate: float = 0.0, **trunk_kwargs: Any) -> None:
        super().__init__()
        import timm

        self.trunk = timm.create_model(trunk, pretrained=False, num_classes=0, global_pool="", in_chans=in_chans,
                                       **trunk_kwargs)
        self.gem_p = float(gem_p)
        self.projection = nn.Linear(self.trunk.num_features, embed_dim)
        self.num_features = self.head_hidden_size = embed_dim
        self.drop_rate = drop_rate
        self.num_classes = num_classes
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    # -- timm model interface ---------------------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise lr decay: the trunk's stem and stages, then the projection."""
        return dict(stem=r"^trunk\.conv1|^trunk\.bn1",
                    blocks=r"^trunk\.layer(\d+)" if coarse else r"^trunk\.layer(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's last feature map ``(B, C, H, W)``."""
        return self.trunk.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        descriptor = F.normalize(self.projection(gem(x, self.gem_p)), dim=1)
        if pre_logits:
            return descriptor
        if self.drop_rate:
            descriptor = F.dropout(descriptor, p=self.drop_rate, training=self.training)
        return self.head(descriptor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    # No url: timm must not fetch the .classy.pt itself (its keys need classy_to_timm); bobkit's catalog does.
    # The paper's retrieval code fed SSCD its default transform: resize 256 (bicubic), centre crop 224, ImageNet
    # mean/std (hsouri/bob-retrieval retrieval/main_ret.py).
    return dict(num_classes=0, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
                interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD, first_conv="trunk.conv1",
                classifier="head", license="cc-by-nc-4.0", **kwargs)


default_cfgs = generate_default_cfgs({
    "sscd_resnet50.imagenet_mixup": _cfg(),
    "sscd_resnext101_32x4d.disc_large": _cfg(),
})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> SSCDDescriptor:
    if kwargs.get("features_only"):
        raise ValueError(f"{variant}: SSCD descriptors have no feature pyramid here (use the trunk's timm model)")
    return build_model_with_cfg(SSCDDescriptor, variant, pretrained, **kwargs)


@register_model
def sscd_resnet50(pretrained: bool = False, **kwargs: Any) -> SSCDDescriptor:
    """SSCD ResNet-50 descriptor (512-d)."""
    return _create("sscd_resnet50", pretrained, **dict(dict(trunk="resnet50", embed_dim=512), **kwargs))


@register_model
def sscd_resnext101_32x4d(pretrained: bool = False, **kwargs: Any) -> SSCDDescriptor:
    """SSCD ResNeXt-101 32x4d descriptor (1024-d, ``sscd_disc_large``)."""
    return _create("sscd_resnext101_32x4d", pretrained,
                   **dict(dict(trunk="resnext101_32x4d", embed_dim=1024), **kwargs))


# --------------------------------------------------------------------------------------------------------------
# Key map: Classy Vision ResNe(X)t (SSCD's .classy.pt) -> SSCDDescriptor
# --------------------------------------------------------------------------------------------------------------

#: Classy Vision ``convolutional_block`` index -> timm name: bottleneck (1x1, BN, ReLU, 3x3, BN, ReLU, 1x1) and
#: basic (3x3, BN, ReLU, 3x3) blocks; the block's own ``bn`` after the last conv is timm's ``bn3`` / ``bn2``.
_CLASSY_CONV_BLOCK = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3"}
_CLASSY_STEM = {"0": "conv1", "1": "bn1"}
_CLASSY_BLOCK = re.compile(r"^backbone\.blocks\.(\d+)\.(\d+)\._module\.(.+)$")


def _classy_block_key(stage: str, index: str, rest: str, bottleneck: bool) -> str | None:
    target = f"trunk.layer{int(stage) + 1}.{index}"
    part, _, tail = rest.partition(".")
    if part == "convolutional_block":
        slot, _, param = tail.partition(".")
        return f"{target}.{_CLASSY_CONV_BLOCK[slot]}.{param}" if slot in _CLASSY_CONV_BLOCK else None
    if part == "bn":
        return f"{target}.{'bn3' if bottleneck else 'bn2'}.{tail}"
    if part == "downsample":
        return f"{target}.downsample.{tail}"
    return None


def classy_to_timm(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """SSCD ``.classy.pt`` state dict (``backbone.*`` Classy Vision ResNe(X)t, ``embeddings.1`` projection) ->
    :class:`SSCDDescriptor` keys. Keys that fit no rule are kept as they are, so the strict key check that
    follows names them."""
    bottleneck = any(".convolutional_block.6." in key for key in sd)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new: str | None = None
        if key.startswith("embeddings.1."):
            new = "projection." + key[len("embeddings.1."):]
        elif key.startswith("backbone.initial_block._module."):
            slot, _, param = key[len("backbone.initial_block._module."):].partition(".")
            new = f"trunk.{_CLASSY_STEM[slot]}.{param}" if slot in _CLASSY_STEM else None
        elif match := _CLASSY_BLOCK.match(key):
            new = _classy_block_key(*match.groups(), bottleneck=bottleneck)
        out[new or key] = value
    return out
