"""timm's published results (ImageNet, ImageNet-ReaL, -V2, -Sketch, -R, -A and the 200-class clean subsets) in the
results schema.

The list of tables is data: every ``reference_table`` entry of the data manifest with ``reference.group:
timm_results`` is one table, with its results-table ``dataset`` name, its ``role`` (``id``: the ImageNet reference,
``id_alt``: ImageNet-ReaL, a second in-distribution reference, ``id_clean``: ImageNet restricted to an OOD set's 200
classes, ``ood``) and ``n_items`` (test images). Adding a table is adding a manifest entry (:func:`timm_tables`).
Each top-1 carries its binomial standard error over those images.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from bobkit.analysis.public import resolve_public
from bobkit.analysis.uncertainty import binomial_stderr
from bobkit.backbones.tags import DATA_GROUPS, DATASET_IMAGES, METADATA_PRETRAIN, parse_timm_name
from bobkit.results.schema import METADATA_COLUMNS, conform

GROUP = "timm_results"


def timm_tables() -> pd.DataFrame:
    """One row per timm results table in the data manifest: ``entry`` (manifest name), ``dataset``, ``role``,
    ``task``, ``n_items``, ``clean_subset_of``, ``description``."""
    from bobkit.data.manifest import load_manifest

    rows = []
    for entry in load_manifest():
        info = entry.raw.get("reference") or {}
        if info.get("group") != GROUP or not info.get("dataset"):
            continue
        rows.append({"entry": entry.name, "dataset": info["dataset"], "role": info.get("role"),
                     "task": info.get("task"), "n_items": float(info.get("n_items") or np.nan),
                     "clean_subset_of": info.get("clean_subset_of"), "description": entry.description})
    return pd.DataFrame(rows, columns=["entry", "dataset", "role", "task", "n_items", "clean_subset_of",
                                       "description"])


def datasets_with_role(*roles: str) -> list[str]:
    """Dataset names of the timm tables with one of ``roles`` (``"ood"``, ``"id"``, ...), in manifest order."""
    tables = timm_tables()
    return tables.loc[tables["role"].isin(roles), "dataset"].tolist()


def _table_info(dataset: str) -> pd.Series:
    tables = timm_tables().set_index("dataset")
    if dataset not in tables.index:
        raise ValueError(f"unknown timm table {dataset!r}; the data manifest lists {sorted(tables.index)}")
    return tables.loc[dataset]


def _to_float(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series.astype(str).str.replace(",", "", regex=False), errors="coerce")


def load_timm_results(dataset: str = "imagenet", path: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """One raw timm results table (``model, img_size, top1, top5, param_count, ...``) with numbers as floats.

    ``dataset`` is a dataset of :func:`timm_tables` (``imagenet``, ``imagenet_real``, ``imagenet_v2``,
    ``imagenet_sketch``, ``imagenet_r``, ``imagenet_a``, ``imagenet_r_clean``, ``imagenet_a_clean``); ``path``
    overrides the manifest.
    """
    info = _table_info(dataset)
    frame = pd.read_csv(resolve_public(info["entry"], path), dtype=str)
    for column in frame.columns:
        if column not in {"model", "interpolation"}:
            frame[column] = _to_float(frame[column])
    return frame


def load_timm_metadata(path: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """timm's ``model_metadata-in1k.csv`` (legacy untagged names -> pretraining string)."""
    return pd.read_csv(resolve_public("timm_model_metadata_in1k", path), dtype=str)


