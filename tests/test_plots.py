"""bobkit.analysis.plots: every figure builds from a synthetic table, fails clearly without data, saves PNGs."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from fixtures_analysis import make_results  # noqa: E402

from bobkit.analysis import comparisons as cmp  # noqa: E402
from bobkit.analysis import correlation as corr  # noqa: E402
from bobkit.analysis import id_ood, plots  # noqa: E402
from bobkit.analysis import scores as sc  # noqa: E402
from bobkit.analysis.errors import InsufficientDataError  # noqa: E402


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return make_results(seeds=(0,))


@pytest.fixture(scope="module")
def scores(table) -> pd.DataFrame:
    return sc.scores(table)


@pytest.fixture(autouse=True)
def _close():
    plots.set_style()
    yield
    plt.close("all")


def test_leaderboard_plot(table, tmp_path):
    board = sc.leaderboard(table, n_boot=20)
    fig = plots.leaderboard_plot(board, top=5)
    ax = fig.axes[0]
    assert len(ax.patches) == 5
    assert ax.get_yticklabels()[-1].get_text() == board["display_name"].iloc[0]  # best at the top
    path = plots.save_figure(fig, tmp_path / "figs", "leaderboard")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.save_figure(fig, None, "x") is None
    with pytest.raises(InsufficientDataError):
        plots.leaderboard_plot(board.iloc[:0])


def test_correlation_plots(table, scores):
    matrix, _ = corr.correlation_matrix(corr.score_matrix(table, level="task"), n_boot=0)
    fig = plots.correlation_heatmap(matrix)
    assert fig.axes
    fig = plots.task_scatter(scores, "classification", "retrieval")
    assert "Spearman" in fig.axes[0].get_title()
    with pytest.raises(InsufficientDataError):
        plots.task_scatter(scores.head(1), "classification", "retrieval")
    with pytest.raises(InsufficientDataError):
        plots.correlation_heatmap(matrix.iloc[:1, :1])


def test_scale_plot(scores):
    by_family = corr.correlate_by_group(scores, "params_millions", "overall", n_boot=0)
    fig = plots.scale_plot(scores, x="params_millions", correlations=by_family)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(label.startswith("CNN (n=") and "rho=" in label for label in labels)
    fig = plots.scale_plot(scores, x="pretrain_images")  # random-init (0 images) rows are dropped, not log(0)
    assert fig.axes
    with pytest.raises(InsufficientDataError):
        plots.scale_plot(scores.head(1))


def test_paired_and_slope_charts(table, scores):
    pairs = cmp.matched_pairs(scores)
    assert len(pairs) >= 2
    fig = plots.paired_plot(pairs)
    assert len(fig.axes[0].get_yticklabels()) == len(pairs)
    comparison = cmp.protocol_comparison(table)
    fig = plots.slope_chart(comparison)
    assert len(fig.axes) == comparison["dataset"].nunique()
    with pytest.raises(InsufficientDataError):
        plots.paired_plot(pairs.iloc[:0])


def test_robustness_and_probit_plots(table):
    rob = id_ood.metric_pairs(table, {"task": "classification", "metric": "top1"},
                             {"task": "robustness", "metric": "top1"}, x_name="acc", y_name="rob")
    fig = plots.metric_scatter(rob, "acc", "rob")
    assert "Spearman" in fig.axes[0].get_title()
    frame = rob.rename(columns={"acc": "id_acc"})
    er, trend = id_ood.effective_robustness(frame, "rob")
    fig = plots.probit_scatter(frame, "rob", trend=trend, hue="family")
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert all(t.isdigit() for t in ticks if t)  # percentages on a probit axis
    fig = plots.group_strip(frame.assign(er=er), "er", "family", hue="method_kind")
    assert fig.axes


def test_consistent_colours():
    assert plots.palette_for(["ViT", "CNN"], "family")["CNN"] == plots.FAMILY_COLORS["CNN"]
    assert plots.palette_for(["SSL"], "method_kind")["SSL"] == plots.METHOD_KIND_COLORS["SSL"]
    other = plots.palette_for(["foo", "bar"], "anything")
    assert other["foo"] != other["bar"]


def test_long_names_wrap_instead_of_being_cut():
    name = "vit_base_patch16_clip_224.laion2b_ft_in12k_in1k"
    wrapped = plots.wrap_label(name, 20)
    assert "\n" in wrapped and wrapped.replace("\n", "") == name
    assert plots.wrap_label("Supervised EfficientNet-Lite2 (IN-1k, packaged)", 30) == \
        "Supervised EfficientNet-Lite2\n(IN-1k, packaged)"  # never broken inside IN-1k
    board = sc.leaderboard(make_results(seeds=(0,)), n_boot=10)
    board.loc[0, "display_name"] = name + "_with_a_much_longer_suffix_than_any_axis_allows"
    fig = plots.leaderboard_plot(board, top=5)
    labels = [t.get_text().replace("\n", "") for t in fig.axes[0].get_yticklabels()]
    assert board.loc[0, "display_name"] in labels and not any(label.endswith("…") for label in labels)


def test_leaderboard_plot_labels_and_clips_random_init_baselines():
    board = pd.DataFrame({"backbone": ["a", "b", "r"], "display_name": ["a", "b", "resnet18"],
                          "score": [1.0, -1.0, -40.0], "score_lo": [0.5, -1.5, -45.0], "score_hi": [1.5, -0.5, -35.0],
                          "baseline": [False, False, True], "method_kind": ["supervised", "supervised", "random"]})
    fig = plots.leaderboard_plot(board)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "resnet18 (random init)"
    assert ax.get_xlim()[0] > -10  # the axis stays on the pretrained backbones
    assert any(t.get_text().startswith("-40.0") for t in ax.texts)  # the clipped baseline's score is written
    assert ax.patches[0].get_hatch() == "//"
