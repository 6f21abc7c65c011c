"""The analysis statistics (bobkit.analysis.scores, correlation, regression, comparisons, id_ood, settings): z-scores,
aggregation, bootstrap intervals, correlations, regressions, paired comparisons."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bobkit.analysis import comparisons as cmp
from bobkit.analysis import correlation as corr
from bobkit.analysis import id_ood, prose, settings
from bobkit.analysis import regression as regression_mod
from bobkit.analysis import scores as sc
from bobkit.analysis.errors import InsufficientDataError
from bobkit.results.schema import conform


def _table(rows: list[tuple]) -> pd.DataFrame:
    """rows: (backbone, task, dataset, metric, value, higher_is_better[, seed])"""
    records = []
    for r in rows:
        backbone, task, dataset, metric, value, hib = r[:6]
        seed = r[6] if len(r) > 6 else 0
        records.append({"backbone": backbone, "task": task, "dataset": dataset, "protocol": "linear_probe",
                        "metric": metric, "value": value, "higher_is_better": hib, "seed": seed,
                        "setting": f"{task}/{dataset}/linear_probe"})
    return conform(pd.DataFrame(records))


SQ = math.sqrt(1.5)  # z of (3 - 2) / std([1, 2, 3], ddof=0) = 1 / sqrt(2/3)


@pytest.fixture()
def hand_table() -> pd.DataFrame:
    # task "cls": top1 (higher better) and nll (lower better); task "ret": map
    return _table([
        ("a", "cls", "d1", "top1", 1.0, True), ("b", "cls", "d1", "top1", 2.0, True), ("c", "cls", "d1", "top1", 3.0, True),
        ("a", "cls", "d1", "nll", 3.0, False), ("b", "cls", "d1", "nll", 1.0, False), ("c", "cls", "d1", "nll", 2.0, False),
        ("a", "ret", "d2", "map", 0.5, True), ("b", "ret", "d2", "map", 0.1, True), ("c", "ret", "d2", "map", 0.3, True),
    ])


def test_zscores_hand_computed(hand_table):
    z = sc.zscores(hand_table).set_index(["backbone", "metric"])["z"]
    assert z[("a", "top1")] == pytest.approx(-SQ)
    assert z[("b", "top1")] == pytest.approx(0.0)
    assert z[("c", "top1")] == pytest.approx(SQ)
    # nll negated: b (lowest nll) is best
    assert z[("a", "nll")] == pytest.approx(-SQ)
    assert z[("b", "nll")] == pytest.approx(SQ)
    assert z[("c", "nll")] == pytest.approx(0.0)
    assert z[("a", "map")] == pytest.approx(SQ)
    assert z[("b", "map")] == pytest.approx(-SQ)
    # agrees with scipy.stats.zscore (ddof=0)
    assert np.allclose(z.xs("top1", level="metric").to_numpy(), sps.zscore([1.0, 2.0, 3.0]))


def test_task_then_overall_aggregation(hand_table):
    scores = sc.scores(hand_table).set_index("backbone")
    # cls = mean of its two settings; overall = mean of the two task scores (not of the three settings)
    assert scores.loc["a", "cls"] == pytest.approx((-SQ - SQ) / 2)
    assert scores.loc["b", "cls"] == pytest.approx((0 + SQ) / 2)
    assert scores.loc["a", "overall"] == pytest.approx(((-SQ - SQ) / 2 + SQ) / 2)
    assert scores.loc["b", "overall"] == pytest.approx(((0 + SQ) / 2 - SQ) / 2)
    assert scores.loc["c", "overall"] == pytest.approx(((SQ + 0) / 2 + 0) / 2)
    assert list(scores.index) == sorted(scores.index, key=lambda b: -scores.loc[b, "overall"])
    assert scores.loc["a", "n_settings"] == 3 and scores.loc["a", "n_tasks"] == 2


def test_overall_ranks_only_on_the_tasks_every_backbone_has():
    """The demo's case: lite2 has no detection cell and ranked first on the tasks it had."""
    table = _table([
        ("a", "cls", "d1", "top1", 0.1, True), ("b", "cls", "d1", "top1", 0.2, True),
        ("c", "cls", "d1", "top1", 0.3, True),
        ("a", "det", "d2", "box_ap", 0.5, True), ("b", "det", "d2", "box_ap", 0.1, True),  # c has no detection
    ])
    scores = sc.scores(table).set_index("backbone")
    assert scores["overall"].to_dict() == pytest.approx(scores["cls"].to_dict())  # detection is in no overall
    assert scores.attrs["overall_tasks"] == ["cls"] and scores.attrs["tasks_not_in_overall"] == {"det": ["c"]}
    assert scores.loc["a", "det"] == pytest.approx(1.0)  # its task column still shows it
    board = sc.leaderboard(table, n_boot=50)
    assert board.set_index("backbone")["score"].to_dict() == pytest.approx(scores["cls"].to_dict())
    assert board.attrs["overall_tasks"] == ["cls"] and board.attrs["tasks_not_in_overall"] == {"det": ["c"]}
    assert "detection" not in prose.describe_leaderboard(board)
    assert "det is left out of the overall score (c lacks it)" in prose.describe_leaderboard(board)
    # asked for, each backbone is averaged over the tasks it has, and the leaderboard says which those are
    every = sc.leaderboard(table, n_boot=50, shared_tasks_only=False).set_index("backbone")
    assert every.loc["a", "score"] == pytest.approx((scores.loc["a", "cls"] + 1.0) / 2)
    assert every.loc["c", "tasks_scored"] == "cls" and every.loc["a", "tasks_scored"] == "cls, det"
    assert "each overall score averages the tasks its backbone has" in prose.describe_leaderboard(
        sc.leaderboard(table, n_boot=50, shared_tasks_only=False))


