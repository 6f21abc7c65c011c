"""Write notebooks/tasks/smoke.ipynb: the runner's self-test task (no model, no data)."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from bobkit.tasks.smoke import PARAMETERS


def main() -> None:
    params = "\n".join(f"{k} = {v!r}" for k, v in PARAMETERS.items()) + "\noutput_dir = None"
    args = ", ".join(f"{k}={k}" for k in PARAMETERS)
    nb = new_notebook(
        cells=[
            new_markdown_cell("# Runner self-test\nNo model and no data: tests and benchmarks the batch layer."),
            new_code_cell(params, metadata={"tags": ["parameters"]}),
            new_code_cell(
                "from bobkit.results import save_cell_metrics\nfrom bobkit.tasks import smoke\n\n"
                f"metrics = smoke.run({args})\nsave_cell_metrics(metrics, output_dir)\nmetrics"
            ),
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    nbformat.write(nb, Path(__file__).resolve().parents[1] / "notebooks" / "tasks" / "smoke.ipynb")


if __name__ == "__main__":
    main()
