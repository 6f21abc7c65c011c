"""What one image costs an architecture at a given input geometry, counted on the meta device (no arithmetic).

:func:`profile` builds the architecture with shapes only and runs one forward and backward pass on a meta batch:
``torch.utils.flop_counter.FlopCounterMode`` counts the forward FLOPs (2 per multiply-add), a saved-tensors hook
sums the activations kept for the backward pass, forward hooks find the largest activation; the parameter count
and feature width come from the model. The pass runs with the model's own gradient checkpointing on (timm's
``set_grad_checkpointing``, as the tasks turn it on) and its checkpointed segments counted apart, so it also
gives what checkpointing keeps: each segment's inputs, the activations outside the segments, and the largest
segment's activations (recomputed during its backward pass). A second pass with frozen weights and an input that
requires its gradient counts what an attack keeps (no weight gradients: a layer whose weight is frozen keeps
less). Detection profiles are the trunk + FPN of the task's own detector at the padded input its
transform makes of a typical image. Profiles are kept in ``cache_dir()/plan/profiles.json`` (keyed by
architecture, geometry, library versions and the code that counts them): counting ViT-L at 1024 px takes
seconds, once.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bobkit import backbones
from bobkit.utils import paths
from bobkit.utils.files import write_json

META = torch.device("meta")
PROFILES_FILE = "profiles.json"
#: Profiles of the shipped suites' architectures, counted ahead (``python tools/ship_profiles.py``), so a fresh
#: machine plans them without counting; used only where the versions and counting code match.
SHIPPED_PROFILES = Path(__file__).with_name("shipped_profiles.json")
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
    checkpointed_mb
        MiB per image, in fp32, that training holds for the backward pass with gradient checkpointing on: the
        segments' inputs and the activations outside them, plus the largest segment's own (its recomputation).
        Equal to ``saved_mb`` for a model whose checkpointing checkpoints nothing.
    input_grad_mb
        MiB per image, in fp32, kept for the gradient with respect to the input with the weights frozen (what an
        attack holds). Equal to ``saved_mb`` for detection trunks (not attacked).
    """

    gflops: float
    params: int
    feature_dim: int
    saved_mb: float
    peak_activation_mb: float
    height: int
    width: int
    checkpointed_mb: float
    input_grad_mb: float


@functools.cache
def _versions() -> str:
    """Library versions and the counting code (this module and the detector it builds), which decide a profile."""
    import hashlib

    import timm

    from bobkit.tasks import detector

    code = hashlib.sha256()
    for source in (__file__, detector.__file__):
        with open(source, "rb") as handle:
            code.update(handle.read())
    return f"torch {torch.__version__.split('+')[0]}, timm {timm.__version__}, code {code.hexdigest()[:12]}"


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


def _nbytes(tensors: dict[int, torch.Tensor]) -> float:
    return float(sum(t.numel() * t.element_size() for t in tensors.values()))


