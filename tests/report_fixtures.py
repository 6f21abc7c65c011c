"""Fakes for the report tests: run folders as ``bob run`` leaves them, and a value that must never run as script."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd

#: A display name / label / error text that runs script if the site does not escape it.
PAYLOAD = "<img src=x onerror=alert(1)>"


def notebook_file(path: Path, text: str = "2", stderr: str | None = None, title: str = "Classification") -> Path:
    """An executed notebook: a title, one code cell with a result and a pandas table as a task notebook ends with
    (and an optional stderr stream)."""
    frame = pd.DataFrame({"metric": ["top1", "n_test"], "value": [0.5, 1000.0]}).set_index("metric")
    outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": text}, execution_count=1),
               nbformat.v4.new_output("display_data", data={"text/html": frame._repr_html_(),
                                                            "text/plain": frame.to_string()})]
    if stderr:
        outputs.append(nbformat.v4.new_output("stream", name="stderr", text=stderr))
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(f"# {title}\n\nSome prose."),
        nbformat.v4.new_code_cell("1 + 1", execution_count=1, outputs=outputs)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def fake_run(runs_dir: Path, task: str, key: str, *, status: str = "complete", backbone: str = "resnet18.tv_in1k",
             label: str | None = None, error: str | None = None, notebook: bool = True,
             stderr: str | None = None) -> Path:
    """A run folder as ``bob run`` leaves it: ``metrics.json`` and ``executed.ipynb``."""
    run = runs_dir / task / key
    run.mkdir(parents=True, exist_ok=True)
    if notebook:
        notebook_file(run / "executed.ipynb", text=f"run {key}", stderr=stderr)
    (run / "metrics.json").write_text(json.dumps({
        "status": status, "run_key": key, "task": task, "label": label or f"{task} {backbone}",
        "error": {"kind": "error", "message": error} if error else None, "code_version": f"code-{key[:4]}",
        "params": {"backbone": backbone, "dataset": "fashion_mnist", "protocol": "linear_probe", "seed": 0},
        "provenance": {"device": "cpu: test", "libraries": {"torch": "2.x"}}}))
    return run
