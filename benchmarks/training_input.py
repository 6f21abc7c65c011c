"""Training input at ImageNet scale: images/s per CPU core of the recipe's JPEG decoding + augmentation, and how
many cores one H100 needs to be fed while fine-tuning ViT-B/16 or ConvNeXt-B.

The pipeline is the one fine-tuning runs with ``augment: true`` (bobkit.tasks.training.training_batches): a torch
DataLoader whose worker processes decode each JPEG at its own size and apply the paper's recipe through timm's
``create_transform(is_training=True)`` (random-resized crop to 224 px, flip, RandAugment rand-m9-mstd0.5-inc1,
normalisation, random erasing 0.25), batches following the training plan. Its input is real photos that ship
offline (scikit-image's chelsea and coffee, from the data manifest) cut and resized into ImageNet-like JPEGs of
500x375 and 375x500 (quality 90) in a temporary folder.

Measured: per-image CPU seconds in one process (decode alone and the whole item: the cost of one core, free of the
machine's other load), then the DataLoader with 1 and 2 worker processes (wall-clock images/s, and images per
CPU-second of the workers). The GPU side is the fine-tuning images/s of the stored H100 throughput table
(``bobkit/rehearsal/throughput/h100.json``: ViT-B/16 measured, ConvNeXt-B FLOPs-scaled at the CNN family's
measured rate, each forward rate divided by the table's training/forward ratio), so cores per GPU = GPU images/s /
images/s per core.

    python benchmarks/training_input.py [--images 64] [--batch-size 32] [--steps 12]

Writes ``benchmarks/results/training_input.json``.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from benchlib import machine_info, prepare_run, write_result
from PIL import Image

IMAGE_SIZE = 224
#: The paper's fine-tuning input recipe (hsouri/bob-classification model_configs/*_ft.yaml).
RECIPE = dict(augment=True, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25)
GPU_BACKBONES = {"ViT-B/16": "vit_base_patch16_224.augreg_in1k", "ConvNeXt-B": "convnext_base.fb_in1k"}


def write_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` ImageNet-like JPEGs (500x375 landscape, every fourth 375x500 portrait) cut from real photos."""
    from bobkit.data.manifest import resolve

    photos = []
    for name in ("chelsea", "coffee"):
        with Image.open(resolve("skimage_photos", f"{name}.png")) as im:
            photos.append(im.convert("RGB"))
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        photo = photos[i % len(photos)]
        size = (375, 500) if i % 4 == 3 else (500, 375)
        aspect = size[0] / size[1]
        w = int(rng.integers(int(0.6 * photo.width), photo.width + 1))
        h = min(photo.height, round(w / aspect))
        w = round(h * aspect)
        left, top = int(rng.integers(0, photo.width - w + 1)), int(rng.integers(0, photo.height - h + 1))
        image = photo.crop((left, top, left + w, top + h)).resize(size, Image.BICUBIC)
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        path = folder / f"img_{i:04d}.jpg"
        image.save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def cpu_seconds_per_image(dataset, keys: list[tuple[int, int]]) -> dict[str, float]:
    """Process CPU seconds per image of decoding alone and of the whole item (decode + augment), one thread."""
    from bobkit.tasks.recipe import pil_image

    t = time.process_time()
    for _, index in keys:
        pil_image(dataset.source, index)
    decode = (time.process_time() - t) / len(keys)
    t = time.process_time()
    for key in keys:
        dataset[key]
    item = (time.process_time() - t) / len(keys)
    return {"decode_s": decode, "item_s": item, "augment_s": item - decode}


