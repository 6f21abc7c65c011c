"""Fine-tuning steps/s on one GPU with the paper's recipe, and whether the input pipeline keeps the GPU busy.

For ViT-B/16 and ConvNeXt-B (random-init weights: the speed does not depend on them, and the GPU machine has no
network) this measures, in bf16 autocast at 224 px with the recipe's augmentation (timm's
``create_transform(is_training=True)``: random-resized crop, flip, RandAugment rand-m9-mstd0.5-inc1, random
erasing 0.25; mixup 0.8 / cutmix 1.0, label smoothing 0.1, drop-path 0.1), with the project's own loop
(:func:`bobkit.tasks.training.training_batches` and :func:`~bobkit.tasks.training.train_step`):

* ``compute``: optimizer steps/s on batches already on the GPU (what the GPU can do: no input);
* ``input``: batches/s the DataLoader's worker processes decode and augment (JPEGs written at ImageNet sizes);
* ``end_to_end``: steps/s of the two together, as a fine-tune runs;
* ``gpu_busy`` = compute time per step / end-to-end time per step (1.0: the input keeps up; below about 0.9 the
  GPU waits for the CPUs, and ``cores_needed`` estimates the loader workers that would feed it).

    python benchmarks/gpu_finetune_check.py [--steps 30] [--batch-size 128] [--workers N] [--out-dir DIR]
    python benchmarks/gpu_finetune_check.py --dry-run     # tiny, on CPU: checks the script itself (tests run it)

Writes ``benchmarks/results/gpu_finetune.json`` (``--dry-run``: ``gpu_finetune-dry-run.json``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine_info, prepare_run, write_result  # noqa: E402

IMAGE_SIZE = 224
#: The paper's fine-tuning recipe (hsouri/bob-classification model_configs/*_ft.yaml), as task parameters.
RECIPE = dict(augment=True, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, mixup=0.8, cutmix=1.0,
              label_smoothing=0.1, drop_path=0.1)
BACKBONES = {"ViT-B/16": "vit_base_patch16_224.random_init", "ConvNeXt-B": "convnext_base.random_init"}
#: The dry run: a tiny model at a tiny size on the CPU, a couple of steps (it checks the code, measures nothing).
DRY_RUN = dict(backbones={"ViT-Tiny (dry run)": "vit_tiny_patch16_224.random_init"}, image_size=32, batch_size=4,
               steps=2, warmup=1, images=8, workers=1, device="cpu", precision="fp32")
NUM_CLASSES = 1000
#: Below this share of the step spent computing, the GPU is counted as waiting for its input.
BUSY_ENOUGH = 0.9


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--batch-size", type=int, default=128, help="global batch of one optimizer step")
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (cuDNN autotuning, allocator)")
    parser.add_argument("--images", type=int, default=256, help="distinct JPEG files the loader cycles through")
    parser.add_argument("--workers", type=int, default=None, help="loader worker processes (default: cores - 1)")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    parser.add_argument("--backbones", nargs="*", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--dry-run", action="store_true", help="tiny CPU run that checks the script")
    return parser.parse_args(argv)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings from the arguments (the dry run's replace the sizes, device and backbones)."""
    if args.dry_run:
        return dict(DRY_RUN)
    workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 2) - 1)
    return dict(backbones={label: BACKBONES[label] for label in args.backbones}, image_size=args.image_size,
                batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, images=args.images,
                workers=workers, device=args.device, precision=args.precision)


def file_dataset(folder: Path, n: int) -> Any:
    """``n`` ImageNet-sized JPEGs (benchmarks/training_input.py's) as a file-backed dataset."""
    from training_input import write_jpegs

    from bobkit.data import ImageDataset

    paths = write_jpegs(folder, n)
    labels = np.arange(n) % NUM_CLASSES
    return ImageDataset(None, labels, [str(c) for c in range(NUM_CLASSES)], "jpegs", "train", paths=paths,
                        meta={"file_backed": True})


