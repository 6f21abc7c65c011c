"""Write notebooks/tasks/classification.ipynb (thin: a parameters cell and a call into bobkit)."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from bobkit.tasks.classification import PARAMETERS

INTRO = """# Classification: linear probe and end-to-end fine-tuning

One cell of the battle: a backbone from the registry (`bob backbones`) on a dataset (`bob data`), by
**linear probe** on cached frozen features (L-BFGS logistic regression) or **fine-tuning** (AdamW, warm-up +
cosine, optional layer-wise lr decay). Low-shot: `label_fraction` (e.g. 0.01, 0.1) or `shots_per_class`.
Metrics: top-1 (top-5 when there are more than 5 classes), macro-F1, test NLL.

Run it interactively in JupyterLab, or with papermill:
`papermill notebooks/tasks/classification.ipynb out.ipynb -p backbone resnet18.random_init -p protocol finetune`.
"""

COMMENTS = {
    "protocol": "linear_probe | finetune",
    "max_train": "class-stratified subset of the train split (None: all)",
    "label_fraction": "low-shot: fraction of train labels kept per class",
    "shots_per_class": "low-shot: n labels per class",
    "layer_decay": "e.g. 0.75 as in the paper; None disables",
    "device": "auto | cpu | cuda",
}


def parameters_source() -> str:
    lines = []
    for name, value in PARAMETERS.items():
        comment = f"  # {COMMENTS[name]}" if name in COMMENTS else ""
        lines.append(f"{name} = {value!r}{comment}")
    lines.append("output_dir = None  # set by `bob run`: where the metrics are handed to the runner")
    return "\n".join(lines)


def main() -> None:
    call_args = ",\n    ".join(f"{name}={name}" for name in PARAMETERS)
    nb = new_notebook(
        cells=[
            new_markdown_cell(INTRO),
            new_code_cell(parameters_source(), metadata={"tags": ["parameters"]}),
            new_code_cell(
                "from bobkit.results import save_cell_metrics\n"
                "from bobkit.tasks import classification\n\n"
                f"metrics = classification.run(\n    {call_args},\n)\n"
                "save_cell_metrics(metrics, output_dir)"
            ),
            new_code_cell("import pandas as pd\n\npd.Series(metrics, name=backbone).to_frame()"),
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    out = Path(__file__).resolve().parents[1] / "notebooks" / "tasks" / "classification.ipynb"
    nbformat.write(nb, out)
    print(out)


if __name__ == "__main__":
    main()
