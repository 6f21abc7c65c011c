"""bobkit.analysis.plots: every figure builds from a synthetic table, fails clearly without data, saves PNGs."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import re  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
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
    assert len([ax for ax in fig.axes if ax.axison]) == comparison["dataset"].nunique()  # panels, then the key
    with pytest.raises(InsufficientDataError):
        plots.paired_plot(pairs.iloc[:0])


def test_robustness_and_trend_plots(table):
    rob = id_ood.metric_pairs(table, {"task": "classification", "metric": "top1"},
                             {"task": "robustness", "metric": "top1"}, x_name="acc", y_name="rob")
    fig = plots.metric_scatter(rob, "acc", "rob")
    assert "Spearman" in fig.axes[0].get_title()
    frame = rob.rename(columns={"acc": "id_acc"})
    er, trend = id_ood.effective_robustness(frame, "rob")
    fig = plots.trend_scatter(frame, "rob", trend=trend, hue="family")
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert all(t.isdigit() for t in ticks if t)  # percentages on a logit axis
    assert "logit scale" in fig.axes[0].get_xlabel() and trend["scale"] == "logit"
    zero = pd.concat([frame, frame.head(1).assign(rob=0.0, backbone="zero")], ignore_index=True)
    fig = plots.trend_scatter(zero, "rob", trend=id_ood.fit_trend(zero["id_acc"], zero["rob"], scale="probit"),
                              hue="family")
    assert "probit scale" in fig.axes[0].get_xlabel() and "1 at 0% or 100% not shown" in fig.axes[0].get_title()
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


def test_a_clipped_baselines_interval_never_runs_through_its_written_score():
    """The baseline's interval reaches into the axis (-2.0 > the left edge), but its score is written at the edge:
    the interval line would strike the number through, so the clipped row draws none (the table gives it)."""
    board = pd.DataFrame({"backbone": ["a", "b", "r"], "display_name": ["a", "b", "resnet18"],
                          "score": [1.0, -1.0, -40.0], "score_lo": [0.5, -1.5, -80.0], "score_hi": [1.5, -0.5, -2.0],
                          "baseline": [False, False, True], "method_kind": ["supervised", "supervised", "random"]})
    ax = plots.leaderboard_plot(board).axes[0]
    assert ax.get_xlim()[0] < -2.0  # the interval's upper end would be on the axis
    rows = {round(float(y), 6) for lines in ax.collections for segment in lines.get_segments()
            for y in np.asarray(segment)[:, 1]}
    assert 0.0 not in rows and {1.0, 2.0} <= rows  # the baseline (bottom row) has no interval line, the others do


# --------------------------------------------------------------------------------------------------------------------
# Figures made to be read: checked on the figure objects, not by pixels
# --------------------------------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"^[−\-+]?\d*\.?\d+(e[−\-+]?\d+)?%?$")


def _is_number(text: str) -> bool:
    return bool(_NUMBER.match(text.replace("\n", ""))) or text.startswith("$")  # "$10^{1}$": a log axis


def readability_problems(fig) -> list[str]:
    """What a reader would trip over: overlapping tick labels, a numeric axis without its unit, a legend on the
    data, a figure too wide for the book's column or so narrow that stretching it to the column blows its text up."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    problems = []
    width = fig.get_size_inches()[0]
    if not plots.FIGSIZE[0] - 1e-9 <= width <= plots.MAX_WIDTH + 1e-9:  # the book stretches all to one width
        problems.append(f"{width:.1f} in wide")
    for k, ax in enumerate(fig.axes):
        if not ax.axison:  # a key beneath the plot
            continue
        for axis, name in ((ax.xaxis, "x"), (ax.yaxis, "y")):
            labels = [t for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]
            boxes = [t.get_window_extent(renderer) for t in labels]
            problems += [f"axes {k} {name}: {labels[i].get_text()!r} overlaps {labels[j].get_text()!r}"
                         for i in range(len(boxes)) for j in range(i + 1, len(boxes))
                         if boxes[i].overlaps(boxes[j])]
            if labels and all(_is_number(t.get_text()) for t in labels) and \
                    not re.search(r"\(.+\)", axis.get_label().get_text(), re.S):
                problems.append(f"axes {k} {name}: no unit in {axis.get_label().get_text()!r}")
        legend = ax.get_legend()
        if legend is not None and legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer)):
            problems.append(f"axes {k}: legend on the data")
    return problems