def measure(label: str, backbone: str, files: Any, run: dict[str, Any]) -> dict[str, Any]:
    """Compute-only, input-only and end-to-end rates of one backbone's fine-tuning."""
    from bobkit import backbones
    from bobkit.features.device import Execution, prepare_model, resolve_device
    from bobkit.tasks.recipe import Recipe
    from bobkit.tasks.training import BatchPlan, Objective, start_training, train_step, training_batches

    device = resolve_device(run["device"])
    size, batch = run["image_size"], run["batch_size"]
    recipe = Recipe(**{k: v for k, v in RECIPE.items()})
    model = backbones.create_model(backbone, num_classes=NUM_CLASSES, image_size=size, seed=0,
                                   drop_path_rate=recipe.drop_path)
    ex = Execution(device=device, precision=run["precision"], loader_workers=run["workers"],
                   pin_memory=device.type == "cuda").for_model(model, None)
    model = prepare_model(model, ex).train()
    config = backbones.data_config(backbone, image_size=size)
    total = run["warmup"] + run["steps"]
    plan = BatchPlan(len(files), batch, total, seed=0)
    labels = np.asarray(files.labels)
    progress = start_training(model, lr=1e-4, weight_decay=0.05, layer_decay=None, total_steps=total,
                              warmup_steps=0, precision=ex.precision, device=device)
    objective = Objective(recipe.criterion(), recipe.mixer(NUM_CLASSES, 0), 0)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed_steps(micro_batches) -> float:
        """Seconds per step over the timed steps (after the warm-up ones)."""
        start = None
        for i, micro in enumerate(micro_batches):
            if i == run["warmup"]:
                sync()
                start = time.perf_counter()
            train_step(progress, micro, objective=objective, mean_over=batch, execution=ex)
        sync()
        return (time.perf_counter() - start) / run["steps"]

    def batches():
        return (micro for _, micro in training_batches(files, labels, plan, config, image_size=size, recipe=recipe,
                                                       execution=ex))

    # Input alone: the loader's batches, nothing computed on them.
    loaded = batches()
    for _ in range(run["warmup"]):
        next(loaded)
    t = time.perf_counter()
    n_loaded = sum(1 for _ in loaded)
    input_s = (time.perf_counter() - t) / max(1, n_loaded)
    # Compute alone: one batch kept on the device, stepped again and again.
    fixed = next(iter(batches()))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    compute_s = timed_steps(fixed for _ in range(total))
    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    # Both, as a fine-tune runs.
    end_to_end_s = timed_steps(batches())
    busy = compute_s / end_to_end_s
    images_per_worker_s = batch / input_s / run["workers"]
    return {
        "backbone": backbone, "device": str(device), "precision": ex.precision, "channels_last": ex.channels_last,
        "batch_size": batch, "image_size": size, "loader_workers": run["workers"], "timed_steps": run["steps"],
        "compute_steps_per_s": 1.0 / compute_s, "input_batches_per_s": 1.0 / input_s,
        "end_to_end_steps_per_s": 1.0 / end_to_end_s, "end_to_end_images_per_s": batch / end_to_end_s,
        "gpu_busy": busy, "input_keeps_up": busy >= BUSY_ENOUGH,
        "cores_needed": (batch / compute_s) / images_per_worker_s, "peak_memory_gib": peak_gib,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    run = settings(args)
    if not args.dry_run and not torch.cuda.is_available() and run["device"].startswith("cuda"):
        raise SystemExit("no CUDA device: run on a GPU machine, or --dry-run to check the script on CPU")
    prepare_run(1, cudnn_benchmark=run["device"].startswith("cuda"))
    with tempfile.TemporaryDirectory(prefix="bob-finetune-jpegs-") as folder:
        files = file_dataset(Path(folder), run["images"])
        rows = {label: measure(label, backbone, files, run) for label, backbone in run["backbones"].items()}
    result = {
        "dry_run": args.dry_run, "recipe": RECIPE, "busy_enough": BUSY_ENOUGH, "rows": rows,
        "note": "random-init weights (speed does not depend on them); gpu_busy = compute-only seconds per step / "
                "end-to-end seconds per step; cores_needed = loader worker processes that would feed the "
                "compute-only rate at the measured images/s per worker",
        "machine": machine_info(torch.device(run["device"])),
    }
    name = "gpu_finetune-dry-run" if args.dry_run else "gpu_finetune"
    write_result(name, result, args.out_dir)
    return result


if __name__ == "__main__":
    main()
