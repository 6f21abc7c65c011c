"""Write the thin task notebooks (notebooks/tasks/<task>.ipynb): a parameters cell and a call into bobkit.

The parameters cell is generated from the task module's ``PARAMETERS``, so notebook and module never disagree
(tests check it). Run after changing a task's parameters: ``python tools/make_task_notebooks.py [task ...]``.
"""

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from bobkit.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
GENERATED = ("classification", "retrieval", "ood", "robustness", "detection", "smoke")

INTROS = {
    "detection": """# Detection and instance segmentation: Mask R-CNN + FPN over a registry backbone

One cell of the battle: a backbone from the registry (`bob backbones`) as a timm `features_only` trunk with a
torchvision FPN inside torchvision's **Mask R-CNN**, trained under one of three protocols as in the paper:
**finetune** (pretrained, end to end, BatchNorm statistics kept), **frozen** (pretrained backbone fixed; FPN and heads
train) or **random_init** (same architecture, no pretrained weights). The paper trains Cascade Mask R-CNN for 36
epochs; on CPU this is plain Mask R-CNN for a few epochs.

The offline default `fmnist_scenes` composes Fashion-MNIST items on canvases (exact boxes, masks from the item
pixels) into a cached COCO-format dataset; COCO 2017 and Sim10k -> Cityscapes come through the data manifest.
Metrics: COCO box and mask AP, AP50, AP75 (pycocotools), plus train and eval seconds.

Run it interactively, or with papermill:
`papermill notebooks/tasks/detection.ipynb out.ipynb -p protocol random_init -p epochs 1`
""",
    "classification": """# Classification: linear probe and end-to-end fine-tuning

One cell of the battle: a backbone from the registry (`bob backbones`) on a dataset (`bob data`), by
**linear probe** on cached frozen features (L-BFGS logistic regression) or **fine-tuning** (AdamW, warm-up +
cosine, optional layer-wise lr decay). Low-shot: `label_fraction` (e.g. 0.01, 0.1) or `shots_per_class`.
Metrics: top-1 (top-5 when there are more than 5 classes), macro-F1, test NLL.

Run it interactively in JupyterLab, or with papermill:
`papermill notebooks/tasks/classification.ipynb out.ipynb -p backbone resnet18.random_init -p protocol finetune`.
""",
    "smoke": """# Runner self-test

No model and no data: this task tests and benchmarks the batch layer (papermill overhead, failure recording,
out-of-memory retry, kill-and-resume). Its `score` is `value + seed`, not a result about any backbone.
""",
    "retrieval": """# Retrieval with frozen features

One cell of the battle: rank a database by cosine similarity of a backbone's frozen pooled features (no training).
**class_folder**: per class, the first 20% of the items are queries and the rest the database (optional per-class
cap), positives share the query's class; the features are the classification probe's test-split features, so after
a probe cell this reads them from the cache. **revisited**: ROxford5k / RParis6k with easy + hard positives and
junk ignored. Metrics: mAP (trapezoidal AP as in the revisited benchmark code), MRR, precision@k, recall@k.

`papermill notebooks/tasks/retrieval.ipynb out.ipynb -p backbone resnet18.random_init -p dataset mnist5k`
""",
    "ood": """# Out-of-distribution classification

Train a classifier on a source (linear probe on cached frozen features, or fine-tune) and evaluate it on shifted
targets: other datasets with the same classes (offline: MNIST-5k -> sklearn digits; the paper: ImageNet-A/-R with
logits masked to their 200 classes, ImageNet-Sketch, ImageNet-V2, VisDA-2017 synthetic -> real) and `corruptions`
of the source test images at five severities. Metrics: `id_acc`, `acc/<target>`, `drop_<target>`,
`acc/<corruption>/<severity>`, mean corruption accuracy `mca` and `mca_drop`.

`papermill notebooks/tasks/ood.ipynb out.ipynb -p dataset mnist5k -p targets '["sklearn_digits"]'`
""",
    "robustness": """# Adversarial robustness and calibration

A trained classifier (frozen backbone + linear probe head, or fine-tuned) under FGSM and PGD (L-inf, epsilons in
pixel units /255, attacks in [0, 1] pixel space with the backbone's normalisation inside the model), and its
calibration: ECE (15 bins), NLL and Brier before and after temperature scaling fitted on held-out training items.
Accuracy at epsilon 0 is the clean accuracy of the attacked subset; accuracy never increases with epsilon.

`papermill notebooks/tasks/robustness.ipynb out.ipynb -p backbone resnet18.random_init -p epsilons '[0, 1, 2]'`
""",
}

