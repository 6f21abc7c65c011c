"""Grid expansion, run keys and validation of params files."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bobkit.batch.grid import GridError, expand_grid, load_grid, make_cell, run_key

SMOKE = {"task": "smoke", "value": [1, 2, 3], "setting": [{"mode": "ok"}, {"mode": "sleep", "sleep_seconds": 0.1}]}


def test_expansion_is_the_cartesian_product_of_axes_and_settings():
    cells = expand_grid({"grid": [SMOKE]})
    assert len(cells) == 6
    assert sorted({c.params["value"] for c in cells}) == [1, 2, 3]
    assert {c.params["mode"] for c in cells} == {"ok", "sleep"}


def test_duplicate_cells_collapse_to_one():
    cells = expand_grid({"grid": [SMOKE, SMOKE]})
    assert len(cells) == 6


def test_run_key_is_stable_across_processes_and_key_order():
    params = {"value": 2.0, "mode": "ok", "sleep_seconds": 0.0, "batch_size": 8, "oom_above_batch": None, "seed": 0}
    key = run_key("smoke", params)
    assert key == run_key("smoke", dict(reversed(list(params.items()))))
    code = (
        "from bobkit.batch.grid import run_key; "
        f"print(run_key('smoke', {params!r}))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == key and len(key) == 16


def test_run_key_changes_with_a_parameter_but_not_with_the_device():
    base = make_cell("smoke", {"value": 1.0})
    assert make_cell("smoke", {"value": 1.5}).run_key != base.run_key
    assert make_cell("smoke", {"value": 1.0, "seed": 1}).run_key != base.run_key
    assert make_cell("smoke", {"value": 1.0, "mode": "ok"}).run_key == base.run_key  # explicit default


def test_run_key_ignores_execution_only_parameters():
    from bobkit.tasks.classification import PARAMETERS

    a = run_key("classification", {**PARAMETERS, "device": "cpu"})
    b = run_key("classification", {**PARAMETERS, "device": "cuda", "num_threads": 8})
    assert a == b


def test_run_key_changes_with_the_code_version(monkeypatch):
    from bobkit.batch import codehash

    before = make_cell("smoke", {}).run_key
    files = codehash.task_code_files("smoke")
    monkeypatch.setattr(codehash, "task_code_files", lambda task, **_: {**files, "bobkit.tasks.smoke": "edited"})
    assert make_cell("smoke", {}).run_key != before  # (tests/test_runkeys.py edits real source files)


@pytest.mark.parametrize(
    "block, needle",
    [
        ({"task": "smoke", "valeu": 1}, "'valeu'"),
        ({"task": "smok"}, "'smok'"),
        ({"task": "smoke", "mode": "explode"}, "'explode'"),
        ({"task": "classification", "backbone": "resnet9000.nope"}, "resnet9000.nope"),
        ({"task": "classification", "dataset": "fashoin_mnist"}, "fashoin_mnist"),
    ],
)
def test_bad_values_are_named_in_the_error(block, needle):
    with pytest.raises(GridError, match=needle.replace(".", r"\.")):
        expand_grid({"grid": [block]}, source="bad.yaml")


def test_bad_resource_key_and_missing_file(write_grid, tmp_path):
    with pytest.raises(GridError, match="gpu_count"):
        expand_grid({"resources": {"gpu_count": 1}, "grid": [{"task": "smoke"}]})
    with pytest.raises(GridError, match="nope.yaml"):
        load_grid(tmp_path / "nope.yaml")
    with pytest.raises(GridError, match="not valid YAML"):
        load_grid(write_grid("grid: [\n"))


def test_bad_params_file_fails_before_anything_runs(write_grid, tmp_path, capsys):
    """One bad backbone among good cells: `bob run` exits 2 naming it and creates no run folder."""
    from bobkit.cli import main

    grid = write_grid(
        "grid:\n  - task: smoke\n    value: [1, 2]\n"
        "  - task: classification\n    backbone: [mobilenetv2_100.packaged_tv_in1k, not_a_backbone]\n"
    )
    runs = tmp_path / "runs"
    # bob's entry point in this process (its return value is the exit status): a new interpreter would spend
    # seconds importing torch and timm to say the same (test_bob_run_rejects_a_bad_value... runs the command)
    assert main(["run", str(grid), "--runs-dir", str(runs)]) == 2
    assert "not_a_backbone" in capsys.readouterr().err
    assert not runs.exists()


def test_defaults_apply_only_to_tasks_that_have_the_parameter():
    cells = expand_grid({"defaults": {"image_size": 32, "value": 5.0},
                         "grid": [{"task": "smoke"}, {"task": "classification"}]})
    assert cells[0].params["value"] == 5.0
    assert "image_size" not in cells[0].params
    assert cells[1].params["image_size"] == 32 and "value" not in cells[1].params


def test_shipped_grids_expand():
    from bobkit.utils.paths import repo_root

    for path in sorted((repo_root() / "params").glob("*.yaml")):
        cells = load_grid(path)
        assert cells, path
        assert len({c.run_key for c in cells}) == len(cells)


# ------------------------------------------------------------------------------------------------------------
# Every value checked against its declaration before any cell starts (issue 12)
# ------------------------------------------------------------------------------------------------------------


def _cuda_here() -> bool:
    import torch

    return torch.cuda.is_available()


BAD_GRID_VALUES = [
    ("task: classification\n    seed: -1", "seed=-1"),
    ("task: classification\n    max_train: 0", "max_train=0"),
    ("task: classification\n    lr: .nan", "lr=nan"),
    ("task: classification\n    image_size: true", "image_size=True"),
    ("task: classification\n    image_size: 100000", "image_size=100000 is above its maximum"),
    ("task: classification\n    max_train: 1000000000", "max_train=1000000000 is above its maximum"),
    ("task: classification\n    backbone: []", "'backbone' is an empty list"),
    ("task: classification\n    setting: []", "'setting' is an empty list"),
    ("task: robustness\n    epsilons: x", "epsilons='x'"),
    ("task: robustness\n    epsilons: [[0, 1], []]", "epsilons=[] needs at least 1 item"),
    ("task: detection\n    canvas_size: 5000", "canvas_size=5000 is above its maximum"),
    ("task: detection\n    eval_dataset: cityscapess", "eval_dataset='cityscapess'"),
    ("task: detection\n    dataset: fashion_mnist", "dataset='fashion_mnist'"),
    ("task: classification\n    device: " + ("'cuda:99'" if _cuda_here() else "cuda"), "device="),
    ("task: classification\n    probe_solver: lbgfs", "did you mean 'lbfgs'?"),
]


@pytest.mark.parametrize("block, needle", BAD_GRID_VALUES)
def test_every_value_is_checked_against_its_declaration(write_grid, block, needle):
    path = write_grid(f"grid:\n  - {block}\n")
    with pytest.raises(GridError) as info:
        load_grid(path)
    assert needle in str(info.value) and str(path) in str(info.value)


def test_cuda_is_left_to_the_node_when_the_cell_asks_its_scheduler_for_gpus():
    cells = expand_grid({"resources": {"gpus": 1}, "grid": [{"task": "classification", "device": "cuda"}]})
    assert cells[0].params["device"] == "cuda"


def test_list_values_are_normalised_so_equal_settings_share_a_run_key():
    as_list = make_cell("robustness", {"epsilons": [0, 1, 2]})
    as_json = make_cell("robustness", {"epsilons": "[0, 1.0, 2]"})
    as_commas = make_cell("robustness", {"epsilons": "0,1,2"})
    assert as_list.params["epsilons"] == [0.0, 1.0, 2.0]
    assert as_list.run_key == as_json.run_key == as_commas.run_key


def test_bob_run_rejects_a_bad_value_before_any_cell_starts(write_grid, tmp_path):
    grid = write_grid("grid:\n  - task: smoke\n    value: [1, 2]\n  - task: smoke\n    seed: -1\n")
    runs = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "bobkit.cli", "run", str(grid), "--runs-dir", str(runs)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "seed=-1 must be at least 0" in proc.stderr
    assert not runs.exists()


@pytest.mark.parametrize("text, key, line, first", [
    ("name: d\ngrid:\n  - task: smoke\n    setting: [{value: 1.0, value: 2.0}]\n", "value", 4, 4),
    ("name: d\ndefaults:\n  batch_size: 8\n  seed: 0\n  batch_size: 16\ngrid:\n  - task: smoke\n", "batch_size", 5, 3),
    ("name: d\ngrid:\n  - task: smoke\n  - task: smoke\n    value: 1.0\n    value: 3.0\n", "value", 6, 5),
])
def test_a_key_given_twice_in_one_mapping_is_refused_naming_the_key_and_line(write_grid, text, key, line, first):
    """Issue 25 item 14b: YAML keeps the last of two equal keys silently; a grid refuses them."""
    grid = write_grid(text)
    with pytest.raises(GridError) as err:
        load_grid(grid)
    message = str(err.value)
    assert str(grid) in message and f"line {line}: key {key!r} is given twice" in message
    assert f"first on line {first}" in message


def test_a_merged_anchor_may_still_be_overridden(write_grid):
    grid = write_grid("name: d\nx-base: &base {task: smoke, value: 1.0}\ngrid:\n  - <<: *base\n    value: 2.0\n")
    (cell,) = load_grid(grid)
    assert cell.params["value"] == 2.0
