"""Random-weight twins: a registry entry per backbone with the same architecture and preprocessing, no weights.

A twin is the backbone's own entry with ``source="random"``: ``create_model`` then builds the same timm
architecture (with the entry's ``model_kwargs`` and ``img_size`` handling) and ``data_config`` resolves the same
mean, std, interpolation and crop, but nothing is downloaded. Twins exist only while the rehearsal runs
(:func:`random_twins` registers and removes them).
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Iterable, Iterator

from bobkit.backbones import Backbone, get_backbone, register, unregister

TWIN_SUFFIX = "-rehearsal"


def twin_entry(entry: Backbone) -> Backbone:
    """The random-weight twin of ``entry`` (named ``<name>-rehearsal``)."""
    return dataclasses.replace(
        entry, name=f"{entry.name}{TWIN_SUFFIX}", display_name=f"{entry.display_name} (rehearsal, random weights)",
        method="random init", method_kind="random", pretrain_data="none", pretrain_images=0, source="random",
        url=None, weights_entry=None, package=None, package_file=None, package_sha256=None, key_map=None,
        hub_id=None, requires=None, cfg_tag=entry.cfg_tag or entry.timm_name,
    )


def needs_twin(entry: Backbone) -> bool:
    """Entries with weights to load get a twin; random-init entries are used as they are, and entries without a
    loader keep their name (building them raises the error a real run would)."""
    return entry.source not in ("random", "unsupported")


@contextmanager
def random_twins(names: Iterable[str]) -> Iterator[dict[str, str]]:
    """Register the twins of ``names`` for the block; yield ``{name: name to build}``, then remove them."""
    mapping: dict[str, str] = {}
    added: list[str] = []
    try:
        for name in dict.fromkeys(names):
            entry = get_backbone(name)
            if not needs_twin(entry):
                mapping[name] = name
                continue
            twin = twin_entry(entry)
            register(twin)
            added.append(twin.name)
            mapping[name] = twin.name
        yield mapping
    finally:
        for name in added:
            unregister(name)