def test_small_pools_warn_and_carry_a_gap_to_the_best_backbone():
    """Two pretrained backbones: every z-score is exactly +-1 and a control below a tight pool gets a huge one."""
    rows = [("p1", "cls", "d1", "top1", 0.80, True), ("p2", "cls", "d1", "top1", 0.81, True),
            ("ctl", "cls", "d1", "top1", 0.10, True),
            ("p1", "cls", "d2", "ece", 0.05, False), ("p2", "cls", "d2", "ece", 0.03, False),
            ("ctl", "cls", "d2", "ece", 0.30, False)]
    table = _table(rows).assign(method_kind=lambda f: np.where(f["backbone"] == "ctl", "random", "supervised"))
    z = sc.zscores(table)
    assert set(np.round(z.loc[~z["baseline"], "z"].abs(), 12)) == {1.0}
    board = sc.leaderboard(table, n_boot=50).set_index("backbone")
    assert board.attrs["min_pool"] == 2 and board.attrs["small_pool"]
    # gap to the best pretrained backbone per setting, in the metric's units, signed so that 0 is the best:
    # p1: (0.80 - 0.81 + (-(0.05) + 0.03)) / 2; p2: (0 + 0) / 2; the control: (0.10 - 0.81 + (-0.30 + 0.03)) / 2
    assert board.loc["p1", "gap_to_best"] == pytest.approx((-0.01 - 0.02) / 2)
    assert board.loc["p2", "gap_to_best"] == pytest.approx(0.0)
    assert board.loc["ctl", "gap_to_best"] == pytest.approx((-0.71 - 0.27) / 2)
    assert board.loc["ctl", "score"] < -30  # the degenerate z-score the warning is about
    text = prose.describe_leaderboard(board.reset_index())
    assert "only 2 pretrained backbones" in text and "gap_to_best" in text
    big = sc.leaderboard(_noisy_table(3), n_boot=20)
    assert big.attrs["min_pool"] == 8 and not big.attrs["small_pool"]
    assert "pretrained backbones" not in prose.describe_leaderboard(big)


