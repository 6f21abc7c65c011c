"""Priors that rank backbones without any target data: ImageNet top-1, and the overall score in a reference table.

A transferability estimator earns its cost only if it ranks backbones better than what is known before looking at
the target dataset. Two such priors, one value per backbone (higher is better):

``imagenet_top1``
    The backbone's ImageNet-1k top-1 accuracy (a fraction), from the first source that knows it:

    1. its own published figure (:data:`OWN_IMAGENET_TOP1`: weights whose exact evaluation timm does not list);
    2. timm's results table for the timm name of its weights (hub weights: ``arch.tag`` is exact);
    3. for a packaged supervised classifier, timm's figure for the entry's ``cfg_tag``: the timm port of the same
       checkpoint (the TensorFlow EfficientNet-Lite weights); a packaged file whose ``cfg_tag`` names other weights
       has its own figure in (1);
    4. the backbone name itself when it is a timm name (public tables and hand-made tables);
    5. a random-init control: chance, 1/1000 (an untrained network classifies ImageNet at chance).

    Headless weights (self-supervised, vision-language) have none: NaN, with the reason in ``source``.
``reference_overall``
    The backbone's overall z-score in a reference results table (default: the BoB retrieval snapshot), matched by
    backbone name, by display name, or by the registry entry's ``paper_name``.

Rows from the public BoB tables name backbones by the paper's code ids; their ``display_name`` (the catalog name)
is the registry's ``paper_name``, which leads to the registry entry and its timm name.
"""

from __future__ import annotations

from functools import cache
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from bobkit.analysis.settings import primary_metrics

IMAGENET_TOP1 = "imagenet_top1"
REFERENCE_OVERALL = "reference_overall"
#: Chance accuracy on ImageNet-1k: the prior of a random-init control.
CHANCE_TOP1 = 1.0 / 1000
#: ImageNet-1k top-1 (fraction) of registry entries whose exact weights timm's tables do not list, with the source.
OWN_IMAGENET_TOP1: dict[str, tuple[float, str]] = {
    "mobilenetv2_100.packaged_tv_in1k": (0.71878, "torchvision's documented acc@1 of MobileNet_V2 IMAGENET1K_V1"),
}
PRIOR_COLUMNS = ("backbone", "predictor", "value", "source")


@cache
def timm_imagenet_top1() -> pd.Series:
    """timm's ImageNet-1k top-1 (fraction) per timm model name, at the largest evaluated resolution."""
    from bobkit.analysis.public.timm import load_timm_results

    raw = load_timm_results("imagenet")
    raw = raw.sort_values(["model", "img_size"], ascending=[True, False], kind="stable").drop_duplicates("model")
    return (raw.set_index("model")["top1"] / 100.0).astype(float)


def _registry_entries(backbone: str, display_name: str | None) -> list:
    """Registry entries of ``backbone``: itself when registered, else every entry whose ``paper_name`` is
    ``display_name`` (a paper name can cover two entries: an IN-21k head and its IN-1k fine-tune)."""
    from bobkit.backbones import get_backbone, list_backbones

    try:
        return [get_backbone(backbone)]
    except ValueError:
        pass
    return [entry for entry in list_backbones() if display_name and entry.paper_name == display_name]


def _entry_top1(entry, table: pd.Series) -> tuple[float, str]:
    if entry.name in OWN_IMAGENET_TOP1:
        return OWN_IMAGENET_TOP1[entry.name]
    if entry.method_kind == "random":
        return CHANCE_TOP1, "random init: chance (1/1000)"
    if entry.source == "timm_hub" and entry.timm_name in table.index:
        return float(table[entry.timm_name]), f"timm's results for {entry.timm_name}"
    if entry.source == "packaged" and entry.method_kind == "supervised" and entry.cfg_tag in table.index:
        return float(table[entry.cfg_tag]), f"timm's results for {entry.cfg_tag}, the timm port of these weights"
    return np.nan, f"no ImageNet-1k top-1 for {entry.name} ({entry.method}, {entry.pretrain_data}: headless)"


def imagenet_top1_of(backbone: str, display_name: str | None = None) -> tuple[float, str]:
    """``(top-1 as a fraction, where it comes from)`` for one backbone; NaN and the reason when unknown. Among
    several registry entries sharing the display name, the first with a known figure."""
    table = timm_imagenet_top1()
    entries = _registry_entries(backbone, display_name)
    if not entries:
        if backbone in table.index:
            return float(table[backbone]), f"timm's results for {backbone}"
        return np.nan, "not in the registry nor in timm's results"
    found = [_entry_top1(entry, table) for entry in entries]
    return next((f for f in found if np.isfinite(f[0])), found[0])


def imagenet_prior(backbones: Sequence[str], display_names: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The ImageNet top-1 prior of each backbone: ``backbone``, ``predictor`` (``imagenet_top1``), ``value``
    (fraction, NaN when unknown) and ``source``."""
    names = display_names or {}
    rows = []
    for backbone in dict.fromkeys(backbones):
        value, source = imagenet_top1_of(str(backbone), names.get(backbone))
        rows.append({"backbone": backbone, "predictor": IMAGENET_TOP1, "value": value, "source": source})
    return pd.DataFrame(rows, columns=list(PRIOR_COLUMNS))


def reference_overall(reference: pd.DataFrame) -> pd.Series:
    """Overall z-score per backbone of a reference table (each task on its primary metrics), indexed by backbone;
    ``attrs["display_names"]`` maps display name -> backbone."""
    from bobkit.analysis.scores import scores

    board = scores(primary_metrics(reference))
    overall = board.set_index("backbone")["overall"].astype(float)
    overall.attrs["display_names"] = dict(zip(board["display_name"], board["backbone"]))
    return overall


def reference_prior(backbones: Sequence[str], reference: pd.DataFrame, *, reference_name: str = "reference",
                    display_names: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Each backbone's overall score in ``reference`` (``predictor`` ``reference_overall``), matched by backbone
    name, display name, or the registry entry's ``paper_name``; NaN where the reference does not hold it."""
    overall = reference_overall(reference)
    by_display = overall.attrs["display_names"]
    names = display_names or {}
    rows = []
    for backbone in dict.fromkeys(backbones):
        entries = _registry_entries(str(backbone), names.get(backbone))
        candidates = [backbone, by_display.get(names.get(backbone, "")),
                      *(by_display.get(entry.paper_name) for entry in entries if entry.paper_name)]
        match = next((c for c in candidates if c is not None and c in overall.index), None)
        value = float(overall[match]) if match is not None else np.nan
        source = f"overall score of {match} in {reference_name}" if match is not None else f"not in {reference_name}"
        rows.append({"backbone": backbone, "predictor": REFERENCE_OVERALL, "value": value, "source": source})
    return pd.DataFrame(rows, columns=list(PRIOR_COLUMNS))


def prior_values(backbones: Sequence[str], display_names: Mapping[str, str] | None = None,
                 reference: pd.DataFrame | None = None, reference_name: str = "reference") -> pd.DataFrame:
    """Both priors of each backbone in one frame (:data:`PRIOR_COLUMNS`); the reference prior only with a
    ``reference`` table."""
    frames = [imagenet_prior(backbones, display_names)]
    if reference is not None:
        frames.append(reference_prior(backbones, reference, reference_name=reference_name,
                                      display_names=display_names))
    return pd.concat(frames, ignore_index=True)
