"""User backbones: declared in YAML (a grid's ``backbones:`` section or a ``$BOB_REGISTRY`` file), never coded.

::

    backbones:
      - convnext_tiny.fb_in22k                    # a bare timm name: declared under its own name
    backbones:
      my_convnext: {timm: convnext_tiny.fb_in22k} # any timm name, tagged or not (untagged: timm's default tag)
      my_resnet:                                  # a local checkpoint in a timm architecture
        timm: resnet50
        checkpoint: weights/resnet50_ssl.pth      # state dict, safetensors, or a dict with model / state_dict
        method: SimCLR                            # a checkpoint says nothing about its pretraining: declare it
        method_kind: SSL
        pretrain_data: in1k                       # a known dataset (in1k, in21k, laion2b, ...) or with
      my_clip: {open_clip: ViT-B-32, pretrained: laion2b_s34b_b79k}   #   pretrain_images: N
      control: {timm: resnet50, pretrained: false}                    # a random-init control

Metadata (architecture, family, pretraining method and its kind, pretraining data and its size, parameters) is
inferred from the timm name by the parser the public-table analysis uses (:mod:`bobkit.backbones.tags`), the
open_clip tag, or counted (parameters); every field can be declared instead. What cannot be inferred is asked
for by name in a :class:`BackboneDeclarationError`, never guessed.
"""

from __future__ import annotations

import difflib
import math
import re
from functools import lru_cache
from typing import Any

from bobkit.backbones import tags
from bobkit.backbones.catalog import is_builtin
from bobkit.backbones.registry import FAMILIES, METHOD_KINDS, Backbone
from bobkit.data.declarations import Declaration, DeclarationError, declarations
from bobkit.utils.text import short_repr

__all__ = ["BackboneDeclarationError", "declare_backbone", "declared_backbones", "user_backbone_names"]

_FIELDS = {
    "timm": "a timm model name, tagged or not (convnext_tiny.fb_in22k)",
    "open_clip": "an open_clip model name (ViT-B-32): its image tower",
    "checkpoint": "a local checkpoint: state dict, safetensors, or a dict with a model / state_dict key",
    "pretrained": "timm: false for a random-init control; open_clip: the pretrained tag (laion2b_s34b_b79k)",
    "display_name": "label in tables and plots (default: the name)",
    "architecture": "architecture label (default: the timm / open_clip model name)",
    "family": f"one of {', '.join(FAMILIES)}",
    "method": "pretraining method (supervised, DINO, CLIP, ...)",
    "method_kind": f"one of {', '.join(METHOD_KINDS)}",
    "pretrain_data": "pretraining data (a dataset token such as in1k, in21k, laion2b, or your own name)",
    "pretrain_images": "pretraining images (needed when pretrain_data is not a known dataset)",
    "params_millions": "parameters without the head, in millions (default: counted)",
    "feature": "which feature is used (default: the model's pooled feature)",
    "preprocess": "{mean, std, interpolation, crop_pct, input_size}: instead of the model's own data config",
    "model_kwargs": "architecture arguments of timm.create_model (drop_path_rate, img_size, ...; no file or "
                    "config loading)",
    "notes": "free text",
    "value": "",
}
#: ``model_kwargs`` a declaration may pass to ``timm.create_model``: how the architecture is built, nothing that
#: makes timm read a file or a config of its own (bobkit reads checkpoints itself, verified and weights-only).
MODEL_KWARGS = ("drop_rate", "drop_path_rate", "attn_drop_rate", "proj_drop_rate", "pos_drop_rate",
                "patch_drop_rate", "drop_block_rate", "img_size", "global_pool", "dynamic_img_size",
                "dynamic_img_pad", "output_stride", "class_token", "reg_tokens", "no_embed_class", "fc_norm",
                "init_values", "layer_scale_init_value", "num_heads")