class _SavedBytes:
    """Bytes the autograd graph keeps for the backward pass, as a saved-tensors hook sees them, without and with
    gradient checkpointing, from one forward pass run with the model's checkpointing on.

    A tensor saved by several operations is held once; a view holds its base's memory. Without checkpointing
    everything saved is kept (:attr:`all_saved`). With it, the saves inside a checkpointed segment
    (:meth:`checkpoint`, standing in for ``torch.utils.checkpoint.checkpoint``) are freed after the segment's
    forward pass and its inputs kept instead; the backward pass recomputes one segment at a time
    (:attr:`checkpointed`).
    """

    def __init__(self, weights: set[int] | None = None) -> None:
        self.everything: dict[int, torch.Tensor] = {}
        self.levels: list[dict[int, torch.Tensor]] = [{}]  # the graph outside any segment, then nested segments
        self.segments: list[float] = []  # bytes saved inside each checkpointed segment (its recomputation)
        self.weights = weights or set()  # ids of parameters and buffers: counted with the parameters

    def _base(self, t: Any) -> torch.Tensor | None:
        if not isinstance(t, torch.Tensor):
            return None
        base = t._base if t._base is not None else t
        if id(base) in self.weights or (base.is_leaf and base.requires_grad):
            return None  # a weight (or the input batch itself)
        return base

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        base = self._base(t)
        if base is not None:
            self.everything.setdefault(id(base), base)
            self.levels[-1].setdefault(id(base), base)
        return t

    @property
    def all_saved(self) -> float:
        """Bytes kept without checkpointing."""
        return _nbytes(self.everything)

    @property
    def checkpointed(self) -> float:
        """Bytes kept with checkpointing: outside the segments (their inputs included), plus the largest segment."""
        return _nbytes(self.levels[0]) + max(self.segments, default=0.0)

    def checkpoint(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``function(*args)`` as a checkpointed segment; ``torch.utils.checkpoint``'s options are ignored."""
        options = {"use_reentrant", "preserve_rng_state", "context_fn", "determinism_check", "debug"}
        self.levels.append({})
        try:
            out = function(*args, **{k: v for k, v in kwargs.items() if k not in options})
        finally:
            inner = self.levels.pop()
        self.segments.append(_nbytes(inner))
        for arg in args:
            base = self._base(arg)
            if base is not None:
                self.levels[-1].setdefault(id(base), base)
        return out


def _checkpoint_aliases() -> list[tuple[Any, str]]:
    """(module, attribute) of every loaded module that holds torch's ``checkpoint`` function (timm calls it as
    ``torch.utils.checkpoint.checkpoint``; open_clip imported the name)."""
    import sys

    import torch.utils.checkpoint as torch_checkpoint

    original = torch_checkpoint.checkpoint
    return [(module, "checkpoint") for module in list(sys.modules.values())
            if module is not None and getattr(module, "checkpoint", None) is original]


def _count(model: torch.nn.Module, x: torch.Tensor, saved: _SavedBytes,
           flops: bool = True) -> tuple[float, float, torch.Tensor]:
    """Forward FLOPs and largest activation bytes of ``model(x)`` (train mode) and its output; ``saved`` counts
    what the pass keeps. Checkpointed segments run through ``saved.checkpoint``. ``flops=False`` counts no FLOPs
    (0): the FLOP counter's dispatch is much of a count's time."""
    from contextlib import ExitStack
    from unittest import mock

    from torch.utils.flop_counter import FlopCounterMode

    largest = [0]
    attention_flops = [0.0]

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        for t in output if isinstance(output, (list, tuple)) else [output]:
            if isinstance(t, torch.Tensor):
                largest[0] = max(largest[0], t.numel() * t.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with ExitStack() as stack:
            stack.enter_context(mock.patch.object(torch.nn.functional, "scaled_dot_product_attention",
                                                  _fused_attention(attention_flops)))
            for module, name in _checkpoint_aliases():
                stack.enter_context(mock.patch.object(module, name, saved.checkpoint))
            counter = stack.enter_context(FlopCounterMode(display=False)) if flops else None
            stack.enter_context(torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t))
            out = model(x)
        total = counter.get_total_flops() + attention_flops[0] if counter is not None else 0.0
    finally:
        for handle in handles:
            handle.remove()
    return total, largest[0], out


def _enable_checkpointing(model: torch.nn.Module, enable: bool = True) -> None:
    if hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(enable)


def _input_gradient_bytes(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Bytes kept for the gradient of ``model(x)`` with respect to ``x`` with every weight frozen."""
    model.requires_grad_(False)
    saved = _SavedBytes({id(t) for t in [*model.parameters(), *model.buffers()]})
    _count(model, x.detach().requires_grad_(True), saved, flops=False)
    return saved.all_saved


def _classifier_profile(backbone: str, image_size: int) -> Profile:
    with META:
        model = backbones.create_model(backbone, num_classes=0, image_size=image_size, pretrained=False)
    x = torch.empty(PROFILE_BATCH, 3, image_size, image_size, device=META)
    saved = _SavedBytes()
    _enable_checkpointing(model)
    flops, largest, out = _count(model.train(), x, saved)
    _enable_checkpointing(model, False)
    params = sum(p.numel() for p in model.parameters())
    attacked = _input_gradient_bytes(model, x)
    per_image_mb = [v / PROFILE_BATCH / 2**20 for v in (saved.all_saved, largest, saved.checkpointed, attacked)]
    return Profile(flops / PROFILE_BATCH / 1e9, params, int(out.shape[-1]), per_image_mb[0], per_image_mb[1],
                   image_size, image_size, per_image_mb[2], per_image_mb[3])


def _detection_profile(backbone: str, image_size: int, max_size: int, shape: tuple[int, int]) -> Profile:
    from bobkit.tasks.detector import build_detector, set_body_grad_checkpointing

    with META:
        model = build_detector(backbone, "random_init", 2, image_size=image_size, max_size=max_size)
    images, _ = model.transform([torch.empty(3, shape[1], shape[0], device=META)])
    trunk = model.backbone.train()
    try:
        set_body_grad_checkpointing(trunk.body)
    except ValueError:  # a trunk without checkpointing: the task refuses grad_checkpointing, nothing is saved
        pass
    saved = _SavedBytes()
    flops, largest, _ = _count(trunk, images.tensors, saved)
    params = sum(p.numel() for p in trunk.parameters())
    height, width = images.tensors.shape[-2:]
    mb = [v / 2**20 for v in (saved.all_saved, largest, saved.checkpointed)]
    return Profile(flops / 1e9, params, 0, mb[0], mb[1], int(height), int(width), mb[2], mb[0])


def profile_key(backbone: str, image_size: int, detection: tuple[int, tuple[int, int]] | None = None) -> str:
    """Cache key: architecture, geometry, (detection: long-side cap and image shape), library and code versions."""
    from bobkit.rehearsal.groups import architecture

    where = f"@{image_size}"
    if detection is not None:
        max_size, (w, h) = detection
        where += f"/detect<= {max_size} from {w}x{h}"
    return f"{architecture(backbone)}{where} ({_versions()})"


#: Profiles read or counted in this process, by (cache folder, key): a plan asks for the same few thousand times.
_MEMO: dict[tuple[str, str], Profile] = {}


def _stored(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@functools.cache
def _shipped() -> dict[str, Any]:
    """The shipped profiles (:data:`SHIPPED_PROFILES`) of this library and code version."""
    current = f"({_versions()})"
    return {k: v for k, v in _stored(SHIPPED_PROFILES).items() if k.endswith(current)}


def profile(backbone: str, image_size: int, detection: tuple[int, tuple[int, int]] | None = None) -> Profile:
    """The per-image profile of ``backbone``'s architecture at ``image_size`` (classifier features), or of its
    detection trunk + FPN when ``detection=(max_size, (width, height) of a typical image)``; cached on disk
    (entries of other library or code versions are dropped when the file is written)."""
    key = profile_key(backbone, image_size, detection)
    path = paths.cache_dir() / "plan" / PROFILES_FILE
    memo_key = (str(path), key)
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    stored = _stored(path)
    if key in stored:
        _MEMO[memo_key] = Profile(**stored[key])
        return _MEMO[memo_key]
    shipped = _shipped()
    if key in shipped:
        _MEMO[memo_key] = Profile(**shipped[key])
        return _MEMO[memo_key]
    if detection is None:
        result = _classifier_profile(backbone, image_size)
    else:
        result = _detection_profile(backbone, image_size, *detection)
    current = f"({_versions()})"
    stored = {k: v for k, v in stored.items() if k.endswith(current)}
    stored[key] = asdict(result)
    try:
        write_json(path, stored)
    except OSError:
        pass  # a read-only cache only costs counting again next time
    _MEMO[memo_key] = result
    return result
