"""Write notebooks/analysis/NN_*.ipynb (nbformat v4, no outputs). All logic lives in bobkit; cells stay thin."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "notebooks" / "analysis"

PAPER = {
    "top": "overall, the best backbones were supervised ConvNeXt-B (ImageNet-21k), supervised SwinV2-B (ImageNet-21k) "
           "and CLIP ViT-B; among small backbones (< 30 M parameters) ConvNeXt-T, SwinV2-T and DINO ViT-S",
    "scale": "Spearman rho of the overall z-score with parameter count 0.58 for ViTs vs 0.35 for CNNs, and with "
             "pretraining-data size 0.72 vs 0.33: ViTs gain more from scale",
    "tasks": "performance on pairs of tasks is strongly correlated, typically Spearman rho > 0.8",
}
CAVEAT = ("*Paper values are from DESIGN.md section 5 (the paper's exact z-score aggregation was not published in "
          "reachable form, so ours is a documented, parameterised choice). They are for comparison, not oracles.*")

SETUP = '''from bobkit.analysis import plots, stats
from bobkit.analysis import public_tables as pt
from bobkit.analysis.notebook import Analysis

plots.set_style()
out = Analysis({name!r}, figures_dir)
table = pt.filter_table(pt.load_table(results_path, reference), tasks=tasks, protocols=protocols, metrics=metrics,
                        exclude_random=exclude_random)
out.describe_source(table)
scored = stats.primary_metrics(table) if primary_only else table
out.say(stats.describe_primary(scored))'''

COMMON_PARAMS = '''results_path = None  # results table (parquet/CSV) from `bob build`; None: the public reference table below
reference = {reference!r}  # public table used when results_path is None: "bob_retrieval" or "timm"
tasks = None  # keep only these tasks (list); None keeps all
protocols = None  # keep only these protocols (list); None keeps all
metrics = None  # keep only these metrics (list); None keeps all
exclude_random = {exclude_random!r}  # drop random-init controls before scoring
primary_only = True  # score each task on its primary metric(s) only (bobkit.analysis.stats.PRIMARY_METRICS)
figures_dir = "figures/{name}"  # PNGs, CSVs and summary.json are written here
n_boot = 1000  # bootstrap resamples for intervals (tests use fewer)
seed = 0'''


def notebook(name: str, title: str, intro: str, params_extra: str, cells: list[tuple[str, str]], *,
             reference: str = "bob_retrieval", exclude_random: bool = False) -> nbformat.NotebookNode:
    params = COMMON_PARAMS.format(reference=reference, exclude_random=exclude_random, name=name)
    if params_extra:
        params += "\n" + params_extra.strip()
    nb_cells = [new_markdown_cell(f"# {title}\n\n{intro.strip()}\n\n{CAVEAT}")]
    p = new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb_cells.append(p)
    nb_cells.append(new_code_cell(SETUP.format(name=name)))
    for kind, text in cells:
        nb_cells.append(new_markdown_cell(text.strip()) if kind == "md" else new_code_cell(text.strip()))
    for k, cell in enumerate(nb_cells):
        cell["id"] = f"{name[:2]}-{k}"  # stable ids: regenerating gives an identical file
    nb = new_notebook(cells=nb_cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


NOTEBOOKS = {}

NOTEBOOKS["01_leaderboard"] = notebook(
    "01_leaderboard", "01 Leaderboard: which backbone wins, overall, per task, and among small ones",
    f"""
Every setting (task x dataset x protocol x metric) is z-scored over the backbones evaluated there (lower-is-better
metrics negated); a task score averages its settings, the overall score averages the tasks. Intervals are bootstrap
intervals over settings (within tasks) and seeds, so a rank interval of 1-4 means the data cannot separate those
backbones.

**The paper reported:** {PAPER['top']}.

