"""Public reference tables turned into the results schema, and timm model-name tag parsing.

Two public sources answer the paper's questions without running anything:

* timm's published ImageNet / ImageNet-R / ImageNet-A top-1 tables (about 1,500 models). Each model name carries its
  pretraining in the tag after the dot (``convnext_base.fb_in22k_ft_in1k``, ``vit_base_patch16_clip_224.laion2b_ft_in12k_in1k``,
  ``resnet50.fb_swsl_ig1b_ft_in1k``, ...): :func:`parse_timm_name` reads the architecture prefix for the family and the
  tag for the pretraining data, its size in images, and the pretraining method.
* the BoB retrieval snapshot (MRR of 33 BoB checkpoints on 8 retrieval datasets), joined with the paper's backbone
  catalog for family, method, data and parameter count.

Both become tables with exactly the columns of ``results/results.parquet`` (:data:`RESULTS_SCHEMA`), so every analysis
function and notebook runs on them unchanged. Files are reached through the data manifest
(:func:`bobkit.data.manifest.resolve`); every loader also takes an explicit ``path``.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

# --------------------------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------------------------

#: Columns of a results table (``bob build`` output) and their pandas dtypes.
RESULTS_SCHEMA: dict[str, str] = {
    "run_key": "str",
    "task": "str",
    "backbone": "str",
    "dataset": "str",
    "protocol": "str",
    "seed": "int64",
    "setting": "str",
    "metric": "str",
    "value": "float64",
    "higher_is_better": "bool",
    "display_name": "str",
    "architecture": "str",
    "family": "str",
    "method": "str",
    "method_kind": "str",
    "pretrain_data": "str",
    "pretrain_images": "float64",
    "params_millions": "float64",
}
RESULTS_COLUMNS: list[str] = list(RESULTS_SCHEMA)
#: The columns a results table cannot do without (metadata columns are filled with NaN when absent).
REQUIRED_COLUMNS: tuple[str, ...] = ("task", "backbone", "dataset", "protocol", "metric", "value")
METADATA_COLUMNS: tuple[str, ...] = (
    "display_name", "architecture", "family", "method", "method_kind", "pretrain_data", "pretrain_images",
    "params_millions",
)

#: Manifest names of the timm tables, keyed by the dataset name used in the results table.
TIMM_TABLES: dict[str, str] = {
    "imagenet": "timm_results_imagenet",
    "imagenet_r": "timm_results_imagenet_r",
    "imagenet_r_clean": "timm_results_imagenet_r_clean",
    "imagenet_a": "timm_results_imagenet_a",
    "imagenet_a_clean": "timm_results_imagenet_a_clean",
}
#: Task of each timm dataset: ImageNet (and the clean 200-class subsets) are in-distribution classification; ImageNet-R
#: and ImageNet-A are out-of-distribution generalisation of the same ImageNet-1k classifier.
TIMM_TASKS: dict[str, str] = {
    "imagenet": "classification",
    "imagenet_r_clean": "classification",
    "imagenet_a_clean": "classification",
    "imagenet_r": "ood",
    "imagenet_a": "ood",
}
#: Reference tables a notebook can name instead of a results path.
REFERENCES: tuple[str, ...] = ("bob_retrieval", "timm")


def resolve_public(name: str, path: str | os.PathLike[str] | None = None) -> Path:
    """Path of a public file: ``path`` when given, else the data manifest's verified file for ``name``.

    The manifest searches ``$BOB_DATA_DIR``, bobkit's data cache and the copies shipped inside bobkit; a missing
    file raises ``MissingDataError`` saying where to download it (``bob data --download NAME``).
    """
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{name}: no file at {path}")
        return path
    from bobkit.data.manifest import resolve

    return Path(resolve(name))


# --------------------------------------------------------------------------------------------------------------------
# timm names: architecture -> family, tag -> pretraining data and method
# --------------------------------------------------------------------------------------------------------------------

#: Ordered (regex on the architecture, family) rules; first match wins. Hybrids that mix convolution and attention
#: in every stage, MLP-only and recurrent models are ``other``.
FAMILY_RULES: tuple[tuple[str, str], ...] = (
    (r"^test_", "other"),
    # hierarchical (multi-stage, downsampling) transformers
    (r"^(swin|swinv2|swinv2_cr|pvt_v2|twins|mvitv2|nest|davit|gcvit|hiera|pit|tiny_vit)(_|$)", "hierarchical-ViT"),
    # hybrids and attention-augmented CNNs
    (r"^(coatnet|coatnext|coat|maxvit|maxxvit|maxxvitv2|levit|mobilevit|mobilevitv2|efficientformer|efficientformerv2|"
     r"fastvit|nextvit|edgenext|efficientvit|swiftformer|visformer|shvit|caformer|botnet|sebotnet|halonet|sehalonet|"
     r"halo2botnet|lamhalobotnet|haloregnetz|lambda_resnet|bat_resnext|focalnet)", "other"),
    # MLP / recurrent / pooling mixers
    (r"^(mixer|gmixer|gmlp|resmlp|sequencer2d|sequencer|poolformer|poolformerv2)(_|$)", "other"),
    # plain (isotropic) transformers, including hybrid-stem ViTs
    (r"^(vit|deit|deit3|cait|beit|beitv2|beit3|eva|eva02|flexivit|naflexvit|xcit|crossvit|tnt|convit|volo|samvit)(_|$)", "ViT"),
    # convolutional networks
    (r"^(resnet|resnetv2|resnetaa|resnetblur|resnetrs|resnext|wide_resnet|seresnet|seresnext|seresnextaa|ecaresnet|"
     r"ecaresnetlight|gcresnet|gcresnext|skresnet|skresnext|resnest|res2net|res2next|regnet|convnext|convnextv2|"
     r"efficientnet|efficientnetv2|tf_|mobilenet|mobilenetv2|mobilenetv3|mobilenetv4|mobileone|mnasnet|semnasnet|"
     r"spnasnet|fbnet|tinynet|lcnet|hardcorenas|ghostnet|ghostnetv2|ghostnetv3|repghostnet|repvgg|repvit|vgg|densenet|"
     r"densenetblur|dla|dpn|hrnet|inception|xception|legacy_|nasnetalarge|pnasnet|senet|selecsls|rexnet|rexnetr|"
     r"cspdarknet|cspresnet|cspresnext|cs3|darknet|darknetaa|ese_vovnet|vovnet|tresnet|gernet|nf_|nfnet|dm_nfnet|"
     r"eca_|gc_|convmixer|convformer|mambaout|starnet|fasternet|rdnet|hgnet|hgnetv2|mixnet|mixnet_|bat_|cs3)", "CNN"),
)

#: Images in each pretraining dataset named in timm tags (approximate public figures; ``None`` unknown).
DATASET_IMAGES: dict[str, float] = {
    "in1k": 1.281167e6,
    "in12k": 12.0e6,  # timm's ImageNet-12k: the 11,821 ImageNet-22k classes with >= 1 image, about 12M images
    "in21k": 14.2e6,
    "in22k": 14.2e6,
    "jft300m": 300e6,
    "ig1b": 940e6,
    "ig3.6b": 3.6e9,
    "yfcc100m": 100e6,
    "laion2b": 2.32e9,
    "laiona": 900e6,
    "laion400m": 400e6,
    "openai": 400e6,
    "webli": 10e9,
    "m38m": 38e6,
    "m30m": 30e6,
    "ssld6m": 6e6,
    "sa1b": 11e6,
    "lvd142m": 142e6,
    "dfn2b": 2e9,
    "datacompxl": 12.8e9,
}
_DATA_ALIASES = {"in22k": "in22k", "in21k": "in21k", "jft": "jft300m", "6m": "ssld6m"}
#: Pretraining data group of each dataset, for colouring and grouping (the paper's data axis).
DATA_GROUPS: dict[str, str] = {
    "in1k": "ImageNet-1k",
    "in12k": "ImageNet-21k/12k",
    "in21k": "ImageNet-21k/12k",
    "in22k": "ImageNet-21k/12k",
    "ssld6m": "ImageNet-1k",
    "jft300m": "web-scale labelled (JFT/IG/YFCC)",
    "ig1b": "web-scale labelled (JFT/IG/YFCC)",
    "ig3.6b": "web-scale labelled (JFT/IG/YFCC)",
    "yfcc100m": "web-scale labelled (JFT/IG/YFCC)",
    "m38m": "merged 30-38M",
    "m30m": "merged 30-38M",
    "laion2b": "image-text (LAION/OpenAI/WebLI)",
    "laiona": "image-text (LAION/OpenAI/WebLI)",
    "laion400m": "image-text (LAION/OpenAI/WebLI)",
    "openai": "image-text (LAION/OpenAI/WebLI)",
    "webli": "image-text (LAION/OpenAI/WebLI)",
    "dfn2b": "image-text (LAION/OpenAI/WebLI)",
    "datacompxl": "image-text (LAION/OpenAI/WebLI)",
    "sa1b": "other",
    "lvd142m": "other",
}

# tag token -> (method, method_kind); checked on the pretraining part of the tag (before the first ``ft``).
_METHOD_TOKENS: dict[str, tuple[str, str]] = {
    "mae": ("MAE", "SSL"),
    "fcmae": ("FCMAE", "SSL"),
    "mim": ("MIM", "SSL"),
    "dino": ("DINO", "SSL"),
    "dinov2": ("DINOv2", "SSL"),
    "ibot": ("iBOT", "SSL"),
    "moco": ("MoCo", "SSL"),
    "mocov3": ("MoCo v3", "SSL"),
    "simclr": ("SimCLR", "SSL"),
    "seer": ("SEER (SwAV)", "SSL"),
    "clip": ("CLIP", "vision-language"),
    "openai": ("CLIP", "vision-language"),
    "laion2b": ("CLIP", "vision-language"),
    "laiona": ("CLIP", "vision-language"),
    "laion400m": ("CLIP", "vision-language"),
    "webli": ("SigLIP", "vision-language"),
    "dfn2b": ("CLIP", "vision-language"),
    "datacompxl": ("CLIP", "vision-language"),
    "swsl": ("semi-weakly supervised", "supervised"),
    "wsl": ("weakly supervised", "supervised"),
    "swag": ("weakly supervised (SWAG)", "supervised"),
    "ssl": ("semi-supervised", "supervised"),
    "ns": ("noisy student", "supervised"),
    "ssld": ("SSLD distillation", "supervised"),
    "dist": ("distillation", "supervised"),
    "distilled": ("distillation", "supervised"),
    "adv": ("adversarial training", "supervised"),
    "ap": ("AdvProp", "supervised"),
}
# architecture prefix -> (method, method_kind) for families that are self-supervised whatever the tag says.
_ARCH_METHODS: tuple[tuple[str, tuple[str, str]], ...] = (
    (r"^beit3", ("BEiT-3 (multimodal MIM)", "SSL")),
    (r"^beitv2", ("BEiT v2 (MIM)", "SSL")),
    (r"^beit", ("BEiT (MIM)", "SSL")),
    (r"^eva02", ("EVA-02 (MIM)", "SSL")),
    (r"^eva_", ("EVA (MIM)", "SSL")),
)

#: Pretraining strings of timm's ``model_metadata-in1k.csv`` -> (data token, method, method_kind).
_METADATA_PRETRAIN: dict[str, tuple[str, str, str]] = {
    "in1k": ("in1k", "supervised", "supervised"),
    "in1k-dist": ("in1k", "distillation", "supervised"),
    "in1k-ap": ("in1k", "AdvProp", "supervised"),
    "in1k-adv": ("in1k", "adversarial training", "supervised"),
    "in21k": ("in21k", "supervised", "supervised"),
    "in21k-selfsl": ("in21k", "BEiT (MIM)", "SSL"),
    "jft300m-ns": ("jft300m", "noisy student", "supervised"),
    "yfc-semisl": ("yfcc100m", "semi-supervised", "supervised"),
    "ig1b-swsl": ("ig1b", "semi-weakly supervised", "supervised"),
    "ig1b-wsl": ("ig1b", "weakly supervised", "supervised"),
}


def architecture_family(architecture: str) -> str:
    """Family (``CNN`` | ``ViT`` | ``hierarchical-ViT`` | ``other``) of a timm architecture name (before the dot)."""
    arch = architecture.split(".")[0].lower()
    for pattern, family in FAMILY_RULES:
        if re.match(pattern, arch):
            return family
    return "other"


def _data_token(token: str) -> str | None:
    token = _DATA_ALIASES.get(token, token)
    if token in DATASET_IMAGES:
        return token
    if token in {"ig", "ig1b"}:
        return "ig1b"
    return None


def parse_timm_tag(tag: str | None, architecture: str = "") -> dict[str, object]:
    """Pretraining data, its size and the method encoded in a timm pretrained tag.

    The tag is split at the first ``ft``: tokens before it describe pretraining, tokens after it the fine-tuning
    chain (``laion2b_ft_in12k_in1k``: CLIP on LAION-2B, fine-tuned on ImageNet-12k then ImageNet-1k). The pretraining
    data is the largest dataset anywhere in the chain (the data that shaped the representation most); when the
    pretraining part names no dataset, the first fine-tuning dataset stands in (``fcmae_ft_in22k_in1k`` -> in22k), and a
    chain naming none is ImageNet-1k. Methods come from known tokens (``mae``, ``clip``, ``swsl``, ...), then from the
    architecture (BEiT, EVA are masked-image-modelling SSL), else ``supervised``.

    Returns
    -------
    dict with ``tag``, ``pretrain_data`` (token such as ``in22k``, ``laion2b``; ``unknown`` when a method names no
    data), ``pretrain_data_group``, ``pretrain_images`` (float, NaN unknown), ``method``, ``method_kind``,
    ``finetune_chain`` (``in12k>in1k``).
    """
    tag = (tag or "").lower()
    tokens = [t for t in tag.split("_") if t]
    if "ft" in tokens:
        cut = tokens.index("ft")
        pre, post = tokens[:cut], tokens[cut + 1:]
    else:
        pre, post = tokens, []
    # split glued tokens such as ``in1k`` in ``mae_in1k`` (already separate) or ``ig1b`` inside ``fb_swsl_ig1b``
    pre_data = [d for d in (_data_token(t) for t in pre) if d]
    post_data = [d for d in (_data_token(t) for t in post) if d]
    method, kind = None, None
    for t in pre:
        if t in _METHOD_TOKENS:
            candidate = _METHOD_TOKENS[t]
            # a data-only token (openai, laion2b) names CLIP only when no more specific method token is present
            if method is None or (kind == "vision-language" and candidate[1] != "vision-language"):
                method, kind = candidate
    if method is None:
        for pattern, (m, k) in _ARCH_METHODS:
            if re.match(pattern, architecture.lower()):
                method, kind = m, k
                break
    if method is None and ("ns" in tokens or "jft" in tokens):
        method, kind = _METHOD_TOKENS["ns"]
    if method is None:
        method, kind = "supervised", "supervised"
    if method == "SEER (SwAV)" and not pre_data:
        pre_data = ["ig1b"]
    if method == "weakly supervised (SWAG)" and not pre_data:
        pre_data = ["ig3.6b"]
    chain = pre_data + post_data
    if pre_data:
        candidates = chain
    elif kind == "vision-language" and "clip" in pre:
        candidates = []  # e.g. eva_giant .clip_ft_in1k: CLIP pretraining on unnamed data
    elif post_data:
        candidates = [post_data[0]]
        if len(post_data) > 1:
            candidates = chain
    else:
        candidates = ["in1k"]
    if candidates:
        data = max(candidates, key=lambda d: DATASET_IMAGES.get(d, 0.0))
        images = float(DATASET_IMAGES.get(data, math.nan))
        group = DATA_GROUPS.get(data, "other")
    else:
        data, images, group = "unknown", math.nan, "unknown"
    return {
        "tag": tag,
        "pretrain_data": data,
        "pretrain_data_group": group,
        "pretrain_images": images,
        "method": method,
        "method_kind": kind,
        "finetune_chain": ">".join(post_data),
    }


def parse_timm_name(model: str) -> dict[str, object]:
    """Metadata of a timm model name ``arch.tag``: architecture, family and :func:`parse_timm_tag`'s fields."""
    arch, _, tag = model.partition(".")
    info = {"architecture": arch, "family": architecture_family(arch)}
    info.update(parse_timm_tag(tag or None, arch))
    return info


