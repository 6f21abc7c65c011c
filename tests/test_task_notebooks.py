"""Task notebooks: thin, in sync with their task's PARAMETERS, and run by plain papermill with injected parameters."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import pytest

from bobkit.tasks import classification, ood, retrieval, robustness, smoke

REPO = Path(__file__).resolve().parents[1]
MODULES = {"classification": classification, "retrieval": retrieval, "ood": ood, "robustness": robustness,
           "smoke": smoke}
PACKAGED = "mobilenetv2_100.packaged_tv_in1k"
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
    return nbformat.read(REPO / "notebooks" / "tasks" / f"{task}.ipynb", as_version=4)


def _parameters(nb: nbformat.NotebookNode) -> dict:
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    values = {}
    for node in ast.parse(cells[0].source).body:
        assert isinstance(node, ast.Assign), "the parameters cell holds assignments only"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


@pytest.mark.parametrize("task", sorted(MODULES))
def test_parameters_cell_matches_the_task_defaults(task):
    nb = _notebook(task)
    assert _parameters(nb) == {**MODULES[task].PARAMETERS, "output_dir": None}
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


@pytest.mark.notebook
@pytest.mark.parametrize("task", sorted(MODULES))
def test_notebook_runs_under_papermill(task, tmp_path):
    import papermill

    out_dir = tmp_path / "cell"
    executed = papermill.execute_notebook(
        str(REPO / "notebooks" / "tasks" / f"{task}.ipynb"), str(tmp_path / "out.ipynb"),
        parameters={**TINY[task], "output_dir": str(out_dir)}, kernel_name="python3", progress_bar=False,
        cwd=str(REPO),
    )
    metrics = json.loads((out_dir / "task_metrics.json").read_text())
    expected = {"classification": "top1", "retrieval": "mrr", "ood": "mca", "robustness": "acc/pgd/2",
                "smoke": "score"}[task]
    assert expected in metrics and metrics[expected] is not None
    if task == "classification":
        assert metrics["n_train"] == 100 and 0.0 <= metrics["top1"] <= 1.0  # the injected parameters took effect
    if task == "smoke":
        assert metrics["score"] == 3.5
    if task == "robustness":
        images = [o for c in executed.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
        assert images, "the reliability diagram is displayed"
