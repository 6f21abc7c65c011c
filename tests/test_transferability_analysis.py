"""Rank before you run: rank statistics (equal to scipy's), the priors, the bootstrap comparison with the measured
ranking, costs from sidecars, the leaderboards' exclusion of transferability scores, and notebook 09 on synthetic
tables with transferability cells, on the public table and end to end on real tiny cells."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures_analysis import exec_notebook_inprocess, make_results, with_transferability
from scipy import stats as sps

from bobkit.analysis import priors, scores, settings
from bobkit.analysis import rank_agreement as ra
from bobkit.analysis import transferability as tr
from bobkit.analysis.errors import InsufficientDataError
from bobkit.analysis.load import load_reference
from bobkit.results.schema import write_results
from bobkit.results.sidecars import write_sidecar

REPO = Path(__file__).resolve().parents[1]
TIMM = REPO / "bobkit" / "reference" / "timm" / "results-imagenet.csv"


@pytest.fixture(autouse=True)
def _fresh_clone(monkeypatch, tmp_path):
    monkeypatch.delenv("BOB_DATA_DIR", raising=False)
    monkeypatch.setenv("BOB_CACHE_DIR", str(tmp_path / "cache"))


# ------------------------------------------------------------------------------------------------------------
# Rank statistics
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")  # constant samples: scipy warns, both NaN
def test_rank_statistics_equal_scipys_with_ties_and_repeats():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(3, 16))
        ids = rng.integers(0, n, n)  # a bootstrap sample: repeated backbones
        x, y = np.round(rng.normal(size=n), 1)[ids], np.round(rng.normal(size=n), 1)[ids]
        ours = np.array([ra.kendall_tau_b(x, y), ra.weighted_tau(x, y), ra.spearman_rho(x, y)])
        theirs = np.array([sps.kendalltau(x, y).statistic, sps.weightedtau(x, y).statistic,
                           sps.spearmanr(x, y).statistic])
        np.testing.assert_allclose(ours, theirs, atol=1e-12, equal_nan=True)


def test_rank_stats_by_hand():
    measured = np.array([0.9, 0.8, 0.7, 0.1])
    # swapping the two best: 5 of 6 pairs concordant -> tau (5 - 1) / 6; the predictor's pick is the runner-up
    stats = ra.rank_stats(measured, np.array([3.0, 4.0, 2.0, 1.0]))
    assert stats[ra.STATS.index("kendall")] == pytest.approx(4 / 6)
    assert stats[ra.STATS.index("spearman")] == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert stats[ra.STATS.index("top1_hit")] == 0.0 and stats[ra.STATS.index("regret")] == pytest.approx(0.1)
    # the weighted tau punishes a swap at the top more than the same swap at the bottom
    bottom = ra.rank_stats(measured, np.array([4.0, 3.0, 1.0, 2.0]))
    assert bottom[1] > stats[1] and bottom[0] == pytest.approx(stats[0])
    # a tie at the top splits the credit; fewer distinct backbones than asked: no statistic
    assert ra.rank_stats(measured, np.array([4.0, 4.0, 2.0, 1.0]))[3] == 0.5
    assert np.isnan(ra.rank_stats(measured[:2], measured[:2])).all()


def test_the_batch_equals_each_sample_written_out():
    rng = np.random.default_rng(1)
    for _ in range(40):
        n, reps = int(rng.integers(3, 12)), 6
        draws = rng.integers(0, n, (reps, n))
        counts = np.zeros((reps, n))
        np.add.at(counts, (np.arange(reps)[:, None], draws), 1.0)
        measured, predicted = rng.normal(size=(reps, n)), np.round(rng.normal(size=n), 1)
        batch = ra.rank_stats_batch(measured, predicted, counts)
        for r in range(reps):
            ids = np.repeat(np.arange(n), counts[r].astype(int))
            np.testing.assert_allclose(batch[r], ra.rank_stats(measured[r][ids], predicted[ids], ids), atol=1e-12,
                                       equal_nan=True)


# ------------------------------------------------------------------------------------------------------------
# Priors
# ------------------------------------------------------------------------------------------------------------


def _timm_top1(model: str) -> float:
    raw = pd.read_csv(TIMM, thousands=",")
    return float(raw[raw["model"] == model].sort_values("img_size")["top1"].iloc[-1]) / 100


def test_imagenet_prior_of_the_demo_backbones():
    frame = priors.imagenet_prior(["mobilenetv2_100.packaged_tv_in1k", "tf_efficientnet_lite2.packaged_in1k",
                                   "resnet18.random_init", "vit_small_patch16_224.dino", "resnet50.tv_in1k",
                                   "not_a_model.x"]).set_index("backbone")
    assert frame.loc["mobilenetv2_100.packaged_tv_in1k", "value"] == 0.71878  # its own weights, not timm's ra_in1k
    assert frame.loc["tf_efficientnet_lite2.packaged_in1k", "value"] == pytest.approx(
        _timm_top1("tf_efficientnet_lite2.in1k"))
    assert frame.loc["resnet18.random_init", "value"] == 1 / 1000
    assert np.isnan(frame.loc["vit_small_patch16_224.dino", "value"])
    assert "headless" in frame.loc["vit_small_patch16_224.dino", "source"]
    assert frame.loc["resnet50.tv_in1k", "value"] == pytest.approx(_timm_top1("resnet50.tv_in1k"))
    assert np.isnan(frame.loc["not_a_model.x", "value"])


def test_public_table_names_reach_the_prior_through_the_paper_name():
    frame = priors.imagenet_prior(["timm-convnext_base_in22ft1k", "timm-vit_small_patch16_224_dino"],
                                  {"timm-convnext_base_in22ft1k": "Supervised ConvNeXt-B (IN-21k)",
                                   "timm-vit_small_patch16_224_dino": "DINO ViT-S/16 (IN-1k)"}).set_index("backbone")
    # two registry entries share that paper name (the IN-21k head, its IN-1k fine-tune): the one with a figure
    assert frame.loc["timm-convnext_base_in22ft1k", "value"] == pytest.approx(
        _timm_top1("convnext_base.fb_in22k_ft_in1k"))
    assert np.isnan(frame.loc["timm-vit_small_patch16_224_dino", "value"])


def test_reference_prior_is_the_overall_score_in_the_reference():
    reference = load_reference("bob_retrieval")
    overall = priors.reference_overall(reference)
    frame = priors.reference_prior(["convnext_base.fb_in1k", "mobilenetv2_100.packaged_tv_in1k"], reference,
                                   reference_name="bob_retrieval").set_index("backbone")
    assert frame.loc["convnext_base.fb_in1k", "value"] == pytest.approx(overall["timm-convnext_base"])
    assert np.isnan(frame.loc["mobilenetv2_100.packaged_tv_in1k", "value"])
    board = scores.scores(settings.primary_metrics(reference)).set_index("backbone")["overall"]
    assert overall.sort_values().index.tolist() == board.sort_values().index.tolist()


# ------------------------------------------------------------------------------------------------------------
# Synthetic tables with transferability cells
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return with_transferability(make_results(seeds=(0, 1)))


def test_transferability_scores_never_enter_the_leaderboards(table):
    plain = table[table["task"] != "transferability"]
    scored = settings.primary_metrics(table)
    assert "transferability" not in set(scored["task"]) and "transferability" not in scored.attrs["primary"]
    pd.testing.assert_frame_equal(scores.scores(scored), scores.scores(settings.primary_metrics(plain)))


def test_measured_values_average_seeds_and_sign_lower_is_better(table):
    measured = tr.measured_values(table, primary_only=False)
    assert "transferability" not in set(measured["task"])
    nll = measured[measured["metric"] == "nll"].iloc[0]
    rows = table[(table["metric"] == "nll") & (table["backbone"] == nll["backbone"])]
    assert nll["value"] == pytest.approx(-rows["value"].mean())
    primary = tr.measured_values(table)
    assert set(primary["metric"]) == {"top1", "mrr", "acc/mnist5k", "acc/pgd/1", "acc/fgsm/1", "box_ap"}


def test_a_perfect_predictor_scores_one_and_a_reversed_one_minus_one(table):
    measured = tr.measured_values(table)
    predictors = tr.predictor_values(tr.estimator_values(table), priors.imagenet_prior(table["backbone"].unique()))
    agreement = tr.compare_rankings(measured, predictors, n_boot=60, seed=0)
    rows = agreement.rows.set_index(["setting_label", "predictor"])
    probe = "classification/fashion_mnist/linear_probe | top1"
    assert rows.loc[(probe, "logme"), "kendall"] == 1.0 and rows.loc[(probe, "logme"), "top1_hit"] == 1.0
    assert rows.loc[(probe, "knn_acc"), "kendall"] == -1.0 and rows.loc[(probe, "knn_acc"), "spearman"] == -1.0
    assert rows.loc[(probe, "logme"), "n_backbones"] == 14
    supervised = table.loc[table["method_kind"] == "supervised", "backbone"].nunique()
    assert rows.loc[(probe, "leep"), "n_backbones"] == supervised == 8  # backbones with an ImageNet head only
    # estimators predict their own dataset's settings only; the prior predicts every setting, detection included
    assert not any(label.startswith("detection") for label, p in rows.index if p == "logme")
    assert ("detection/fmnist_scenes/frozen | box_ap", "imagenet_top1") in rows.index
    # the prior covers the backbones with a known ImageNet top-1: the estimator is compared on those
    n_prior = int(predictors[predictors["predictor"] == "imagenet_top1"]["backbone"].nunique())
    assert rows.loc[(probe, "logme"), "prior_n"] == n_prior
    # the measured values carry noise (each cell's standard error): even the perfect predictor's interval has width
    assert rows.loc[(probe, "logme"), "kendall_lo"] < 1.0


def test_small_samples_say_how_little_they_show(table):
    few = table[table["backbone"].isin(sorted(table["backbone"].unique())[:4])]
    measured = tr.measured_values(few, tasks=["classification"])
    predictors = tr.predictor_values(tr.estimator_values(few), priors.imagenet_prior([]))
    rows = tr.compare_rankings(measured, predictors, n_boot=200).rows.set_index(["setting_label", "predictor"])
    perfect = rows.loc[("classification/fashion_mnist/linear_probe | top1", "logme")]
    # four backbones ranked perfectly: a random order does that once in 4! = 24 times; and since every bootstrap
    # replicate ranks perfectly too, no interval is claimed rather than [1, 1]
    assert perfect["kendall"] == 1.0 and perfect["kendall_p"] == pytest.approx(1 / 24)
    assert np.isnan(perfect["kendall_lo"]) and np.isnan(perfect["kendall_hi"])
    with pytest.raises(InsufficientDataError, match="at least 5 backbones"):
        tr.compare_rankings(measured, predictors, n_boot=10, min_backbones=5)


def test_task_summary_and_the_verdict_against_the_prior(table):
    measured = tr.measured_values(table)
    predictors = tr.predictor_values(tr.estimator_values(table), priors.imagenet_prior(table["backbone"].unique()))
    agreement = tr.compare_rankings(measured, predictors, n_boot=100, seed=1)
    summary = tr.task_summary(agreement).set_index(["task", "predictor"])
    per_setting = agreement.rows[(agreement.rows["task"] == "classification")
                                 & (agreement.rows["predictor"] == "logme")]
    assert summary.loc[("classification", "logme"), "kendall"] == pytest.approx(per_setting["kendall"].mean())
    assert summary.loc[("classification", "logme"), "n_settings"] == 4  # probe and fine-tuning on both datasets
    assert summary.loc[("classification", "knn_acc"), "verdict"] == "worse than the prior"
    assert summary.loc[("classification", "imagenet_top1"), "verdict"] == ""
    advice = tr.recommendations(summary.reset_index())
    assert advice.set_index("task").loc["classification", "best_estimator"] == "logme"
    sentence = tr.describe_prior_question(summary.reset_index(), agreement.n_backbones)
    assert "ImageNet-top-1 prior" in sentence


def test_a_saturated_predictor_is_flagged_and_left_out(table):
    """H-score at its ceiling (2.00 for every backbone) cannot rank them: it is named, not shown as a predictor."""
    saturated = table.copy()
    h_rows = (saturated["task"] == "transferability") & (saturated["metric"] == "h_score")
    saturated.loc[h_rows & (saturated["dataset"] == "mnist5k"), "value"] = 2.0
    saturated.loc[h_rows & (saturated["dataset"] == "mnist5k") & (saturated["backbone"] == "resnet18.tv_in1k"),
                  "value"] = 2.0 + 1e-9  # numerically equal, not exactly
    predictors = tr.predictor_values(tr.estimator_values(saturated), priors.imagenet_prior([]))
    kept, flagged = tr.drop_saturated(predictors)
    assert flagged["key"].tolist() == ["h_score@mnist5k"] and flagged["value"].iloc[0] == pytest.approx(2.0)
    assert "h_score@mnist5k" not in set(kept["key"]) and "h_score@fashion_mnist" in set(kept["key"])
    assert "H-score on mnist5k gives every backbone 2.00" in tr.describe_saturated(flagged)
    agreement = tr.compare_rankings(tr.measured_values(saturated), kept, n_boot=20)
    assert not ((agreement.rows["predictor"] == "h_score") & (agreement.rows["dataset"] == "mnist5k")).any()


def test_a_predictor_has_one_colour_in_every_figure(table):
    """The per-setting and the per-task figure showed the same predictor in different colours."""
    import matplotlib

    matplotlib.use("Agg")
    measured = tr.measured_values(table)
    predictors = tr.predictor_values(tr.estimator_values(table), priors.imagenet_prior(table["backbone"].unique()))
    agreement = tr.compare_rankings(measured, predictors, n_boot=20)

    def colours(fig) -> dict[str, tuple]:
        handles, labels = fig.axes[0].get_legend_handles_labels()
        return {label: matplotlib.colors.to_rgb(h.lines[0].get_color()) for h, label in zip(handles, labels)}

    by_setting = colours(tr.agreement_plot(agreement.rows[agreement.rows["predictor"] != "logme"],
                                           group="setting_label"))
    by_task = colours(tr.agreement_plot(tr.task_summary(agreement), group="task"))
    shared = set(by_setting) & set(by_task)
    assert len(shared) >= 3 and all(by_setting[k] == by_task[k] for k in shared)


def test_the_tables_name_backbones_and_predictors_as_the_overview_does(table):
    predictors = tr.predictor_values(tr.estimator_values(table), priors.imagenet_prior(table["backbone"].unique()))
    names = {"resnet18.tv_in1k": "ResNet-18 (supervised)"}
    wide = tr.predictor_table(predictors, names)
    assert list(wide.columns[:2]) == ["backbone", "dataset"] and "LogME" in wide.columns
    assert "ResNet-18 (supervised)" in set(wide["backbone"]) and "resnet18.tv_in1k" not in set(wide["backbone"])
    assert len(wide.columns) <= 7  # one column per estimator, not per estimator x dataset: it fits the page
    assert not any("@" in c for c in wide.columns)


def test_the_chance_sentence_counts_this_tables_backbones():
    assert tr.describe_chance(6) == ("With 6 backbones a predictor ordering them at random ranks them perfectly "
                                     "once in 720 tries.")
    assert "once in 24 tries" in tr.describe_chance(4)


@pytest.mark.parametrize(("diff", "low", "high", "verdict"), [
    (0.3, 0.1, 0.5, "beats the prior"), (-0.3, -0.5, -0.1, "worse than the prior"),
    (0.1, -0.2, 0.4, "no clear difference from the prior"), (0.1, np.nan, np.nan, "no interval on the difference"),
    (np.nan, np.nan, np.nan, "not comparable with the prior"),
])
def test_prior_verdict(diff, low, high, verdict):
    assert tr.prior_verdict(diff, low, high) == verdict


# ------------------------------------------------------------------------------------------------------------
# Costs from sidecars
# ------------------------------------------------------------------------------------------------------------


def _fake_runs(table: pd.DataFrame, runs_dir: Path) -> None:
    """Sidecars for every run of ``table``: a transferability cell takes 10 s with LogME 0.5 s and LEEP 0.2 s +
    0.3 s for the head; every other cell 40 s."""
    for run in table.drop_duplicates("run_key").itertuples():
        timings = ({"logme_seconds": 0.5, "leep_seconds": 0.2, "source_head_seconds": 0.3, "h_score_seconds": 1.0,
                    "knn_acc_seconds": 0.1, "feature_cache_hit": 1.0}
                   if run.task == "transferability" else {"extract_seconds": 5.0, "train_seconds": 2.0})
        write_sidecar(runs_dir / run.task / run.run_key, {
            "status": "complete", "run_key": run.run_key, "task": run.task, "timings": timings,
            "wall_seconds": 10.0 if run.task == "transferability" else 40.0})


def test_costs_read_the_sidecars_behind_the_table(table, tmp_path):
    runs = tmp_path / "runs"
    _fake_runs(table, runs)
    bad = table.iloc[[0]].assign(run_key="../../outside", task="classification")
    timings = tr.run_timings(pd.concat([table, bad]), runs)
    assert "../../outside" not in set(timings["run_key"])
    costs = tr.estimator_costs(timings).set_index(["dataset", "estimator", "predicted"])
    probe = costs.loc[("fashion_mnist", "logme", "classification/linear_probe")]
    assert probe["estimator_seconds"] == 0.5 and probe["measured_cell_seconds"] == 40.0
    assert probe["measured_work_seconds"] == 2.0  # training only: the 5 s of extraction are shared
    assert probe["estimator_share"] == pytest.approx(0.5 / 40) and probe["cell_share"] == pytest.approx(10 / 40)
    assert costs.loc[("fashion_mnist", "leep", "classification/linear_probe"), "estimator_seconds"] == 0.5
    assert ("mnist5k", "logme", "retrieval/frozen") not in costs.index  # retrieval ran on fashion_mnist only
    text = tr.describe_costs(costs.reset_index())
    assert "LogME 0.5 s" in text and "classification/linear_probe cell of 40 s" in text and "took 2 s" in text
    with pytest.raises(InsufficientDataError, match="runs folder"):
        tr.run_timings(table, tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------------------
# Notebook 09
# ------------------------------------------------------------------------------------------------------------


def _summary(figures: Path) -> dict:
    return json.loads((figures / "summary.json").read_text())


@pytest.mark.notebook
def test_notebook_on_a_synthetic_table_with_transferability_cells(table, tmp_path):
    runs = tmp_path / "runs"
    _fake_runs(table, runs)
    table.attrs["runs_dir"] = str(runs)
    path = write_results(table, tmp_path / "results.parquet")
    figures = tmp_path / "figures"
    exec_notebook_inprocess("09_transferability", {"results_path": str(path), "figures_dir": str(figures),
                                                   "n_boot": 40})
    summary = _summary(figures)
    assert summary["skipped"] == {}, summary["skipped"]
    assert {"agreement_settings.png", "agreement_by_task.png"} <= set(summary["figures"])
    agreement = {(r["setting_label"], r["predictor"]): r for r in summary["agreement"]}
    assert agreement[("classification/mnist5k/linear_probe | top1", "logme")]["kendall"] == 1.0
    assert summary["estimator_datasets"] == ["fashion_mnist", "mnist5k"]
    assert summary["prior_verdicts"]["classification/knn_acc"] == "worse than the prior"
    assert any("ImageNet-top-1 prior" in h for h in summary["headlines"])
    assert any("LogME 0.5 s" in h for h in summary["headlines"])
    assert {r["predicted"] for r in summary["costs"]} >= {"classification/linear_probe", "retrieval/frozen"}
    assert summary["saturated_predictors"] == []
    # the introduction no longer states a fixed number of backbones; the chance sentence counts this table's
    import nbformat

    source = nbformat.read(str(REPO / "notebooks" / "analysis" / "09_transferability.ipynb"), as_version=4)
    assert not any("six backbones" in cell.source for cell in source.cells)
    assert any("tr.describe_chance(agreement.n_backbones)" in cell.source for cell in source.cells)


@pytest.mark.notebook
def test_notebook_on_the_public_table_checks_the_prior_only(tmp_path):
    figures = tmp_path / "figures"
    exec_notebook_inprocess("09_transferability", {"figures_dir": str(figures), "n_boot": 30})
    summary = _summary(figures)
    assert set(summary["skipped"]) == {"Estimators against the prior", "Estimator cost"}
    assert summary["prior_coverage"] == {"imagenet_top1": 17}  # the supervised BoB backbones; no self-reference
    by_task = {(r["task"], r["predictor"]): r for r in summary["by_task"]}
    prior = by_task[("retrieval", "imagenet_top1")]
    assert prior["n_settings"] == 8 and prior["kendall_lo"] <= prior["kendall"] <= prior["kendall_hi"]
    assert summary["headlines"] and summary["figures"]


def _tiny_grid(path: Path) -> Path:
    backbones = ["mobilenetv2_100.packaged_tv_in1k", "resnet18.random_init", "convnext_atto.random_init"]
    path.write_text(json.dumps({
        "name": "tiny_rank_before_you_run",
        "defaults": {"image_size": 32, "max_train": 60, "max_test": 40, "device": "cpu", "num_threads": 1},
        "grid": [{"task": "classification", "backbone": backbones, "dataset": "mnist5k", "protocol": "linear_probe"},
                 {"task": "transferability", "backbone": backbones, "dataset": "mnist5k"}]}))
    return path


@pytest.mark.slow
@pytest.mark.notebook
def test_end_to_end_on_real_tiny_cells(tmp_path):
    """bob run + build on real probe and transferability cells, then notebook 09 with the costs from their
    sidecars: the transferability cells read the probe's cached features."""
    runs, results = tmp_path / "runs", tmp_path / "results.parquet"
    grid = _tiny_grid(tmp_path / "grid.yaml")
    proc = subprocess.run([sys.executable, "-m", "bobkit.cli", "run", str(grid), "--workers", "1", "--build",
                           "--no-progress", "--runs-dir", str(runs), "--results", str(results)], cwd=REPO,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    figures = tmp_path / "figures"
    exec_notebook_inprocess("09_transferability", {"results_path": str(results), "figures_dir": str(figures),
                                                   "n_boot": 30})
    summary = _summary(figures)
    assert summary["skipped"] == {}, summary["skipped"]
    costs = pd.DataFrame(summary["costs"])
    assert (costs["feature_cache_hit"] == 1.0).all() and (costs["estimator_seconds"] > 0).all()
    assert set(costs["estimator"]) == {"logme", "leep", "nce", "h_score", "knn_acc"}
    leep = [r for r in summary["agreement"] if r["predictor"] == "leep"]
    assert not leep  # only one backbone has an ImageNet head: too few to rank
    assert {r["predictor"] for r in summary["agreement"]} >= {"logme", "h_score", "knn_acc", "imagenet_top1"}