Without `results_path` this notebook reads the BoB retrieval snapshot: one of the paper's tasks, so its "overall"
leaderboard is the retrieval leaderboard and need not match the paper's all-task ranking.
""",
    '''top_n = 20  # backbones shown in each figure
small_max_params = 30.0  # "small" backbones: fewer than this many million parameters''',
    [
        ("md", "## Overall leaderboard"),
        ("code", '''board = None
with out.guard("Overall leaderboard"):
    board = stats.leaderboard(scored, n_boot=n_boot, seed=seed)
    out.table(board, "leaderboard", columns=["rank", "display_name", "score", "score_lo", "score_hi", "rank_lo",
                                             "rank_hi", "family", "method_kind", "params_millions", "n_settings"])
    out.figure(plots.leaderboard_plot(board, top=top_n, title="Overall leaderboard"), "leaderboard")
    out.say(stats.describe_leaderboard(board), headline=True)
    out.record(top_overall=board["display_name"].head(3).tolist())'''),
        ("md", f"**Paper:** {PAPER['top']}. **This data:** the sentence above (computed from the table)."),
        ("md", "## Per task"),
        ("code", '''task_names = sorted(scored["task"].unique())
if len(task_names) < 2:
    out.note("The table has a single task, so the per-task leaderboard is the overall one.")
for task in task_names if len(task_names) > 1 else []:
    with out.guard(f"Leaderboard for {task}"):
        task_board = stats.leaderboard(scored, level=task, n_boot=n_boot, seed=seed)
        out.table(task_board, f"leaderboard_{task}", show=5, columns=["rank", "display_name", "score", "score_lo",
                                                                       "score_hi", "rank_lo", "rank_hi"])
        out.figure(plots.leaderboard_plot(task_board, top=min(top_n, 12), title=f"{task}"), f"leaderboard_{task}")
        out.say(f"**{task}:** " + stats.describe_leaderboard(task_board))'''),
        ("md", "## Small backbones"),
        ("code", '''with out.guard(f"Small backbones (< {small_max_params:g} M parameters)"):
    small = pt.filter_table(scored, max_params=small_max_params)
    out.require(small["backbone"].nunique() >= 2,
                f"fewer than two backbones with a known size under {small_max_params:g} M parameters")
    small_board = stats.leaderboard(small, n_boot=n_boot, seed=seed)
    out.table(small_board, "leaderboard_small", columns=["rank", "display_name", "score", "score_lo", "score_hi",
                                                        "rank_lo", "rank_hi", "params_millions"])
    out.figure(plots.leaderboard_plot(small_board, top=top_n, title=f"Backbones under {small_max_params:g} M parameters"),
               "leaderboard_small")
    out.say(f"Small backbones (z-scored among themselves): " + stats.describe_leaderboard(small_board), headline=True)
    out.record(top_small=small_board["display_name"].head(3).tolist())'''),
        ("md", "**Paper (small backbones):** ConvNeXt-T, SwinV2-T, DINO ViT-S."),
    ],
)

NOTEBOOKS["02_task_correlation"] = notebook(
    "02_task_correlation", "02 Task correlation: does a backbone that is good at one task do well at the others?",
    f"""
Spearman correlations between task scores across backbones (pairwise-complete), with bootstrap intervals, and the
same at the level of single settings. The scatter follows the paper's Figure 1: one task against another, markers
sized by parameter count and coloured by pretraining method.