# --------------------------------------------------------------------------------------------------------------------
# timm tables
# --------------------------------------------------------------------------------------------------------------------

def _to_float(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series.astype(str).str.replace(",", "", regex=False), errors="coerce")


def load_timm_results(dataset: str = "imagenet", path: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """One raw timm results table (``model, img_size, top1, top5, param_count, ...``) with numbers as floats.

    ``dataset`` is a key of :data:`TIMM_TABLES` (``imagenet``, ``imagenet_r``, ``imagenet_a`` and the ``*_clean``
    subsets); ``path`` overrides the manifest.
    """
    if dataset not in TIMM_TABLES:
        raise ValueError(f"unknown timm table {dataset!r}; choose from {sorted(TIMM_TABLES)}")
    frame = pd.read_csv(resolve_public(TIMM_TABLES[dataset], path), dtype=str)
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
        if "." not in model and model in legacy and legacy[model] in _METADATA_PRETRAIN:
            data, method, kind = _METADATA_PRETRAIN[legacy[model]]
            info.update(pretrain_data=data, pretrain_images=DATASET_IMAGES[data],
                        pretrain_data_group=DATA_GROUPS.get(data, "other"), method=method, method_kind=kind)
        info["backbone"] = model
        info["display_name"] = model
        rows.append(info)
    meta = pd.DataFrame(rows)
    meta["params_millions"] = meta["backbone"].map(params) if params is not None else np.nan
    return meta


def timm_results_table(
    datasets: Sequence[str] = ("imagenet", "imagenet_r", "imagenet_a"),
    *,
    metrics: Sequence[str] = ("top1",),
    paths: dict[str, str | os.PathLike[str]] | None = None,
    include_test_models: bool = False,
    resolution: str = "max",
) -> pd.DataFrame:
    """timm's published tables in the results schema (one row per model x dataset x metric).

    About 290 models are listed at two test resolutions; ``resolution`` keeps, per model and table, the row with the
    largest (``"max"``) or smallest (``"min"``) ``img_size`` (the same sizes appear in every table, so ImageNet and
    its OOD variants stay paired). Values are fractions (``top1 / 100``). Every model is an ImageNet-1k classifier fine-tuned end to end
    (``protocol = "finetune"``); ImageNet is task ``classification``, ImageNet-R/-A are task ``ood``. Metadata comes from
    the model name (:func:`parse_timm_name`) and ``param_count``. timm's ``test_*`` toy models are dropped unless
    ``include_test_models``. Extra columns ``pretrain_data_group`` and ``tag`` are kept.
    """
    paths = paths or {}
    frames = []
    params: dict[str, float] = {}
    for dataset in datasets:
        raw = load_timm_results(dataset, paths.get(dataset))
        if not include_test_models:
            raw = raw[~raw["model"].str.startswith("test_")]
        if resolution not in {"max", "min"}:
            raise ValueError(f"resolution must be 'max' or 'min', not {resolution!r}")
        raw = raw.sort_values(["model", "img_size"], ascending=[True, resolution == "min"], kind="stable")
        raw = raw.drop_duplicates("model", keep="first")
        for model, count in zip(raw["model"], raw["param_count"]):
            if model not in params and not pd.isna(count):
                params[model] = float(count)
        task = TIMM_TASKS[dataset]
        for metric in metrics:
            if metric not in raw.columns:
                raise ValueError(f"timm table {dataset!r} has no column {metric!r}")
            frames.append(pd.DataFrame({
                "run_key": "timm:" + raw["model"] + ":" + dataset,
                "task": task,
                "backbone": raw["model"],
                "dataset": dataset,
                "protocol": "finetune",
                "seed": 0,
                "setting": f"{task}/{dataset}/finetune",
                "metric": metric,
                "value": raw[metric] / 100.0,
                "higher_is_better": not metric.endswith("_err"),
                "img_size": raw["img_size"],
            }))
    table = pd.concat(frames, ignore_index=True)
    meta = timm_metadata(table["backbone"].unique(), pd.Series(params))
    table = table.merge(meta, on="backbone", how="left")
    return conform(table, keep_extra=("pretrain_data_group", "tag", "img_size"))


def timm_wide(
    ood_datasets: Sequence[str] = ("imagenet_r", "imagenet_a"),
    *,
    id_dataset: str = "imagenet",
    metric: str = "top1",
    paths: dict[str, str | os.PathLike[str]] | None = None,
    include_test_models: bool = False,
    resolution: str = "max",
    require_all: bool = False,
) -> pd.DataFrame:
    """One row per timm model: ``id_acc`` and one ``<dataset>`` accuracy column per OOD table (fractions), metadata.

    Models need the ID table and at least one OOD table (every OOD table with ``require_all``); a model missing from
    one OOD table has NaN there, so each ID-vs-OOD pair uses every model evaluated on both (rows at the
    ``resolution`` of :func:`timm_results_table`).
    """
    table = timm_results_table((id_dataset, *ood_datasets), metrics=(metric,), paths=paths,
                               include_test_models=include_test_models, resolution=resolution)
    wide = table.pivot_table(index="backbone", columns="dataset", values="value", aggfunc="first")
    wide = wide.dropna(subset=[id_dataset]).dropna(subset=list(ood_datasets), how="any" if require_all else "all")
    wide = wide.rename(columns={id_dataset: "id_acc"})
    wide.columns.name = None
    meta_cols = ["backbone", *METADATA_COLUMNS, "pretrain_data_group", "tag", "img_size"]
    meta = table[meta_cols].drop_duplicates("backbone").set_index("backbone")
    return wide.join(meta).reset_index()


# --------------------------------------------------------------------------------------------------------------------
# BoB catalog and retrieval snapshot
# --------------------------------------------------------------------------------------------------------------------

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
    datasets get short names (:data:`RETRIEVAL_DATASETS`); protocol ``frozen``; MRR as a fraction. Rows that quote
    the paper's ranks are not results (see :func:`paper_retrieval_ranks`); other metrics exist for only five pairs and
    are dropped unless named in ``metrics``.
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
    return conform(table.drop(columns=["catalog_name"]))


def paper_retrieval_ranks(path: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """The ranks the paper's text quotes (snapshot rows with metric ``rank among BoB backbones``)."""
    raw = pd.read_csv(resolve_public("bob_retrieval_snapshot", path), dtype=str)
    rows = raw[raw["metric"].str.startswith("rank")]
    return pd.DataFrame({
        "paper_name": rows["backbone"], "catalog_name": rows["backbone_csv_name"], "task": rows["task"],
        "rank": pd.to_numeric(rows["value"], errors="coerce"), "evidence": rows["value_type"],
    }).reset_index(drop=True)


# --------------------------------------------------------------------------------------------------------------------
# Any table -> the schema
# --------------------------------------------------------------------------------------------------------------------

def conform(table: pd.DataFrame, *, keep_extra: Iterable[str] | bool = True) -> pd.DataFrame:
    """Check and coerce a results table to :data:`RESULTS_SCHEMA`.

    Required columns must exist (``ValueError`` names the missing ones); ``run_key``, ``seed``, ``setting``,
    ``higher_is_better`` and the metadata columns are derived or filled (NaN) when absent. ``keep_extra``: ``True``
    keeps every other column after the schema's, an iterable keeps those named, ``False`` drops them.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"results table lacks required columns {missing}; has {list(table.columns)}")
    out = table.copy()
    if "seed" not in out:
        out["seed"] = 0
    if "setting" not in out:
        out["setting"] = out["task"].astype(str) + "/" + out["dataset"].astype(str) + "/" + out["protocol"].astype(str)
    if "run_key" not in out:
        out["run_key"] = (out["backbone"].astype(str) + ":" + out["setting"].astype(str) + ":"
                          + out["seed"].astype(str))
    if "higher_is_better" not in out:
        from bobkit.results.table import higher_is_better

        out["higher_is_better"] = out["metric"].map(higher_is_better)
    for column in METADATA_COLUMNS:
        if column not in out:
            out[column] = out["backbone"] if column == "display_name" else np.nan
    out["display_name"] = out["display_name"].fillna(out["backbone"])
    out["seed"] = pd.to_numeric(out["seed"], errors="coerce").fillna(0).astype("int64")
    for column in ("value", "pretrain_images", "params_millions"):
        out[column] = pd.to_numeric(out[column], errors="coerce").astype("float64")
    out["higher_is_better"] = out["higher_is_better"].astype(bool)
    for column, dtype in RESULTS_SCHEMA.items():
        if dtype == "str":
            out[column] = out[column].astype(object).where(out[column].notna(), None)
            out[column] = out[column].map(lambda v: v if v is None else str(v))
    if keep_extra is True:
        extra = [c for c in out.columns if c not in RESULTS_SCHEMA]
    elif keep_extra is False:
        extra = []
    else:
        extra = [c for c in keep_extra if c in out.columns and c not in RESULTS_SCHEMA]
    return out[RESULTS_COLUMNS + extra].reset_index(drop=True)


def read_results(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A results table from parquet or CSV, conformed to the schema."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no results table at {path}")
    table = pd.read_csv(path) if path.suffix.lower() in {".csv", ".txt"} else pd.read_parquet(path)
    return conform(table)


def load_reference(name: str = "bob_retrieval") -> pd.DataFrame:
    """A public reference table in the results schema: ``bob_retrieval`` (the BoB snapshot) or ``timm``
    (ImageNet, ImageNet-R, ImageNet-A top-1). A path to a results file is also accepted."""
    if name == "bob_retrieval":
        return retrieval_snapshot_table()
    if name == "timm":
        return timm_results_table()
    if Path(str(name)).suffix in {".parquet", ".csv"}:
        return read_results(name)
    raise ValueError(f"unknown reference table {name!r}; choose from {list(REFERENCES)} or give a results file")


def load_table(results_path: str | os.PathLike[str] | None = None, reference: str = "bob_retrieval") -> pd.DataFrame:
    """What a notebook analyses: the results table at ``results_path``, or the public ``reference`` when None."""
    if results_path is None or str(results_path) == "":
        table = load_reference(reference)
        table.attrs["source"] = f"public reference table {reference!r}"
    else:
        table = read_results(results_path)
        table.attrs["source"] = str(results_path)
    return table


def filter_table(
    table: pd.DataFrame,
    *,
    tasks: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    protocols: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    backbones: Sequence[str] | None = None,
    families: Sequence[str] | None = None,
    method_kinds: Sequence[str] | None = None,
    min_params: float | None = None,
    max_params: float | None = None,
    exclude_random: bool = False,
) -> pd.DataFrame:
    """Rows of ``table`` matching every given filter (``None`` = no filter). Parameter bounds are in millions;
    rows with unknown parameter counts are dropped when a bound is set."""
    mask = pd.Series(True, index=table.index)
    for column, allowed in (("task", tasks), ("dataset", datasets), ("protocol", protocols), ("metric", metrics),
                            ("backbone", backbones), ("family", families), ("method_kind", method_kinds)):
        if allowed is not None:
            allowed = [allowed] if isinstance(allowed, str) else list(allowed)
            mask &= table[column].isin(allowed)
    if min_params is not None:
        mask &= table["params_millions"] >= min_params
    if max_params is not None:
        mask &= table["params_millions"] < max_params
    if exclude_random:
        mask &= table["method_kind"] != "random"
    out = table[mask].reset_index(drop=True)
    out.attrs = dict(table.attrs)
    return out
