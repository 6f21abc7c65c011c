"""bobkit.analysis.public (timm tag parsing, timm's tables, the BoB tables) and bobkit.analysis.load: the public
tables in the results schema. Every table ships inside bobkit: these tests run with no data folder at all."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bobkit.analysis import load
from bobkit.analysis.public import bob, resolve_public, tags, timm
from bobkit.results.schema import COLUMNS, conform

REFERENCE = Path(__file__).resolve().parents[1] / "bobkit" / "reference"


@pytest.fixture(autouse=True)
def _no_data_dir(monkeypatch, tmp_path):
    """A fresh clone: no BOB_DATA_DIR, an empty data cache; the bundled copies must be found."""
    monkeypatch.delenv("BOB_DATA_DIR", raising=False)
    monkeypatch.setenv("BOB_CACHE_DIR", str(tmp_path / "cache"))


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
    info = tags.parse_timm_name(name)
    assert info["architecture"] == name.split(".")[0]
    assert info["family"] == family
    assert info["pretrain_data"] == data
    assert info["pretrain_images"] == pytest.approx(images)
    assert info["method"] == method
    assert info["method_kind"] == kind


def test_unknown_clip_data_is_unknown_not_guessed():
    info = tags.parse_timm_name("eva_giant_patch14_224.clip_ft_in1k")
    assert info["method_kind"] == "vision-language" and info["pretrain_data"] == "unknown"
    assert math.isnan(info["pretrain_images"])


def test_every_timm_architecture_has_an_explicit_family_rule():
    models = timm.load_timm_results("imagenet")["model"]
    archs = sorted({m.split(".")[0] for m in models if not m.startswith("test_")})
    unmatched = [a for a in archs if not any(re.match(p, a) for p, _ in tags.FAMILY_RULES)]
    assert unmatched == []


def test_timm_results_table_schema():
    table = timm.timm_results_table()
    assert list(table.columns[: len(COLUMNS)]) == list(COLUMNS)
    # ImageNet and every OOD table by default
    assert set(table["dataset"]) == {"imagenet", "imagenet_v2", "imagenet_sketch", "imagenet_r", "imagenet_a"}
    assert set(table["task"]) == {"classification", "ood"}
    assert table["value"].between(0, 1).all()
    # each top-1 carries its binomial standard error over the table's test images
    a = table[table["dataset"] == "imagenet_a"]
    assert (a["n_items"] == 7500).all()
    assert np.allclose(a["stderr"], np.sqrt(a["value"] * (1 - a["value"]) / 7500))
    assert (table.loc[table["dataset"] == "imagenet", "n_items"] == 50000).all()
    assert not table["backbone"].str.startswith("test_").any()
    assert table["seed"].dtype == np.int64 and table["higher_is_better"].dtype == bool
    assert table["run_key"].is_unique
    per_model = table.drop_duplicates("backbone").set_index("backbone")
    assert per_model["params_millions"].notna().all()
    # thousands separators in timm's param_count ("1,014.45") are parsed
    assert per_model["params_millions"].max() > 1000
    assert set(per_model["family"]) <= {"CNN", "ViT", "hierarchical-ViT", "other"}
    # models listed at two test resolutions keep their largest one, in every table
    raw = timm.load_timm_results("imagenet")
    raw = raw[raw["model"] == "resnet50.a1_in1k"]
    assert len(raw) == 2
    best = raw.loc[raw["img_size"].idxmax()]
    row = table[(table["backbone"] == "resnet50.a1_in1k") & (table["dataset"] == "imagenet")]
    assert len(row) == 1
    assert row["value"].iloc[0] == pytest.approx(best["top1"] / 100)
    assert row["img_size"].iloc[0] == best["img_size"]
    assert per_model.loc["resnet50.a1_in1k", "params_millions"] == pytest.approx(best["param_count"])
    small = timm.timm_results_table(("imagenet",), resolution="min")
    assert small.set_index("backbone").loc["resnet50.a1_in1k", "img_size"] == raw["img_size"].min()


def test_timm_wide_inner_join():
    wide = timm.timm_wide()
    assert {"id_acc", "imagenet_r", "imagenet_a", "imagenet_sketch", "imagenet_v2", "family",
            "pretrain_data_group"} <= set(wide.columns)
    assert wide["backbone"].is_unique and wide["id_acc"].notna().all()
    assert len(wide) > 1000
    # resnet50.tv_in1k has no ImageNet-A row: kept with NaN there, dropped when every table is required
    assert np.isnan(wide.set_index("backbone").loc["resnet50.tv_in1k", "imagenet_a"])
    strict = timm.timm_wide(require_all=True)
    assert "resnet50.tv_in1k" not in set(strict["backbone"])
    assert strict[["imagenet_r", "imagenet_a", "imagenet_sketch", "imagenet_v2"]].notna().all().all()


def test_retrieval_snapshot_table():
    table = bob.retrieval_snapshot_table()
    assert table["backbone"].nunique() == 33
    assert set(table["dataset"]) == set(bob.RETRIEVAL_DATASETS.values())
    assert len(table) == 33 * 8
    # the paper code's MRR on revisited Oxford/Paris is its own quantity: named mrr_bob, never bobkit's mrr
    oxford_paris = table["dataset"].isin(["roxford5k", "rparis6k"])
    assert (table.loc[oxford_paris, "metric"] == "mrr_bob").all() and oxford_paris.sum() == 66
    assert (table.loc[~oxford_paris, "metric"] == "mrr").all()
    # and its precision@k there is mP@k
    wider = bob.retrieval_snapshot_table(metrics=("mrr", "precision@1", "precision@5"))
    oxford = wider[wider["dataset"] == "roxford5k"]
    assert {"mp@1", "mp@5"} <= set(oxford["metric"]) and not oxford["metric"].str.startswith("precision").any()
    assert table["value"].between(0, 1).all()
    meta = table.drop_duplicates("backbone").set_index("backbone")
    assert meta["family"].notna().all() and meta["params_millions"].notna().all()
    assert meta.loc["timm-convnext_base_in22ft1k", "pretrain_data"] == "IN-21k"
    assert meta.loc["timm-convnext_base_in22ft1k", "pretrain_images"] == pytest.approx(14.2e6)
    assert meta.loc["clip-vit_base_patch16_224", "method_kind"] == "vision-language"
    assert meta.loc["midas-swin2_tiny_256", "method_kind"] == "depth"
    assert meta.loc["sscd-resnet50_im", "params_millions"] == pytest.approx(23.51)  # filled from ResNet-50
    ranks = bob.paper_retrieval_ranks()
    assert (ranks["rank"] >= 1).all() and len(ranks) == 12


def test_backbones_catalog():
    catalog = bob.load_backbones_catalog()
    assert set(catalog["family"]) <= {"CNN", "ViT", "hierarchical-ViT", "other"}
    assert set(catalog["method_kind"]) <= {"supervised", "SSL", "vision-language", "generative", "depth", "random"}
    assert (catalog.loc[catalog["method_kind"] == "random", "pretrain_images"] == 0).all()


def test_conform_fills_and_checks(tmp_path):
    minimal = pd.DataFrame({"task": ["classification"], "backbone": ["x"], "dataset": ["d"], "protocol": ["lp"],
                            "metric": ["ece"], "value": ["0.1"]})
    out = conform(minimal)
    assert list(out.columns) == list(COLUMNS)
    assert out["setting_params"].iloc[0] == "{}" and len(out["setting_id"].iloc[0]) == 12
    assert not out["higher_is_better"].iloc[0]  # ece: lower is better
    assert out["setting"].iloc[0] == "classification/d/lp" and out["display_name"].iloc[0] == "x"
    assert out["value"].iloc[0] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="value"):
        conform(minimal.drop(columns=["value"]))
    path = tmp_path / "r.csv"
    out.to_csv(path, index=False)
    loaded = load.load_table(path)
    assert loaded.attrs["source"] == str(path) and len(loaded) == 1
    with pytest.raises(FileNotFoundError):
        load.load_table(tmp_path / "missing.parquet")


def test_filter_table():
    table = conform(pd.DataFrame({
        "task": ["a", "b", "a"], "backbone": ["x", "y", "z"], "dataset": ["d"] * 3, "protocol": ["p"] * 3,
        "metric": ["top1"] * 3, "value": [1.0, 2.0, 3.0], "params_millions": [10.0, 50.0, np.nan],
        "method_kind": ["supervised", "random", "SSL"],
    }))
    assert list(load.filter_table(table, tasks=["a"])["backbone"]) == ["x", "z"]
    assert list(load.filter_table(table, max_params=30)["backbone"]) == ["x"]
    assert list(load.filter_table(table, exclude_random=True)["backbone"]) == ["x", "z"]
    assert list(load.filter_table(table, tasks="b")["backbone"]) == ["y"]


def test_resolve_public_explicit_path_and_data_dir(tmp_path):
    path = resolve_public("bob_backbones_catalog")
    assert path.name == "backbones.csv"
    assert resolve_public("x", path) == path
    with pytest.raises(FileNotFoundError):
        resolve_public("x", tmp_path / "nope.csv")


@pytest.mark.parametrize("name, family, data", [
    # SWAG: pretrained weakly supervised on Instagram-3.6B whether fine-tuned (ft) or with a linear classifier (lc)
    ("regnety_1280.swag_lc_in1k", "CNN", "ig3.6b"),
    ("regnety_160.swag_lc_in1k", "CNN", "ig3.6b"),
    ("regnety_320.swag_ft_in1k", "CNN", "ig3.6b"),
    # PaddlePaddle SSLD stage 2 continues from stage 1 on ImageNet-22k
    ("hgnetv2_b0.ssld_stage2_ft_in1k", "CNN", "in22k"),
    ("hgnetv2_b6.ssld_stage2_ft_in1k", "CNN", "in22k"),
    ("hgnetv2_b0.ssld_stage1_in22k_in1k", "CNN", "in22k"),
    ("hgnet_base.ssld_in1k", "CNN", "in1k"),
    # ECA variants of BoTNet / HaloNet are attention hybrids like BoTNet / HaloNet
    ("eca_botnext26ts_256.c1_in1k", "other", "in1k"),
    ("eca_halonext26ts.c1_in1k", "other", "in1k"),
    ("botnet26t_256.c1_in1k", "other", "in1k"),
    ("halonet26t.a1h_in1k", "other", "in1k"),
    ("eca_resnet33ts.ra2_in1k", "CNN", "in1k"),
])
def test_tag_parser_fixes(name, family, data):
    info = tags.parse_timm_name(name)
    assert info["family"] == family
    assert info["pretrain_data"] == data
    assert info["pretrain_images"] == pytest.approx(tags.DATASET_IMAGES[data])


def test_the_fixed_names_are_in_timms_tables():
    """The tag-parser fixes are about names timm actually publishes."""
    models = set(timm.load_timm_results("imagenet")["model"])
    assert {"regnety_1280.swag_lc_in1k", "hgnetv2_b0.ssld_stage2_ft_in1k", "eca_botnext26ts_256.c1_in1k",
            "eca_halonext26ts.c1_in1k"} <= models
    meta = timm.timm_results_table(("imagenet",)).drop_duplicates("backbone").set_index("backbone")
    swag_lc = meta[meta.index.str.contains(r"\.swag_lc_in1k$")]
    assert len(swag_lc) >= 3 and (swag_lc["pretrain_data"] == "ig3.6b").all()


def test_every_timm_table_ships_inside_bobkit_with_its_licence():
    tables = timm.timm_tables().set_index("dataset")
    assert set(tables.index) == {"imagenet", "imagenet_real", "imagenet_v2", "imagenet_sketch", "imagenet_r",
                                 "imagenet_a", "imagenet_r_clean", "imagenet_a_clean"}
    assert dict(tables["role"]) == {
        "imagenet": "id", "imagenet_real": "id_alt", "imagenet_v2": "ood", "imagenet_sketch": "ood",
        "imagenet_r": "ood", "imagenet_a": "ood", "imagenet_r_clean": "id_clean", "imagenet_a_clean": "id_clean"}
    assert tables.loc["imagenet_r_clean", "clean_subset_of"] == "imagenet_r"
    commit = (REFERENCE / "timm" / "SOURCE_COMMIT").read_text().strip()
    from bobkit.data.manifest import load_manifest, resolve

    manifest = load_manifest()
    for entry in [*tables["entry"], "timm_model_metadata_in1k", "timm_benchmark_infer_gpu",
                  "timm_benchmark_infer_cpu"]:
        path = resolve(entry)  # verifies the sha256
        assert path.parent == REFERENCE / "timm", path
        e = manifest.entry(entry)
        assert e.files[0].url.endswith(f"{commit}/results/{path.name}") and e.download == "direct"
        assert e.size_bytes == path.stat().st_size and e.licence == "Apache-2.0"
    assert "Apache License" in (REFERENCE / "timm" / "LICENSE").read_text()
    assert commit in (REFERENCE / "timm" / "README.md").read_text()


def test_the_list_of_timm_tables_is_data(tmp_path, monkeypatch):
    """Adding a manifest entry adds a table: no code lists them."""
    import shutil

    from bobkit.utils.paths import repo_root

    src = REFERENCE / "timm" / "results-imagenet-a.csv"
    (tmp_path / "data" / "timm-results").mkdir(parents=True)
    shutil.copy(src, tmp_path / "data" / "timm-results" / "results-imagenet-x.csv")
    import hashlib

    entry = f"""