**The paper reported:** {PAPER['tasks']}.
""",
    '''scatter_x = None  # task (or setting) on the scatter's x axis; None: the first one
scatter_y = None  # task (or setting) on the y axis; None: the second one
threshold = 0.8  # the paper's "strongly correlated" line''',
    [
        ("md", "## Task-level correlation"),
        ("code", '''with out.guard("Task-level correlation"):
    task_wide = stats.score_matrix(scored, level="task")
    out.require(task_wide.shape[1] >= 2, f"the table has a single task ({', '.join(task_wide.columns)}); "
                "see the setting-level correlations below")
    task_matrix, task_pairs = stats.correlation_matrix(task_wide, n_boot=n_boot, seed=seed)
    out.table(task_pairs, "task_pairs")
    out.figure(plots.correlation_heatmap(task_matrix, title="Task scores: Spearman rho"), "task_heatmap")
    out.say(stats.describe_pairs(task_pairs, "task pairs", threshold), headline=True)
    out.record(task_pairs=stats.pair_stats(task_pairs, threshold))'''),
        ("md", "## Setting-level correlation"),
        ("code", '''with out.guard("Setting-level correlation"):
    setting_wide = stats.score_matrix(scored, level="setting")
    setting_matrix, setting_pairs = stats.correlation_matrix(setting_wide, n_boot=min(n_boot, 200), seed=seed)
    out.table(setting_pairs, "setting_pairs", show=10)
    out.figure(plots.correlation_heatmap(setting_matrix, title="Settings: Spearman rho of z-scores"),
               "setting_heatmap")
    out.say(stats.describe_pairs(setting_pairs, "setting pairs", threshold), headline=True)
    out.record(setting_pairs=stats.pair_stats(setting_pairs, threshold))'''),
        ("md", "## One task against another (paper Figure 1 style)"),
        ("code", '''with out.guard("Task-vs-task scatter"):
    level = "task" if scored["task"].nunique() >= 2 else "setting"
    wide = stats.score_matrix(scored, level=level, with_metadata=True)
    columns = wide.attrs["score_columns"]
    out.require(len(columns) >= 2, "fewer than two tasks or settings to plot against each other")
    x_col, y_col = scatter_x or columns[0], scatter_y or columns[1]
    out.figure(plots.task_scatter(wide, x_col, y_col), "task_scatter")'''),
        ("md", f"**Paper:** {PAPER['tasks']}. **This data:** the medians and shares above (computed)."),
    ],
)

NOTEBOOKS["03_scale"] = notebook(
    "03_scale", "03 Scale: do bigger backbones and more pretraining data help CNNs and ViTs alike?",
    f"""
Spearman correlation of the overall score with parameter count and with pretraining-data size (images), split by
architecture family, with bootstrap intervals; scale plots with a least-squares trend on log size per family; and an
OLS regression `score ~ family * log10(params) + method kind + log10(images)` (statsmodels) with its table.

**The paper reported:** {PAPER['scale']}.

Without `results_path` this notebook reads timm's tables: every model fine-tuned on ImageNet-1k, scored on ImageNet
(classification) and ImageNet-R/-A (OOD). That is a different population and score than the paper's frozen-backbone
battle across five tasks, so agreement in direction matters more than the exact values.
""",
    '''vit_like = {"ViT + hierarchical-ViT": ["ViT", "hierarchical-ViT"]}  # pooled groups added to the family split''',
    [
        ("code", '''scores = None
with out.guard("Scores"):
    scores = stats.scores(scored)
    out.table(scores, "scores", show=10, columns=["backbone", "overall", "family", "method_kind",
                                                  "params_millions", "pretrain_images"])'''),
        ("md", "## Score vs parameter count"),
        ("code", '''with out.guard("Score vs parameters"):
    out.require(scores is not None, "no scores (see above)")
    corr_params = stats.correlate_by_group(scores, "params_millions", "overall", extra_groups=vit_like,
                                           n_boot=n_boot, seed=seed)
    out.require(not corr_params.empty, "no family has three backbones with a known parameter count")
    out.table(corr_params, "spearman_params")
    out.figure(plots.scale_plot(scores, x="params_millions", correlations=corr_params, xlabel="parameters (M)"),
               "scale_params")
    out.say(stats.describe_correlations(corr_params, "overall score with parameter count"), headline=True)
    out.record(spearman_params=corr_params.to_dict("records"))'''),
        ("md", "## Score vs pretraining data"),
        ("code", '''with out.guard("Score vs pretraining data"):
    out.require(scores is not None, "no scores (see above)")
    corr_data = stats.correlate_by_group(scores, "pretrain_images", "overall", extra_groups=vit_like,
                                         n_boot=n_boot, seed=seed)
    out.require(not corr_data.empty, "no family has three backbones with a known pretraining-data size")
    out.table(corr_data, "spearman_data")
    out.figure(plots.scale_plot(scores, x="pretrain_images", correlations=corr_data,
                                xlabel="pretraining images"), "scale_data")
    out.say(stats.describe_correlations(corr_data, "overall score with pretraining-data size"), headline=True)
    out.record(spearman_data=corr_data.to_dict("records"))'''),
        ("md", f"**Paper:** {PAPER['scale']}. **This data:** the ViT and CNN rows above (computed)."),
        ("md", "## Regression"),
        ("code", '''with out.guard("Scale regression"):
    out.require(scores is not None, "no scores (see above)")
    regression = stats.scale_regression(scores)
    out.table(regression.table, "regression")
    out.say(stats.describe_regression(regression), headline=True)
    out.record(regression={"formula": regression.formula, "r2": regression.fit.rsquared,
                           "n": int(regression.fit.nobs), "dropped": regression.dropped_terms})'''),
    ],
    reference="timm",
)

NOTEBOOKS["04_ssl_vs_supervised"] = notebook(
    "04_ssl_vs_supervised", "04 SSL vs supervised at matched architecture and data",
    """