#: ``timm.create_model`` arguments that load weights or configs by themselves, and what to declare instead.
_REFUSED_KWARGS = {
    "checkpoint_path": "declare the file as checkpoint: (bobkit reads it with safetensors or weights_only)",
    "pretrained_cfg": "timm would take its weight source from it; declare timm: arch.tag or checkpoint:",
    "pretrained_cfg_overlay": "timm would take its weight source from it; use preprocess: for the data config",
    "pretrained": "declare pretrained: false beside timm:, not in model_kwargs",
    "pretrained_strict": "bobkit checks a checkpoint's keys itself",
    "cache_dir": "weights come from the hub cache, $BOB_WEIGHTS_DIR or checkpoint:",
    "num_classes": "bobkit sets it (0: features, no head)",
    "features_only": "bobkit takes the pooled feature (feature:)",
}
_METADATA = ("display_name", "architecture", "family", "method", "method_kind", "pretrain_data", "pretrain_images",
             "params_millions", "feature", "notes")
#: Readable names of the dataset tokens timm tags use (the catalog's spelling).
DATA_LABELS = {"in1k": "IN-1k", "in12k": "IN-12k", "in21k": "IN-21k", "in22k": "IN-21k", "laion2b": "LAION-2B",
               "laion400m": "LAION-400M", "openai": "OpenAI WIT", "datacompxl": "DataComp-XL", "dfn2b": "DFN-2B",
               "webli": "WebLI", "lvd142m": "LVD-142M", "sa1b": "SA-1B", "ig1b": "IG-1B", "ig3.6b": "IG-3.6B",
               "jft300m": "JFT-300M", "yfcc100m": "YFCC-100M"}
_PREPROCESS = ("mean", "std", "interpolation", "crop_pct", "input_size", "crop_mode")
# open_clip model-name prefixes -> family (anything else must be declared).
_OPEN_CLIP_FAMILIES = ((r"^(RN\d|convnext)", "CNN"), (r"^swin", "hierarchical-ViT"),
                       (r"^(ViT|EVA|vit_|PE-Core|ViTamin)", "ViT"))


class BackboneDeclarationError(DeclarationError):
    """A backbone declaration that cannot be used; names the declaration, its file and the field to fix."""


def _error(decl: Declaration, problem: str) -> BackboneDeclarationError:
    return BackboneDeclarationError(f"{decl.where}: {problem}")


# ----------------------------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------------------------


def data_token(value: Any) -> str | None:
    """The dataset token of a pretraining data name (``IN-1k``, ``imagenet-1k`` -> ``in1k``; None if unknown)."""
    text = re.sub(r"[\s_-]", "", str(value).lower()).replace("imagenet", "in")
    aliases = {"in21k": "in21k", "in22k": "in22k", "wit": "openai", "openaiwit": "openai", "datacomp": "datacompxl"}
    text = aliases.get(text, text)
    if text in tags.DATASET_IMAGES:
        return text
    return next((t for t, label in DATA_LABELS.items() if re.sub(r"[\s_-]", "", label.lower()) == text), None)


def _tag_metadata(arch: str, tag: str) -> dict[str, Any] | None:
    """Method and data the tag names (None when no token of the tag is known: nothing to infer from)."""
    known = set(tags.DATASET_IMAGES) | {"mae", "fcmae", "mim", "dino", "dinov2", "ibot", "moco", "mocov3", "simclr",
                                        "seer", "clip", "openai", "swsl", "wsl", "swag", "ssl", "ns", "ssld",
                                        "dist", "distilled", "adv", "ap", "ig", "jft"}
    if not any(t in known for t in tag.lower().split("_")):
        return None
    parsed = tags.parse_timm_tag(tag, arch)
    images = parsed["pretrain_images"]
    if parsed["pretrain_data"] == "unknown":
        return {"method": parsed["method"], "method_kind": parsed["method_kind"]}
    return {"method": parsed["method"], "method_kind": parsed["method_kind"],
            "pretrain_data": DATA_LABELS.get(str(parsed["pretrain_data"]), parsed["pretrain_data"]),
            "pretrain_images": None if isinstance(images, float) and math.isnan(images) else int(images)}


