"""The analysis notebooks are their own source: edited as notebooks (stable cell ids, one parameters cell, no outputs
committed), executed here with tiny parameters on the public tables (a fresh clone: no download, no data folder), on
a synthetic results table, on a demo-like table and on a table built before the schema columns existed; the tests
assert on what each recorded in ``summary.json``."""

from __future__ import annotations

import json
import os
import re

import nbformat
import numpy as np
import pandas as pd
import pytest
from fixtures_analysis import (
    NOTEBOOK_DIR,
    exec_notebook_inprocess,
    make_minimal_results,
    make_results,
    run_notebooks,
    write_table,
)

from bobkit.analysis.findings import load_findings
from bobkit.analysis.public.timm import datasets_with_role, load_timm_results
from bobkit.results.schema import COLUMNS

EXPECTED = ["01_leaderboard", "02_task_correlation", "03_scale", "04_ssl_vs_supervised",
            "05_finetune_vs_linear_probe", "06_robustness_calibration", "07_public_tables",
            "08_where_does_my_backbone_rank", "09_transferability"]
OOD_SETS = ["imagenet_v2", "imagenet_sketch", "imagenet_r", "imagenet_a"]


@pytest.fixture(autouse=True)
def _fresh_clone(monkeypatch, tmp_path):
    """No BOB_DATA_DIR and an empty data cache, as on a fresh clone: the public tables must come from bobkit."""
    monkeypatch.delenv("BOB_DATA_DIR", raising=False)
    monkeypatch.setenv("BOB_CACHE_DIR", str(tmp_path / "cache"))


