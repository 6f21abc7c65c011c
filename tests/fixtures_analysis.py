"""Synthetic results tables in the ``results/results.parquet`` schema, for the analysis tests.

:func:`make_results` builds a table with a known structure: each backbone has a latent quality that grows with
log-parameters (faster for ViTs) and log-data, every setting reads it through a monotone link plus noise, so task
scores correlate, bigger backbones score higher, and every analysis notebook has something to show. Every cell has
``n_items`` test items, accuracies their binomial ``stderr``, and ``setting_params`` / ``setting_id`` as ``bob build``
writes them. :func:`make_minimal_results` mimics the offline demo: one task, one protocol, one seed, no robustness
rows. Nothing here reads outside the repository: the public tables ship in ``bobkit/reference/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from bobkit.results.schema import COLUMNS, conform, setting_id

#: The public tables bundled with bobkit (a data dir for callers that set ``BOB_DATA_DIR``; the manifest finds the
#: bundled copies without it).
DATA_DIR = Path(__file__).resolve().parents[1] / "bobkit" / "reference"
#: Measurement parameters of the synthetic cells, as ``bob build`` records them.
SETTING_PARAMS = {"image_size": 64, "max_train": 2000, "max_test": 1000}
N_ITEMS = 1000

_BACKBONES = [
    # name, family, method, method_kind, pretrain_data, images, params
    ("resnet18.tv_in1k", "CNN", "supervised", "supervised", "IN-1k", 1.28e6, 11.7),
    ("resnet50.tv_in1k", "CNN", "supervised", "supervised", "IN-1k", 1.28e6, 25.6),
    ("resnet50.dino", "CNN", "DINO", "SSL", "IN-1k", 1.28e6, 25.6),
    ("convnext_tiny.in22k", "CNN", "supervised", "supervised", "IN-21k", 14.2e6, 28.6),
    ("convnext_base.in22k", "CNN", "supervised", "supervised", "IN-21k", 14.2e6, 88.6),
    ("vit_small_patch16_224.augreg_in1k", "ViT", "supervised", "supervised", "IN-1k", 1.28e6, 22.0),
    ("vit_small_patch16_224.dino", "ViT", "DINO", "SSL", "IN-1k", 1.28e6, 22.0),
    ("vit_base_patch16_224.mae", "ViT", "MAE", "SSL", "IN-1k", 1.28e6, 86.6),
    ("vit_base_patch16_224.augreg_in1k", "ViT", "supervised", "supervised", "IN-1k", 1.28e6, 86.6),
    ("vit_base_patch16_clip_224.laion2b", "ViT", "CLIP", "vision-language", "LAION-2B", 2.3e9, 86.2),
    ("swinv2_tiny_window8_256.in1k", "hierarchical-ViT", "supervised", "supervised", "IN-1k", 1.28e6, 28.3),
    ("swinv2_base_window12_192.in22k", "hierarchical-ViT", "supervised", "supervised", "IN-21k", 14.2e6, 87.9),
    ("resnet18.random_init", "CNN", "random init", "random", "none", 0.0, 11.7),
    ("vit_tiny_patch16_224.random_init", "ViT", "random init", "random", "none", 0.0, 5.7),
]

# task, dataset, protocol, metric, higher_is_better: the metric names the project's tasks report
_SETTINGS = [
    ("classification", "fashion_mnist", "linear_probe", "top1", True),
    ("classification", "fashion_mnist", "linear_probe", "nll", False),
    ("classification", "fashion_mnist", "finetune", "top1", True),
    ("classification", "mnist5k", "linear_probe", "top1", True),
    ("classification", "mnist5k", "finetune", "top1", True),
    ("retrieval", "fashion_mnist", "frozen", "map", True),
    ("retrieval", "fashion_mnist", "frozen", "mrr", True),
    ("retrieval", "fashion_mnist", "frozen", "recall@1", True),
    ("ood", "fashion_mnist", "linear_probe", "id_acc", True),
    ("ood", "fashion_mnist", "linear_probe", "acc/mnist5k", True),
    ("ood", "fashion_mnist", "linear_probe", "drop_mnist5k", False),
    ("robustness", "fashion_mnist", "linear_probe", "top1", True),
    ("robustness", "fashion_mnist", "linear_probe", "ece", False),
    ("robustness", "fashion_mnist", "linear_probe", "acc/pgd/0", True),
    ("robustness", "fashion_mnist", "linear_probe", "acc/pgd/1", True),
    ("robustness", "fashion_mnist", "linear_probe", "acc/fgsm/1", True),
    ("detection", "fmnist_scenes", "frozen", "box_ap", True),
]


def _quality(family: str, kind: str, images: float, params: float, rng: np.random.Generator) -> float:
    if kind == "random":
        return -2.5 + 0.1 * rng.normal()
    size_slope = 1.0 if family != "CNN" else 0.5
    return size_slope * np.log10(params) + 0.35 * np.log10(images) - 3.3 + 0.25 * rng.normal()


def make_results(*, seeds: tuple[int, ...] = (0, 1), noise: float = 0.15, seed: int = 0,
                 backbones: int | None = None, n_items: int = N_ITEMS) -> pd.DataFrame:
    """A full synthetic table: 14 backbones (or the first ``backbones``) x 17 metrics over 5 tasks x ``seeds``."""
    rng = np.random.default_rng(seed)
    rows = []
    chosen = _BACKBONES[:backbones] if backbones else _BACKBONES
    for name, family, method, kind, data, images, params in chosen:
        q = _quality(family, kind, images or 1.0, params, rng)
        biases: dict[tuple[str, str, str], float] = {}
        for task, dataset, protocol, metric, hib in _SETTINGS:
            offset = {"finetune": 0.4, "frozen": -0.2}.get(protocol, 0.0)
            run = (task, dataset, protocol)
            bias = biases.setdefault(run, 0.3 * rng.normal())
            for s in seeds:
                noise_s = noise * rng.normal()
                clean = 1 / (1 + np.exp(-(q + offset + bias + noise_s)))
                shifted = 1 / (1 + np.exp(-(q + offset + bias + noise_s - 1.0 + 0.2 * rng.normal())))
                value = {
                    "nll": -np.log(max(clean, 1e-3)),
                    "ece": 0.02 + 0.2 * (1 - clean) + 0.01 * abs(rng.normal()),
                    "acc/mnist5k": shifted, "acc/pgd/1": shifted, "acc/fgsm/1": min(1.0, shifted + 0.05),
                    "drop_mnist5k": clean - shifted,
                }.get(metric, clean)
                accuracy = metric in {"top1", "map", "mrr", "recall@1", "id_acc"} or metric.startswith("acc/")
                rows.append({
                    "run_key": f"{name}-{task}-{dataset}-{protocol}-{s}",
                    "task": task, "backbone": name, "dataset": dataset, "protocol": protocol, "seed": s,
                    "setting": f"{task}/{dataset}/{protocol}",
                    "setting_id": setting_id(task, dataset, protocol, metric, SETTING_PARAMS),
                    "setting_params": json.dumps(SETTING_PARAMS, sort_keys=True), "metric": metric,
                    "value": float(value),
                    "stderr": float(np.sqrt(value * (1 - value) / n_items)) if accuracy else np.nan,
                    "n_items": float(n_items),
                    "higher_is_better": hib, "display_name": name, "architecture": name.split(".")[0],
                    "family": family, "method": method, "method_kind": kind, "pretrain_data": data,
                    "pretrain_images": images, "params_millions": params,
                })
    table = pd.DataFrame(rows)
    assert set(table.columns) <= set(COLUMNS)
    return conform(table)


def with_transferability(table: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """``table`` plus transferability cells on each classification dataset with a known structure: LogME is the
    linear probe's own top-1 (a perfect predictor of that setting), kNN accuracy its reverse, H-score noise, LEEP
    the top-1 plus noise for backbones with an ImageNet head (supervised) and absent for the others."""
    rng = np.random.default_rng(seed)
    probe = table[(table["task"] == "classification") & (table["protocol"] == "linear_probe")
                  & (table["metric"] == "top1")]
    probe = probe.groupby(["backbone", "dataset"], as_index=False).first().assign(  # the value: mean over seeds
        value=probe.groupby(["backbone", "dataset"])["value"].mean().to_numpy())
    rows = []
    for r in probe.itertuples(index=False):
        values = {"logme": 5 * r.value, "knn_acc": 1 - r.value, "h_score": float(rng.normal())}
        if r.method_kind == "supervised":
            values["leep"] = r.value + 0.05 * float(rng.normal())
        for metric, value in values.items():
            rows.append({"run_key": f"transfer-{r.backbone}-{r.dataset}", "task": "transferability",
                         "backbone": r.backbone, "dataset": r.dataset, "protocol": "frozen", "seed": 0,
                         "metric": metric, "value": value, "higher_is_better": True,
                         **{c: getattr(r, c) for c in ("display_name", "architecture", "family", "method",
                                                       "method_kind", "pretrain_data", "pretrain_images",
                                                       "params_millions")}})
    return conform(pd.concat([table, pd.DataFrame(rows)], ignore_index=True))


def make_minimal_results() -> pd.DataFrame:
    """Like the offline demo: three CNNs, one task (classification), one protocol, one seed, no robustness rows."""
    table = make_results(seeds=(0,), backbones=3)
    keep = (table["task"] == "classification") & (table["protocol"] == "linear_probe") & (
        table["dataset"] == "fashion_mnist")
    return table[keep].reset_index(drop=True)


def write_table(table: pd.DataFrame, path: Path) -> Path:
    """Write ``table`` as parquet (the format ``bob build`` writes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(path, index=False)
    return path


NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks" / "analysis"


def analysis_notebook_names() -> list[str]:
    return sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def _papermill_one(job: tuple[str, str, dict]) -> tuple[str, str | None]:
    import papermill

    name, output, parameters = job
    try:
        papermill.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), output, parameters=parameters,
                                   kernel_name="python3", progress_bar=False, execution_timeout=300)
    except Exception as exc:  # noqa: BLE001 - reported by the test
        return name, f"{type(exc).__name__}: {exc}"
    return name, None