Pairs of backbones with the same architecture and the same pretraining data that differ only in how they were
pretrained (self-supervised vs supervised): the paired difference of overall scores with a bootstrap interval and a
Wilcoxon signed-rank test; then, over all backbones, the SSL coefficient of the scale regression (method kind with
family, size and data held fixed).

**The paper reported** (abstract): supervised CNNs pretrained on large data perform best overall, but in
apples-to-apples comparisons (same architecture, similarly sized pretraining data) SSL backbones are highly
competitive. DESIGN.md section 5 records no number for this comparison.
""",
    '''baseline_kind = "supervised"  # method kind on the left of each pair
compare_kind = "SSL"  # method kind compared with it
match_on = ["architecture", "pretrain_data"]  # what a pair must share''',
    [
        ("code", '''scores = None
with out.guard("Scores"):
    scores = stats.scores(scored)'''),
        ("md", "## Matched pairs"),
        ("code", '''with out.guard("Matched pairs"):
    out.require(scores is not None, "no scores (see above)")
    pairs = stats.matched_pairs(scores, a=baseline_kind, b=compare_kind, match=match_on)
    out.require(len(pairs) > 0, f"no {compare_kind} backbone shares {match_on} with a {baseline_kind} one")
    out.table(pairs, "pairs")
    out.figure(plots.paired_plot(pairs, a_label=baseline_kind, b_label=compare_kind), "ssl_vs_supervised")
    paired = stats.paired_summary(pairs["diff"], n_boot=n_boot, seed=seed)
    out.say(stats.describe_paired(paired, compare_kind, baseline_kind), headline=True)
    out.record(paired=paired)'''),
        ("md", "## All backbones: method kind with scale held fixed"),
        ("code", '''with out.guard("Method kind in the scale regression"):
    out.require(scores is not None, "no scores (see above)")
    regression = stats.scale_regression(scores)
    out.table(regression.table, "regression")
    effect = stats.term_effect(regression, f"[T.{compare_kind}]")
    out.require(effect is not None, f"the regression has no {compare_kind} term (one method kind only?)")
    out.say(f"{compare_kind} vs {baseline_kind} with family, size and data fixed: coefficient "
            f"{stats.fmt_ci(effect['coef'], effect['ci_low'], effect['ci_high'])} (p = {effect['pvalue']:.3g}, "
            f"{int(regression.fit.nobs)} backbones).", headline=True)
    out.record(regression_effect=effect)'''),
        ("code", '''with out.guard("Scores by method kind"):
    out.require(scores is not None, "no scores (see above)")
    by_kind = stats.group_summary(scores, "overall", "method_kind", n_boot=n_boot, seed=seed)
    out.table(by_kind, "by_method_kind")'''),
    ],
)

NOTEBOOKS["05_finetune_vs_linear_probe"] = notebook(
    "05_finetune_vs_linear_probe", "05 Fine-tuning vs linear probing",
    """
The same backbone on the same dataset under two protocols: a slope chart per dataset, the mean gain from fine-tuning,
and how well the two protocols agree on the ranking of backbones (Spearman per dataset).

