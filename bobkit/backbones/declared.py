"""Declared backbones' weights, above the factory: checked before any cell runs, fingerprinted into run keys, and
the example's stand-in checkpoint.

:mod:`bobkit.backbones.user` turns declarations into registry entries; what needs a model or its weights is here,
so the declarations module stays below the factory that builds them.
"""

from __future__ import annotations

import json
from pathlib import Path

from bobkit.backbones.factory import create_model, prepare_weights, weights_id
from bobkit.backbones.user import declared_backbones
from bobkit.utils.files import sha256_bytes

__all__ = ["fingerprint", "prepare_declared", "write_stand_in_checkpoint"]


def prepare_declared(name: str) -> None:
    """Check a declared backbone's weights now (a checkpoint converted and key-checked once, cached), so that a
    checkpoint that does not fit fails before any cell runs, naming its missing and unexpected keys."""
    declared_backbones()  # every declaration parsed: one that shadows a built-in name fails here
    prepare_weights(name)


def write_stand_in_checkpoint(path: Path) -> Path:
    """The example's stand-in user checkpoint (``bob data --example-folder``): the packaged MobileNetV2 weights in
    timm key names, as safetensors."""
    from safetensors.torch import save_file

    model = create_model("mobilenetv2_100.packaged_tv_in1k", num_classes=1000)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def fingerprint(name: str) -> str | None:
    """What a run key adds for a declared backbone (None when ``name`` is not declared): everything that builds
    it (source, architecture, tags, preprocessing, model arguments) and its weights' identity (a checkpoint's
    sha256), but none of the labels (renaming a display name reruns nothing)."""
    entry = declared_backbones().get(name)
    if entry is None:
        return None
    built = {"source": entry.source, "timm_model": entry.timm_model, "timm_tag": entry.timm_tag,
             "cfg_tag": entry.cfg_tag, "cfg_overlay": dict(entry.cfg_overlay), "model_kwargs": dict(entry.model_kwargs),
             "open_clip": [entry.open_clip_model, entry.open_clip_pretrained], "weights": weights_id(name)}
    return sha256_bytes(json.dumps(built, sort_keys=True, default=str))[:16]
