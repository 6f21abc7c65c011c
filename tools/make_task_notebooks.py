"""Rewrite the ``parameters`` cell of the task notebooks (notebooks/tasks/<task>.ipynb) from the task declarations.

The parameters cell is generated from the task's declaration (``bobkit.tasks.get_spec(task)``: defaults and one-line
docs), so notebook and code never disagree (tests check it). Only that cell is rewritten: every other cell of an
existing notebook, edited in JupyterLab, stays as it is. A task without a notebook gets a minimal one.

    python tools/make_task_notebooks.py [task ...]          # rewrite (all tasks by default)
    python tools/make_task_notebooks.py --check [task ...]  # exit 1 when a parameters cell is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from bobkit.tasks import get_spec, notebook_path, task_names

REPO = Path(__file__).resolve().parents[1]
PARAMETERS_TAG = "parameters"


def parameters_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook's one cell tagged ``parameters``."""
    tagged = [c for c in nb.cells if PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"expected exactly one cell tagged {PARAMETERS_TAG!r}, found {len(tagged)}")
    return tagged[0]


def new_task_notebook(task: str) -> nbformat.NotebookNode:
    """A minimal notebook for a task that has none: title, parameters, the call, the outputs."""
    spec = get_spec(task)
    cells = [
        new_markdown_cell(f"# {task}\n\n{spec.summary}\n\n"
                          f"`papermill {notebook_path(task)} out.ipynb -p seed 1`\n"),
        new_code_cell(spec.parameters_cell(), metadata={"tags": [PARAMETERS_TAG]}),
        new_code_cell(f"from bobkit.tasks import {task}, notebook_parameters\n\n"
                      f"result = {task}.run(**notebook_parameters({task!r}, globals()))"),
        new_code_cell("result.to_frame()"),
    ]
    for k, cell in enumerate(cells):
        cell["id"] = f"{task}-{k}"  # stable ids
    return new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})


def update(task: str, check: bool = False) -> bool:
    """Bring ``task``'s notebook parameters cell in line with its declaration; ``True`` when it was out of date."""
    path = REPO / notebook_path(task)
    if not path.exists():
        if not check:
            nbformat.write(new_task_notebook(task), path)
        return True
    nb = nbformat.read(path, as_version=4)
    cell = parameters_cell(nb)
    wanted = get_spec(task).parameters_cell()
    if cell.source == wanted:
        return False
    if not check:
        cell.source = wanted
        cell.outputs, cell.execution_count = [], None
        nbformat.write(nb, path)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tasks", nargs="*", help="task names (default: every registered task)")
    parser.add_argument("--check", action="store_true", help="only report out-of-date notebooks (exit 1)")
    args = parser.parse_args(argv)
    stale = [task for task in args.tasks or task_names() if update(task, check=args.check)]
    for task in stale:
        print(f"{notebook_path(task)}: {'out of date' if args.check else 'parameters cell rewritten'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