**The paper** evaluates classification both with linear probes and end-to-end fine-tuning; DESIGN.md section 5 records
no number for this comparison, so this notebook reports what the data shows.
""",
    '''protocol_a = "linear_probe"  # left side of the slope chart
protocol_b = "finetune"  # right side
comparison_metric = "auto"  # metric compared ("auto": top1 when present)''',
    [
        ("code", '''comparison = None
with out.guard("Fine-tune vs linear probe"):
    comparison = stats.protocol_comparison(table, a=protocol_a, b=protocol_b, metric=comparison_metric)
    out.table(comparison, "protocol_pairs", columns=["backbone", "task", "dataset", "metric", protocol_a, protocol_b,
                                                     "delta", "family"])
    out.figure(plots.slope_chart(comparison, a=protocol_a, b=protocol_b), "slope_chart")
    agreement = stats.rank_agreement(comparison, a=protocol_a, b=protocol_b, n_boot=n_boot, seed=seed)
    out.table(agreement, "rank_agreement")
    out.say(stats.describe_protocols(comparison, agreement, protocol_a, protocol_b), headline=True)
    out.record(mean_delta=float(comparison["delta"].mean()), rank_agreement=agreement.to_dict("records"))'''),
        ("code", '''with out.guard("Gain by family"):
    out.require(comparison is not None, "no protocol comparison (see above)")
    by_family = stats.group_summary(comparison, "delta", "family", n_boot=n_boot, seed=seed)
    out.table(by_family, "delta_by_family")
    out.say("Mean gain from " + protocol_b + " by family: " + "; ".join(
        f"{r.family} {stats.fmt_ci(r.mean, r.ci_low, r.ci_high, 3)} (n = {r.n})" for r in by_family.itertuples()) + ".")'''),
    ],
)

NOTEBOOKS["06_robustness_calibration"] = notebook(
    "06_robustness_calibration", "06 Robustness and calibration vs accuracy",
    f"""
Does in-distribution accuracy predict robustness (accuracy under corruptions, adversarial attacks or distribution
shift) and calibration (expected calibration error, lower is better)? Per-backbone means of each, a scatter coloured
by family with an OLS line, Spearman's rho with a bootstrap interval.

**The paper reported:** {PAPER['tasks']}, which includes out-of-distribution generalisation against classification.
""",
    '''accuracy_task = "classification"  # task whose accuracy is the x axis
accuracy_metric = "top1"
robustness_tasks = ["robustness", "ood"]  # tasks whose accuracy is the robustness axis
robustness_metric = "auto"  # regex of the robustness metric(s); "auto": the task's primary metric (acc/<attack>/<eps>)
calibration_metric = "ece"  # calibration metric (any task)''',
    [
        ("md", "## Robustness vs accuracy"),
        ("code", '''present = [t for t in robustness_tasks if t in set(table["task"])]
if not present:
    with out.guard("Robustness vs accuracy"):
        out.require(False, f"the table has no rows of the tasks {robustness_tasks}")
for task in present:
    with out.guard(f"Robustness vs accuracy: {task}"):
        pairs = stats.robustness_pairs(table, task, metric=robustness_metric, accuracy_task=accuracy_task,
                                       accuracy_metric=accuracy_metric)
        x_label, y_label = pairs.attrs["x_label"], pairs.attrs["y_label"]
        out.table(pairs, f"robustness_vs_accuracy_{task}", show=10)
        out.figure(plots.metric_scatter(pairs, "accuracy", "robustness", xlabel=x_label, ylabel=y_label),
                   f"robustness_vs_accuracy_{task}")
        rho = stats.spearman(pairs["accuracy"], pairs["robustness"], n_boot=n_boot, seed=seed)
        out.say(f"{y_label} vs {x_label}: Spearman rho = {stats.fmt_ci(rho['rho'], rho['ci_low'], rho['ci_high'])} "
                f"over {rho['n']} backbones.", headline=True)
        out.record(**{f"robustness_spearman_{task}": rho})'''),
        ("md", "## Calibration vs accuracy"),
        ("code", '''with out.guard("Calibration vs accuracy"):
    calibration = stats.calibration_pairs(table, metric=calibration_metric, accuracy_task=accuracy_task,
                                          accuracy_metric=accuracy_metric)
    x_label, y_label = calibration.attrs["x_label"], calibration.attrs["y_label"]
    out.table(calibration, "calibration_vs_accuracy", show=10)
    out.figure(plots.metric_scatter(calibration, "accuracy", "calibration", xlabel=x_label, ylabel=y_label),
               "calibration_vs_accuracy")
    rho = stats.spearman(calibration["accuracy"], calibration["calibration"], n_boot=n_boot, seed=seed)
    out.say(f"{y_label} vs {x_label}: Spearman rho = {stats.fmt_ci(rho['rho'], rho['ci_low'], rho['ci_high'])} "
            f"over {rho['n']} backbones (negative: more accurate backbones are better calibrated).", headline=True)
    out.record(calibration_spearman=rho)'''),
    ],
    reference="timm",
)

NOTEBOOKS["07_public_tables"] = notebook(
    "07_public_tables", "07 Public tables: timm ID vs OOD on a probit scale; the BoB retrieval snapshot",
    f"""
