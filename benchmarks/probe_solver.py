"""Linear probe on cached features: the L-BFGS solver vs the paper's epoch-based SGD probe (accuracy and time).

Both fit the same objective (mean cross-entropy + ``0.5 * l2 * ||W||^2`` on standardised features) on the same
cached features, for every backbone x dataset pair given. Per pair:

1. **Iteration budget chosen on validation**: 20 % of the training features (class-stratified) are held out;
   L-BFGS is fit on the rest at each budget in ``BUDGETS`` and the budget with the best validation top-1 is kept
   (ties: the smallest). The test split plays no part. The median over pairs is the recommended default; the
   product default (``probe_max_iter`` in the tasks' PARAMETERS) was set from it.
2. **Solver vs SGD at the product default**: both fit on all training features, timed alternately (best of
   ``--repeats``), and scored on the test split: top-1, NLL, the training objective reached, and the paired
   standard error of the top-1 difference (same test images). "Equal" = not worse by more than 1.96 paired SE.

    python benchmarks/probe_solver.py [--backbone NAME ...] [--dataset NAME ...] [--n-train 5000] [--device cpu]

Writes ``benchmarks/results/probe_solver[-cuda].json``. Target: solver >= 10x faster at equal or better accuracy.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchlib import interleaved, machine_info, write_result

BUDGETS = (5, 10, 15, 20, 25, 30, 40, 50, 70, 100)
BACKBONES = ("mobilenetv2_100.packaged_tv_in1k", "tf_efficientnet_lite0.packaged_in1k",
             "tf_efficientnet_lite2.packaged_in1k")
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
    from bobkit.tasks.classification import fit_linear_probe

    val = low_shot_indices(y, fraction=0.2, seed=seed)
    fit = np.setdiff1d(np.arange(len(y)), val)
    val_top1 = [float(correct(fit_linear_probe(x[fit], y[fit], num_classes=n_classes, l2=l2, max_iter=b,
                                               device=device), x[val], y[val]).mean()) for b in BUDGETS]
    best = BUDGETS[int(np.argmax(val_top1))]  # argmax takes the first (smallest) of ties
    return {"n_fit": len(fit), "n_val": len(val), "val_top1": dict(zip(BUDGETS, val_top1)), "chosen": best}


def compare_solvers(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray, n_classes: int,
                    max_iter: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """SGD (the paper's recipe) vs L-BFGS at ``max_iter`` on all training features, scored on test."""
    from bobkit.tasks.classification import fit_linear_probe, fit_sgd_probe

    fns = {
        "sgd": lambda: fit_sgd_probe(x, y, num_classes=n_classes, l2=args.l2, epochs=args.epochs, device=device),
        "lbfgs": lambda: fit_linear_probe(x, y, num_classes=n_classes, l2=args.l2, max_iter=max_iter,
                                          device=device),
    }
    timings = interleaved(fns, args.repeats, device)
    hits = {name: correct(rec["result"], xt, yt) for name, rec in timings.items()}
    solvers = {}
    for name, rec in timings.items():
        probe = rec["result"]
        solvers[name] = {
            "top1": float(hits[name].mean()),
            "nll": float(F.cross_entropy(torch.as_tensor(probe.logits(xt), dtype=torch.float64),
                                         torch.as_tensor(yt))),
            "train_objective": objective(probe, x, y, args.l2),
            "seconds": rec["best_s"], "cpu_seconds": rec["best_cpu_s"], "all_seconds": rec["all_s"],
        }
    solvers["lbfgs"]["max_iter"] = max_iter
    diff = hits["lbfgs"] - hits["sgd"]
    paired_se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    return {
        "solvers": solvers, "top1_diff": float(diff.mean()), "top1_diff_paired_se": paired_se,
        "equal_or_better": bool(diff.mean() >= -1.96 * paired_se),
        "speedup": solvers["sgd"]["seconds"] / solvers["lbfgs"]["seconds"],
        "speedup_cpu_time": solvers["sgd"]["cpu_seconds"] / solvers["lbfgs"]["cpu_seconds"],
    }


def run_pair(backbone: str, dataset: str, default_iter: int, args: argparse.Namespace,
             device: torch.device) -> dict[str, Any]:
    """Extract (or reuse) one pair's features, choose its budget on validation, compare the solvers."""
    from bobkit.features import extract_features

    common = dict(image_size=args.image_size, device=device, batch_size=256 if device.type == "cuda" else 64)
    train = extract_features(backbone, dataset, "train", max_samples=args.n_train, **common)
    test = extract_features(backbone, dataset, "test", max_samples=args.n_test, **common)
    x, y = np.asarray(train.features, dtype=np.float32), train.labels
    xt, yt = np.asarray(test.features, dtype=np.float32), test.labels
    n_classes = int(max(y.max(), yt.max())) + 1
    record = {"backbone": backbone, "dataset": dataset, "n_train": len(y), "n_test": len(yt), "dim": x.shape[1],
              "classes": n_classes}
    record["validation"] = validation_budget(x, y, n_classes, args.l2, device)
    record.update(compare_solvers(x, y, xt, yt, n_classes, default_iter, args, device))
    print(f"{backbone} / {dataset}: budget on validation {record['validation']['chosen']}; "
          f"speedup {record['speedup']:.1f}x, top-1 diff {100 * record['top1_diff']:+.2f} pt", flush=True)
    return record


def summarise(pairs: list[dict[str, Any]], default_iter: int) -> dict[str, Any]:
    """Across pairs: the recommended budget (median of the validation choices) and the solver-vs-SGD figures."""
    chosen = [p["validation"]["chosen"] for p in pairs]
    recommended = min(b for b in BUDGETS if b >= float(np.median(chosen)))
    speedups = [p["speedup"] for p in pairs]
    diffs = [p["top1_diff"] for p in pairs]
    return {
        "default_max_iter": default_iter, "validation_chosen": chosen, "recommended_max_iter": recommended,
        "speedup_median": float(np.median(speedups)), "speedup_min": float(min(speedups)),
        "top1_diff_mean": float(np.mean(diffs)), "top1_diff_min": float(min(diffs)),
        "pairs": len(pairs), "pairs_equal_or_better": sum(p["equal_or_better"] for p in pairs),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", nargs="+", default=list(BACKBONES))
    parser.add_argument("--dataset", nargs="+", default=list(DATASETS))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=90, help="SGD epochs (the paper's recipe: 90)")
    parser.add_argument("--max-iter", type=int, default=None, help="L-BFGS budget to time (default: the product's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    os.environ["BOB_CACHE_DIR"] = os.environ.get("BOB_CACHE_DIR") or tempfile.mkdtemp(prefix="bob-bench-")
    torch.set_num_threads(args.threads)

    from bobkit.device import resolve_device
    from bobkit.tasks.classification import PARAMETERS

    device = resolve_device(args.device)
    default_iter = args.max_iter or int(PARAMETERS["probe_max_iter"])
    pairs = [run_pair(b, d, default_iter, args, device) for d in args.dataset for b in args.backbone]
    result = {
        "image_size": args.image_size, "l2": args.l2, "sgd_epochs": args.epochs, "budgets": list(BUDGETS),
        "device": str(device), "summary": summarise(pairs, default_iter), "pairs": pairs,
        "targets": {"speedup": ">= 10 at equal or better accuracy"},
        "machine": machine_info(device),
    }
    write_result("probe_solver", result, args.out_dir, device)
    return result


if __name__ == "__main__":
    main()
