"""Every number carries its sampling uncertainty: within-cell standard errors inside the bootstrap, no zero-width
95% intervals, intervals on stated differences (ViT vs CNN, SSL vs supervised, top 3), cluster resampling,
random-init controls outside the pools. Synthetic tables where the answer is known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bobkit.analysis import comparisons as cmp
from bobkit.analysis import correlation as corr
from bobkit.analysis import scores as sc
from bobkit.analysis import uncertainty as unc
from bobkit.analysis.errors import InsufficientDataError
from bobkit.results.schema import conform


def _one_setting(values: dict[str, float], *, stderr: float | None = None, n_items: float | None = None,
                 kinds: dict[str, str] | None = None, metric: str = "top1") -> pd.DataFrame:
    rows = []
    for backbone, value in values.items():
        row = {"backbone": backbone, "task": "classification", "dataset": "d", "protocol": "linear_probe",
               "metric": metric, "value": value, "higher_is_better": True,
               "method_kind": (kinds or {}).get(backbone, "supervised")}
        if stderr is not None:
            row["stderr"] = stderr
        if n_items is not None:
            row["n_items"] = n_items
        rows.append(row)
    return conform(pd.DataFrame(rows))


def test_binomial_stderr_and_fallback():
    assert unc.binomial_stderr(0.8, 100) == pytest.approx(math.sqrt(0.8 * 0.2 / 100))
    assert np.isnan(unc.binomial_stderr(1.5, 100)) and np.isnan(unc.binomial_stderr(0.5, 0))
    table = _one_setting({"a": 0.9, "b": 0.6}, n_items=400)
    se = unc.within_cell_stderr(table)
    assert se.tolist() == pytest.approx([math.sqrt(0.9 * 0.1 / 400), math.sqrt(0.6 * 0.4 / 400)])
    # a recorded standard error wins over the binomial bound; a loss has no bound
    table = _one_setting({"a": 0.9, "b": 0.6}, n_items=400, stderr=0.05)
    assert unc.within_cell_stderr(table).tolist() == pytest.approx([0.05, 0.05])
    assert unc.within_cell_stderr(_one_setting({"a": 2.0}, n_items=400, metric="nll")).isna().all()


def test_percentile_interval_never_claims_certainty():
    lo, hi = unc.percentile_interval(np.full((100, 2), 1.97))
    assert np.isnan(lo).all() and np.isnan(hi).all()
    lo, hi = unc.percentile_interval(np.random.default_rng(0).normal(size=(2000, 1)))
    assert lo[0] == pytest.approx(-1.96, abs=0.15) and hi[0] == pytest.approx(1.96, abs=0.15)


def test_a_one_setting_task_has_a_non_zero_interval_from_its_test_items():
    """One setting, one seed: before, the interval was [x, x]; now the cells' sampling error gives it width."""
    values = {"a": 0.70, "b": 0.72, "c": 0.90, "d": 0.50}
    with_items = sc.leaderboard(_one_setting(values, n_items=200), n_boot=300, seed=0)
    assert ((with_items["score_hi"] - with_items["score_lo"]) > 0.05).all()
    assert (with_items["score_lo"] <= with_items["score"]).all() and (with_items["score"] <= with_items["score_hi"]).all()
    # a and b are 0.02 apart with n = 200 (se about 0.03): their rank intervals overlap
    rows = with_items.set_index("backbone")
    assert rows.loc["a", "rank_hi"] >= rows.loc["b", "rank_lo"]
    # more test items, narrower intervals
    big = sc.leaderboard(_one_setting(values, n_items=20000), n_boot=300, seed=0)
    assert (big["score_hi"] - big["score_lo"]).mean() < 0.5 * (with_items["score_hi"] - with_items["score_lo"]).mean()
    # nothing known about the items: no interval at all, never a zero-width one
    unknown = sc.leaderboard(_one_setting(values), n_boot=100)
    assert unknown["score_lo"].isna().all() and unknown["rank_lo"].isna().all()
    assert unknown.attrs["within_cell"] is False and with_items.attrs["within_cell"] is True