def test_negation_of_lower_is_better(hand_table):
    nll = hand_table[hand_table["metric"] == "nll"]
    z_neg = sc.zscores(nll).set_index("backbone")["z"]
    z_raw = sc.zscores(nll, negate_lower=False).set_index("backbone")["z"]
    assert z_neg.idxmax() == "b"  # lowest loss wins
    assert z_raw.idxmax() == "a"
    assert np.allclose(z_neg.sort_index(), -z_raw.sort_index())
    signed = sc.setting_values(nll).set_index("backbone")["signed"]
    assert signed["a"] == -3.0


def test_seeds_are_averaged_before_z_scoring():
    table = _table([
        ("a", "t", "d", "top1", 0.0, True, 0), ("a", "t", "d", "top1", 2.0, True, 1),
        ("b", "t", "d", "top1", 3.0, True, 0), ("b", "t", "d", "top1", 5.0, True, 1),
    ])
    values = sc.setting_values(table).set_index("backbone")
    assert values.loc["a", "value"] == 1.0 and values.loc["a", "n_seeds"] == 2
    z = sc.zscores(table).set_index("backbone")["z"]
    assert z["a"] == pytest.approx(-1.0) and z["b"] == pytest.approx(1.0)


def test_ties_small_settings_and_options():
    table = _table([
        ("a", "t", "d1", "top1", 0.5, True), ("b", "t", "d1", "top1", 0.5, True),  # all tie -> z = 0
        ("a", "t", "d2", "top1", 0.9, True),  # only one backbone -> dropped
        ("a", "t", "d3", "top1", 1.0, True), ("b", "t", "d3", "top1", 2.0, True), ("c", "t", "d3", "top1", 6.0, True),
    ])
    z = sc.zscores(table)
    assert set(z["dataset"]) == {"d1", "d3"}
    assert (z.loc[z["dataset"] == "d1", "z"] == 0).all()
    z1 = sc.zscores(table, ddof=1, min_backbones=1).set_index(["backbone", "dataset"])["z"]
    assert z1[("c", "d3")] == pytest.approx(sps.zscore([1.0, 2.0, 6.0], ddof=1)[2])
    assert z1[("a", "d2")] == 0.0
    med = sc.scores(table, setting_agg="median").set_index("backbone")
    assert med.loc["a", "t"] == pytest.approx(np.median([0.0, sps.zscore([1.0, 2.0, 6.0])[0]]))
    with pytest.raises(InsufficientDataError):
        sc.zscores(table.iloc[:0])


def test_spearman_equals_scipy():
    x = np.array([3.1, 1.2, 5.5, 4.4, 2.0, 9.1, 7.7, 6.0, 8.8, 0.5])
    y = np.array([2.0, 1.0, 4.0, 6.0, 3.0, 10.0, 7.0, 5.0, 8.0, 9.0])
    res = corr.spearman(x, y, n_boot=300, seed=1)
    ref = sps.spearmanr(x, y)
    assert res["rho"] == pytest.approx(ref.statistic, abs=1e-12)
    assert res["pvalue"] == pytest.approx(ref.pvalue, abs=1e-12)
    assert res["n"] == 10
    assert res["ci_low"] <= res["rho"] <= res["ci_high"]
    # ties and missing values: pairs with NaN dropped, ranks averaged as scipy does
    xt = np.array([1, 2, 2, 3, 4, np.nan, 5, 5])
    yt = np.array([1, 3, 2, 2, 5, 1.0, 4, 6])
    ok = ~np.isnan(xt)
    assert corr.spearman(xt, yt, n_boot=0)["rho"] == pytest.approx(sps.spearmanr(xt[ok], yt[ok]).statistic)
    assert math.isnan(corr.spearman([1, 2], [2, 1])["rho"])
    assert math.isnan(corr.spearman([1, 1, 1, 1], [1, 2, 3, 4])["rho"])