def run_notebooks(out_dir: Path, parameters: dict, *, names: list[str] | None = None, jobs: int = 2
                  ) -> dict[str, dict]:
    """Execute analysis notebooks with plain ``papermill.execute_notebook`` (``jobs`` at a time).

    Each gets ``parameters`` plus its own ``figures_dir`` (``out_dir/figures/<name>``); returns name ->
    ``{"error", "notebook", "figures_dir"}``.
    """
    from concurrent.futures import ThreadPoolExecutor

    names = names or analysis_notebook_names()
    jobs_list = [(n, str(out_dir / f"{n}.ipynb"), {**parameters, "figures_dir": str(out_dir / "figures" / n)})
                 for n in names]
    with ThreadPoolExecutor(max_workers=jobs) as pool:  # each notebook runs in its own kernel process
        errors = dict(pool.map(_papermill_one, jobs_list))
    return {n: {"error": errors[n], "notebook": out_dir / f"{n}.ipynb", "figures_dir": out_dir / "figures" / n}
            for n in names}


def exec_notebook_inprocess(name: str, parameters: dict) -> dict:
    """Run an analysis notebook's code cells in this process (no kernel): the parameters cell, then ``parameters``
    as papermill would inject them, then the rest. Fast smoke runs; returns the namespace."""
    import matplotlib

    matplotlib.use("Agg")
    import nbformat

    nb = nbformat.read(str(NOTEBOOK_DIR / f"{name}.ipynb"), as_version=4)
    namespace: dict = {"__name__": f"analysis_{name}"}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        exec(compile(cell.source, f"<{name}>", "exec"), namespace)  # noqa: S102 - our own notebooks
        if "parameters" in cell.metadata.get("tags", []):
            namespace.update(parameters)
    return namespace