def loader_rate(dataset, plan, workers: int) -> dict[str, float]:
    """Wall-clock images/s of the DataLoader over the plan (after its first batch: worker start-up excluded) and
    the images per CPU-second its worker processes spent."""
    from bobkit.tasks.training import PlanSampler

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    before = children.ru_utime + children.ru_stime
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=PlanSampler(plan), num_workers=workers,
                                         persistent_workers=True)
    batches = iter(loader)
    first = next(batches)
    t = time.perf_counter()
    n = 0
    for x, _ in batches:
        n += len(x)
    wall = time.perf_counter() - t
    del batches, loader  # joins the workers, so their CPU time is counted below
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    worker_cpu = children.ru_utime + children.ru_stime - before
    total = n + len(first[0])
    return {"workers": workers, "images_per_s": n / wall, "images_per_s_per_worker": n / wall / workers,
            "worker_cpu_s": worker_cpu, "images_per_worker_cpu_s": total / worker_cpu if worker_cpu else None}


def gpu_finetune_rates() -> dict[str, dict[str, float | str]]:
    """Fine-tuning images/s of one H100 per backbone, from the stored throughput table (as ``bob plan`` reads it)."""
    from bobkit.backbones import get_backbone
    from bobkit.rehearsal.groups import architecture
    from bobkit.rehearsal.profiles import profile
    from bobkit.rehearsal.throughput import load_table

    table = load_table("h100")
    out: dict[str, dict[str, float | str]] = {}
    for label, backbone in GPU_BACKBONES.items():
        gflops = profile(backbone, IMAGE_SIZE).gflops
        forward, source = table.forward_seconds(architecture(backbone), get_backbone(backbone).family, IMAGE_SIZE,
                                                gflops)
        out[label] = {"backbone": backbone, "gflops": gflops, "forward_images_per_s": 1.0 / forward,
                      "finetune_images_per_s": 1.0 / (forward * table.train_over_forward), "source": source,
                      "device": table.device, "precision": table.precision}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="distinct JPEG files")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12, help="DataLoader batches per measurement")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    prepare_run(1)

    from bobkit import backbones
    from bobkit.data import ImageDataset
    from bobkit.tasks.recipe import AugmentedImages, Recipe
    from bobkit.tasks.training import BatchPlan

    config = backbones.data_config(GPU_BACKBONES["ViT-B/16"], image_size=IMAGE_SIZE)
    recipe = Recipe(**RECIPE)
    with tempfile.TemporaryDirectory(prefix="bob-jpegs-") as folder:
        paths = write_jpegs(Path(folder), args.images)
        labels = np.arange(len(paths)) % 10
        files = ImageDataset(None, labels, [str(c) for c in range(10)], "jpegs", "train", paths=paths,
                             meta={"file_backed": True})
        dataset = AugmentedImages(files, labels, recipe.transform(config, IMAGE_SIZE), seed=0)
        epochs = args.steps * args.batch_size / len(paths)
        plan = BatchPlan.for_epochs(len(paths), args.batch_size, epochs, seed=0)
        keys = [(step, int(i)) for step in range(min(len(plan), 4)) for i in plan.batch(step)]
        per_image = cpu_seconds_per_image(dataset, keys)
        loaders = [loader_rate(dataset, plan, workers) for workers in (1, 2)]
        mean_bytes = float(np.mean([p.stat().st_size for p in paths]))
    per_core = 1.0 / per_image["item_s"]
    gpus = gpu_finetune_rates()
    for rate in gpus.values():
        rate["cores_needed"] = float(rate["finetune_images_per_s"]) / per_core
    result = {
        "image_size": IMAGE_SIZE, "recipe": RECIPE, "transform": repr(dataset.transform).splitlines(),
        "jpeg": {"files": args.images, "sizes": ["500x375", "375x500"], "quality": 90, "mean_bytes": mean_bytes},
        "batch_size": args.batch_size, "per_image_cpu": per_image, "images_per_s_per_core": per_core,
        "loader": loaders, "gpu": gpus,
        "note": "images_per_s_per_core = 1 / CPU seconds of one item (decode + augment) in one process; the "
                "loader rows are wall-clock on this (shared) machine",
        "machine": machine_info(),
    }
    write_result("training_input", result, args.out_dir)
    return result


if __name__ == "__main__":
    main()