def test_correlate_by_group_matches_scipy():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "family": ["CNN"] * 12 + ["ViT"] * 10 + ["hierarchical-ViT"] * 6,
        "params_millions": rng.uniform(5, 300, 28),
        "overall": rng.normal(size=28),
    })
    table = corr.correlate_by_group(frame, "params_millions", "overall", n_boot=100,
                                     extra_groups={"ViT-like": ["ViT", "hierarchical-ViT"]}).set_index("group")
    for fam in ("CNN", "ViT", "hierarchical-ViT"):
        part = frame[frame["family"] == fam]
        assert table.loc[fam, "rho"] == pytest.approx(sps.spearmanr(part["params_millions"], part["overall"]).statistic)
    pooled = frame[frame["family"] != "CNN"]
    assert table.loc["ViT-like", "n"] == 16
    assert table.loc["ViT-like", "rho"] == pytest.approx(sps.spearmanr(pooled["params_millions"], pooled["overall"]).statistic)
    assert table.loc["all", "n"] == 28


def test_correlation_matrix_equals_pandas_spearman():
    rng = np.random.default_rng(3)
    wide = pd.DataFrame(rng.normal(size=(15, 3)), columns=["cls", "det", "ret"])
    matrix, pairs = corr.correlation_matrix(wide, n_boot=50)
    expected = wide.corr(method="spearman")
    assert np.allclose(matrix.to_numpy(), expected.to_numpy())
    assert len(pairs) == 3
    assert corr.pair_stats(pairs)["n_pairs"] == 3
    with pytest.raises(InsufficientDataError):
        corr.correlation_matrix(wide[["cls"]])


