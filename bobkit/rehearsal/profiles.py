"""What one image costs an architecture at a given input geometry, counted on the meta device (no arithmetic).

:func:`profile` builds the architecture with shapes only and runs one forward and backward pass on a meta batch:
``torch.utils.flop_counter.FlopCounterMode`` counts the forward FLOPs (2 per multiply-add), a saved-tensors hook
sums the activations kept for the backward pass, forward hooks find the largest activation; the parameter count
and feature width come from the model. Detection profiles are the trunk + FPN of the task's own detector at the
padded input its transform makes of a typical image. Profiles are kept in ``cache_dir()/plan/profiles.json``
(keyed by architecture, geometry and library versions): counting ViT-L at 1024 px takes seconds, once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import torch

from bobkit import backbones
from bobkit.utils import paths
from bobkit.utils.files import write_json

META = torch.device("meta")
PROFILES_FILE = "profiles.json"
#: Images of the counted batch (two: BatchNorm refuses a training batch of one at a 1x1 resolution).
PROFILE_BATCH = 2


@dataclass(frozen=True)
class Profile:
    """Per-image cost of an architecture at one input geometry.

    Attributes
    ----------
    gflops
        Forward GFLOPs of one image (2 per multiply-add).
    params
        Parameters of the model profiled (backbone; detection: trunk + FPN).
    feature_dim
        Width of the pooled feature (0 for detection trunks).
    saved_mb
        MiB of activations saved for the backward pass, per image, in fp32.
    peak_activation_mb
        MiB of the largest single activation, per image, in fp32 (what an inference pass holds at its peak, twice).
    height, width
        The input the profile was counted at.
    """

    gflops: float
    params: int
    feature_dim: int
    saved_mb: float
    peak_activation_mb: float
    height: int
    width: int


def _versions() -> str:
    import timm

    return f"torch {torch.__version__.split('+')[0]}, timm {timm.__version__}"


class _FusedAttention(torch.autograd.Function):
    """Stands in for ``scaled_dot_product_attention`` on the meta device as a fused (flash / memory-efficient)
    GPU kernel behaves: it keeps q, k, v and the output for the backward pass, never the L x L attention matrix
    (the meta device would decompose it and count that matrix, 17 GB an image for ViT-B at 1024 x 1376)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        ctx.save_for_backward(q, k, v, out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _fused_attention(counted: list[float]) -> Any:
    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        batch_heads = q.numel() // (q.shape[-2] * q.shape[-1])
        counted[0] += 2.0 * batch_heads * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])  # QK^T, AV
        return _FusedAttention.apply(q, k, v)

    return attention


def _count(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float, float, torch.Tensor]:
    """Forward FLOPs, saved bytes and largest activation bytes of ``model(x)`` (train mode), and its output."""
    from unittest import mock

    from torch.utils.flop_counter import FlopCounterMode

    saved = [0]
    largest = [0]
    attention_flops = [0.0]

    kept: dict[int, torch.Tensor] = {}  # a tensor saved by several operations is held once

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t  # a view holds its base's memory, once
        if base.is_leaf and base.requires_grad:
            return t  # a weight, counted with the parameters
        if id(base) not in kept:
            kept[id(base)] = base
            saved[0] += base.numel() * base.element_size()
        return t

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        for t in output if isinstance(output, (list, tuple)) else [output]:
            if isinstance(t, torch.Tensor):
                largest[0] = max(largest[0], t.numel() * t.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    fused = mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", _fused_attention(attention_flops))
    try:
        with fused, FlopCounterMode(display=False) as counter, torch.autograd.graph.saved_tensors_hooks(
                pack, lambda t: t):
            out = model(x)
        flops = counter.get_total_flops() + attention_flops[0]
    finally:
        for handle in handles:
            handle.remove()
    return flops, saved[0], largest[0], out


def _classifier_profile(backbone: str, image_size: int) -> Profile:
    with META:
        model = backbones.create_model(backbone, num_classes=0, image_size=image_size, pretrained=False)
    x = torch.empty(PROFILE_BATCH, 3, image_size, image_size, device=META)
    flops, saved, largest, out = (v / PROFILE_BATCH if i < 3 else v for i, v in enumerate(_count(model.train(), x)))
    params = sum(p.numel() for p in model.parameters())
    return Profile(flops / 1e9, params, int(out.shape[-1]), saved / 2**20, largest / 2**20, image_size, image_size)


def _detection_profile(backbone: str, image_size: int, max_size: int, shape: tuple[int, int]) -> Profile:
    from bobkit.tasks.detector import build_detector

    with META:
        model = build_detector(backbone, "random_init", 2, image_size=image_size, max_size=max_size)
    images, _ = model.transform([torch.empty(3, shape[1], shape[0], device=META)])
    trunk = model.backbone.train()
    flops, saved, largest, _ = _count(trunk, images.tensors)
    params = sum(p.numel() for p in trunk.parameters())
    height, width = images.tensors.shape[-2:]
    return Profile(flops / 1e9, params, 0, saved / 2**20, largest / 2**20, int(height), int(width))


def profile_key(backbone: str, image_size: int, detection: tuple[int, tuple[int, int]] | None = None) -> str:
    """Cache key: architecture, geometry, (detection: long-side cap and image shape), library versions."""
    from bobkit.rehearsal.groups import architecture

    where = f"@{image_size}"
    if detection is not None:
        max_size, (w, h) = detection
        where += f"/detect<= {max_size} from {w}x{h}"
    return f"{architecture(backbone)}{where} ({_versions()})"


def _stored() -> dict[str, Any]:
    path = paths.cache_dir() / "plan" / PROFILES_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def profile(backbone: str, image_size: int, detection: tuple[int, tuple[int, int]] | None = None) -> Profile:
    """The per-image profile of ``backbone``'s architecture at ``image_size`` (classifier features), or of its
    detection trunk + FPN when ``detection=(max_size, (width, height) of a typical image)``; cached on disk."""
    key = profile_key(backbone, image_size, detection)
    stored = _stored()
    if key in stored:
        return Profile(**stored[key])
    if detection is None:
        result = _classifier_profile(backbone, image_size)
    else:
        result = _detection_profile(backbone, image_size, *detection)
    stored[key] = asdict(result)
    try:
        write_json(paths.cache_dir() / "plan" / PROFILES_FILE, stored)
    except OSError:
        pass  # a read-only cache only costs counting again next time
    return result