def _open_clip_metadata(model: str, tag: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"method": "SigLIP" if "siglip" in model.lower() else "CLIP",
                           "method_kind": "vision-language"}
    family = next((f for pattern, f in _OPEN_CLIP_FAMILIES if re.match(pattern, model)), None)
    if family:
        out["family"] = family
    if tag:
        token = data_token(tag.split("_")[0]) or (data_token("datacompxl") if tag.startswith("datacomp_xl") else None)
        if token:
            out["pretrain_data"] = DATA_LABELS.get(token, token)
            out["pretrain_images"] = int(tags.DATASET_IMAGES[token])
    return out


def _timm_params_millions(arch: str, model_kwargs: dict[str, Any]) -> float:
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=0, **model_kwargs)
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 2)


# ----------------------------------------------------------------------------------------------------------------
# Declarations -> registry entries
# ----------------------------------------------------------------------------------------------------------------


def _check_fields(decl: Declaration) -> None:
    unknown = [k for k in decl.fields if k not in _FIELDS]
    if unknown:
        hints = [f"{k!r}" + (f" (did you mean {c[0]!r}?)" if (c := difflib.get_close_matches(k, list(_FIELDS), 1))
                             else "") for k in unknown]
        known = ", ".join(k for k, v in _FIELDS.items() if v)
        raise _error(decl, f"unknown field(s) {', '.join(hints)}; a backbone declares {known} "
                     "(README: Battle backbones on your own data)")


def _timm_parts(decl: Declaration, name: str) -> tuple[str, str | None]:
    """``(architecture, tag or None)`` of a timm name, both checked against the installed timm."""
    import timm

    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise _error(decl, f"timm has no architecture {short_repr(arch)}{hint}")
    if tag and f"{arch}.{tag}" not in timm.list_pretrained(f"{arch}.*"):
        known = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        raise _error(decl, f"timm has no pretrained tag {short_repr(tag)} for {arch}; its tags: {known or 'none'}")
    return arch, tag or None


def _default_tag(decl: Declaration, arch: str) -> str:
    import timm

    names = timm.list_pretrained(f"{arch}.*")
    if not names:
        raise _error(decl, f"timm has no pretrained weights for {arch}: declare a checkpoint, or pretrained: false "
                           f"for a random-init control")
    cfg = timm.models.get_pretrained_cfg(arch)
    return str(getattr(cfg, "tag", None) or names[0].partition(".")[2])


def _declared_metadata(decl: Declaration) -> dict[str, Any]:
    out = {k: decl.fields[k] for k in _METADATA if decl.fields.get(k) is not None}
    if "family" in out and out["family"] not in FAMILIES:
        raise _error(decl, f"family={out['family']!r} is not one of {', '.join(FAMILIES)}")
    if "method_kind" in out and out["method_kind"] not in METHOD_KINDS:
        raise _error(decl, f"method_kind={out['method_kind']!r} is not one of {', '.join(METHOD_KINDS)}")
    for key in ("pretrain_images", "params_millions"):
        value = out.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise _error(decl, f"{key}={short_repr(value)} must be a non-negative number")
    if "pretrain_images" in out:
        out["pretrain_images"] = int(out["pretrain_images"])
    return out


def _complete(decl: Declaration, inferred: dict[str, Any], why: str) -> dict[str, Any]:
    """Inferred metadata overridden by the declared fields; the analysis' fields that are still unknown are asked
    for by name."""
    meta = {**inferred, **_declared_metadata(decl)}
    token = data_token(meta["pretrain_data"]) if meta.get("pretrain_data") is not None else None
    if token is not None:  # a known dataset: the catalog's spelling, and its size unless declared
        meta["pretrain_data"] = DATA_LABELS.get(token, token)
        if meta.get("pretrain_images") is None:
            meta["pretrain_images"] = int(tags.DATASET_IMAGES[token])
    missing = [k for k in ("family", "method_kind", "pretrain_data", "pretrain_images") if meta.get(k) is None]
    if missing:
        asks = {"family": f"family ({' | '.join(FAMILIES)})", "method_kind": f"method_kind ({' | '.join(METHOD_KINDS)})",
                "pretrain_data": "pretrain_data (e.g. in1k, in21k, laion2b, or your data's name)",
                "pretrain_images": "pretrain_images (how many images; 0 for none)"}
        raise _error(decl, f"{why}; declare {', '.join(asks[k] for k in missing)}")
    meta.setdefault("method", meta["method_kind"])
    return meta