def _every_figure(table, scores) -> dict:
    board = sc.leaderboard(table, n_boot=10)
    matrix, _ = corr.correlation_matrix(corr.score_matrix(table, level="task"), n_boot=0)
    settings_matrix, _ = corr.correlation_matrix(corr.score_matrix(table, level="setting"), n_boot=0)
    rob = id_ood.metric_pairs(table, {"task": "classification", "metric": "top1"},
                              {"task": "robustness", "metric": "top1"}, x_name="acc", y_name="rob")
    frame = rob.rename(columns={"acc": "id_acc"})
    er, trend = id_ood.effective_robustness(frame, "rob")
    return {
        "leaderboard": plots.leaderboard_plot(board),
        "heatmap": plots.correlation_heatmap(matrix),
        "heatmap of many settings": plots.correlation_heatmap(settings_matrix),
        "task scatter": plots.task_scatter(scores, "classification", "retrieval"),
        "scale": plots.scale_plot(scores, x="params_millions", xlabel="parameters (M)"),
        "scale data": plots.scale_plot(scores, x="pretrain_images", xlabel="pretraining images"),
        "paired": plots.paired_plot(cmp.matched_pairs(scores)),
        "slope": plots.slope_chart(cmp.protocol_comparison(table)),
        "metric scatter": plots.metric_scatter(rob, "acc", "rob", xlabel="classification top1",
                                               ylabel="robustness top1"),
        "probit": plots.trend_scatter(frame, "rob", trend=trend, hue="family"),
        "strip": plots.group_strip(frame.assign(er=er), "er", "family", hue="method_kind",
                                   xlabel="effective robustness on rob"),
    }


def test_every_figure_is_made_to_be_read(table, scores):
    problems = {name: readability_problems(fig) for name, fig in _every_figure(table, scores).items()}
    assert {name: found for name, found in problems.items() if found} == {}


def test_the_checks_see_what_a_reader_would_trip_over():
    fig, ax = plt.subplots(figsize=(9.5, 3))
    ax.plot([0, 1], [0, 1], label="a line")
    ax.legend(loc="center")  # on the data
    ax.set_xticks([0, 0.001], ["a long tick label", "another long one"])  # on top of each other
    ax.set_xlabel("")
    found = readability_problems(fig)
    assert "9.5 in wide" in found and "axes 0: legend on the data" in found
    assert any("overlaps" in p for p in found) and "axes 0 y: no unit in ''" in found


def test_figures_are_saved_and_shown_at_150_dpi_or_more(scores, tmp_path):
    from PIL import Image

    fig = plots.scale_plot(scores)
    assert fig.dpi >= 150  # the DPI notebooks display at (the book shows the notebook's own image)
    path = plots.save_figure(fig, tmp_path, "scale")
    with Image.open(path) as image:
        assert min(image.info["dpi"]) >= 149.9
        assert image.width >= 150 * 6  # a column-wide figure has the pixels for it


def test_points_a_reader_must_tell_apart_are_numbered_with_a_key(table, scores):
    from bobkit.analysis.figure_labels import backbone_names

    names = set(backbone_names(scores.dropna(subset=["classification", "retrieval"])))
    fig = plots.task_scatter(scores, "classification", "retrieval")
    ax, key = fig.axes[0], fig.axes[-1]
    numbers = sorted(int(t.get_text()) for t in ax.texts)
    assert numbers == list(range(1, len(names) + 1))  # every backbone carries a number ...
    entries = [t.get_text() for t in key.texts][1:]
    assert {" ".join(e.split()[1:]) for e in entries} == names  # ... and the key names it in full
    assert entries[0].startswith("1  ")
    # on a public table's cloud of models only the highlighted ones are numbered
    many = pd.concat([scores.assign(backbone=scores["backbone"] + f"-{i}",
                                    display_name=scores["display_name"] + f" copy {i}") for i in range(3)])
    fig = plots.scale_plot(many, highlight=4)
    assert sorted(int(t.get_text()) for t in fig.axes[0].texts) == [1, 2, 3, 4]
    assert fig.axes[-1].texts[0].get_text() == f"Key (the 4 highest of {many['overall'].notna().sum()})"


def test_units_follow_what_an_axis_shows():
    from bobkit.analysis.figure_labels import spread, unit_of, with_unit

    assert unit_of("classification top1") == "fraction correct" == unit_of("ood id_acc")
    assert unit_of("ece (lower is better)") == "0-1"
    assert unit_of("retrieval map") == "0-1" and unit_of("overall score") == "mean z-score"
    assert with_unit("parameters (M)") == "parameters (M)"  # a unit already given is kept
    assert with_unit("pretraining images", "count") == "pretraining images (count)"
    positions = spread([0.50, 0.51, 0.52, 0.9], gap=0.05)
    assert list(positions.argsort()) == [0, 1, 2, 3] and min(abs(positions[1:] - positions[:-1])) >= 0.05 - 1e-9
    assert positions[3] == 0.9  # labels far from the others stay where they are
