"""Sidecars, metric directions and the results table."""

from __future__ import annotations

import json
import math

import pytest

from bobkit.results.sidecars import is_complete, save_cell_metrics, split_metrics, write_sidecar
from bobkit.results.table import build_results, higher_is_better, leaderboard
from bobkit.utils.files import write_json


@pytest.mark.parametrize(
    "metric, expected",
    [("top1", True), ("map", True), ("recall@5", True), ("nll", False), ("ece", False), ("nll_ts", False),
     ("brier", False), ("acc_drop", False), ("box_ap50", True), ("macro_f1", True)],
)
def test_metric_direction(metric, expected):
    assert higher_is_better(metric) is expected


def test_split_metrics_keeps_timings_out_of_scores():
    scores, info = split_metrics({"top1": 0.9, "train_seconds": 3.0, "threads": 2.0, "nll": 0.3,
                                  "exec_bf16": 1.0, "peak_rss_mb": 900.0})
    assert scores == {"top1": 0.9, "nll": 0.3}
    assert info == {"train_seconds": 3.0, "threads": 2.0, "exec_bf16": 1.0, "peak_rss_mb": 900.0}


def test_json_writes_are_strict_and_atomic(tmp_path):
    write_json(tmp_path / "a.json", {"x": float("nan"), "y": 1.5})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": None, "y": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind


def test_save_cell_metrics_is_a_noop_interactively(tmp_path):
    save_cell_metrics({"top1": 1.0}, None)
    save_cell_metrics({"top1": 1.0}, tmp_path)
    output = json.loads((tmp_path / "task_metrics.json").read_text())
    assert output["format"] == 2 and output["metrics"] == {"top1": 1.0} and output["higher_is_better"] == {"top1": True}


def _sidecar(run_key: str, backbone: str, top1: float, status: str = "complete") -> dict:
    return {
        "run_key": run_key, "task": "classification", "status": status,
        "params": {"backbone": backbone, "dataset": "fashion_mnist", "protocol": "linear_probe", "seed": 0},
        "metrics": {"top1": top1, "nll": 1.0 - top1},
    }


def test_build_results_is_tidy_and_joins_backbone_metadata(tmp_path):
    runs = tmp_path / "runs"
    write_sidecar(runs / "classification" / "k1", _sidecar("k1", "mobilenetv2_100.packaged_tv_in1k", 0.8))
    write_sidecar(runs / "classification" / "k2", _sidecar("k2", "resnet18.random_init", 0.6))
    write_sidecar(runs / "classification" / "k3", _sidecar("k3", "resnet18.random_init", 0.1, status="failed"))
    assert is_complete(runs / "classification" / "k1") and not is_complete(runs / "classification" / "k3")
    table = build_results(runs)
    assert len(table) == 4  # 2 complete runs x 2 metrics; the failed run contributes nothing
    nll = table[(table.metric == "nll") & (table.run_key == "k1")].iloc[0]
    assert math.isclose(nll.value, 0.2) and not nll.higher_is_better
    assert set(table[table.run_key == "k2"].method_kind) == {"random"}
    assert table.loc[table.run_key == "k1", "family"].iloc[0] == "CNN"
    board = leaderboard(table, "top1")
    assert list(board.index) == ["mobilenetv2_100.packaged_tv_in1k", "resnet18.random_init"]