def test_within_cell_noise_matches_its_standard_error():
    """Two backbones in two settings: the bootstrap spread of a raw seed mean equals the recorded stderr."""
    table = _one_setting({"a": 0.5, "b": 0.6, "c": 0.7}, stderr=0.02)
    cube = sc.setting_cube(table)
    rng = np.random.default_rng(1)
    draws = np.array([sc._draw_means(cube, rng, seeds=True, items=True)[:, 0] for _ in range(4000)])
    assert draws.std(axis=0) == pytest.approx([0.02, 0.02, 0.02], rel=0.08)
    assert draws.mean(axis=0) == pytest.approx([0.5, 0.6, 0.7], abs=0.003)


def test_random_init_controls_stay_out_of_the_pool_but_on_the_board():
    pretrained = {"a": 0.6, "b": 0.7, "c": 0.8}
    kinds = {"rand": "random"}
    with_control = _one_setting({**pretrained, "rand": 0.1}, kinds=kinds)
    z = sc.zscores(with_control).set_index("backbone")["z"]
    # the pool is a, b, c: mean 0.7, std sqrt(2/3) * 0.1
    sd = np.std([0.6, 0.7, 0.8])
    assert z["a"] == pytest.approx(-0.1 / sd) and z["c"] == pytest.approx(0.1 / sd)
    assert z["rand"] == pytest.approx((0.1 - 0.7) / sd)
    board = sc.leaderboard(with_control, n_boot=20).set_index("backbone")
    assert bool(board.loc["rand", "baseline"]) and not board.loc[list(pretrained), "baseline"].any()
    # pooled with everyone (the old behaviour), the control drags the mean down and shrinks the spread
    pooled = sc.zscores(with_control, pool_exclude=()).set_index("backbone")["z"]
    assert pooled["a"] > z["a"]
    # and it is kept out of scale correlations
    frame = pd.DataFrame({"backbone": list("abcdr"), "params_millions": [1, 2, 3, 4, 5.0],
                          "overall": [1, 2, 3, 4, -9.0], "family": ["CNN"] * 5,
                          "method_kind": ["supervised"] * 4 + ["random"]})
    assert corr.correlate_by_group(frame, "params_millions", "overall", n_boot=0).set_index("group").loc[
        "all", "rho"] == pytest.approx(1.0)


