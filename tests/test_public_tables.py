"""bobkit.analysis.public_tables: timm tag parsing and the public tables in the results schema."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bobkit.analysis import public_tables as pt

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"public tables not found at {DATA_DIR}")


@pytest.fixture(autouse=True)
def _data_dir(monkeypatch):
    monkeypatch.setenv("BOB_DATA_DIR", str(DATA_DIR))


@pytest.mark.parametrize("name, family, data, images, method, kind", [
    ("convnext_base.fb_in22k_ft_in1k", "CNN", "in22k", 14.2e6, "supervised", "supervised"),
    ("vit_base_patch16_clip_224.laion2b_ft_in12k_in1k", "ViT", "laion2b", 2.32e9, "CLIP", "vision-language"),
    ("vit_base_patch16_clip_224.laion2b", "ViT", "laion2b", 2.32e9, "CLIP", "vision-language"),
    ("convnext_large_mlp.clip_laion2b_augreg_ft_in1k", "CNN", "laion2b", 2.32e9, "CLIP", "vision-language"),
    ("vit_base_patch16_224.mae", "ViT", "in1k", 1.281167e6, "MAE", "SSL"),
    ("vit_small_patch16_224.dino", "ViT", "in1k", 1.281167e6, "DINO", "SSL"),
    ("resnet50.fb_swsl_ig1b_ft_in1k", "CNN", "ig1b", 940e6, "semi-weakly supervised", "supervised"),
    ("resnet50.fb_ssl_yfcc100m_ft_in1k", "CNN", "yfcc100m", 100e6, "semi-supervised", "supervised"),
    ("tf_efficientnet_b7.ns_jft_in1k", "CNN", "jft300m", 300e6, "noisy student", "supervised"),
    ("swinv2_base_window12to16_192to256.ms_in22k_ft_in1k", "hierarchical-ViT", "in22k", 14.2e6, "supervised",
     "supervised"),
    ("convnextv2_base.fcmae_ft_in22k_in1k", "CNN", "in22k", 14.2e6, "FCMAE", "SSL"),
    ("convnextv2_tiny.fcmae_ft_in1k", "CNN", "in1k", 1.281167e6, "FCMAE", "SSL"),
    ("eva02_base_patch14_448.mim_in22k_ft_in22k_in1k", "ViT", "in22k", 14.2e6, "MIM", "SSL"),
    ("beit_base_patch16_224.in22k_ft_in22k_in1k", "ViT", "in22k", 14.2e6, "BEiT (MIM)", "SSL"),
    ("resnet50.a1_in1k", "CNN", "in1k", 1.281167e6, "supervised", "supervised"),
    ("deit_base_distilled_patch16_224.fb_in1k", "ViT", "in1k", 1.281167e6, "supervised", "supervised"),
    ("regnety_320.seer_ft_in1k", "CNN", "ig1b", 940e6, "SEER (SwAV)", "SSL"),
    ("coatnet_0_rw_224.sw_in1k", "other", "in1k", 1.281167e6, "supervised", "supervised"),
    ("mixer_b16_224.goog_in21k_ft_in1k", "other", "in21k", 14.2e6, "supervised", "supervised"),
])
def test_parse_timm_name(name, family, data, images, method, kind):
    info = pt.parse_timm_name(name)
    assert info["architecture"] == name.split(".")[0]
    assert info["family"] == family
    assert info["pretrain_data"] == data
    assert info["pretrain_images"] == pytest.approx(images)
    assert info["method"] == method
    assert info["method_kind"] == kind


def test_unknown_clip_data_is_unknown_not_guessed():
    info = pt.parse_timm_name("eva_giant_patch14_224.clip_ft_in1k")
    assert info["method_kind"] == "vision-language" and info["pretrain_data"] == "unknown"
    assert math.isnan(info["pretrain_images"])


@needs_data
def test_every_timm_architecture_has_an_explicit_family_rule():
    models = pt.load_timm_results("imagenet")["model"]
    archs = sorted({m.split(".")[0] for m in models if not m.startswith("test_")})
    unmatched = [a for a in archs if not any(re.match(p, a) for p, _ in pt.FAMILY_RULES)]
    assert unmatched == []


@needs_data
def test_timm_results_table_schema():
    table = pt.timm_results_table()
    assert list(table.columns[: len(pt.RESULTS_COLUMNS)]) == pt.RESULTS_COLUMNS
    assert set(table["dataset"]) == {"imagenet", "imagenet_r", "imagenet_a"}
    assert set(table["task"]) == {"classification", "ood"}
    assert table["value"].between(0, 1).all()
    assert not table["backbone"].str.startswith("test_").any()
    assert table["seed"].dtype == np.int64 and table["higher_is_better"].dtype == bool
    assert table["run_key"].is_unique
    per_model = table.drop_duplicates("backbone").set_index("backbone")
    assert per_model["params_millions"].notna().all()
    # thousands separators in timm's param_count ("1,014.45") are parsed
    assert per_model["params_millions"].max() > 1000
    assert set(per_model["family"]) <= {"CNN", "ViT", "hierarchical-ViT", "other"}
    # models listed at two test resolutions keep their largest one, in every table
    raw = pt.load_timm_results("imagenet")
    raw = raw[raw["model"] == "resnet50.a1_in1k"]
    assert len(raw) == 2
    best = raw.loc[raw["img_size"].idxmax()]
    row = table[(table["backbone"] == "resnet50.a1_in1k") & (table["dataset"] == "imagenet")]
    assert len(row) == 1
    assert row["value"].iloc[0] == pytest.approx(best["top1"] / 100)
    assert row["img_size"].iloc[0] == best["img_size"]
    assert per_model.loc["resnet50.a1_in1k", "params_millions"] == pytest.approx(best["param_count"])
    small = pt.timm_results_table(("imagenet",), resolution="min")
    assert small.set_index("backbone").loc["resnet50.a1_in1k", "img_size"] == raw["img_size"].min()


@needs_data
def test_timm_wide_inner_join():
    wide = pt.timm_wide()
    assert {"id_acc", "imagenet_r", "imagenet_a", "family", "pretrain_data_group"} <= set(wide.columns)
    assert wide["backbone"].is_unique and wide["id_acc"].notna().all()
    assert len(wide) > 1000
    # resnet50.tv_in1k has no ImageNet-A row: kept with NaN there, dropped when every table is required
    assert np.isnan(wide.set_index("backbone").loc["resnet50.tv_in1k", "imagenet_a"])
    strict = pt.timm_wide(require_all=True)
    assert "resnet50.tv_in1k" not in set(strict["backbone"]) and strict[["imagenet_r", "imagenet_a"]].notna().all().all()


@needs_data
def test_retrieval_snapshot_table():
    table = pt.retrieval_snapshot_table()
    assert table["backbone"].nunique() == 33
    assert set(table["dataset"]) == set(pt.RETRIEVAL_DATASETS.values())
    assert len(table) == 33 * 8 and (table["metric"] == "mrr").all()
    assert table["value"].between(0, 1).all()
    meta = table.drop_duplicates("backbone").set_index("backbone")
    assert meta["family"].notna().all() and meta["params_millions"].notna().all()
    assert meta.loc["timm-convnext_base_in22ft1k", "pretrain_data"] == "IN-21k"
    assert meta.loc["timm-convnext_base_in22ft1k", "pretrain_images"] == pytest.approx(14.2e6)
    assert meta.loc["clip-vit_base_patch16_224", "method_kind"] == "vision-language"
    assert meta.loc["midas-swin2_tiny_256", "method_kind"] == "depth"
    assert meta.loc["sscd-resnet50_im", "params_millions"] == pytest.approx(23.51)  # filled from ResNet-50
    ranks = pt.paper_retrieval_ranks()
    assert (ranks["rank"] >= 1).all() and len(ranks) == 12


@needs_data
def test_backbones_catalog():
    catalog = pt.load_backbones_catalog()
    assert set(catalog["family"]) <= {"CNN", "ViT", "hierarchical-ViT", "other"}
    assert set(catalog["method_kind"]) <= {"supervised", "SSL", "vision-language", "generative", "depth", "random"}
    assert (catalog.loc[catalog["method_kind"] == "random", "pretrain_images"] == 0).all()


def test_conform_fills_and_checks(tmp_path):
    minimal = pd.DataFrame({"task": ["classification"], "backbone": ["x"], "dataset": ["d"], "protocol": ["lp"],
                            "metric": ["ece"], "value": ["0.1"]})
    out = pt.conform(minimal)
    assert list(out.columns) == pt.RESULTS_COLUMNS
    assert not out["higher_is_better"].iloc[0]  # ece: lower is better
    assert out["setting"].iloc[0] == "classification/d/lp" and out["display_name"].iloc[0] == "x"
    assert out["value"].iloc[0] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="value"):
        pt.conform(minimal.drop(columns=["value"]))
    path = tmp_path / "r.csv"
    out.to_csv(path, index=False)
    loaded = pt.load_table(path)
    assert loaded.attrs["source"] == str(path) and len(loaded) == 1
    with pytest.raises(FileNotFoundError):
        pt.load_table(tmp_path / "missing.parquet")


def test_filter_table():
    table = pt.conform(pd.DataFrame({
        "task": ["a", "b", "a"], "backbone": ["x", "y", "z"], "dataset": ["d"] * 3, "protocol": ["p"] * 3,
        "metric": ["top1"] * 3, "value": [1.0, 2.0, 3.0], "params_millions": [10.0, 50.0, np.nan],
        "method_kind": ["supervised", "random", "SSL"],
    }))
    assert list(pt.filter_table(table, tasks=["a"])["backbone"]) == ["x", "z"]
    assert list(pt.filter_table(table, max_params=30)["backbone"]) == ["x"]
    assert list(pt.filter_table(table, exclude_random=True)["backbone"]) == ["x", "z"]
    assert list(pt.filter_table(table, tasks="b")["backbone"]) == ["y"]


@needs_data
def test_resolve_public_explicit_path_and_data_dir(tmp_path):
    path = pt.resolve_public("bob_backbones_catalog")
    assert path.name == "backbones.csv"
    assert pt.resolve_public("x", path) == path
    with pytest.raises(FileNotFoundError):
        pt.resolve_public("x", tmp_path / "nope.csv")