**timm** publishes ImageNet, ImageNet-R and ImageNet-A top-1 for about 1,500 models whose names carry their
pretraining (`.in22k_ft_in1k`, `.laion2b_ft_in12k_in1k`, `.fb_swsl_ig1b_ft_in1k`, ...). On probit axes, OOD accuracy
is close to a linear function of ImageNet accuracy; the trend is fitted (statsmodels OLS) on a baseline group
(ImageNet-1k supervised models by default) and each model's *effective robustness* is its OOD accuracy minus the
trend's prediction, grouped by pretraining data and by family.

**BoB retrieval snapshot:** MRR of 33 BoB checkpoints on 8 retrieval datasets from the paper's plotting notebook (a
pre-publication snapshot), as a leaderboard and with the scale split by family.

**The paper reported:** {PAPER['scale']}; {PAPER['tasks']}; {PAPER['top']}.
""",
    '''timm_ood_datasets = ["imagenet_r", "imagenet_a"]  # timm OOD tables
id_dataset = "imagenet"  # in-distribution table
baseline_query = "pretrain_data in ['in1k'] and method_kind in ['supervised']"  # models the probit trend is fitted on
group_by = ["pretrain_data_group", "family"]  # effective robustness is summarised by these
min_group_size = 5  # groups with fewer models are left out of the summaries
retrieval = True  # also analyse the BoB retrieval snapshot
top_n = 20
vit_like = {"ViT + hierarchical-ViT": ["ViT", "hierarchical-ViT"]}''',
    [
        ("md", "## timm: ImageNet vs ImageNet-R / ImageNet-A"),
        ("code", '''import pandas as pd

timm = None  # stays None without timm's tables: the timm sections then show a note with the download command
with out.guard("timm tables"):
    timm = pt.timm_wide(timm_ood_datasets, id_dataset=id_dataset)
    id_ood = {ds: stats.correlations(timm["id_acc"], timm[ds]) for ds in timm_ood_datasets}
    out.record(timm_models=len(timm), id_ood_correlations=id_ood)
    out.table(pd.DataFrame(id_ood).T.reset_index(names="ood_dataset"), "id_ood_correlations")'''),
        ("code", '''for ds in timm_ood_datasets if timm is not None else []:
    with out.guard(f"{ds} vs {id_dataset}"):
        timm[f"er_{ds}"], trend = stats.effective_robustness(timm, ds, baseline=baseline_query)
        out.figure(plots.probit_scatter(timm, ds, trend=trend, ood_label=ds), f"probit_{ds}")
        out.say(stats.describe_id_ood(ds, id_ood[ds], trend), headline=True)
        out.record(**{f"trend_{ds}": trend})
        for group in group_by:
            summary = stats.group_summary(timm, f"er_{ds}", group, min_n=min_group_size,
                                          n_boot=min(n_boot, 500), seed=seed)
            out.table(summary, f"effective_robustness_{ds}_by_{group}", show=8)
            out.figure(plots.group_strip(timm, f"er_{ds}", group, min_n=min_group_size,
                                         xlabel=f"effective robustness on {ds}"),
                       f"effective_robustness_{ds}_by_{group}")
            best = summary.iloc[0]
            out.say(f"Highest mean effective robustness on {ds} by {group}: {best[group]} "
                    f"({stats.fmt_ci(100 * best['mean'], 100 * best['ci_low'], 100 * best['ci_high'], 1)} points, "
                    f"n = {best['n']}).", headline=(group == group_by[0]))
if timm is not None:
    out.table(timm, "timm_effective_robustness", show=0)'''),
        ("md", "## timm: scale split by family"),
        ("code", '''with out.guard("timm scale split"):
    timm_scores = stats.scores(pt.timm_results_table((id_dataset, *timm_ood_datasets)))
    timm_params = stats.correlate_by_group(timm_scores, "params_millions", "overall", extra_groups=vit_like,
                                           n_boot=n_boot, seed=seed)
    timm_data = stats.correlate_by_group(timm_scores, "pretrain_images", "overall", extra_groups=vit_like,
                                         n_boot=n_boot, seed=seed)
    out.table(timm_params, "timm_spearman_params")
    out.table(timm_data, "timm_spearman_data")
    out.say("timm: " + stats.describe_correlations(timm_params, "overall z-score with parameter count"), headline=True)
    out.say("timm: " + stats.describe_correlations(timm_data, "overall z-score with pretraining images"), headline=True)
    out.record(timm_spearman_params=timm_params.to_dict("records"), timm_spearman_data=timm_data.to_dict("records"))'''),
        ("md", "## BoB retrieval snapshot"),
        ("code", '''with out.guard("BoB retrieval snapshot"):
    out.require(retrieval, "retrieval = False")
    snapshot = pt.retrieval_snapshot_table()
    snap_board = stats.leaderboard(snapshot, n_boot=n_boot, seed=seed)
    out.table(snap_board, "retrieval_leaderboard", columns=["rank", "display_name", "score", "score_lo", "score_hi",
                                                            "rank_lo", "rank_hi", "family", "params_millions"])
    out.figure(plots.leaderboard_plot(snap_board, top=top_n, title="BoB retrieval snapshot (MRR z-scores)"),
               "retrieval_leaderboard")
    out.say("Retrieval snapshot: " + stats.describe_leaderboard(snap_board), headline=True)
    snap_scores = stats.scores(snapshot)
    snap_params = stats.correlate_by_group(snap_scores, "params_millions", "overall", extra_groups=vit_like,
                                           n_boot=n_boot, seed=seed)
    snap_data = stats.correlate_by_group(snap_scores, "pretrain_images", "overall", extra_groups=vit_like,
                                         n_boot=n_boot, seed=seed)
    out.table(snap_params, "retrieval_spearman_params")
    out.table(snap_data, "retrieval_spearman_data")
    out.figure(plots.scale_plot(snap_scores, x="params_millions", correlations=snap_params, xlabel="parameters (M)",
                                title="Retrieval snapshot: score vs parameters"), "retrieval_scale_params")
    out.figure(plots.scale_plot(snap_scores, x="pretrain_images", correlations=snap_data, xlabel="pretraining images",
                                title="Retrieval snapshot: score vs pretraining data"), "retrieval_scale_data")
    out.say("Retrieval snapshot: " + stats.describe_correlations(snap_params, "score with parameter count"), headline=True)
    out.say("Retrieval snapshot: " + stats.describe_correlations(snap_data, "score with pretraining images"), headline=True)
    out.record(retrieval_spearman_params=snap_params.to_dict("records"),
               retrieval_spearman_data=snap_data.to_dict("records"),
               retrieval_top=snap_board["display_name"].head(3).tolist())'''),
        ("md", f"**Paper:** {PAPER['scale']}. The retrieval snapshot is one task of the paper's five and a "
               "pre-publication snapshot, so it need not reproduce the overall numbers."),
        ("md", "## Your table: ID vs OOD (when `results_path` is given)"),
        ("code", '''with out.guard("ID vs OOD in your table"):
    out.require(results_path is not None, "no results_path given: only the public tables are analysed here")
    mine = stats.robustness_pairs(table, "ood", x_name="id_acc", y_name="ood_acc")
    out.require(len(mine) >= 3, "fewer than three backbones with both classification and OOD top-1")
    mine["eff_robustness"], my_trend = stats.effective_robustness(mine, "ood_acc")
    out.figure(plots.probit_scatter(mine, "ood_acc", trend=my_trend, hue="family", ood_label="OOD",
                                    id_label="classification top-1 (%)"), "yours_probit")
    out.say(stats.describe_id_ood("your OOD task", stats.correlations(mine["id_acc"], mine["ood_acc"]), my_trend))'''),
    ],
    reference="bob_retrieval",  # bundled: the timm sections read timm's tables themselves
)

NOTEBOOKS["08_where_does_my_backbone_rank"] = notebook(
    "08_where_does_my_backbone_rank", "08 Where does my backbone rank?",
    """