def timm_metadata(models: Iterable[str], params: pd.Series | None = None,
                  legacy_metadata: pd.DataFrame | None = None) -> pd.DataFrame:
    """Metadata columns of the results schema for timm model names (one row per unique name).

    ``params`` maps model -> millions of parameters. Untagged names are looked up in ``legacy_metadata``
    (:func:`load_timm_metadata`) when given.
    """
    legacy = {}
    if legacy_metadata is not None:
        legacy = dict(zip(legacy_metadata["model"], legacy_metadata["pretrain"]))
    rows = []
    for model in dict.fromkeys(models):
        info = parse_timm_name(model)
        if "." not in model and model in legacy and legacy[model] in METADATA_PRETRAIN:
            data, method, kind = METADATA_PRETRAIN[legacy[model]]
            info.update(pretrain_data=data, pretrain_images=DATASET_IMAGES[data],
                        pretrain_data_group=DATA_GROUPS.get(data, "other"), method=method, method_kind=kind)
        info["backbone"] = model
        info["display_name"] = model
        rows.append(info)
    meta = pd.DataFrame(rows)
    meta["params_millions"] = meta["backbone"].map(params) if params is not None else np.nan
    return meta


def timm_results_table(
    datasets: Sequence[str] | None = None,
    *,
    metrics: Sequence[str] = ("top1",),
    paths: dict[str, str | os.PathLike[str]] | None = None,
    include_test_models: bool = False,
    resolution: str = "max",
) -> pd.DataFrame:
    """timm's published tables in the results schema (one row per model x dataset x metric).

    ``datasets`` defaults to the ImageNet table and every OOD table of the manifest (ImageNet-V2, -Sketch, -R, -A).
    About 290 models are listed at two test resolutions; ``resolution`` keeps, per model and table, the row with the
    largest (``"max"``) or smallest (``"min"``) ``img_size`` (the same sizes appear in every table, so ImageNet and
    its OOD variants stay paired). Values are fractions (``top1 / 100``) with ``n_items`` (the table's test images)
    and the binomial ``stderr``. Every model is an ImageNet-1k classifier fine-tuned end to end (``protocol =
    "finetune"``); each table's task comes from the manifest (``classification`` or ``ood``). Metadata comes from
    the model name (:func:`~bobkit.backbones.tags.parse_timm_name`) and ``param_count``. timm's ``test_*``
    toy models are dropped unless ``include_test_models``. Extra columns ``pretrain_data_group``, ``tag`` and
    ``img_size`` are kept.
    """
    if resolution not in {"max", "min"}:
        raise ValueError(f"resolution must be 'max' or 'min', not {resolution!r}")
    datasets = list(datasets) if datasets is not None else datasets_with_role("id", "ood")
    paths = paths or {}
    frames = []
    params: dict[str, float] = {}
    for dataset in datasets:
        info = _table_info(dataset)
        raw = load_timm_results(dataset, paths.get(dataset))
        if not include_test_models:
            raw = raw[~raw["model"].str.startswith("test_")]
        raw = raw.sort_values(["model", "img_size"], ascending=[True, resolution == "min"], kind="stable")
        raw = raw.drop_duplicates("model", keep="first")
        for model, count in zip(raw["model"], raw["param_count"]):
            if model not in params and not pd.isna(count):
                params[model] = float(count)
        for metric in metrics:
            if metric not in raw.columns:
                raise ValueError(f"timm table {dataset!r} has no column {metric!r}")
            value = raw[metric] / 100.0
            frames.append(pd.DataFrame({
                "run_key": "timm:" + raw["model"] + ":" + dataset + ":" + metric,
                "task": info["task"],
                "backbone": raw["model"],
                "dataset": dataset,
                "protocol": "finetune",
                "seed": 0,
                "setting": f"{info['task']}/{dataset}/finetune",
                "metric": metric,
                "value": value,
                "stderr": binomial_stderr(value, info["n_items"]),
                "n_items": info["n_items"],
                "higher_is_better": not metric.endswith("_err"),
                "img_size": raw["img_size"],
            }))
    table = pd.concat(frames, ignore_index=True)
    meta = timm_metadata(table["backbone"].unique(), pd.Series(params))
    table = table.merge(meta, on="backbone", how="left")
    out = conform(table, keep_extra=("pretrain_data_group", "tag", "img_size"))
    out.attrs["source"] = "timm's published results (bundled, data manifest group timm_results)"
    return out


