"""Peak memory of feature extraction over a whole dataset: batches are converted on the fly, never all at once.

Extracts Fashion-MNIST train (60,000 images, 28x28 gray) resized to 224 px: held as float32 images at once that
would be 60,000 x 3 x 224 x 224 x 4 bytes = 33.6 GiB. Measured: the process's peak RSS during extraction (Linux
VmHWM, reset before), its growth over the baseline with the dataset loaded, and the GPU's peak allocated memory.
``--model tiny`` (a strided conv + pooling) keeps the CPU run about preprocessing and memory, not FLOPs.

    python benchmarks/memory.py [--device cuda] [--model resnet18.random_init|tiny] [--n 60000] [--image-size 224]

Writes ``benchmarks/results/memory[-cuda].json``.
"""

from __future__ import annotations

import argparse
import time

import torch
from benchlib import machine_info, prepare_run, write_result


def tiny_model() -> torch.nn.Module:
    """A few-kFLOP stand-in backbone: what is measured is the data path, not the network."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, kernel_size=8, stride=8), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    ).eval()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default=None, help="backbone name or 'tiny' (default: tiny on CPU, "
                                                         "resnet18.random_init on GPU)")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--n", type=int, default=None, help="images (default: the whole train split)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    prepare_run(args.threads)

    from bobkit import backbones
    from bobkit.data import get_dataset
    from bobkit.features.device import current_rss_mb, peak_memory, prepare_model, reset_peak_memory, resolve_execution
    from bobkit.features.extract import run_forward

    ex = resolve_execution(args.device)
    cuda = ex.device.type == "cuda"
    name = args.model or ("resnet18.random_init" if cuda else "tiny")
    ds = get_dataset(args.dataset, "train", max_samples=args.n)
    if name == "tiny":
        model = tiny_model()
        config = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear"}
    else:
        model = backbones.create_model(name, num_classes=0, image_size=args.image_size).eval()
        config = backbones.data_config(name, image_size=args.image_size)
    ex = ex.for_model(model)
    model = prepare_model(model, ex)
    batch = args.batch_size or (256 if cuda else 64)
    run_forward(model, ds.images[: 2 * batch], config, args.image_size, batch, ex)  # warm-up
    dataset_mb = ds.images.nbytes / 2**20
    reset_peak_memory(ex.device)
    baseline = current_rss_mb()
    t = time.perf_counter()
    features = run_forward(model, ds, config, args.image_size, batch, ex)
    seconds = time.perf_counter() - t
    peak = peak_memory(ex.device)
    n = len(ds)
    float_images_mb = n * 3 * args.image_size**2 * 4 / 2**20
    result = {
        "model": name, "dataset": args.dataset, "images": n, "image_size": args.image_size, "batch_size": batch,
        "execution": ex.describe(), "seconds": seconds, "images_per_s": n / seconds,
        "uint8_dataset_mb": dataset_mb, "features_mb": features.nbytes / 2**20,
        "baseline_rss_mb": baseline, **peak, "rss_growth_mb": peak["peak_rss_mb"] - baseline,
        "all_float_images_would_need_mb": float_images_mb,
        "rss_growth_over_all_float_images": (peak["peak_rss_mb"] - baseline) / float_images_mb,
        "one_float_batch_mb": batch * 3 * args.image_size**2 * 4 / 2**20,
        "machine": machine_info(ex.device),
    }
    write_result("memory", result, args.out_dir, ex.device)
    return result


if __name__ == "__main__":
    main()
