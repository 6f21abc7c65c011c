"""Linear probe on cached features: the L-BFGS solver vs the paper's epoch-based SGD probe (accuracy and time).

Both fit the same objective (mean cross-entropy + ``0.5 * l2 * ||W||^2`` on standardised features) on the same
cached features, for every backbone x dataset pair given (pretrained and random-init controls). Per pair:

1. **Iteration budget chosen on validation**: 20 % of the training features (class-stratified) are held out;
   the product's solver is fit on the rest at each budget in ``BUDGETS`` and the budget with the best validation
   top-1 is kept (ties: the smallest). The test split plays no part. The median over pairs is the recommended
   default; the product default (``probe_max_iter`` in the tasks' PARAMETERS) was set from it.
2. **Solvers vs SGD**: SGD (90 epochs, the paper's recipe), L-BFGS at the product default (preconditioned), the
   same budget without the preconditioner, and 100 preconditioned iterations (the objective's optimum) are timed
   alternately on all training features (best of ``--repeats``) and scored on the test split: top-1, NLL, the
   training objective reached, and the paired standard error of the top-1 difference to SGD (same test images).
   "Equal" = not worse than SGD by more than 1.96 paired SE.

    python benchmarks/probe_solver.py [--backbone NAME ...] [--dataset NAME ...] [--n-train 5000] [--device cpu]

Writes ``benchmarks/results/probe_solver[-cuda].json``. Target: solver >= 10x faster at equal or better accuracy.
"""

from __future__ import annotations

import argparse
import inspect
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from benchlib import interleaved, machine_info, prepare_run, write_result

BUDGETS = (5, 10, 15, 20, 25, 30, 40, 50, 70, 100)
BACKBONES = ("mobilenetv2_100.packaged_tv_in1k", "tf_efficientnet_lite0.packaged_in1k",
             "tf_efficientnet_lite2.packaged_in1k", "resnet18.random_init", "convnext_atto.random_init",
             "vit_tiny_patch16_224.random_init")
DATASETS = ("fashion_mnist", "mnist5k", "sklearn_digits")