def timm_wide(
    ood_datasets: Sequence[str] | None = None,
    *,
    id_dataset: str = "imagenet",
    metric: str = "top1",
    paths: dict[str, str | os.PathLike[str]] | None = None,
    include_test_models: bool = False,
    resolution: str = "max",
    require_all: bool = False,
) -> pd.DataFrame:
    """One row per timm model: ``id_acc`` (``id_dataset``), one ``<dataset>`` accuracy column per OOD table
    (fractions; default every OOD table of the manifest), and the metadata.

    Models need the ID table and at least one OOD table (every OOD table with ``require_all``); a model missing from
    one OOD table has NaN there, so each ID-vs-OOD pair uses every model evaluated on both (rows at the
    ``resolution`` of :func:`timm_results_table`).
    """
    ood_datasets = list(ood_datasets) if ood_datasets is not None else datasets_with_role("ood")
    table = timm_results_table((id_dataset, *ood_datasets), metrics=(metric,), paths=paths,
                               include_test_models=include_test_models, resolution=resolution)
    wide = table.pivot_table(index="backbone", columns="dataset", values="value", aggfunc="first")
    wide = wide.dropna(subset=[id_dataset]).dropna(subset=list(ood_datasets), how="any" if require_all else "all")
    wide = wide.rename(columns={id_dataset: "id_acc"})
    wide.columns.name = None
    meta_cols = ["backbone", *METADATA_COLUMNS, "pretrain_data_group", "tag", "img_size"]
    meta = table[meta_cols].drop_duplicates("backbone").set_index("backbone")
    out = wide.join(meta).reset_index()
    out.attrs.update(id_dataset=id_dataset, ood_datasets=list(ood_datasets))
    return out


def id_reference(ood_dataset: str, default: str = "imagenet") -> str:
    """The in-distribution table an ``ood_dataset`` trend is fitted against: ImageNet restricted to the OOD set's
    200 classes where the manifest has that clean subset (ImageNet-R and -A, as Taori et al. compare them on the
    same classes), else ``default`` (the 1000-class ImageNet)."""
    tables = timm_tables()
    clean = tables.loc[tables["clean_subset_of"] == ood_dataset, "dataset"]
    return str(clean.iloc[0]) if len(clean) else default


def effective_robustness(
    ood_dataset: str,
    *,
    id_dataset: str = "imagenet",
    baseline: str | None = None,
    scale: str = "logit",
) -> tuple[pd.Series, dict, pd.DataFrame]:
    """Effective robustness of every timm model on ``ood_dataset`` (:func:`bobkit.analysis.id_ood.effective_robustness`)
    against :func:`id_reference`'s accuracy.

    Returns ``(effective robustness by backbone, trend, frame)``; ``trend`` names its ``id_reference`` and
    ``frame`` holds the models fitted and shown (:func:`timm_wide` of that pair).
    """
    from bobkit.analysis.id_ood import effective_robustness as fit

    reference = id_reference(ood_dataset, id_dataset)
    frame = timm_wide([ood_dataset], id_dataset=reference)
    er, trend = fit(frame, ood_dataset, baseline=baseline, scale=scale)
    trend["id_reference"] = reference
    return er.set_axis(frame["backbone"].to_numpy()), trend, frame


def id_label(dataset: str) -> str:
    """How a page names an in-distribution table: ``ImageNet``, or ``ImageNet on imagenet_r's 200 classes``."""
    tables = timm_tables().set_index("dataset")
    subset_of = tables["clean_subset_of"].get(dataset) if dataset in tables.index else None
    if isinstance(subset_of, str) and subset_of:
        return f"ImageNet on {subset_of}'s 200 classes"
    return {"imagenet": "ImageNet", "imagenet_real": "ImageNet-ReaL"}.get(dataset, dataset)