def _clustered(n_arch: int = 12, tags: int = 8, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.uniform(1, 100, n_arch)
    y = 0.5 * np.log(x) + rng.normal(scale=1.0, size=n_arch)
    return pd.DataFrame({"architecture": np.repeat([f"arch{i}" for i in range(n_arch)], tags),
                         "params_millions": np.repeat(x, tags),
                         "overall": np.repeat(y, tags) + rng.normal(scale=1e-3, size=n_arch * tags),
                         "family": "CNN"})


def test_cluster_bootstrap_resamples_architectures_not_tags():
    frame = _clustered()
    naive = corr.spearman(frame["params_millions"], frame["overall"], n_boot=400, seed=0)
    clustered = corr.spearman(frame["params_millions"], frame["overall"], n_boot=400, seed=0,
                              clusters=frame["architecture"])
    assert clustered["n"] == 96 and clustered["n_clusters"] == 12
    assert clustered["rho"] == naive["rho"]
    # 8 copies of each architecture are not 8 times the evidence: the clustered interval is much wider
    assert (clustered["ci_high"] - clustered["ci_low"]) > 1.8 * (naive["ci_high"] - naive["ci_low"])
    by_group = corr.correlate_by_group(frame, "params_millions", "overall", n_boot=200, cluster="architecture")
    assert by_group.set_index("group").loc["all", "n_clusters"] == 12
    summary = cmp.group_summary(frame.assign(g="x"), "overall", "g", n_boot=200, cluster="architecture")
    assert summary["n_clusters"].iloc[0] == 12


def test_vit_vs_cnn_correlation_difference_has_an_interval():
    rng = np.random.default_rng(3)
    n = 40
    params = rng.uniform(5, 300, 2 * n)
    family = np.array(["ViT"] * n + ["CNN"] * n)
    overall = np.where(family == "ViT", np.log(params), rng.normal(size=2 * n))  # ViT: rho 1; CNN: rho about 0
    frame = pd.DataFrame({"backbone": [f"b{i}" for i in range(2 * n)], "family": family, "params_millions": params,
                          "overall": overall})
    diff = corr.correlation_difference(frame, "params_millions", "overall", n_boot=400, seed=0)
    cnn_rho = sps.spearmanr(params[n:], overall[n:]).statistic
    assert diff["rho_a"] == pytest.approx(1.0) and diff["rho_b"] == pytest.approx(cnn_rho)
    assert diff["diff"] == pytest.approx(1.0 - cnn_rho)
    assert diff["ci_low"] > 0.4 and diff["ci_high"] <= 2.0 and diff["p_a_greater"] > 0.99
    # hierarchical ViTs count as ViTs through group_map
    renamed = frame.assign(family=np.where(family == "ViT", "hierarchical-ViT", "CNN"))
    mapped = corr.correlation_difference(renamed, "params_millions", "overall", n_boot=50,
                                         group_map={"hierarchical-ViT": "ViT"})
    assert mapped["diff"] == pytest.approx(diff["diff"])
    with pytest.raises(InsufficientDataError, match="ViT"):
        corr.correlation_difference(frame[frame["family"] == "CNN"], "params_millions", "overall", n_boot=10)


def test_score_replicates_widen_correlation_intervals():
    frame = pd.DataFrame({"backbone": [f"b{i}" for i in range(30)], "family": "CNN",
                          "params_millions": np.arange(1, 31, dtype=float), "overall": np.arange(30, dtype=float)})
    exact = corr.spearman(frame["params_millions"], frame["overall"], n_boot=300)
    noisy_reps = frame["overall"].to_numpy() + np.random.default_rng(0).normal(scale=10.0, size=(300, 30))
    noisy = corr.spearman(frame["params_millions"], frame["overall"], n_boot=300, y_replicates=noisy_reps)
    assert exact["rho"] == noisy["rho"] == pytest.approx(1.0)
    assert np.isnan(exact["ci_low"])  # every resample of a perfect ranking is perfect: no zero-width interval
    assert noisy["ci_low"] < 0.8


def test_top_three_gap():
    """Is the 3rd really ahead of the 4th? Known answers: far apart, then tied."""
    apart = _one_setting({"a": 0.95, "b": 0.90, "c": 0.85, "d": 0.60, "e": 0.55}, n_items=5000)
    gap = sc.leaderboard(apart, n_boot=300).attrs["top_gap"]
    assert (gap["above"], gap["below"]) == ("c", "d")
    assert gap["p_ahead"] == 1.0 and gap["ci_low"] > 0
    tied = _one_setting({"a": 0.95, "b": 0.90, "c": 0.700, "d": 0.699, "e": 0.55}, n_items=300)
    gap = sc.leaderboard(tied, n_boot=300).attrs["top_gap"]
    assert gap["ci_low"] < 0 < gap["ci_high"] and 0.2 < gap["p_ahead"] < 0.8
    # baselines are not counted in the top 3
    with_control = _one_setting({"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6, "r": 0.99}, kinds={"r": "random"},
                                n_items=1000)
    assert sc.leaderboard(with_control, n_boot=50).attrs["top_gap"]["below"] == "d"


def test_ssl_vs_supervised_difference_carries_score_uncertainty():
    frame = pd.DataFrame({"backbone": ["sup1", "ssl1", "sup2", "ssl2", "sup3", "ssl3"],
                          "architecture": ["v1", "v1", "v2", "v2", "v3", "v3"], "pretrain_data": ["in1k"] * 6,
                          "method_kind": ["supervised", "SSL"] * 3, "overall": [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]})
    pairs = cmp.matched_pairs(frame)
    assert pairs["diff"].tolist() == pytest.approx([0.5, 0.5, 0.5])
    plain = cmp.paired_summary(pairs["diff"], n_boot=200)
    assert np.isnan(plain["ci_low"])  # three equal differences: nothing to resample
    reps = pd.DataFrame(frame.set_index("backbone")["overall"].to_numpy()
                        + np.random.default_rng(0).normal(scale=0.3, size=(200, 6)), columns=frame["backbone"])
    combined = cmp.paired_summary(pairs["diff"], n_boot=200, replicates=cmp.pair_differences(pairs, reps))
    assert combined["mean"] == pytest.approx(0.5)
    assert combined["ci_low"] < 0.5 < combined["ci_high"] and combined["ci_high"] - combined["ci_low"] > 0.2
    diff = cmp.group_difference(frame, "overall", "method_kind", a="supervised", b="SSL", n_boot=300)
    assert diff["diff"] == pytest.approx(0.5) and diff["n_a"] == diff["n_b"] == 3
    assert diff["ci_low"] < 0.5 < diff["ci_high"]


def test_protocol_gain_uses_each_pairs_standard_error():
    rows = []
    for b, base in zip("abcde", (0.5, 0.6, 0.7, 0.8, 0.85)):
        for proto, value in (("linear_probe", base), ("finetune", base + 0.05)):
            rows.append({"backbone": b, "task": "classification", "dataset": "d", "protocol": proto,
                         "metric": "top1", "value": value, "higher_is_better": True, "n_items": 100})
    table = conform(pd.DataFrame(rows))
    comparison = cmp.protocol_comparison(table)
    assert comparison["delta"].tolist() == pytest.approx([0.05] * 5)
    expected_se = np.sqrt(table["value"].to_numpy()[::2] * (1 - table["value"].to_numpy()[::2]) / 100
                          + table["value"].to_numpy()[1::2] * (1 - table["value"].to_numpy()[1::2]) / 100)
    assert comparison.sort_values("backbone")["delta_se"].to_numpy() == pytest.approx(expected_se)
    gain = cmp.protocol_gain(comparison, n_boot=400)
    assert gain["mean"] == pytest.approx(0.05) and gain["ci_low"] < 0.05 < gain["ci_high"]


def test_highest_group_carries_an_interval_on_its_lead():
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"g": np.repeat(["clip", "in21k", "in1k"], 30),
                          "arch": [f"a{i % 10}" for i in range(90)],
                          "er": np.concatenate([rng.normal(0.10, 0.01, 30), rng.normal(0.02, 0.01, 30),
                                                rng.normal(0.0, 0.01, 30)])})
    summary = cmp.group_summary(frame, "er", "g", n_boot=200, cluster="arch")
    assert summary["g"].tolist() == ["clip", "in21k", "in1k"]
    lead = cmp.best_vs_next(frame, "er", "g", summary, n_boot=200, cluster="arch")
    assert (lead["b"], lead["a"]) == ("clip", "in21k")
    assert lead["diff"] == pytest.approx(frame.groupby("g")["er"].mean().pipe(lambda m: m["clip"] - m["in21k"]))
    assert 0.05 < lead["ci_low"] < lead["diff"] < lead["ci_high"] and lead["p_b_greater"] == 1.0
    from bobkit.analysis import prose

    text = prose.describe_best_group(summary, "g", "effective robustness", lead, scale=100, unit=" points", digits=1)
    assert text.startswith("Highest mean effective robustness by g: clip") and "ahead of in21k by 8." in text
    assert cmp.best_vs_next(frame, "er", "g", summary.head(1)) is None