def _noisy_table(n_settings: int, n_backbones: int = 8, seed: int = 0, seeds: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    quality = np.linspace(-1, 1, n_backbones)
    rows = []
    for s in range(n_settings):
        for b in range(n_backbones):
            for k in range(seeds):
                rows.append((f"bb{b}", "cls", f"d{s}", "top1", quality[b] + rng.normal(scale=1.0), True, k))
    return _table(rows)


def test_bootstrap_intervals_contain_point_and_shrink_with_more_settings():
    few = sc.leaderboard(_noisy_table(4), n_boot=400, seed=0)
    many = sc.leaderboard(_noisy_table(40), n_boot=400, seed=0)
    for board in (few, many):
        assert (board["score_lo"] <= board["score"] + 1e-12).all()
        assert (board["score"] <= board["score_hi"] + 1e-12).all()
        assert (board["rank_lo"] <= board["rank_hi"]).all()
    width_few = (few["score_hi"] - few["score_lo"]).mean()
    width_many = (many["score_hi"] - many["score_lo"]).mean()
    assert width_many < 0.6 * width_few
    rank_width_few = (few["rank_hi"] - few["rank_lo"]).mean()
    rank_width_many = (many["rank_hi"] - many["rank_lo"]).mean()
    assert rank_width_many < rank_width_few
    assert many.iloc[0]["backbone"] == "bb7"  # the best latent quality wins with enough settings
    assert list(many["rank"]) == sorted(many["rank"])


def test_bootstrap_resamples_seeds():
    table = _noisy_table(1, seeds=5)
    with_seeds = sc.leaderboard(table, n_boot=200)
    without = sc.leaderboard(table, n_boot=200, resample=("settings",))
    assert ((with_seeds["score_hi"] - with_seeds["score_lo"]) > 0).all()
    # one setting, no seed resampling, no known standard error: nothing varies, so no interval (not a zero-width one)
    assert without["score_lo"].isna().all() and without["score_hi"].isna().all()
    assert without["rank_lo"].isna().all()
    boot = sc.bootstrap_scores(table, n_boot=10)
    assert boot.overall.shape == (10, 8) and boot.max_seeds == 5
    with pytest.raises(ValueError):
        sc.bootstrap_scores(table, resample=("backbones",))


def test_leaderboard_point_matches_scores(hand_table):
    board = sc.leaderboard(hand_table, n_boot=50).set_index("backbone")
    scores = sc.scores(hand_table).set_index("backbone")
    assert np.allclose(board.loc[scores.index, "score"], scores["overall"])
    task_board = sc.leaderboard(hand_table, level="ret", n_boot=50)
    assert task_board.iloc[0]["backbone"] == "a"
    with pytest.raises(InsufficientDataError):
        sc.leaderboard(hand_table, level="detection", n_boot=10)


def test_scale_regression_recovers_known_slopes():
    rng = np.random.default_rng(0)
    n = 80
    family = np.array(["CNN", "ViT"] * (n // 2))
    params = 10 ** rng.uniform(0.5, 2.5, n)
    images = 10 ** rng.uniform(6, 9, n)
    kind = rng.choice(["supervised", "SSL"], n)
    score = (0.3 * np.log10(params) + 0.4 * (family == "ViT") * np.log10(params) + 0.2 * np.log10(images)
             + 0.5 * (kind == "SSL") + rng.normal(scale=0.01, size=n))
    frame = pd.DataFrame({"backbone": [f"b{i}" for i in range(n)], "overall": score, "family": family,
                          "params_millions": params, "pretrain_images": images, "method_kind": kind})
    fit = regression_mod.scale_regression(frame)
    coef = fit.table.set_index("term")["coef"]
    assert coef["log_params"] == pytest.approx(0.3, abs=0.02)
    assert coef["log_data"] == pytest.approx(0.2, abs=0.02)
    assert regression_mod.term_effect(fit, "[T.SSL]")["coef"] == pytest.approx(0.5, abs=0.02)
    slopes = regression_mod.family_slopes(fit).set_index("family")["slope_per_decade"]
    assert slopes["CNN"] == pytest.approx(0.3, abs=0.02) and slopes["ViT"] == pytest.approx(0.7, abs=0.02)
    # one family, one method kind: those terms are dropped
    single = frame[frame["family"] == "CNN"].assign(method_kind="supervised")
    fit1 = regression_mod.scale_regression(single)
    assert "C(family)" in fit1.dropped_terms and "C(method_kind)" in fit1.dropped_terms
    assert "Dropped for lack of variation" in prose.describe_regression(fit1)
    with pytest.raises(InsufficientDataError):
        regression_mod.scale_regression(frame.head(3))


def test_matched_pairs_and_paired_summary():
    frame = pd.DataFrame({
        "backbone": ["sup_s", "dino_s", "sup_b", "mae_b", "moco_b", "sup_l"],
        "display_name": ["sup_s", "dino_s", "sup_b", "mae_b", "moco_b", "sup_l"],
        "architecture": ["vit_s", "vit_s", "vit_b", "vit_b", "vit_b", "vit_l"],
        "pretrain_data": ["in1k"] * 6,
        "method_kind": ["supervised", "SSL", "supervised", "SSL", "SSL", "supervised"],
        "method": ["supervised", "DINO", "supervised", "MAE", "MoCo", "supervised"],
        "overall": [0.0, 0.5, 1.0, 0.2, 1.3, 2.0],
    })
    pairs = cmp.matched_pairs(frame)
    assert sorted(pairs["b_backbone"]) == ["dino_s", "mae_b", "moco_b"]
    assert dict(zip(pairs["b_backbone"], pairs["diff"])) == pytest.approx({"dino_s": 0.5, "mae_b": -0.8, "moco_b": 0.3})
    summary = cmp.paired_summary(pairs["diff"], n_boot=100)
    assert summary["n"] == 3 and summary["mean"] == pytest.approx(0.0)
    assert summary["share_positive"] == pytest.approx(2 / 3)
    assert "3 matched pairs" in prose.describe_paired(summary, "SSL", "supervised")


def test_protocol_comparison_and_rank_agreement():
    rows = []
    for i, b in enumerate(["a", "b", "c", "d"]):
        for proto, val in (("linear_probe", 0.5 + 0.1 * i), ("finetune", 0.6 + 0.1 * i)):
            rows.append({"backbone": b, "task": "classification", "dataset": "fm", "protocol": proto,
                         "metric": "top1", "value": val, "higher_is_better": True})
        rows.append({"backbone": b, "task": "classification", "dataset": "fm", "protocol": "finetune",
                     "metric": "nll", "value": 1.0, "higher_is_better": False})
    table = conform(pd.DataFrame(rows))
    comp = cmp.protocol_comparison(table)
    assert set(comp["metric"]) == {"top1"}
    assert np.allclose(comp["delta"], 0.1)
    agree = cmp.rank_agreement(comp, n_boot=0)
    assert agree["rho"].iloc[0] == pytest.approx(1.0)
    with pytest.raises(InsufficientDataError):
        cmp.protocol_comparison(table[table["protocol"] == "finetune"])


def _protocol_table_with_controls() -> pd.DataFrame:
    """Three pretrained backbones that gain +0.01 from fine-tuning and three random-init controls that gain +0.3."""
    rows = []
    for i, (b, kind) in enumerate([("p1", "supervised"), ("p2", "SSL"), ("p3", "supervised"),
                                   ("r1", "random"), ("r2", "random"), ("r3", "random")]):
        base = 0.7 + 0.05 * i if kind != "random" else 0.1 + 0.02 * i
        gain = 0.01 if kind != "random" else 0.3
        for proto, val in (("linear_probe", base), ("finetune", base + gain + (0.1 * i if kind == "random" else 0))):
            rows.append({"backbone": b, "task": "classification", "dataset": "fm", "protocol": proto,
                         "metric": "top1", "value": val, "higher_is_better": True, "method_kind": kind,
                         "family": "CNN", "stderr": 0.02})
    return conform(pd.DataFrame(rows))


def test_protocol_gain_and_rank_agreement_leave_the_controls_out():
    comp = cmp.protocol_comparison(_protocol_table_with_controls())
    assert len(comp) == 6  # the comparison itself shows every backbone (controls labelled by method_kind)
    gain = cmp.protocol_gain(comp, n_boot=200)
    assert gain["n"] == 3 and gain["mean"] == pytest.approx(0.01)  # was 6 pairs, mean +0.175
    assert gain["n_controls_left_out"] == 3
    agree = cmp.rank_agreement(comp, n_boot=0)
    assert agree["n"].iloc[0] == 3 and agree["mean_delta"].iloc[0] == pytest.approx(0.01)
    assert agree["rho"].iloc[0] == pytest.approx(1.0)  # the pretrained keep their order; with controls rho differs
    text = prose.describe_protocols(comp, agree, "linear_probe", "finetune", gain)
    assert "over 3 pretrained backbone x dataset pairs" in text and "3 random-init control pairs left out of the pooled numbers" in text
    pooled_rho = corr.pretrained_spearman(comp, "linear_probe", "finetune", n_boot=0)
    assert pooled_rho["n"] == 3 and pooled_rho["n_controls_left_out"] == 3
    with_controls = cmp.protocol_gain(comp, n_boot=0, pool_exclude=())
    assert with_controls["n"] == 6 and with_controls["n_controls_left_out"] == 0


def test_group_difference_carries_each_rows_within_cell_standard_error():
    frame = pd.DataFrame({"backbone": list("abcdef"), "g": ["x"] * 3 + ["y"] * 3,
                          "delta": [0.0, 0.0, 0.0, 0.1, 0.1, 0.1]})
    plain = cmp.group_difference(frame, "delta", "g", a="x", b="y", n_boot=400)
    assert math.isnan(plain["ci_low"])  # nothing varies: no interval, not a zero-width one
    noisy = cmp.group_difference(frame.assign(delta_se=0.05), "delta", "g", a="x", b="y", n_boot=400)
    # each group's mean of three rows resampled with replacement from three N(., 0.05) draws has variance
    # 0.05^2 / 3 (the draws) + 0.05^2 (2 / 3) / 3 (the resampling); the difference of two such means:
    assert noisy["diff"] == pytest.approx(0.1)
    sd = 0.05 * math.sqrt(2 * (1 + 2 / 3) / 3)
    assert noisy["ci_high"] - noisy["ci_low"] == pytest.approx(2 * 1.96 * sd, rel=0.15)
    assert noisy["stderr_column"] == "delta_se"


def test_effective_robustness_on_logit_axes_by_default_probit_on_request_and_zero_accuracy_dropped():
    """Taori et al.'s testbed fits logit axes; a model at 0% accuracy is left out of the fit, not clipped into it."""
    id_acc = np.linspace(0.5, 0.9, 30)
    logit = np.log(id_acc / (1 - id_acc))
    ood = 1 / (1 + np.exp(-(-1.0 + 1.2 * logit)))
    frame = pd.DataFrame({"id_acc": [*id_acc, 0.6], "ood": [*ood, 0.0]})  # the last model: 0% under the shift
    er, trend = id_ood.effective_robustness(frame, "ood")
    assert trend["scale"] == "logit" and id_ood.DEFAULT_SCALE == "logit"
    assert trend["slope"] == pytest.approx(1.2, abs=1e-9) and trend["intercept"] == pytest.approx(-1.0, abs=1e-9)
    assert trend["n"] == 30 and trend["n_dropped"] == 1 and trend["r2"] == pytest.approx(1.0)  # was n 31, r2 < 1
    assert np.allclose(er[:30], 0, atol=1e-9) and er.iloc[-1] < 0  # its effective robustness is still reported
    probit = id_ood.fit_trend(frame["id_acc"], frame["ood"], scale="probit")
    assert probit["scale"] == "probit" and probit["r2"] < 1.0  # a logit-linear trend is not probit-linear
    text = prose.describe_id_ood("imagenet_a", id_ood.correlations(frame["id_acc"], frame["ood"]), trend)
    assert "logit" in text and "1 model at 0% or 100% accuracy left out of the fit" in text
    with pytest.raises(ValueError, match="scale='linear'"):
        id_ood.fit_trend(id_acc, ood, scale="linear")


def test_probit_trend_and_effective_robustness():
    id_acc = np.linspace(0.5, 0.9, 30)
    ood = sps.norm.cdf(0.2 + 1.5 * id_ood.probit(id_acc))
    frame = pd.DataFrame({"id_acc": id_acc, "ood": ood, "group": ["base"] * 30})
    frame.loc[len(frame)] = {"id_acc": 0.7, "ood": 0.9, "group": "robust"}
    er, trend = id_ood.effective_robustness(frame, "ood", baseline="group == 'base'", scale="probit")
    assert trend["slope"] == pytest.approx(1.5, abs=1e-6) and trend["intercept"] == pytest.approx(0.2, abs=1e-6)
    assert np.allclose(er[:30], 0, atol=1e-6)
    assert er.iloc[-1] == pytest.approx(0.9 - sps.norm.cdf(0.2 + 1.5 * id_ood.probit(0.7)))
    corr = id_ood.correlations(frame["id_acc"], frame["ood"])
    assert corr["pearson"] == pytest.approx(frame["id_acc"].corr(frame["ood"]))
    summary = cmp.group_summary(frame.assign(er=er), "er", "group", n_boot=50)
    assert summary.iloc[0]["group"] == "robust"


def test_place_backbones_on_shared_settings():
    reference = _noisy_table(6, seed=1)
    mine = reference[reference["backbone"] == "bb3"].assign(backbone="mine", display_name="mine")
    # a setting the reference lacks: a new dataset is a new setting_id
    extra = conform(mine.drop(columns=["setting_id"]).assign(dataset="private", setting="cls/private/linear_probe"))
    board, matches = cmp.place_backbones(pd.concat([mine, extra]), reference[reference["backbone"] != "bb3"],
                                         n_boot=100)
    assert (matches["match"] == "exact").sum() == 6
    assert matches.set_index("dataset").loc["private", "match"] == "none"
    row = board[board["mine"]].iloc[0]
    assert row["backbone"] == "mine" and row["rank_lo"] <= row["rank"] <= row["rank_hi"]
    with pytest.raises(InsufficientDataError):
        cmp.place_backbones(extra, reference, n_boot=10)


def test_metric_pairs_and_main_metric(hand_table):
    pairs = id_ood.metric_pairs(hand_table, {"metric": "top1"}, {"metric": "nll"}, x_name="acc", y_name="nll")
    assert dict(zip(pairs["backbone"], pairs["nll"])) == {"a": 3.0, "b": 1.0, "c": 2.0}
    assert settings.main_metric(hand_table, task="cls") == "top1"
    assert settings.main_metric(hand_table, task="ret") == "map"
    with pytest.raises(InsufficientDataError):
        id_ood.metric_pairs(hand_table, {"metric": "top1"}, {"metric": "ece"})
    with pytest.raises(InsufficientDataError):
        settings.main_metric(hand_table, task="robustness")


def test_primary_metrics_pick_one_score_per_task():
    from fixtures_analysis import make_results

    table = make_results(seeds=(0,))
    scored = settings.primary_metrics(table)
    kept = scored.groupby("task")["metric"].unique().map(sorted).to_dict()
    assert kept == {"classification": ["top1"], "detection": ["box_ap"], "ood": ["acc/mnist5k"],
                    "retrieval": ["mrr"], "robustness": ["acc/fgsm/1", "acc/pgd/1"]}
    assert scored.attrs["primary"]["robustness"].startswith("acc/")
    custom = settings.primary_metrics(table, {"retrieval": ("map",)})
    assert set(custom.loc[custom["task"] == "retrieval", "metric"]) == {"map"}
    assert set(custom.loc[custom["task"] == "classification", "metric"]) == {"top1"}  # unlisted task: top1
    assert "classification: top1" in prose.describe_primary(scored)


def test_primary_metrics_rank_chexpert_by_mean_auroc():
    """A multi-label dataset reports mean AUROC (and per-label AUROCs), no top-1: its rows are scored by the mean
    AUROC beside the single-label datasets' top-1, and neither top-5 nor a per-label AUROC is scored."""
    rows = [("classification", "imagenet_1k", b, m, v) for b in "ab" for m, v in (("top1", 0.7), ("top5", 0.9))]
    rows += [("classification", "chexpert", b, m, v) for b in "ab"
             for m, v in (("mean_auroc", 0.8), ("auroc/edema", 0.85), ("se/mean_auroc", 0.01))]
    table = pd.DataFrame(rows, columns=["task", "dataset", "backbone", "metric", "value"])
    scored = settings.primary_metrics(table)
    kept = scored.groupby("dataset")["metric"].unique().map(sorted).to_dict()
    assert kept == {"chexpert": ["mean_auroc"], "imagenet_1k": ["top1"]}
    assert len(scored) == 4


def test_robustness_and_calibration_pairs():
    from fixtures_analysis import make_results

    table = make_results(seeds=(0,))
    ood = id_ood.robustness_pairs(table, "ood")
    assert ood.attrs["x_label"] == "ood id_acc" and ood.attrs["y_metrics"] == ["acc/mnist5k"]
    expected = table[(table["task"] == "ood") & (table["metric"] == "acc/mnist5k")].set_index("backbone")["value"]
    assert np.allclose(ood.set_index("backbone")["robustness"], expected.loc[ood["backbone"]])
    adv = id_ood.robustness_pairs(table, "robustness")
    assert adv.attrs["y_metrics"] == ["acc/fgsm/1", "acc/pgd/1"] and adv.attrs["x_label"] == "robustness top1"
    # a table whose OOD rows are plain top-1 (timm): clean accuracy comes from the classification task
    timm_like = table[table["metric"].isin(["top1"]) & table["task"].isin(["classification"])].copy()
    shifted = timm_like.assign(task="ood", value=timm_like["value"] - 0.2)
    pairs = id_ood.robustness_pairs(pd.concat([timm_like, shifted]), "ood")
    assert pairs.attrs["x_label"] == "classification top1"
    assert np.allclose(pairs["accuracy"] - pairs["robustness"], 0.2)
    cal = id_ood.calibration_pairs(table)
    assert cal.attrs["x_label"] == "robustness top-1" and len(cal) == table["backbone"].nunique()
    assert sps.spearmanr(cal["accuracy"], cal["calibration"]).statistic < -0.5
    with pytest.raises(InsufficientDataError):
        id_ood.robustness_pairs(table, "segmentation")
    with pytest.raises(InsufficientDataError):
        id_ood.calibration_pairs(table, metric="brier")