- name: timm_results_imagenet_x
  kind: reference_table
  tasks: [ood]
  description: a test copy of ImageNet-A under another name
  url: https://example.org/results-imagenet-x.csv
  licence: Apache-2.0
  download: direct
  layout: timm-results/results-imagenet-x.csv
  filename: timm-results/results-imagenet-x.csv
  sha256: {hashlib.sha256(src.read_bytes()).hexdigest()}
  size_bytes: {src.stat().st_size}
  reference: {{group: timm_results, role: ood, dataset: imagenet_x, task: ood, n_items: 7500}}
"""
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text((repo_root() / "data_manifest.yaml").read_text().rstrip() + "\n" + entry)
    monkeypatch.setenv("BOB_DATA_MANIFEST", str(manifest))
    monkeypatch.setenv("BOB_DATA_DIR", str(tmp_path / "data"))
    assert "imagenet_x" in timm.datasets_with_role("ood")
    wide = timm.timm_wide()
    assert np.allclose(wide["imagenet_x"].dropna(), wide.loc[wide["imagenet_x"].notna(), "imagenet_a"])


def test_unknown_timm_table_names_the_known_ones():
    with pytest.raises(ValueError, match="imagenet_sketch"):
        timm.load_timm_results("imagenet_skech")


def test_imagenet_r_and_a_are_fitted_against_imagenet_on_their_200_classes():
    """Taori et al. fit ImageNet-R and -A against class-subsampled ImageNet accuracy; timm publishes it (the clean
    tables), so the trend uses it (the 1000-class slope on R was 0.77 on probit axes, 0.93 on the 200 classes)."""
    from bobkit.analysis.public import timm as timm_tables

    assert timm_tables.id_reference("imagenet_r") == "imagenet_r_clean"
    assert timm_tables.id_reference("imagenet_a") == "imagenet_a_clean"
    assert timm_tables.id_reference("imagenet_sketch") == "imagenet"
    assert timm_tables.id_label("imagenet_r_clean") == "ImageNet on imagenet_r's 200 classes"
    query = "pretrain_data in ['in1k'] and method_kind in ['supervised']"
    er, trend, frame = timm_tables.effective_robustness("imagenet_r", baseline=query, scale="probit")
    assert trend["id_reference"] == "imagenet_r_clean" and trend["scale"] == "probit"
    clean = timm_tables.timm_wide(["imagenet_r"], id_dataset="imagenet_r_clean")
    assert frame["id_acc"].tolist() == clean["id_acc"].tolist() and er.index.tolist() == clean["backbone"].tolist()
    assert trend["slope"] == pytest.approx(0.93, abs=0.02)
