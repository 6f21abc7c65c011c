"""The linear probe's L2 strength chosen on held-out training items vs the old fixed 1e-3.

For each backbone and label regime (all training labels, 10 per class, a 10% fraction), fits the probe on the same
cached Fashion-MNIST features with ``l2=1e-3`` and with ``l2="auto"`` (:func:`bobkit.tasks.training.fit_probe`:
a stratified split, or stratified folds on small training sets, over ``PROBE_L2_GRID``), with both solvers, and
reports test top-1, NLL, the chosen L2 and the fit's seconds. The test split is only used to report.

    python benchmarks/probe_l2.py [--backbone ...] [--solver lbfgs sgd]

Writes ``benchmarks/results/probe_l2.json``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from benchlib import machine_info, prepare_run, write_result

BACKBONES = ("mobilenetv2_100.packaged_tv_in1k", "resnet18.random_init")
REGIMES = {"all": {}, "10_per_class": {"per_class": 10}, "fraction_0.1": {"fraction": 0.1}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", nargs="+", default=list(BACKBONES))
    parser.add_argument("--solver", nargs="+", default=["lbfgs", "sgd"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    prepare_run(args.threads)

    from bobkit.data.datasets import low_shot_indices
    from bobkit.features.extract import extract_features
    from bobkit.tasks.classification import classification_metrics
    from bobkit.tasks.training import PROBE_L2_GRID, fit_probe

    rows = []
    for backbone in args.backbone:
        common = dict(image_size=args.image_size, seed=0, batch_size=64, device="cpu")
        train = extract_features(backbone, "fashion_mnist", "train", max_samples=args.n_train, **common)
        test = extract_features(backbone, "fashion_mnist", "test", max_samples=args.n_test, **common)
        for regime, kw in REGIMES.items():
            keep = low_shot_indices(train.labels, **kw, seed=0) if kw else np.arange(len(train.labels))
            for solver in args.solver:
                for l2 in (1e-3, "auto"):
                    start = time.perf_counter()
                    fitted = fit_probe(train.features[keep], train.labels[keep], num_classes=10, l2=l2,
                                       solver=solver, seed=0)
                    seconds = time.perf_counter() - start
                    m = classification_metrics(fitted.probe.logits(test.features), test.labels)
                    rows.append({"backbone": backbone, "regime": regime, "n_train": int(len(keep)),
                                 "solver": solver, "l2": l2, "chosen_l2": fitted.l2, "top1": m["top1"],
                                 "se_top1": m["se/top1"], "nll": m["nll"], "seconds": seconds,
                                 "validation_nll": {str(k): v for k, v in fitted.validation_nll.items()}})
                    print(f"{backbone:34s} {regime:13s} {solver:5s} l2={l2!s:5s} -> {fitted.l2:<7g} "
                          f"top1 {m['top1']:.3f} nll {m['nll']:.3f} {seconds:.2f} s", flush=True)
    result = {"grid": list(PROBE_L2_GRID), "image_size": args.image_size, "n_test": args.n_test, "rows": rows,
              "machine": machine_info()}
    write_result("probe_l2", result, args.out_dir, torch.device("cpu"))
    return result


if __name__ == "__main__":
    main()