def _preprocess(decl: Declaration) -> dict[str, Any]:
    raw = decl.fields.get("preprocess") or {}
    if not isinstance(raw, dict) or any(k not in _PREPROCESS for k in raw):
        raise _error(decl, f"preprocess={short_repr(raw)} takes {', '.join(_PREPROCESS)}")
    out = dict(raw)
    for key in ("mean", "std", "input_size"):
        if key in out:
            out[key] = tuple(out[key]) if isinstance(out[key], list) else out[key]
    return out


def _checkpoint(decl: Declaration) -> str | None:
    if decl.fields.get("checkpoint") is None:
        return None
    path = decl.path("checkpoint")
    if not path.is_file():
        raise _error(decl, f"checkpoint {path} does not exist")
    return str(path)


def _model_kwargs(decl: Declaration) -> dict[str, Any]:
    """The declared ``model_kwargs``, each key on the allow-list (:data:`MODEL_KWARGS`) with a plain value."""
    kwargs = decl.fields.get("model_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise _error(decl, f"model_kwargs={short_repr(kwargs)} must be a mapping")
    for key, value in kwargs.items():
        if key in _REFUSED_KWARGS:
            raise _error(decl, f"model_kwargs key {key!r} is refused: {_REFUSED_KWARGS[key]}")
        if key not in MODEL_KWARGS:
            close = difflib.get_close_matches(str(key), MODEL_KWARGS, 1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _error(decl, f"model_kwargs key {key!r} is not one bobkit passes to timm.create_model{hint}; "
                               f"allowed: {', '.join(MODEL_KWARGS)}")
        items = value if isinstance(value, (list, tuple)) else [value]
        if not all(item is None or isinstance(item, (bool, int, float, str)) for item in items):
            raise _error(decl, f"model_kwargs {key}={short_repr(value)} must be a number, a string, a boolean or a "
                               "list of them")
    return dict(kwargs)


def _timm_entry(decl: Declaration, timm_name: str) -> Backbone:
    arch, tag = _timm_parts(decl, timm_name)
    kwargs = _model_kwargs(decl)
    checkpoint, pretrained = _checkpoint(decl), decl.fields.get("pretrained", True)
    if not isinstance(pretrained, bool):
        raise _error(decl, f"pretrained={short_repr(pretrained)} must be true or false for a timm backbone")
    if not pretrained and checkpoint:
        raise _error(decl, "pretrained: false (random init) and a checkpoint contradict each other")
    family = tags.architecture_family(arch)
    inferred: dict[str, Any] = {"architecture": arch, "family": family}
    if not pretrained:
        source, why = "random", ""
        inferred.update(method="random init", method_kind="random", pretrain_data="none", pretrain_images=0)
    elif checkpoint:
        source, why = "file", f"a local checkpoint ({checkpoint}) does not say how it was pretrained"
    else:
        source = "timm_hub"
        tag = tag or _default_tag(decl, arch)
        found = _tag_metadata(arch, tag)
        why = f"timm tag {short_repr(tag)} names no pretraining method or data bobkit knows"
        inferred.update(found or {})
    meta = _complete(decl, inferred, why)
    if meta.get("params_millions") is None:
        meta["params_millions"] = _timm_params_millions(arch, kwargs)
    cfg_tag = f"{arch}.{tag}" if tag else None
    if source == "timm_hub":
        import timm

        meta.setdefault("hub_id", getattr(timm.models.get_pretrained_cfg(cfg_tag), "hf_hub_id", None) or None)
    return Backbone(
        name=decl.name, display_name=str(meta.pop("display_name", decl.name)), timm_model=arch, source=source,
        timm_tag=tag if source == "timm_hub" else None, cfg_tag=cfg_tag, weights_file=checkpoint,
        cfg_overlay=_preprocess(decl), model_kwargs=kwargs, declared_in=decl.source,
        feature=str(meta.pop("feature", "cls token" if meta["family"] == "ViT" else "pooled pre-logits")),
        notes=str(meta.pop("notes", f"declared in {decl.source}")), **meta,
    )


def _open_clip_entry(decl: Declaration, model: str) -> Backbone:
    from bobkit.backbones import openclip

    if model not in openclip.model_names():
        close = difflib.get_close_matches(model, openclip.model_names(), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise _error(decl, f"open_clip has no model {short_repr(model)}{hint}")
    checkpoint, tag = _checkpoint(decl), decl.fields.get("pretrained")
    if (tag is None) == (checkpoint is None):
        raise _error(decl, "an open_clip backbone needs exactly one of pretrained: TAG (hub weights) or "
                           f"checkpoint: FILE; tags of {model}: {openclip.pretrained_tags(model)}")
    if tag is not None and tag not in openclip.pretrained_tags(model):
        raise _error(decl, f"open_clip has no pretrained tag {short_repr(tag)} for {model}; its tags: "
                           f"{openclip.pretrained_tags(model)}")
    inferred = {"architecture": model, **_open_clip_metadata(model, tag if isinstance(tag, str) else None)}
    why = (f"a local checkpoint ({checkpoint}) does not say what it was pretrained on" if checkpoint
           else f"open_clip tag {short_repr(tag)} names no pretraining data bobkit knows")
    meta = _complete(decl, inferred, why)
    if meta.get("params_millions") is None:
        meta["params_millions"] = openclip.tower_params_millions(model)
    overlay = {**openclip.preprocess_config(model, tag), **_preprocess(decl)}
    return Backbone(
        name=decl.name, display_name=str(meta.pop("display_name", decl.name)), timm_model=None, source="open_clip",
        open_clip_model=model, open_clip_pretrained=tag, weights_file=checkpoint, cfg_overlay=overlay,
        takes_img_size=True, declared_in=decl.source, feature=str(meta.pop("feature", "image embedding")),
        notes=str(meta.pop("notes", f"declared in {decl.source}")), **meta,
    )


def declare_backbone(decl: Declaration) -> Backbone:
    """The registry entry a backbone declaration stands for (checked; not registered).

    Raises
    ------
    BackboneDeclarationError
        A built-in name, an unknown field or model, a missing file, metadata that cannot be inferred (asked for by
        name).
    """
    _check_fields(decl)
    if is_builtin(decl.name):
        raise _error(decl, "is a built-in backbone (`bob backbones`); use it as is or give yours another name")
    fields = decl.fields
    if "value" in fields:
        if len(fields) > 1:
            raise _error(decl, "a bare timm name takes no other fields")
        return _timm_entry(decl, str(fields["value"]))
    kinds = [k for k in ("timm", "open_clip") if k in fields]
    if len(kinds) != 1:
        raise _error(decl, f"give exactly one of timm: NAME or open_clip: NAME (got {kinds or 'none'})")
    if not isinstance(fields[kinds[0]], str) or not fields[kinds[0]].strip():
        raise _error(decl, f"{kinds[0]}={short_repr(fields[kinds[0]])} must be a model name")
    if kinds[0] == "timm":
        return _timm_entry(decl, fields["timm"].strip())
    return _open_clip_entry(decl, fields["open_clip"].strip())


@lru_cache(maxsize=256)
def _entry(decl: Declaration) -> Backbone:
    try:
        return declare_backbone(decl)
    except ValueError as exc:  # Backbone's own checks, phrased for the declaration
        if isinstance(exc, DeclarationError):
            raise
        raise _error(decl, str(exc)) from exc


def declared_backbones() -> dict[str, Backbone]:
    """Every backbone declared in the ``$BOB_REGISTRY`` files (name -> entry), in declaration order."""
    return {name: _entry(decl) for name, decl in declarations("backbones").items()}


def user_backbone_names() -> list[str]:
    """Names of the declared backbones."""
    return list(declared_backbones())