def correct(probe, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-image 0/1 correctness of a probe's top-1 prediction."""
    return (probe.logits(features).argmax(1) == labels).astype(np.float64)


def objective(probe, features: np.ndarray, labels: np.ndarray, l2: float) -> float:
    """The training objective a probe reached (same formula for both solvers)."""
    logits = torch.as_tensor(probe.logits(features), dtype=torch.float64)
    ce = F.cross_entropy(logits, torch.as_tensor(labels))
    return float(ce + 0.5 * l2 * probe.weight.double().pow(2).sum().cpu())


def validation_budget(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float, device: torch.device,
                      seed: int = 0) -> dict[str, Any]:
    """The L-BFGS budget with the best top-1 on a stratified 20 % validation split of the training features."""
    from bobkit.data.datasets import low_shot_indices
    from bobkit.tasks.training import fit_linear_probe

    val = low_shot_indices(y, fraction=0.2, seed=seed)
    fit = np.setdiff1d(np.arange(len(y)), val)
    val_top1 = [float(correct(fit_linear_probe(x[fit], y[fit], num_classes=n_classes, l2=l2, max_iter=b,
                                               device=device), x[val], y[val]).mean()) for b in BUDGETS]
    best = BUDGETS[int(np.argmax(val_top1))]  # argmax takes the first (smallest) of ties
    return {"n_fit": len(fit), "n_val": len(val), "val_top1": dict(zip(BUDGETS, val_top1)), "chosen": best}


def compare_solvers(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray, n_classes: int,
                    solvers_kw: dict[str, dict[str, int]], args: argparse.Namespace,
                    device: torch.device) -> dict[str, Any]:
    """SGD (the paper's recipe) vs L-BFGS at each named setting (``max_iter``, ``precondition_rank``)."""
    from bobkit.tasks.training import fit_linear_probe, fit_sgd_probe

    fns = {"sgd": lambda: fit_sgd_probe(x, y, num_classes=n_classes, l2=args.l2, epochs=args.epochs, device=device)}
    for name, kw in solvers_kw.items():
        fns[name] = lambda kw=kw: fit_linear_probe(x, y, num_classes=n_classes, l2=args.l2, device=device, **kw)
    timings = interleaved(fns, args.repeats, device)
    hits = {name: correct(rec["result"], xt, yt) for name, rec in timings.items()}
    solvers: dict[str, Any] = {}
    for name, rec in timings.items():
        probe = rec["result"]
        solvers[name] = {
            "top1": float(hits[name].mean()),
            "nll": float(F.cross_entropy(torch.as_tensor(probe.logits(xt), dtype=torch.float64),
                                         torch.as_tensor(yt))),
            "train_objective": objective(probe, x, y, args.l2),
            "seconds": rec["best_s"], "cpu_seconds": rec["best_cpu_s"], "all_seconds": rec["all_s"],
        }
        if name == "sgd":
            continue
        diff = hits[name] - hits["sgd"]
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
        solvers[name].update(
            **solvers_kw[name], top1_diff=float(diff.mean()), top1_diff_paired_se=se,
            equal_or_better=bool(diff.mean() >= -1.96 * se),
            speedup=timings["sgd"]["best_s"] / rec["best_s"],
            speedup_cpu_time=timings["sgd"]["best_cpu_s"] / rec["best_cpu_s"],
        )
    return {"solvers": solvers}


def run_pair(backbone: str, dataset: str, solvers_kw: dict[str, dict[str, int]], args: argparse.Namespace,
             device: torch.device) -> dict[str, Any]:
    """Extract (or reuse) one pair's features, choose its budget on validation, compare the solvers on them."""
    from bobkit import backbones as registry
    from bobkit.features.extract import extract_features

    common = dict(image_size=args.image_size, device=device, batch_size=256 if device.type == "cuda" else 64)
    train = extract_features(backbone, dataset, "train", max_samples=args.n_train, **common)
    test = extract_features(backbone, dataset, "test", max_samples=args.n_test, **common)
    x, y = np.asarray(train.features, dtype=np.float32), train.labels
    xt, yt = np.asarray(test.features, dtype=np.float32), test.labels
    n_classes = int(max(y.max(), yt.max())) + 1
    record = {"backbone": backbone, "dataset": dataset, "random_init": registry.get_backbone(backbone).source == "random",
              "n_train": len(y), "n_test": len(yt), "dim": x.shape[1], "classes": n_classes}
    record["validation"] = validation_budget(x, y, n_classes, args.l2, device)
    record.update(compare_solvers(x, y, xt, yt, n_classes, solvers_kw, args, device))
    line = ", ".join(f"{k} {v['speedup']:.1f}x {100 * v['top1_diff']:+.2f} pt"
                     for k, v in record["solvers"].items() if k != "sgd")
    print(f"{backbone} / {dataset}: budget on validation {record['validation']['chosen']}; {line}", flush=True)
    return record


def summarise(pairs: list[dict[str, Any]], solvers_kw: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Per solver setting and group (pretrained, random-init, all): speedups and top-1 differences to SGD; the
    budget the validation splits recommend (median of their choices)."""
    chosen = [p["validation"]["chosen"] for p in pairs]
    out: dict[str, Any] = {"validation_chosen": chosen,
                           "recommended_max_iter": min(b for b in BUDGETS if b >= float(np.median(chosen)))}
    groups = {"all": pairs, "pretrained": [p for p in pairs if not p["random_init"]],
              "random_init": [p for p in pairs if p["random_init"]]}
    for name, kw in solvers_kw.items():
        out[name] = dict(kw)
        for group, members in groups.items():
            if not members:
                continue
            rows = [p["solvers"][name] for p in members]
            out[name][group] = {
                "pairs": len(rows), "pairs_equal_or_better": sum(r["equal_or_better"] for r in rows),
                "speedup_median": float(np.median([r["speedup"] for r in rows])),
                "speedup_min": float(min(r["speedup"] for r in rows)),
                "top1_diff_mean": float(np.mean([r["top1_diff"] for r in rows])),
                "top1_diff_min": float(min(r["top1_diff"] for r in rows)),
            }
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", nargs="+", default=list(BACKBONES))
    parser.add_argument("--dataset", nargs="+", default=list(DATASETS))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=90, help="SGD epochs (the paper's recipe: 90)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    prepare_run(args.threads)

    from bobkit.features.device import resolve_device
    from bobkit.tasks.classification import PARAMETERS
    from bobkit.tasks.training import fit_linear_probe

    device = resolve_device(args.device)
    default = int(PARAMETERS["probe_max_iter"])
    rank = int(inspect.signature(fit_linear_probe).parameters["precondition_rank"].default)
    solvers_kw = {"lbfgs_default": {"max_iter": default, "precondition_rank": rank},
                  "lbfgs_unpreconditioned": {"max_iter": default, "precondition_rank": 0},
                  "lbfgs_100": {"max_iter": 100, "precondition_rank": rank}}
    pairs = [run_pair(b, d, solvers_kw, args, device) for d in args.dataset for b in args.backbone]
    result = {
        "image_size": args.image_size, "l2": args.l2, "sgd_epochs": args.epochs, "device": str(device),
        "summary": summarise(pairs, solvers_kw), "pairs": pairs,
        "targets": {"speedup": ">= 10 at equal or better accuracy"},
        "machine": machine_info(device),
    }
    write_result("probe_solver", result, args.out_dir, device)
    return result


if __name__ == "__main__":
    main()