def test_the_analysis_notebooks_exist():
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_structure(name):
    nb = nbformat.read(str(NOTEBOOK_DIR / f"{name}.ipynb"), as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    ids = [c.get("id") for c in nb.cells]
    assert all(ids) and len(set(ids)) == len(ids) and all(i.startswith(name[:2] + "-") for i in ids), ids
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    params = tagged[0].source
    for key in ("results_path = None", "reference = ", "figures_dir = ", "n_boot = ", "tasks = "):
        assert key in params, key
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "commit without outputs"
    assert nb.metadata["kernelspec"]["name"] == "python3"
    # thin: no function or class definitions; the analysis modules do the work
    assert not any(line.lstrip().startswith(("def ", "class ")) for c in code for line in c.source.splitlines())
    text = " ".join(c.source for c in nb.cells)
    assert "paper" in text.lower()
    # the paper's values come from the project's findings file, never from a developer document
    assert "DESIGN.md" not in text and "../shared" not in text
    assert not re.search(r"0\.58|0\.35|0\.72|0\.33", " ".join(c.source for c in nb.cells if c.cell_type == "markdown"))
    # no module that was split away is imported
    assert not re.search(r"analysis\.stats|analysis import .*\b(stats|public_tables)\b|analysis\.public_tables", text)


def test_every_finding_is_answered_by_a_notebook():
    notebooks = {n: (NOTEBOOK_DIR / f"{n}.ipynb").read_text() for n in EXPECTED}
    for finding_id, item in load_findings()["findings"].items():
        assert item["notebook"] in notebooks
        assert f'"{finding_id}"' in notebooks[item["notebook"]].replace('\\"', '"'), finding_id


def _summary(figures) -> dict:
    return json.loads((figures / "summary.json").read_text())


@pytest.mark.notebook
def test_public_tables_notebook_on_a_fresh_clone(public_runs):
    """07 with no download and no BOB_DATA_DIR: ID-vs-OOD trends and effective robustness for V2, Sketch, R and A,
    ReaL as a second ID reference, the 200-class clean subsets. (The run of :func:`public_runs`: 07 under
    papermill with no results table, no BOB_DATA_DIR and an empty data cache.)"""
    run = public_runs["07_public_tables"]
    assert run["error"] is None, run["error"]
    figures = run["figures_dir"]
    summary = _summary(figures)
    assert set(summary["skipped"]) == {"ID vs OOD in your table"}, summary["skipped"]
    assert summary["ood_datasets"] == OOD_SETS == datasets_with_role("ood")
    assert set(summary["id_ood_correlations"]) == set(OOD_SETS)
    assert summary["effective_robustness_datasets"] == sorted(OOD_SETS)
    for ds in OOD_SETS:
        trend = summary[f"trend_{ds}"]
        assert trend["n"] > 900 and trend["slope_low"] <= trend["slope"] <= trend["slope_high"]
        # Taori et al.'s axes, and R and A against ImageNet on their own 200 classes
        assert trend["scale"] == "logit"
        assert trend["id_reference"] == (f"{ds}_clean" if ds in ("imagenet_r", "imagenet_a") else "imagenet")
        assert f"trend_{ds}.png" in summary["figures"]
        assert f"effective_robustness_{ds}_by_pretrain_data_group.csv" in summary["tables"]
    assert set(summary["id_ood_correlations_second"]) == set(OOD_SETS)
    assert "id_ood_clean_subsets.csv" in summary["tables"]
    # the stated comparison ViT vs CNN carries an interval on the difference, over architectures
    diff = summary["timm_vit_minus_cnn_params"]
    assert diff["ci_low"] <= diff["diff"] <= diff["ci_high"] and diff["n_a"] > 100 and diff["n_b"] > 100
    groups = {row["group"]: row for row in summary["timm_spearman_params"]}
    assert groups["all"]["n_clusters"] < groups["all"]["n"]  # clusters: architectures, not tags
    # effective robustness per group: interval over architectures
    er = pd.read_csv(figures / "effective_robustness_imagenet_r_by_pretrain_data_group.csv")
    assert (er["n_clusters"] <= er["n"]).all() and (er["ci_low"].dropna() <= er["mean"][er["ci_low"].notna()]).all()


def test_ood_vs_id_correlation_matches_pandas(tmp_path):
    """The notebook's OOD-vs-ID correlations equal an independent pandas computation from the bundled CSVs."""
    figures = tmp_path / "figures"
    exec_notebook_inprocess("07_public_tables", {"figures_dir": str(figures), "n_boot": 10, "retrieval": False,
                                                 "group_by": []})
    computed = _summary(figures)["id_ood_correlations"]
    files = {"imagenet": "results-imagenet.csv", "imagenet_r": "results-imagenet-r.csv",
             "imagenet_a": "results-imagenet-a.csv", "imagenet_sketch": "results-sketch.csv",
             "imagenet_v2": "results-imagenetv2-matched-frequency.csv"}
    root = NOTEBOOK_DIR.parents[1] / "bobkit" / "reference" / "timm"
    tables = {}
    for ds, file in files.items():
        raw = pd.read_csv(root / file, thousands=",")
        raw = raw[~raw["model"].str.startswith("test_")]
        raw = raw.sort_values("img_size").groupby("model").tail(1)  # two test resolutions: keep the largest
        tables[ds] = raw.set_index("model")["top1"] / 100
    for ood in OOD_SETS:
        pair = pd.concat([tables["imagenet"].rename("id"), tables[ood].rename("ood")], axis=1, join="inner")
        got = computed[ood]
        assert got["n"] == len(pair)
        assert got["pearson"] == pytest.approx(pair["id"].corr(pair["ood"]), abs=1e-9)
        assert got["spearman"] == pytest.approx(pair["id"].corr(pair["ood"], method="spearman"), abs=1e-9)
        assert 0.5 < got["pearson"] < 1.0
    assert len(load_timm_results("imagenet_sketch")) == len(pd.read_csv(root / files["imagenet_sketch"]))


def _old_build() -> pd.DataFrame:
    """A results table written before the schema columns (setting_id, stderr, ...) existed."""
    old = make_minimal_results()
    return old.drop(columns=["setting_id", "setting_params", "stderr", "n_items", "device", "batch_size_used"])


@pytest.mark.notebook
@pytest.mark.parametrize("table_kind", ["minimal", "old_build"])
@pytest.mark.parametrize("name", EXPECTED)
def test_degrades_gracefully_on_a_demo_like_table(name, table_kind, tmp_path, capsys):
    """One task, one protocol, one seed, one family, no robustness rows: sections that need more become notes, and
    findings the table cannot show say so."""
    table = make_minimal_results() if table_kind == "minimal" else _old_build()
    assert table_kind == "minimal" or not set(COLUMNS) <= set(table.columns)
    path = write_table(table, tmp_path / "results.parquet")
    figures = tmp_path / "figures"
    exec_notebook_inprocess(name, {"results_path": str(path), "figures_dir": str(figures), "n_boot": 20})
    summary = _summary(figures)
    assert summary["n_backbones"] == 3
    expected_skips = {
        "02_task_correlation": "Task-level correlation",
        "05_finetune_vs_linear_probe": "Fine-tune vs linear probe",
        "06_robustness_calibration": "Robustness vs accuracy",
    }
    if name in expected_skips:
        assert expected_skips[name] in summary["skipped"]
        assert "is skipped" in capsys.readouterr().out
    cannot = {"01_leaderboard": ["top_overall", "top_small"], "02_task_correlation": ["task_correlation"],
              "03_scale": ["scale_params", "scale_data"], "05_finetune_vs_linear_probe": ["finetune_vs_linear_probe"],
              "06_robustness_calibration": ["ood_tracks_id", "calibration_tracks_accuracy"]}
    for finding_id in cannot.get(name, []):
        entry = summary["findings"][finding_id]
        assert entry["shown"] is False and entry["statement"].startswith("This table cannot show"), entry
        assert entry["reason"] and entry["reason"] in entry["statement"]  # what the report's overview shows
    if name == "03_scale":
        # one family and three pretrained CNNs: no per-family correlation is shown as if it answered the paper
        assert "spearman_params" not in summary
        assert any("cannot show" in h and "ViT" in h for h in summary["headlines"])


@pytest.mark.notebook
@pytest.mark.parametrize("name", ["01_leaderboard", "08_where_does_my_backbone_rank"])
def test_table_strings_are_escaped_in_what_notebooks_show(name, tmp_path, capsys):
    evil = "<img src=x onerror=alert(1)>"
    table = make_results(seeds=(0,), backbones=5)
    table.loc[table["backbone"] == table["backbone"].iloc[0], "display_name"] = evil
    path = write_table(table, tmp_path / "results.parquet")
    figures = tmp_path / "figures"
    exec_notebook_inprocess(name, {"results_path": str(path), "figures_dir": str(figures), "n_boot": 10})
    summary = _summary(figures)
    shown = capsys.readouterr().out
    assert "&lt;img src=x onerror=alert(1)>" in " ".join(summary["headlines"])
    markdown = [line for line in shown.splitlines() if "**" in line or line.startswith(("Top ", "> "))]
    assert markdown and not any("<img" in line for line in markdown)
    assert "<img" not in json.dumps(summary["headlines"]) + json.dumps(summary["findings"])


@pytest.fixture(scope="module")
def public_runs(tmp_path_factory):
    """Every analysis notebook on the public tables alone, as on a fresh clone (see :func:`_fresh_clone`)."""
    out = tmp_path_factory.mktemp("public_runs")
    old = {k: os.environ.pop(k, None) for k in ("BOB_DATA_DIR", "BOB_CACHE_DIR")}
    os.environ["BOB_CACHE_DIR"] = str(out / "cache")
    try:
        return run_notebooks(out, {"results_path": None, "n_boot": 30})
    finally:
        os.environ.pop("BOB_CACHE_DIR")
        os.environ.update({k: v for k, v in old.items() if v is not None})


@pytest.fixture(scope="module")
def synthetic_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic_runs")
    path = write_table(make_results(), out / "results.parquet")
    return run_notebooks(out, {"results_path": str(path), "n_boot": 30})


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("name", EXPECTED)
def test_runs_on_public_tables(public_runs, name):
    run = public_runs[name]
    assert run["error"] is None, run["error"]
    summary = _summary(run["figures_dir"])
    assert summary["notebook"] == name
    if name != "05_finetune_vs_linear_probe":  # the public tables hold one protocol each: 05 only explains that
        assert summary["headlines"] and summary["figures"], summary
    else:
        assert "Fine-tune vs linear probe" in summary["skipped"]


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("name", EXPECTED)
def test_runs_on_synthetic_results(synthetic_runs, name):
    run = synthetic_runs[name]
    assert run["error"] is None, run["error"]
    summary = _summary(run["figures_dir"])
    assert summary["headlines"] and summary["figures"]
    # the synthetic table has every task, protocol and metric: nothing is skipped except placement against the
    # retrieval snapshot (no shared settings) in 08, and in 09 what needs transferability cells and their sidecars
    # (tests/test_transferability_analysis.py runs 09 on tables that have them)
    allowed = {"Placement among the bob_retrieval reference"} | (
        {"Estimators against the prior", "Estimator cost"} if name == "09_transferability" else set())
    assert set(summary["skipped"]) <= allowed, summary["skipped"]
    for finding_id, entry in summary["findings"].items():
        assert set(entry) >= {"shown", "statement", "value", "ci_low", "ci_high", "n", "paper_value", "agreement"}
        if entry["shown"] and entry["ci_low"] is not None:
            assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], finding_id


