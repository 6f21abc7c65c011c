"""Task notebooks: thin, parameters cell generated from the task's declaration, run by plain papermill with exact
parameters (an unknown injected name fails the first code cell, with its one-line message)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from bobkit.tasks import get_spec, notebook_path, task_names

REPO = Path(__file__).resolve().parents[1]
TASKS = task_names()
PACKAGED = "mobilenetv2_100.packaged_tv_in1k"
#: Tiny parameters per task (seconds on a CPU); the detection notebook runs in tests/test_detection.py.
TINY = {
    "classification": dict(backbone=PACKAGED, dataset="mnist5k", protocol="finetune", image_size=32, max_train=100,
                           max_test=100, epochs=1, batch_size=32, num_threads=1, device="cpu"),
    "smoke": dict(value=2.5, seed=1),
    "retrieval": dict(backbone=PACKAGED, image_size=32, max_samples=200, num_threads=1, device="cpu"),
    "ood": dict(backbone=PACKAGED, image_size=32, max_train=200, max_test=200, max_corrupted=50,
                corruptions=["contrast"], severities=[1, 5], num_threads=1, device="cpu"),
    "robustness": dict(backbone=PACKAGED, image_size=32, max_train=200, max_test=200, max_attack=16,
                       epsilons=[0, 2], pgd_steps=2, num_threads=1, device="cpu"),
}


def _notebook(task: str) -> nbformat.NotebookNode:
    return nbformat.read(REPO / notebook_path(task), as_version=4)


def _parameters_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    return cells[0]


def _parameters(nb: nbformat.NotebookNode) -> dict:
    values = {}
    for node in ast.parse(_parameters_cell(nb).source).body:
        assert isinstance(node, ast.Assign), "the parameters cell holds assignments only"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


@pytest.mark.parametrize("task", TASKS)
def test_parameters_cell_is_generated_from_the_declaration(task):
    nb = _notebook(task)
    assert _parameters_cell(nb).source == get_spec(task).parameters_cell()  # docs as comments, in order
    assert _parameters(nb) == get_spec(task).defaults()
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


def test_make_task_notebooks_rewrites_only_the_parameters_cell(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import make_task_notebooks as tool
    finally:
        sys.path.remove(str(REPO / "tools"))
    monkeypatch.setattr(tool, "REPO", tmp_path)
    (tmp_path / "notebooks" / "tasks").mkdir(parents=True)
    nb = _notebook("smoke")
    nb.cells[0].source += "\nA paragraph written in JupyterLab."
    nb.cells.append(nbformat.v4.new_code_cell("extra = 'kept'"))
    _parameters_cell(nb).source = "value = 99.0  # edited by hand"
    nbformat.write(nb, tmp_path / notebook_path("smoke"))

    assert tool.main(["--check", "smoke"]) == 1
    assert tool.main(["smoke"]) == 0
    updated = nbformat.read(tmp_path / notebook_path("smoke"), as_version=4)
    assert _parameters_cell(updated).source == get_spec("smoke").parameters_cell()
    assert updated.cells[0].source.endswith("A paragraph written in JupyterLab.")
    assert updated.cells[-1].source == "extra = 'kept'"
    assert tool.main(["--check", "smoke"]) == 0
    assert tool.main(["--check"]) == 1  # the other notebooks are missing from tmp_path: reported, not written
    assert not (tmp_path / notebook_path("classification")).exists()


def _execute(task: str, tmp_path: Path, parameters: dict):
    import papermill

    return papermill.execute_notebook(
        str(REPO / notebook_path(task)), str(tmp_path / "out.ipynb"), parameters=parameters, kernel_name="python3",
        progress_bar=False, cwd=str(REPO),
    )


@pytest.mark.notebook
@pytest.mark.parametrize("task", sorted(TINY))
def test_notebook_runs_under_papermill(task, tmp_path):
    out_dir = tmp_path / "cell"
    executed = _execute(task, tmp_path, {**TINY[task], "output_dir": str(out_dir)})
    output = json.loads((out_dir / "task_metrics.json").read_text())
    assert output["format"] == 2
    scores = output["metrics"]
    expected = {"classification": "top1", "retrieval": "mrr", "ood": "mca", "robustness": "acc/pgd/2",
                "smoke": "score"}[task]
    assert expected in scores and scores[expected] is not None
    assert set(output["primary"]) <= set(scores) and output["primary"]
    if task == "classification":  # the injected parameters took effect
        assert output["descriptors"]["n_train"] == 100 and 0.0 <= scores["top1"] <= 1.0
        assert output["setting_params"]["protocol"] == "finetune" and output["n_items"]["top1"] == 100
    if task == "smoke":
        assert scores["score"] == 3.5
    if task == "robustness":
        assert output["higher_is_better"]["ece"] is False and output["setting_params"]["epsilons"] == [0.0, 2.0]
        images = [o for c in executed.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
        assert images, "the reliability diagram is displayed"


@pytest.mark.notebook
def test_misspelled_injected_parameter_fails_the_first_code_cell_with_one_line(tmp_path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError) as info:
        _execute("classification", tmp_path, {"max_trian": 300, "output_dir": str(tmp_path / "cell")})
    assert info.value.ename == "UnknownParameterError"
    assert "'max_trian' (did you mean 'max_train'?)" in info.value.evalue
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    tags = [c.metadata.get("tags", []) for c in code]
    first = code[[i for i, t in enumerate(tags) if "injected-parameters" in t][0] + 1]  # first cell after them
    errors = [o for o in first.outputs if o.output_type == "error"]
    assert errors and errors[0].traceback == [f"UnknownParameterError: {info.value.evalue}"]  # the message, first
    assert not (tmp_path / "cell").exists()  # no work was done, nothing was handed to the runner


@pytest.mark.notebook
def test_papermill_cli_takes_yaml_files_and_names_their_unknown_keys(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(f"value: 4.5\nseed: 2\noutput_dir: {tmp_path / 'cell'}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("value: 4.5\nsed: 2\n")
    notebook = str(REPO / notebook_path("smoke"))
    papermill = [sys.executable, "-m", "papermill", "--no-progress-bar"]
    ok = subprocess.run([*papermill, notebook, str(tmp_path / "a.ipynb"), "-f", str(good)], capture_output=True,
                        text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads((tmp_path / "cell" / "task_metrics.json").read_text())["metrics"] == {"score": 6.5}
    failed = subprocess.run([*papermill, notebook, str(tmp_path / "b.ipynb"), "-f", str(bad)], capture_output=True,
                            text=True, timeout=300)
    assert failed.returncode != 0
    assert "UnknownParameterError: task 'smoke' has no parameter 'sed' (did you mean 'seed'?)" in failed.stderr