COMMENTS = {
    "detection": {
        "backbone": "registry name (`bob backbones`)",
        "protocol": "finetune | frozen | random_init",
        "dataset": "fmnist_scenes (offline) | coco2017 | sim10k | cityscapes | a COCO-format folder",
        "eval_dataset": "evaluate on another dataset's val split, e.g. 'cityscapes' after training on 'sim10k'",
        "epochs": "the paper: 36 (Cascade Mask R-CNN, lr swept over 8e-5 .. 3e-4)",
        "lr": "AdamW, 10% linear warm-up then cosine",
        "canvas_size": "offline scenes only",
        "n_train": "scenes to compose / images to subsample (None: all)",
        "n_val": "",
        "image_size": "detector input short side (None: canvas_size for scenes, 800 for real datasets)",
        "device": "auto | cpu | cuda",
        "num_threads": "CPU threads (None: $BOB_NUM_THREADS or torch's default; 1 measured fastest on 2 shared cores)",
        "output_dir": "set by the runner: metrics and predictions are written there",
    },
    "classification": {
        "protocol": "linear_probe | finetune",
        "max_train": "class-stratified subset of the train split (None: all)",
        "label_fraction": "low-shot: fraction of train labels kept per class",
        "shots_per_class": "low-shot: n labels per class",
        "layer_decay": "e.g. 0.75 as in the paper; None disables",
        "device": "auto | cpu | cuda",
    },
    "smoke": {"mode": "ok | raise | nan | oom | die | sleep"},
    "retrieval": {
        "protocol": "class_folder | revisited (roxford5k, rparis6k)",
        "split": "the split whose items become queries + database (the probe's test split: cache shared)",
        "max_samples": "class-stratified subset of the split, as the probe's max_test (None: all)",
        "query_fraction": "per class: first floor(fraction * n) items are queries",
        "max_per_class": "cap per class before splitting (the paper: 50 for ObjectNet/INSTRE, 5 for iNat)",
        "revisited_protocol": "easy | medium (easy+hard positives, junk ignored) | hard",
        "crop_queries": "revisited: crop queries to their box (official protocol; the paper's code did not)",
        "gnd_sha256": "revisited: expected sha256 of gnd_<dataset>.pkl (default: the manifest's)",
        "ap": "trapezoid (revisited benchmark code, the paper) | step (scikit-learn)",
        "device": "auto | cpu | cuda",
    },
    "ood": {
        "dataset": "the source the classifier is trained on",
        "protocol": "linear_probe | finetune",
        "targets": "dataset names (or name:split) and/or 'corruptions'",
        "corruptions": "see bobkit.eval.corruptions.CORRUPTIONS",
        "max_target": "class-stratified items per target dataset (None: all)",
        "max_corrupted": "source test items corrupted at every corruption x severity",
        "device": "auto | cpu | cuda",
    },
    "robustness": {
        "protocol": "linear_probe | finetune",
        "max_train": "class-stratified subsets, as the classification probe's (feature cache shared)",
        "calibration_fraction": "training items held out to fit the temperature",
        "n_bins": "ECE / reliability-diagram bins",
        "epsilons": "L-inf radii in pixel units (/255)",
        "pgd_step_size": "pixel units; None: 2.5 * eps / steps",
        "max_attack": "stratified test items attacked",
        "device": "auto | cpu | cuda",
    },
}


def parameters_source(parameters: dict, comments: dict) -> str:
    lines = []
    for name, value in parameters.items():
        if name == "output_dir":
            continue
        comment = f"  # {comments[name]}" if name in comments else ""
        lines.append(f"{name} = {value!r}{comment}")
    lines.append("output_dir = None  # set by `bob run`: where the metrics are handed to the runner")
    return "\n".join(lines)


def notebook(task: str, module) -> nbformat.NotebookNode:
    call_args = ",\n    ".join(f"{name}={name}" for name in module.PARAMETERS)
    cells = [
        new_markdown_cell(INTROS[task]),
        new_code_cell(parameters_source(module.PARAMETERS, COMMENTS[task]), metadata={"tags": ["parameters"]}),
    ]
    if task == "robustness":
        cells.append(new_code_cell(
            "from bobkit.results.sidecars import save_cell_metrics\n"
            "from bobkit.tasks import robustness\n\n"
            f"result = robustness.evaluate(\n    {call_args},\n)\n"
            "metrics = result.metrics\n"
            "save_cell_metrics(metrics, output_dir)"
        ))
        cells.append(new_code_cell("fig = result.figure()  # reliability diagrams before / after temperature scaling"))
    else:
        cells.append(new_code_cell(
            "from bobkit.results.sidecars import save_cell_metrics\n"
            f"from bobkit.tasks import {task}\n\n"
            f"metrics = {task}.run(\n    {call_args},\n)\n"
            "save_cell_metrics(metrics, output_dir)"
        ))
    cells.append(new_code_cell("import pandas as pd\n\npd.Series(metrics).to_frame('value')"))
    for k, cell in enumerate(cells):
        cell["id"] = f"{task}-{k}"  # stable ids: regenerating gives an identical file
    return new_notebook(
        cells=cells,
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )


def main(tasks: list[str]) -> None:
    for task in tasks or GENERATED:
        out = REPO / "notebooks" / "tasks" / f"{task}.ipynb"
        nbformat.write(notebook(task, get_task(task)), out)
        print(out)


if __name__ == "__main__":
    main(sys.argv[1:])
