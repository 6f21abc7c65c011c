"""Sidecars, metric directions and the results table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from bobkit.analysis.board import leaderboard
from bobkit.batch.grid import code_version
from bobkit.results.schema import COLUMNS, read_results, setting_id, write_results
from bobkit.results.sidecars import (
    is_complete,
    parse_task_output,
    read_sidecar,
    save_cell_metrics,
    scan_sidecars,
    sidecar_problem,
    split_metrics,
    write_sidecar,
)
from bobkit.results.table import NoRunsError, build_results, higher_is_better
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


def _sidecar(run_key: str, backbone: str, top1: float, status: str = "complete", **fields) -> dict:
    return {
        "run_key": run_key, "task": "classification", "status": status,
        "code_version": code_version("classification"),
        "params": {"backbone": backbone, "dataset": "fashion_mnist", "protocol": "linear_probe", "seed": 0},
        "metrics": {"top1": top1, "nll": 1.0 - top1}, **fields,
    }


def _record(runs, sidecar: dict, notebook: bool = True):
    """A run folder as the runner leaves it: the sidecar and the executed notebook."""
    run_dir = runs / sidecar["task"] / sidecar["run_key"]
    write_sidecar(run_dir, sidecar)
    if notebook:
        (run_dir / "executed.ipynb").write_text("{}")
    return run_dir


def test_build_results_is_tidy_and_joins_backbone_metadata(tmp_path):
    runs = tmp_path / "runs"
    _record(runs, _sidecar("k1", "mobilenetv2_100.packaged_tv_in1k", 0.8))
    _record(runs, _sidecar("k2", "resnet18.random_init", 0.6))
    _record(runs, _sidecar("k3", "resnet18.random_init", 0.1, status="failed"))
    assert is_complete(runs / "classification" / "k1") and not is_complete(runs / "classification" / "k3")
    table = build_results(runs)
    assert len(table) == 4  # 2 complete runs x 2 metrics; the failed run contributes nothing
    nll = table[(table.metric == "nll") & (table.run_key == "k1")].iloc[0]
    assert math.isclose(nll.value, 0.2) and not nll.higher_is_better
    assert set(table[table.run_key == "k2"].method_kind) == {"random"}
    assert table.loc[table.run_key == "k1", "family"].iloc[0] == "CNN"
    board = leaderboard(table, "top1")
    assert list(board.index) == ["mobilenetv2_100.packaged_tv_in1k", "resnet18.random_init"]


def test_build_fills_the_schema_columns_from_the_sidecar(tmp_path):
    runs = tmp_path / "runs"
    setting = {"dataset": "fashion_mnist", "protocol": "linear_probe", "image_size": 64}
    _record(runs, _sidecar(
        "k1", "resnet18.random_init", 0.8, stderr={"top1": 0.01}, n_items={"top1": 1000},
        higher_is_better={"top1": True, "nll": True},  # declared by the task: wins over the name rule
        setting_params=setting, device="cuda:NVIDIA H200", batch_size_used=32,
    ))
    table = build_results(runs)
    assert list(table.columns[: len(COLUMNS)]) == list(COLUMNS)
    top1 = table[table.metric == "top1"].iloc[0]
    assert top1.stderr == 0.01 and top1.n_items == 1000 and top1.device == "cuda:NVIDIA H200"
    assert top1.batch_size_used == 32 and json.loads(top1.setting_params) == setting
    assert top1.setting_id == setting_id("classification", "fashion_mnist", "linear_probe", "top1", setting)
    nll = table[table.metric == "nll"].iloc[0]
    assert bool(nll.higher_is_better) and math.isnan(nll.stderr)  # declared direction, unknown stderr
    assert nll.setting_id != top1.setting_id


def test_build_derives_setting_params_for_records_that_lack_them(tmp_path):
    runs = tmp_path / "runs"
    sidecar = _sidecar("k1", "resnet18.random_init", 0.8)
    sidecar["params"].update(image_size=32, device="cpu", num_threads=2)
    _record(runs, sidecar)
    row = build_results(runs).iloc[0]
    # Not the backbone, not the seed, not the execution parameters: what is measured.
    assert json.loads(row.setting_params) == {"dataset": "fashion_mnist", "image_size": 32,
                                              "protocol": "linear_probe"}
    assert row.higher_is_better == higher_is_better(row.metric)  # the name rule when nothing is declared


def test_built_table_records_its_runs_folder_through_parquet(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    _record(runs, _sidecar("k1", "resnet18.random_init", 0.8))
    monkeypatch.chdir(tmp_path)
    table = build_results("runs")  # relative: recorded absolute
    assert table.attrs["runs_dir"] == str(runs.resolve())
    path = write_results(table, tmp_path / "results" / "results.parquet")
    assert read_results(path).attrs["runs_dir"] == str(runs.resolve())


def test_stale_and_notebookless_records_stay_out_of_the_table(tmp_path):
    runs = tmp_path / "runs"
    _record(runs, _sidecar("k1", "resnet18.random_init", 0.8))
    _record(runs, _sidecar("k2", "resnet18.random_init", 0.7, code_version="0123456789abcdef"))  # other code
    old = _sidecar("k3", "resnet18.random_init", 0.6)
    del old["code_version"]  # made before records carried their code version
    _record(runs, old)
    _record(runs, _sidecar("k4", "resnet18.random_init", 0.5), notebook=False)  # executed.ipynb deleted
    table = build_results(runs)
    assert set(table.run_key) == {"k1"}
    assert table.attrs["left_out"] == {"stale": 2, "no_notebook": 1, "corrupt": 0}
    assert set(build_results(runs, include_stale=True).run_key) == {"k1", "k2", "k3"}


def test_corrupt_sidecars_are_skipped_and_counted(tmp_path):
    runs = tmp_path / "runs"
    _record(runs, _sidecar("k1", "resnet18.random_init", 0.8))
    for key, payload in (("bad-utf8", b'{"status": "complete\xff"}'), ("a-list", b"[1, 2]")):
        (runs / "classification" / key).mkdir(parents=True)
        (runs / "classification" / key / "metrics.json").write_bytes(payload)
    assert read_sidecar(runs / "classification" / "a-list") is None
    assert "list" in sidecar_problem(runs / "classification" / "a-list")
    table = build_results(runs)
    assert set(table.run_key) == {"k1"} and table.attrs["left_out"]["corrupt"] == 2
    assert sorted(Path(p).parent.name for p in table.attrs["corrupt"]) == ["a-list", "bad-utf8"]
    scan = scan_sidecars(runs)
    assert len(scan.sidecars) == 1 and len(scan.corrupt) == 2


def test_a_missing_or_empty_runs_folder_is_an_error(tmp_path):
    with pytest.raises(NoRunsError, match="does not exist"):
        build_results(tmp_path / "runz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoRunsError, match="no run records"):
        build_results(tmp_path / "empty")


def test_task_output_format_2_and_the_flat_format_are_read():
    two = parse_task_output({
        "format": 2, "metrics": {"top1": 0.9}, "stderr": {"top1": 0.01}, "n_items": {"top1": 500},
        "higher_is_better": {"top1": True}, "primary": ["top1"], "setting_params": {"image_size": 64},
        "descriptors": {"train_seconds": 1.5},
    })
    assert two.metrics == {"top1": 0.9} and two.stderr == {"top1": 0.01} and two.n_items == {"top1": 500}
    assert two.primary == ["top1"] and two.setting_params == {"image_size": 64}
    assert two.descriptors == {"train_seconds": 1.5} and not two.non_finite()
    flat = parse_task_output({"top1": 0.9, "se/top1": 0.02, "nll": None, "train_seconds": 2.0})
    assert flat.metrics == {"top1": 0.9, "nll": None} and flat.stderr == {"top1": 0.02}
    assert flat.descriptors == {"train_seconds": 2.0} and flat.setting_params is None
    assert flat.non_finite() == ["nll"]
    with pytest.raises(ValueError, match="list"):
        parse_task_output([1, 2])


def test_build_records_the_precision_a_run_used(tmp_path):
    """Device type and precision move numbers: the table carries both, so the analysis never averages a bf16 GPU run
    with fp32 CPU seeds of the same cell (bobkit.analysis.settings.one_execution_per_cell)."""
    runs = tmp_path / "runs"
    _record(runs, _sidecar("k1", "resnet18.random_init", 0.8, device="cuda:NVIDIA H100",
                           timings={"exec_autocast_bits": 16.0, "exec_bf16": 1.0, "train_seconds": 3.0}))
    _record(runs, _sidecar("k2", "mobilenetv2_100.packaged_tv_in1k", 0.7, device="cpu",
                           timings={"exec_autocast_bits": 32.0, "exec_bf16": 0.0}))
    _record(runs, _sidecar("k3", "tf_efficientnet_lite0.packaged_in1k", 0.6, timings={}))
    table = build_results(runs).drop_duplicates("run_key").set_index("run_key")
    assert table.loc["k1", "precision"] == "bf16" and table.loc["k1", "device"] == "cuda:NVIDIA H100"
    assert table.loc["k2", "precision"] == "fp32"
    assert pd.isna(table.loc["k3", "precision"])  # an older record that does not say
