"""Settings compare like with like: rows are pooled only when their setting_id agrees, and a user's cells match a
reference setting exactly, only after dropping a parameter (said so), or not at all."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bobkit.analysis import comparisons as cmp
from bobkit.analysis import id_ood, prose, settings
from bobkit.analysis import scores as sc
from bobkit.analysis.errors import InsufficientDataError
from bobkit.results.schema import conform, setting_id


def _rows(values: dict[str, float], params: dict, *, dataset: str = "d", metric: str = "top1", seed: int = 0,
          task: str = "classification", protocol: str = "linear_probe", with_id: bool = True) -> list[dict]:
    out = []
    for backbone, value in values.items():
        row = {"backbone": backbone, "task": task, "dataset": dataset, "protocol": protocol, "metric": metric,
               "value": value, "higher_is_better": True, "seed": seed,
               "setting_params": json.dumps(params, sort_keys=True)}
        if with_id:
            row["setting_id"] = setting_id(task, dataset, protocol, metric, params)
        out.append(row)
    return out


def test_two_settings_that_differ_in_a_parameter_are_never_averaged():
    """48 px and 64 px runs of the same task/dataset/protocol/metric are two settings, not two seeds."""
    small = _rows({"a": 0.5, "b": 0.6, "c": 0.7}, {"image_size": 48})
    large = _rows({"a": 0.9, "b": 0.6, "c": 0.3}, {"image_size": 64})
    table = conform(pd.DataFrame(small + large))
    values = sc.setting_values(table)
    assert len(values) == 6 and values["n_seeds"].eq(1).all()
    labels = sorted(values["setting_id"].unique())
    assert labels == ["classification/d/linear_probe | top1 [image_size=48]",
                      "classification/d/linear_probe | top1 [image_size=64]"]
    # z-scored per setting: a is last at 48 px and first at 64 px; averaged as seeds it would tie b and c
    z = sc.zscores(table).pivot_table(index="backbone", columns="setting_id", values="z")
    assert z.loc["a"].tolist() == pytest.approx([-np.sqrt(1.5), np.sqrt(1.5)], abs=1e-9)
    board = sc.leaderboard(table, n_boot=20).set_index("backbone")
    assert board["n_settings"].eq(2).all()
    # seeds of one setting are averaged
    seeds = conform(pd.DataFrame(small + _rows({"a": 0.7, "b": 0.6, "c": 0.5}, {"image_size": 48}, seed=1)))
    values = sc.setting_values(seeds).set_index("backbone")
    assert values.loc["a", "value"] == pytest.approx(0.6) and values.loc["a", "n_seeds"] == 2


def test_old_tables_get_the_setting_id_bob_build_writes():
    """A table built before the schema columns existed: conform derives the same ids bob build writes."""
    old = pd.DataFrame(_rows({"a": 0.5, "b": 0.6}, {}, with_id=False)).drop(columns=["setting_params"])
    table = conform(old)
    assert (table["setting_id"] == setting_id("classification", "d", "linear_probe", "top1", {})).all()
    assert (table["setting_params"] == "{}").all()
    # a low-shot qualifier in an old setting label keeps that setting apart
    low_shot = old.assign(setting="classification/d/linear_probe/0.1-labels")
    assert conform(low_shot)["setting_id"].iloc[0] != table["setting_id"].iloc[0]
    # rows missing an id among rows that have one are filled, not left empty
    mixed = conform(pd.concat([pd.DataFrame(_rows({"c": 0.7}, {"image_size": 48})), old], ignore_index=True))
    assert mixed["setting_id"].notna().all() and mixed["setting_id"].nunique() == 2


def test_match_settings_exact_dropped_conflict():
    reference = conform(pd.DataFrame(
        _rows({"r1": 0.5, "r2": 0.6, "r3": 0.7}, {}, dataset="plain")
        + _rows({"r1": 0.4, "r2": 0.5, "r3": 0.6}, {"difficulty": "medium"}, dataset="oxford", metric="map")
        + _rows({"r1": 0.2, "r2": 0.3, "r3": 0.4}, {"difficulty": "hard"}, dataset="oxford", metric="map")))
    mine = conform(pd.DataFrame(
        _rows({"m": 0.65}, {}, dataset="plain")  # exact
        + _rows({"m": 0.35}, {"difficulty": "hard", "image_size": 64}, dataset="oxford", metric="map")  # dropped
        + _rows({"m": 0.55}, {"difficulty": "easy"}, dataset="oxford", metric="map")  # conflict
        + _rows({"m": 0.9}, {}, dataset="private")))  # nothing
    matches = settings.match_settings(mine, reference)
    by = {(r.dataset, r.match) for r in matches.itertuples()}
    assert by == {("plain", "exact"), ("oxford", "dropped"), ("oxford", "none"), ("private", "none")}
    dropped = matches[matches["match"] == "dropped"].iloc[0]
    assert dropped["dropped"] == "image_size=64 (yours)"
    assert dropped["reference_setting_id"] == setting_id("classification", "oxford", "linear_probe", "map",
                                                         {"difficulty": "hard"})
    conflict = matches[(matches["dataset"] == "oxford") & (matches["match"] == "none")].iloc[0]
    assert "difficulty: yours easy" in conflict["conflict"]
    sentence = prose.describe_matches(matches)
    assert "1 of your 4 settings match a reference setting exactly" in sentence
    assert "only after dropping image_size=64 (yours)" in sentence and "difficulty: yours easy" in sentence


def test_place_backbones_scores_a_dropped_match_in_the_reference_setting_and_never_pools_two():
    reference = conform(pd.DataFrame(_rows({"r1": 0.5, "r2": 0.6, "r3": 0.7, "r4": 0.8}, {}, dataset="plain")))
    mine = conform(pd.DataFrame(_rows({"m": 0.75}, {"image_size": 64}, dataset="plain")))
    board, matches = cmp.place_backbones(mine, reference, n_boot=20)
    assert matches["match"].tolist() == ["dropped"]
    assert board.set_index("backbone").loc["m", "rank"] == 2 and board["n_settings"].eq(1).all()
    with pytest.raises(InsufficientDataError):
        cmp.place_backbones(mine, reference, n_boot=20, allow_dropped=False)
    # two of your settings (48 and 64 px) would land in the same reference setting: neither is used
    two = conform(pd.DataFrame(_rows({"m": 0.75}, {"image_size": 64}, dataset="plain")
                               + _rows({"m": 0.55}, {"image_size": 48}, dataset="plain")))
    with pytest.raises(InsufficientDataError, match="none of your settings"):
        cmp.place_backbones(two, reference, n_boot=20)
    matches = settings.match_settings(two, reference)
    assert set(matches["match"]) == {"dropped"}


def test_per_backbone_pairs_use_one_setting_per_measurement():
    table = conform(pd.DataFrame(
        _rows({"a": 0.9, "b": 0.8, "c": 0.7}, {"epsilons": [1]}, task="robustness", metric="acc/pgd/1")
        + _rows({"a": 0.1, "b": 0.1}, {"epsilons": [2]}, task="robustness", metric="acc/pgd/1")
        + _rows({"a": 0.95, "b": 0.9, "c": 0.85}, {}, task="robustness", metric="top1")))
    pairs = id_ood.robustness_pairs(table, "robustness")
    # the setting with most backbones (eps list [1]) is used, the other is named, not averaged in
    assert dict(zip(pairs["backbone"], pairs["robustness"])) == pytest.approx({"a": 0.9, "b": 0.8, "c": 0.7})
    assert len(pairs.attrs["left_out"]) == 1 and "epsilons=[2]" in pairs.attrs["left_out"][0]


def _executed(rows: list[dict], device: str | None, precision: str | None) -> list[dict]:
    return [{**r, "device": device, "precision": precision} for r in rows]


def _mixed_execution_table() -> pd.DataFrame:
    """Backbone a: seeds 0 and 1 on the CPU in fp32, and seed 0 again on a GPU in bf16 (a number far from the
    others, as a different execution can give); b and c on the CPU. The GPU row is not a third seed of a."""
    params = {"image_size": 64}
    rows = (_executed(_rows({"a": 0.50, "b": 0.60, "c": 0.70}, params, seed=0), "cpu", "fp32")
            + _executed(_rows({"a": 0.52, "b": 0.62, "c": 0.72}, params, seed=1), "cpu", "fp32")
            + _executed(_rows({"a": 0.90}, params, seed=0), "cuda:NVIDIA H100", "bf16")
            + _executed(_rows({"c": 0.71}, params, seed=2), None, None))  # unknown execution: conflicts with none
    return conform(pd.DataFrame(rows))


def test_runs_on_another_device_or_precision_are_never_pooled_as_seeds():
    table = _mixed_execution_table()
    assert settings.execution_kind(table).tolist()[:1] == ["cpu/fp32"]
    kept, notes = settings.one_execution_per_cell(table)
    assert len(kept) == len(table) - 1 and not ((kept["backbone"] == "a") & (kept["device"] != "cpu")).any()
    assert len(notes) == 1 and "a in " in notes[0] and "cuda/bf16 not averaged with those run on cpu/fp32" in notes[0]
    values = sc.setting_values(table).set_index("backbone")
    assert values.loc["a", "value"] == pytest.approx(0.51) and values.loc["a", "n_seeds"] == 2  # was 0.64 over 3
    assert values.loc["c", "n_seeds"] == 3  # the row of unknown execution joins its backbone's CPU seeds
    board = sc.leaderboard(table, n_boot=50)
    assert board.attrs["execution_left_out"] == notes
    assert "not averaged with those run on cpu/fp32" in prose.describe_leaderboard(board)
    # a backbone measured only on the GPU is compared with the others, not left out: only replicates must agree
    gpu_only = conform(pd.DataFrame(_executed(_rows({"d": 0.8}, {"image_size": 64}), "cuda:x", "bf16")))
    assert "d" in set(sc.setting_values(pd.concat([table, gpu_only]))["backbone"])


def test_the_seed_spread_enters_the_protocol_gain_interval():
    """Two seeds that disagree are replicates: their spread is part of a gain's standard error, beside the test
    items' sampling error (none recorded here)."""
    params = {"image_size": 64}
    rows = []
    for seed, tuned in ((0, 0.70), (1, 0.80)):
        rows += _rows({"a": 0.6, "b": 0.5, "c": 0.4}, params, seed=seed)
        rows += _rows({"a": tuned, "b": tuned - 0.1, "c": tuned - 0.2}, params, seed=seed, protocol="finetune")
    comparison = cmp.protocol_comparison(conform(pd.DataFrame(rows)))
    # seeds 0.70 and 0.80: sample variance 0.005, over 2 seeds 0.0025 -> standard error 0.05 (was 0: unknown)
    assert comparison["delta_se"].to_numpy() == pytest.approx([0.05, 0.05, 0.05])
    gain = cmp.protocol_gain(comparison, n_boot=400)
    assert gain["ci_high"] - gain["ci_low"] > 0.05


def test_per_backbone_pairs_and_transferability_targets_keep_one_execution():
    from bobkit.analysis import transferability as tr

    table = _mixed_execution_table()
    assert id_ood.select_values(table, metric="top1")["a"] == pytest.approx(0.51)
    measured = tr.measured_values(table).set_index("backbone")
    assert measured.loc["a", "value"] == pytest.approx(0.51)