Merge your results with a reference table on the settings both share (same task, dataset, protocol and metric),
z-score every shared setting over all backbones, and place yours in the ranking with a bootstrap interval. Without
`results_path`, a demonstration: one backbone of the reference (`demo_backbone`) is held out and placed as if it were
yours. When nothing is shared with the reference, your backbones are ranked within your own table instead.
""",
    '''my_backbones = None  # which backbones of your table to place (None: all of them)
demo_backbone = "timm-vit_small_patch16_224_dino"  # held out of the reference when results_path is None''',
    [
        ("code", '''reference_table = pt.load_reference(reference)
reference_table = stats.primary_metrics(reference_table) if primary_only else reference_table
if results_path is None:
    mine = reference_table[reference_table["backbone"] == demo_backbone]
    reference_table = reference_table[reference_table["backbone"] != demo_backbone]
    out.note(f"Demonstration: {demo_backbone} is held out of the {reference} table and placed as 'yours'.")
else:
    mine = scored if my_backbones is None else pt.filter_table(scored, backbones=my_backbones)
out.record(my_backbones=sorted(mine["backbone"].unique()))'''),
        ("code", '''placed = None
with out.guard(f"Placement among the {reference} reference"):
    out.require(len(mine) > 0, "none of your backbones is in the table")
    placed, shared = stats.place_backbones(mine, reference_table, n_boot=n_boot, seed=seed)
    out.table(shared, "shared_settings")
    out.table(placed, "placement", columns=["rank", "display_name", "score", "score_lo", "score_hi", "rank_lo",
                                            "rank_hi", "mine"])
    out.figure(plots.leaderboard_plot(placed, top=40, color_by="mine", title=f"Yours among {reference}"), "placement")'''),
        ("code", '''if placed is None:
    with out.guard("Ranking within your own table"):
        placed = stats.leaderboard(scored, n_boot=n_boot, seed=seed).assign(mine=True)
        out.table(placed, "placement", columns=["rank", "display_name", "score", "score_lo", "score_hi", "rank_lo",
                                                "rank_hi"])
        out.figure(plots.leaderboard_plot(placed, top=40, title="Your backbones"), "placement")
if placed is not None:
    for i, row in enumerate(placed[placed["mine"]].itertuples()):
        out.say(f"**{row.display_name}** ranks {row.rank} of {len(placed)} (95% interval {row.rank_lo:.0f}-"
                f"{row.rank_hi:.0f}), score {stats.fmt_ci(row.score, row.score_lo, row.score_hi)}.", headline=i < 3)'''),
    ],
)

OUT.mkdir(parents=True, exist_ok=True)
for name, nb in NOTEBOOKS.items():
    nbformat.validate(nb)
    nbformat.write(nb, str(OUT / f"{name}.ipynb"))
    print("wrote", OUT / f"{name}.ipynb")