@pytest.mark.notebook
@pytest.mark.slow
def test_synthetic_headline_numbers(synthetic_runs):
    board = pd.read_csv(synthetic_runs["01_leaderboard"]["figures_dir"] / "leaderboard.csv")
    # every 95% interval has width: each cell carries its standard error over 1,000 test items
    assert ((board["score_hi"] - board["score_lo"]) > 0).all()
    assert board.loc[board["baseline"], "backbone"].str.endswith("random_init").all()
    assert board["baseline"].sum() == 2
    top = _summary(synthetic_runs["01_leaderboard"]["figures_dir"])
    assert top["top_gap"]["k"] == 3 and 0 <= top["top_gap"]["p_ahead"] <= 1
    scale = _summary(synthetic_runs["03_scale"]["figures_dir"])
    assert scale["findings"]["scale_params"]["shown"]
    assert {row["group"] for row in scale["spearman_params"]} >= {"CNN", "ViT", "all"}
    assert all(row["n"] <= 12 for row in scale["spearman_params"])  # random-init controls left out
    ssl = _summary(synthetic_runs["04_ssl_vs_supervised"]["figures_dir"])
    assert ssl["paired"]["n"] == 3 and np.isfinite(ssl["paired"]["ci_low"])


@pytest.mark.notebook
@pytest.mark.slow
def test_synthetic_findings_beside_the_papers(synthetic_runs):
    """The findings the report's overview shows are recorded by their notebooks, checked here against an
    independent computation from the notebooks' own CSVs."""
    protocols = synthetic_runs["05_finetune_vs_linear_probe"]["figures_dir"]
    gain = _summary(protocols)["findings"]["finetune_vs_linear_probe"]
    everything = pd.read_csv(protocols / "protocol_pairs.csv")
    pairs = everything[everything["method_kind"] != "random"]  # the paper's claim is about pretrained backbones
    by_family = pd.read_csv(protocols / "delta_by_family.csv").set_index("family")["mean"]
    controls = everything[everything["method_kind"] == "random"]
    assert not controls.empty  # the table beside the finding sets them apart rather than pooling them in
    expected_table = pd.concat([pairs.groupby("family")["delta"].mean(),
                                controls.groupby(controls["family"] + ", random init")["delta"].mean()])
    assert by_family.sort_index().to_dict() == pytest.approx(expected_table.sort_index().to_dict(), abs=1e-9)
    vit_like = pairs["family"].isin(["ViT", "hierarchical-ViT"])
    expected = pairs.loc[vit_like, "delta"].mean() - pairs.loc[pairs["family"] == "CNN", "delta"].mean()
    assert gain["shown"] and gain["value"] == pytest.approx(expected, abs=1e-9)
    assert gain["ci_low"] <= gain["value"] <= gain["ci_high"] and gain["paper_value"] == 0.0
    assert gain["agreement"] == ("agrees" if gain["ci_low"] > 0 else "disagrees" if gain["ci_high"] < 0 else "unclear")
    # the headline gain and the rank agreement pool the pretrained backbones only, and say how many were left out
    summary = _summary(protocols)
    assert summary["mean_delta"] == pytest.approx(pairs["delta"].mean(), abs=1e-12)
    assert summary["mean_delta_n"] == len(pairs) and summary["controls_left_out"] == len(controls)
    assert all(row["n"] == pairs["backbone"].nunique() for row in summary["rank_agreement"])
    assert any("random-init control pairs left out" in h for h in summary["headlines"])
    robustness = _summary(synthetic_runs["06_robustness_calibration"]["figures_dir"])
    calibration = robustness["findings"]["calibration_tracks_accuracy"]
    rho = robustness["calibration_spearman"]
    assert calibration["shown"] and calibration["value"] == rho["rho"] and calibration["n"] == rho["n"]
    assert rho["n"] == 12 and rho["n_controls_left_out"] == 2  # 14 backbones, two random-init controls
    assert calibration["agreement"] == ("agrees" if rho["ci_high"] < 0 else "disagrees" if rho["ci_low"] > 0
                                        else "unclear")


@pytest.mark.notebook
@pytest.mark.slow
def test_public_headline_numbers(public_runs):
    scale = _summary(public_runs["03_scale"]["figures_dir"])
    groups = {row["group"]: row for row in scale["spearman_params"]}
    assert {"CNN", "ViT", "all"} <= set(groups)
    assert groups["all"]["n"] > 1000 and groups["ViT"]["ci_low"] <= groups["ViT"]["rho"] <= groups["ViT"]["ci_high"]
    assert scale["findings"]["scale_params"]["shown"] and scale["findings"]["scale_params"]["paper_value"] == \
        pytest.approx(0.23)
    public = _summary(public_runs["07_public_tables"]["figures_dir"])
    retrieval = {row["group"]: row for row in public["retrieval_spearman_params"]}
    assert retrieval["all"]["n"] == 33
    leaderboard = pd.read_csv(public_runs["01_leaderboard"]["figures_dir"] / "leaderboard.csv")
    assert len(leaderboard) == 33 and np.isfinite(leaderboard["score_lo"]).all()
    # the snapshot is one task: the overall finding is not shown as if it were answered
    first = _summary(public_runs["01_leaderboard"]["figures_dir"])
    assert first["findings"]["top_overall"]["shown"] is False
