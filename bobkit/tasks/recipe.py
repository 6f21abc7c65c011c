"""The fine-tuning recipe's input and loss, from timm's own pieces: augmentation, mixup/cutmix, label smoothing.

The paper fine-tunes timm/MAE style (hsouri/bob-classification ``model_configs/*_ft.yaml``): random-resized crop and
flip, RandAugment ``rand-m9-mstd0.5-inc1``, random erasing 0.25, mixup 0.8, cutmix 1.0, label smoothing 0.1,
drop-path 0.1. :class:`Recipe` holds those knobs (the task parameters of the same names, declared in
:func:`bobkit.tasks.blocks.finetune_params`, all off by default) and builds

* the training transform: :func:`timm.data.create_transform` with ``is_training=True`` (:meth:`Recipe.transform`);
* the training images: :class:`AugmentedImages`, a torch ``Dataset`` whose item ``(step, index)`` is decoded and
  augmented under a seed drawn from ``(seed, step, index)``, so an item's augmentation is the same in any loader
  worker process, with any number of them, and in a resumed run;
* the mixing of a micro-batch (:class:`BatchMixer`, timm's :class:`~timm.data.Mixup`) and the loss
  (:meth:`Recipe.criterion`: timm's ``SoftTargetCrossEntropy`` with mixing, ``LabelSmoothingCrossEntropy`` with
  smoothing alone, else cross-entropy).

``drop_path`` is applied where the model is made (``drop_path_rate`` of :func:`bobkit.backbones.create_model`).
Without ``augment`` the training input is the frozen-feature path's plain resize (uint8 batches converted on the
device, :class:`bobkit.features.extract.BatchConverter`); mixing and smoothing work on either path.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from PIL import Image, ImageOps

from bobkit.tasks.contract import ParameterError

#: Random erasing as the paper's recipe runs it (timm's train.py and MAE: ``--remode pixel --recount 1``).
RE_MODE = "pixel"
#: Parameters that act only on the augmented input path, with their declared defaults.
AUGMENT_ONLY = {"rrc_scale": [0.08, 1.0], "hflip": 0.5, "auto_augment": None, "color_jitter": None, "re_prob": 0.0}
#: At most this many loader processes by default: one H100 fine-tuning ViT-S/16 (about 4,300 images/s) needs about
#: 30 cores of augmentation; a job on an unrestricted many-core node must not fork one per core.
MAX_LOADER_PROCESSES = 32
#: Seed streams: each random choice of a run draws from its own stream of ``(seed, step, ...)``.
_ITEM_STREAM, _MIX_STREAM, _STEP_STREAM = 0, 1, 2


@dataclass(frozen=True)
class Recipe:
    """The recipe's input and regularisation knobs (defaults: all off, the plain-resize path).

    Attributes
    ----------
    augment : bool
        Training input through :func:`timm.data.create_transform` (``is_training=True``) instead of a plain resize.
    rrc_scale : tuple of float
        Random-resized crop area range (timm's ``scale``).
    hflip : float
        Horizontal flip probability.
    auto_augment : str or None
        timm auto-augment string (``rand-m9-mstd0.5-inc1``: the paper's RandAugment).
    color_jitter : float or None
        Brightness/contrast/saturation jitter (timm turns it off when ``auto_augment`` is set).
    re_prob : float
        Random erasing probability (per-pixel noise, :data:`RE_MODE`).
    mixup, cutmix : float
        Beta-distribution alphas of mixup and cutmix (0: off; both on: one of them per step, evenly).
    label_smoothing : float
        Label smoothing (inside the mixed targets when mixing, else ``LabelSmoothingCrossEntropy``).
    drop_path : float
        Stochastic depth rate (timm's ``drop_path_rate``), applied at model creation.
    """

    augment: bool = False
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    auto_augment: str | None = None
    color_jitter: float | None = None
    re_prob: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0
    drop_path: float = 0.0

    @classmethod
    def from_params(cls, p: Mapping[str, Any]) -> Recipe:
        """The recipe of a task's validated parameters (names as :func:`~bobkit.tasks.blocks.finetune_params`)."""
        return cls(
            augment=bool(p["augment"]), rrc_scale=(float(p["rrc_scale"][0]), float(p["rrc_scale"][1])),
            hflip=float(p["hflip"]), auto_augment=p["auto_augment"],
            color_jitter=None if p["color_jitter"] is None else float(p["color_jitter"]),
            re_prob=float(p["re_prob"]), mixup=float(p["mixup"]), cutmix=float(p["cutmix"]),
            label_smoothing=float(p["label_smoothing"]), drop_path=float(p["drop_path"]),
        )

    @property
    def mixes(self) -> bool:
        """Whether batches are mixed (mixup or cutmix on)."""
        return self.mixup > 0 or self.cutmix > 0

    def transform(self, data_config: Mapping[str, Any], image_size: int) -> Callable[[Image.Image], torch.Tensor]:
        """timm's training transform for the backbone's normalisation and interpolation at ``image_size``:
        random-resized crop, flip, auto-augment, colour jitter, to tensor, normalise, random erasing."""
        from timm.data import create_transform

        transform = create_transform(
            (3, int(image_size), int(image_size)), is_training=True, scale=self.rrc_scale, hflip=self.hflip,
            color_jitter=self.color_jitter, auto_augment=self.auto_augment,
            interpolation=data_config.get("interpolation", "bilinear"), mean=tuple(data_config["mean"]),
            std=tuple(data_config["std"]), re_prob=self.re_prob, re_mode=RE_MODE, re_count=1,
        )
        for step in getattr(transform, "transforms", ()):
            for op in _augment_ops(step):
                if op.name.startswith("Posterize"):
                    op.aug_fn = posterize_any_bits
        return transform

    def criterion(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The training loss, mean over a batch: soft-target cross-entropy when mixing (smoothing is in the mixed
        targets), label-smoothing cross-entropy with smoothing alone, else plain cross-entropy (timm's train.py)."""
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        if self.mixes:
            return SoftTargetCrossEntropy()
        if self.label_smoothing > 0:
            return LabelSmoothingCrossEntropy(smoothing=self.label_smoothing)
        return torch.nn.CrossEntropyLoss()

    def mixer(self, num_classes: int, seed: int) -> BatchMixer | None:
        """The batch mixing of this recipe (``None`` without mixup and cutmix)."""
        return BatchMixer(self, num_classes, seed) if self.mixes else None


def _augment_ops(step: Any) -> list[Any]:
    """The ``AugmentOp`` objects of a timm auto-augment transform (RandAugment, AutoAugment, AugMix), else none."""
    if hasattr(step, "policy"):  # AutoAugment: a list of sub-policies, each a list of ops
        return [op for sub in step.policy for op in sub]
    return list(getattr(step, "ops", ()))


def posterize_any_bits(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize, also for 0 bits (a black image: no bit kept), which Pillow >= 11 refuses.

    Why: ``rand-m9-mstd0.5-inc1`` draws magnitudes around 9 with std 0.5, clipped at 10; at 10 its
    ``PosterizeIncreasing`` keeps 0 bits, which the Pillow of the paper's time turned black and Pillow 13 raises
    for (``bits must be between or equal to 1 and 8``): with 2 of 15 ops per image, each applied with
    probability 0.5, and P(magnitude >= 10) = 2.3%, about one image in 700 would end the run.
    """
    bits = int(bits_to_keep)
    if bits >= 8:
        return img
    if bits <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits)


def finetune_args(p: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`bobkit.tasks.training.finetune` a task's parameters set, besides ``lr``
    (possibly a selection) and the data: the schedule, the :class:`Recipe` and ``accum_steps``."""
    return dict(epochs=p["epochs"], weight_decay=p["weight_decay"], layer_decay=p["layer_decay"],
                warmup_epochs=p["warmup_epochs"], warmup_lr=p["warmup_lr"], min_lr=p["min_lr"],
                recipe=Recipe.from_params(p), accum_steps=p["accum_steps"])


def training_loader_workers(p: Mapping[str, Any], resolved: int) -> int:
    """Loader workers of a fine-tuning run: with ``augment``, worker *processes* that decode and augment, and
    unless ``loader_workers`` is set, every usable core but the training process's own (one H100 fine-tuning
    ViT-B/16 takes 14-18 cores' worth of the paper's augmentation: benchmarks/training_input.py); without it,
    ``resolved``, the device's prefetch threads for the plain path."""
    if not p["augment"] or p["loader_workers"] is not None:
        return resolved
    from bobkit.features.device import usable_cpus

    return max(1, min(usable_cpus() - 1, MAX_LOADER_PROCESSES))


def training_metrics(p: Mapping[str, Any], resolved_workers: int) -> dict[str, float]:
    """How a fine-tuning run split its batch and fed its input, as ``exec_*`` run descriptors."""
    processes = training_loader_workers(p, resolved_workers) if p["augment"] else 0
    return {"exec_accum_steps": float(p["accum_steps"]), "exec_loader_processes": float(processes)}


def check_recipe(p: Mapping[str, Any], task: str) -> None:
    """Rules between the recipe's parameters, before any work; raises :class:`ParameterError` naming the values.

    * the augment-only knobs (:data:`AUGMENT_ONLY`) need ``augment: true`` when set away from their default;
    * ``rrc_scale`` is ``[low, high]`` with ``0 < low <= high <= 1``;
    * ``batch_size`` (the global batch) divides into ``accum_steps`` equal micro-batches;
    * mixup/cutmix pair the items of a micro-batch, so a micro-batch holds an even number of them.
    """
    if not p["augment"]:
        changed = {k: p[k] for k, default in AUGMENT_ONLY.items() if p[k] != default}
        if changed:
            raise ParameterError(f"{task} parameters {changed} act on the augmented input only: set augment=True "
                                 "or leave them at their defaults")
    scale = p["rrc_scale"]
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ParameterError(f"{task} parameter rrc_scale={scale!r} must be [low, high] with 0 < low <= high <= 1")
    micro_batch_size(p["batch_size"], p["accum_steps"], mixes=p["mixup"] > 0 or p["cutmix"] > 0, task=task)


def micro_batch_size(batch_size: int, accum_steps: int, processes: int = 1, *, mixes: bool = False,
                     task: str = "fine-tuning") -> int:
    """Items per micro-batch when the global ``batch_size`` is split over ``processes x accum_steps``.

    Raises :class:`ParameterError` naming the values when it does not divide, or when mixing needs an even
    micro-batch and it is odd.
    """
    parts = processes * accum_steps
    if batch_size % parts:
        where = f"processes={processes} x accum_steps={accum_steps}" if processes > 1 else f"accum_steps={accum_steps}"
        raise ParameterError(f"{task}: the global batch_size={batch_size} does not split into {where} "
                             f"equal micro-batches; choose a batch_size divisible by {parts}")
    micro = batch_size // parts
    if mixes and micro % 2:
        raise ParameterError(f"{task}: mixup/cutmix pair the items of a micro-batch, but batch_size={batch_size} / "
                             f"{parts} = {micro} is odd")
    return micro


def check_auto_augment(value: str) -> None:
    """Raise ``ValueError`` unless timm builds an auto-augment policy from ``value`` (a grid fails early)."""
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    build = (rand_augment_transform if value.startswith("rand") else
             augment_and_mix_transform if value.startswith("augmix") else auto_augment_transform)
    try:
        build(value, {"translate_const": 100, "img_mean": (124, 116, 104)})
    except Exception as exc:  # timm raises assorted errors (KeyError, AssertionError, ValueError) for bad strings
        raise ValueError(f"auto_augment={value!r} is not a timm auto-augment string (e.g. 'rand-m9-mstd0.5-inc1'): "
                         f"{type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------------------------------------------------
# Seeds: every random choice is a function of (seed, step, ...)
# ------------------------------------------------------------------------------------------------------------


def stream_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (numpy's SeedSequence: well-mixed, stable across versions and machines)."""
    a, b = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(a) << 31) ^ int(b)


@contextlib.contextmanager
def seeded_globals(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's (CPU) global generators for the block, restoring them afterwards.

    timm's transforms and Mixup draw from these global generators; restoring them keeps the caller's streams
    (model initialisation, drop-path) untouched, whichever process runs the block.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.random.default_generator.manual_seed(seed)  # the CPU generator only: fork_rng restores just that
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of the model's own randomness (drop-path, dropout) at optimizer step ``step`` of process ``rank``."""
    return stream_seed(seed, _STEP_STREAM, step, rank)


# ------------------------------------------------------------------------------------------------------------
# Training images: decoded and augmented per item, seeded by (seed, step, index)
# ------------------------------------------------------------------------------------------------------------


class AugmentedImages(torch.utils.data.Dataset):
    """Training items ``(step, index) -> (augmented float image (3, S, S), label)`` for a torch ``DataLoader``.

    The key carries the optimizer step so an item seen in several epochs is augmented differently each time,
    and the augmentation is drawn from ``(seed, step, index)`` only: the same in the main process and in any
    worker process. File-backed datasets are decoded here from the original file (the random-resized crop sees
    the whole image, as timm's loader does), so decoding runs in the loader's worker processes.

    Parameters
    ----------
    source
        uint8 array ``(N, H, W[, 3])`` or an :class:`~bobkit.data.ImageDataset`.
    labels
        Integer labels aligned with ``source``.
    transform
        PIL image -> tensor (:meth:`Recipe.transform`).
    seed
        The run's seed.
    """

    def __init__(self, source: Any, labels: np.ndarray, transform: Callable[[Image.Image], torch.Tensor],
                 seed: int) -> None:
        if len(source) != len(labels):
            raise ValueError(f"{len(source)} images but {len(labels)} labels")
        self.source = source
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        step, index = int(key[0]), int(key[1])
        image = pil_image(self.source, index)
        with seeded_globals(stream_seed(self.seed, _ITEM_STREAM, step, index)):
            return self.transform(image), int(self.labels[index])


def pil_image(source: Any, index: int) -> Image.Image:
    """Item ``index`` of ``source`` as an RGB PIL image: an array row, or a file decoded at its own size."""
    from bobkit.data.images import UnreadableImageError, to_rgb

    if isinstance(source, np.ndarray):
        image = Image.fromarray(source[index])
        return image if image.mode == "RGB" else image.convert("RGB")
    paths = None if getattr(source, "in_memory", True) else source.paths
    if paths is None:
        return source[index][0]
    path = paths[index]
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened) if source.meta.get("exif_transpose") else opened
            image = to_rgb(image)
            if source.crop_bottom:
                image = image.crop((0, 0, image.width, image.height - source.crop_bottom))
            image.load()
            return image
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UnreadableImageError(f"cannot decode image {path}: {type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------------------------------------------------
# Mixing
# ------------------------------------------------------------------------------------------------------------


class BatchMixer:
    """timm's :class:`~timm.data.Mixup` (batch mode) applied to micro-batches of a global batch, seeded per step.

    Two changes make a step's mixing independent of how the global batch is split (``accum_steps``, processes):

    * the mixing parameters (mixup or cutmix, lambda, the cutmix box) are drawn from ``(seed, step)``, so every
      micro-batch of a step gets the same ones, as if the global batch were mixed at once;
    * item ``2j`` of a micro-batch is mixed with item ``2j + 1`` (timm mixes item ``i`` with ``n - 1 - i``): the
      pairs are then the same for any even micro-batch size. The global batch is in random order, so the pairs
      are random.
    """

    def __init__(self, recipe: Recipe, num_classes: int, seed: int) -> None:
        from timm.data import Mixup

        self.mixup = Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix,
                           label_smoothing=recipe.label_smoothing, num_classes=int(num_classes))
        self.seed = int(seed)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed images and soft targets ``(n, num_classes)`` of a micro-batch ``(x, y)`` at ``step``."""
        n = len(x)
        if n % 2:
            raise ValueError(f"mixup/cutmix need an even micro-batch, got {n} items")
        # Position j of this order holds item 2j and position n-1-j item 2j+1: timm's flip pairs them.
        order = torch.cat([torch.arange(0, n, 2), torch.arange(n - 1, 0, -2)]).to(y.device)
        with seeded_globals(stream_seed(self.seed, _MIX_STREAM, step)):
            return self.mixup(x[order], y[order])

