"""timm name parsing, kept importable here for the analysis: the parser lives in :mod:`bobkit.backbones.tags`,
where declared backbones infer their metadata with it (one parser for the public tables and the registry)."""

from bobkit.backbones.tags import (  # noqa: F401  (re-exported)
    DATA_GROUPS,
    DATASET_IMAGES,
    FAMILY_RULES,
    IMPLIED_DATA,
    METADATA_PRETRAIN,
    architecture_family,
    parse_timm_name,
    parse_timm_tag,
)

__all__ = ["DATA_GROUPS", "DATASET_IMAGES", "FAMILY_RULES", "IMPLIED_DATA", "METADATA_PRETRAIN",
           "architecture_family", "parse_timm_name", "parse_timm_tag"]
