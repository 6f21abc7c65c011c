"""The demo's fine-tuning budget: which epochs / lr / layer decay let the packaged backbones beat their own probe.

For each backbone, runs the classification task's linear probe (L2 chosen on held-out training items) and the
fine-tuning protocol under each setting, on the same Fashion-MNIST training and test items at the demo's image
size, one thread per cell (what ``bob run`` gives each of 2 workers on 2 cores). Records top-1 with its standard
error, the training and the whole cell's seconds.

    python benchmarks/finetune_budget.py [--backbone ...] [--max-train 1000] \\
        [--setting '{"epochs": 3, "lr": 1e-3, "layer_decay": 0.75, "warmup_epochs": 0.5}' ...]

Writes ``benchmarks/results/finetune_budget.json``. CPU timings on a shared machine are noisy: the JSON records
the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from benchlib import machine_info, prepare_run, write_result

PACKAGED = ("mobilenetv2_100.packaged_tv_in1k", "tf_efficientnet_lite0.packaged_in1k",
            "tf_efficientnet_lite2.packaged_in1k")
#: Today's demo cell first, then longer schedules with and without the paper's layer decay.
SETTINGS = (
    {"epochs": 1, "lr": 1e-3, "layer_decay": None, "warmup_epochs": 0.0},
    {"epochs": 3, "lr": 1e-3, "layer_decay": None, "warmup_epochs": 0.5},
    {"epochs": 3, "lr": 1e-3, "layer_decay": 0.75, "warmup_epochs": 0.5},
)


def run_cell(**params) -> dict:
    """One classification cell, timed; the scores and descriptors the comparison needs."""
    from bobkit.tasks.classification import run

    start = time.perf_counter()
    m = run(**params)
    keep = ("top1", "se/top1", "nll", "train_seconds", "n_train", "n_test", "selected_probe_l2")
    return {**{k: m[k] for k in keep if k in m}, "cell_seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", nargs="+", default=list(PACKAGED))
    parser.add_argument("--setting", nargs="+", type=json.loads, default=list(SETTINGS))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--max-train", type=int, default=1000)
    parser.add_argument("--max-test", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--name", default="finetune_budget")
    args = parser.parse_args(argv)
    prepare_run(args.threads)
    load_before = os.getloadavg()
    common = dict(dataset="fashion_mnist", image_size=args.image_size, max_train=args.max_train,
                  max_test=args.max_test, batch_size=args.batch_size, seed=0, device="cpu",
                  num_threads=args.threads)
    rows = []
    for backbone in args.backbone:
        probe = run_cell(backbone=backbone, protocol="linear_probe", **common)
        for setting in args.setting:
            tuned = run_cell(backbone=backbone, protocol="finetune", **{**common, **setting})
            rows.append({"backbone": backbone, "setting": setting, "finetune": tuned, "probe": probe,
                         "finetune_minus_probe": tuned["top1"] - probe["top1"]})
            print(f"{backbone:36s} {json.dumps(setting):75s} fine-tune {tuned['top1']:.3f} vs probe "
                  f"{probe['top1']:.3f}  {tuned['cell_seconds']:.0f} s", flush=True)
    result = {"image_size": args.image_size, "max_train": args.max_train, "max_test": args.max_test,
              "batch_size": args.batch_size, "threads": args.threads, "rows": rows,
              "load_average_before": [round(v, 2) for v in load_before], "machine": machine_info()}
    write_result(args.name, result, args.out_dir, torch.device("cpu"))
    return result


if __name__ == "__main__":
    main()
