"""The BoB paper's backbone catalog and its retrieval snapshot, in the results schema.

The snapshot holds MRR of 33 BoB checkpoints on 8 retrieval datasets from the paper's official plotting notebook (a
pre-publication W&B snapshot). On revisited Oxford and Paris the paper's code ranks the database **before** junk
images are removed and divides by every query, and its "precision@k" is the community's mP@k (divided by
``min(k, rank of the last positive)``): those rows are named for what they are, ``mrr_bob`` and ``mp@k``, never
bobkit's ``mrr`` / ``precision@k``, so they are never pooled with bobkit's numbers.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from bobkit.analysis.public import resolve_public
from bobkit.results.schema import conform

#: Short dataset names for the snapshot's long descriptions (matched by prefix).
RETRIEVAL_DATASETS: dict[str, str] = {
    "CUB-200-2011": "cub200",
    "iNaturalist": "inat",
    "ObjectNet": "objectnet",
    "INSTRE": "instre",
    "Revisited Oxford5k": "roxford5k",
    "Revisited Paris6k": "rparis6k",
    "Google Landmarks v2": "gldv2",
    "Copydays": "copydays",
}
_RETRIEVAL_METRICS = {
    "MRR": "mrr", "mAP": "map", "precision@1": "precision@1", "precision@5": "precision@5",
    "precision@10": "precision@10", "recall@1": "recall@1", "recall@5": "recall@5",
}
#: Datasets where the paper's code computes its own variants (ranks before junk removal; mP@k): metric -> name.
PAPER_CODE_METRICS: dict[str, dict[str, str]] = {
    dataset: {"mrr": "mrr_bob", "precision@1": "mp@1", "precision@5": "mp@5", "precision@10": "mp@10"}
    for dataset in ("roxford5k", "rparis6k")
}
_KIND_WORDS = {"supervised": "supervised", "ssl": "SSL", "vision-language": "vision-language",
               "generative": "generative", "depth": "depth", "random": "random"}


def _parse_images(text: object) -> float:
    text = str(text or "").strip()
    if text == "0":
        return 0.0
    match = re.search(r"([\d.]+)\s*([MB])\b", text)
    if not match:
        return math.nan
    return float(match.group(1)) * (1e6 if match.group(2) == "M" else 1e9)


def _before_paren(text: object) -> str:
    return str(text).split(" (")[0].strip()


def load_backbones_catalog(path: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """The paper's backbone catalog (``bob/backbones.csv``) with the results schema's metadata columns.

    ``family`` loses its parenthetical (``other (conv + attention hybrid)`` -> ``other``); ``method_kind`` is one of the
    schema's words; ``pretrain_data`` is the short name (IN-22k and IN-21k are the same data: ``IN-21k``);
    ``pretrain_images`` is parsed from ``pretrain_data_size`` (NaN when not stated); a missing parameter count is
    filled from another entry with the same architecture string (SSCD ResNet-50 -> ResNet-50).
    """
    raw = pd.read_csv(resolve_public("bob_backbones_catalog", path), dtype=str)
    out = pd.DataFrame({
        "catalog_name": raw["name"],
        "display_name": raw["name"],
        "architecture": raw["architecture"],
        "family": raw["family"].map(_before_paren),
        "method": raw["pretrain_method"].map(_before_paren),
        "method_kind": raw["pretrain_method_kind"].map(
            lambda s: _KIND_WORDS.get(str(s).split(" ")[0].lower(), str(s))),
        "pretrain_data": raw["pretrain_data"].map(_before_paren).replace({"IN-22k": "IN-21k", "none": "none"}),
        "pretrain_images": raw["pretrain_data_size"].map(_parse_images),
        "params_millions": pd.to_numeric(raw["params_millions"], errors="coerce"),
    })
    out.loc[out["method"].str.startswith("supervised"), "method"] = "supervised"
    # sizes known for the same data elsewhere in the catalog (SSCD ImageNet: "n/a" -> IN-1k's 1.28M)
    by_data = out.dropna(subset=["pretrain_images"]).drop_duplicates("pretrain_data").set_index("pretrain_data")
    unknown = out["pretrain_images"].isna()
    out.loc[unknown, "pretrain_images"] = out.loc[unknown, "pretrain_data"].map(by_data["pretrain_images"])
    by_arch = out.dropna(subset=["params_millions"]).drop_duplicates("architecture").set_index("architecture")
    missing = out["params_millions"].isna()
    out.loc[missing, "params_millions"] = out.loc[missing, "architecture"].map(by_arch["params_millions"])
    return out


def retrieval_snapshot_table(
    path: str | os.PathLike[str] | None = None,
    catalog_path: str | os.PathLike[str] | None = None,
    *,
    metrics: Sequence[str] = ("mrr",),
) -> pd.DataFrame:
    """The BoB retrieval snapshot in the results schema, catalog metadata joined.

    ``backbone`` is the official code id (``timm-convnext_base_in22ft1k``), ``display_name`` the catalog name;
    datasets get short names (:data:`RETRIEVAL_DATASETS`); protocol ``frozen``; MRR as a fraction. On revisited
    Oxford/Paris the paper code's MRR and precision@k are named ``mrr_bob`` and ``mp@k``
    (:data:`PAPER_CODE_METRICS`). Rows that quote the paper's ranks are not results (see
    :func:`paper_retrieval_ranks`); other metrics exist for only five pairs and are dropped unless named in
    ``metrics`` (by their bobkit-side name: ``mrr`` selects ``mrr_bob`` on Oxford/Paris too).
    """
    raw = pd.read_csv(resolve_public("bob_retrieval_snapshot", path), dtype=str)
    raw = raw[raw["code_id"].notna() & (raw["code_id"].str.len() > 0)].copy()
    raw["metric_short"] = raw["metric"].map(
        lambda m: next((v for k, v in _RETRIEVAL_METRICS.items() if str(m).startswith(k)), None))
    raw = raw[raw["metric_short"].isin(list(metrics))]
    raw["dataset_short"] = raw["dataset"].map(
        lambda d: next((v for k, v in RETRIEVAL_DATASETS.items() if str(d).startswith(k)), None))
    raw = raw.dropna(subset=["dataset_short"])
    value = pd.to_numeric(raw["value"], errors="coerce")
    value = np.where(raw["metric_short"] == "map", value / 100.0, value)
    raw["metric_short"] = [PAPER_CODE_METRICS.get(d, {}).get(m, m) for d, m in zip(raw["dataset_short"],
                                                                                 raw["metric_short"])]
    table = pd.DataFrame({
        "run_key": "bob-retrieval:" + raw["code_id"] + ":" + raw["dataset_short"] + ":" + raw["metric_short"],
        "task": "retrieval",
        "backbone": raw["code_id"],
        "dataset": raw["dataset_short"],
        "protocol": "frozen",
        "seed": 0,
        "setting": "retrieval/" + raw["dataset_short"] + "/frozen",
        "metric": raw["metric_short"],
        "value": value,
        "higher_is_better": True,
        "catalog_name": raw["backbone_csv_name"],
    })
    catalog = load_backbones_catalog(catalog_path)
    table = table.merge(catalog, on="catalog_name", how="left")
    unmatched = table.loc[table["display_name"].isna(), "catalog_name"].unique()
    if len(unmatched):
        warnings.warn(f"retrieval snapshot backbones missing from the catalog: {list(unmatched)}", stacklevel=2)
        table["display_name"] = table["display_name"].fillna(table["catalog_name"])
    out = conform(table.drop(columns=["catalog_name"]))
    out.attrs["source"] = "BoB retrieval snapshot (bundled, 2023-05)"
    return out


def paper_retrieval_ranks(path: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """The ranks the paper's text quotes (snapshot rows with metric ``rank among BoB backbones``)."""
    raw = pd.read_csv(resolve_public("bob_retrieval_snapshot", path), dtype=str)
    rows = raw[raw["metric"].str.startswith("rank")]
    return pd.DataFrame({
        "paper_name": rows["backbone"], "catalog_name": rows["backbone_csv_name"], "task": rows["task"],
        "rank": pd.to_numeric(rows["value"], errors="coerce"), "evidence": rows["value_type"],
    }).reset_index(drop=True)


