"""Images/s of bobkit's extraction path against each model's FLOPs and the device's measured peak FLOP/s.

For every backbone: FLOPs per image are counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 per
multiply-add, convolutions, matmuls and attention); images/s are measured through ``bobkit.features.extract.run_forward``
on uint8 RGB images (the whole data path: host batch, copy, convert, forward, copy back) and for the model alone
on a ready device batch; the peak is a large square matmul in the same precision on the same device. Achieved
fraction = images/s x FLOPs/image / peak.

    python benchmarks/flops_utilization.py --device cuda [--backbones a b c] [--image-size 224] [--n 4096]

Writes ``benchmarks/results/flops_utilization[-cuda].json``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from benchlib import machine_info, matmul_peak_flops, prepare_run, sync, write_result

GPU_BACKBONES = ["resnet50.random_init", "convnext_tiny.random_init", "vit_small_patch16_224.random_init",
                 "vit_base_patch16_224.random_init"]
CPU_BACKBONES = ["resnet18.random_init", "convnext_atto.random_init", "vit_tiny_patch16_224.random_init"]


def flops_per_image(model: torch.nn.Module, image_size: int, device: torch.device) -> float:
    """Forward FLOPs of one image (counted on a batch of 2 in fp32; counts do not depend on the dtype)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 3, image_size, image_size, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2


def model_only_rate(model: torch.nn.Module, batch: torch.Tensor, ex, repeats: int, iters: int) -> float:
    """Images/s of the forward pass alone on a batch already on the device (the ceiling of the data path)."""
    best = float("inf")
    with torch.inference_mode(), ex.autocast():
        model(batch)
        for _ in range(repeats):
            sync(ex.device)
            t = time.perf_counter()
            for _ in range(iters):
                model(batch)
            sync(ex.device)
            best = min(best, (time.perf_counter() - t) / iters)
    return batch.shape[0] / best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backbones", nargs="+", default=None)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--n", type=int, default=None, help="images per timed pass (default 4096 GPU, 128 CPU)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--compile", action="store_true", help="also time a torch.compile'd model")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    prepare_run(args.threads, cudnn_benchmark=True)

    from bobkit import backbones
    from bobkit.features.device import prepare_model, resolve_execution
    from bobkit.features.extract import BatchConverter, run_forward

    cl = {"auto": None, "on": True, "off": False}[args.channels_last]
    ex = resolve_execution(args.device, args.precision, channels_last=cl)
    cuda = ex.device.type == "cuda"
    names = args.backbones or (GPU_BACKBONES if cuda else CPU_BACKBONES)
    n = args.n or (4096 if cuda else 128)
    batch = args.batch_size or (256 if cuda else 32)
    peak = matmul_peak_flops(ex.device, ex.precision)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, args.image_size, args.image_size, 3), dtype=np.uint8)

    rows = []
    for name in names:
        model = backbones.create_model(name, num_classes=0, image_size=args.image_size).eval()
        config = backbones.data_config(name, image_size=args.image_size)
        model = prepare_model(model, ex.device)  # fp32, default layout, for counting
        flops = flops_per_image(model, args.image_size, ex.device)
        mex = ex.for_model(model, cl)  # auto: channels_last for CNNs
        model = prepare_model(model, mex)
        run_forward(model, images[: 2 * batch], config, args.image_size, batch, mex)  # warm-up, cuDNN autotune
        best = float("inf")
        for _ in range(args.repeats):
            sync(ex.device)
            t = time.perf_counter()
            run_forward(model, images, config, args.image_size, batch, mex)
            sync(ex.device)
            best = min(best, time.perf_counter() - t)
        rate = n / best
        ready = BatchConverter(config, args.image_size, ex.device, channels_last=mex.channels_last)(images[:batch])
        only = model_only_rate(model, ready, mex, args.repeats, iters=5 if cuda else 1)
        row = {
            "backbone": name, "channels_last": mex.channels_last, "gflops_per_image": flops / 1e9,
            "images_per_s": rate,
            "model_only_images_per_s": only, "data_path_efficiency": rate / only,
            "achieved_tflops_per_s": rate * flops / 1e12, "fraction_of_peak": rate * flops / peak["flops_per_s"],
            "model_only_fraction_of_peak": only * flops / peak["flops_per_s"],
        }
        if args.compile:
            compiled = torch.compile(model)
            run_forward(compiled, images[: 2 * batch], config, args.image_size, batch, mex)
            run_forward(compiled, images[:batch], config, args.image_size, batch, mex)
            sync(ex.device)
            t = time.perf_counter()
            run_forward(compiled, images, config, args.image_size, batch, mex)
            sync(ex.device)
            row["compiled_images_per_s"] = n / (time.perf_counter() - t)
            row["compiled_fraction_of_peak"] = row["compiled_images_per_s"] * flops / peak["flops_per_s"]
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        rows.append(row)
        del model
        if cuda:
            torch.cuda.empty_cache()

    result = {
        "device": str(ex.device), "execution": ex.describe(), "image_size": args.image_size, "images": n,
        "batch_size": batch, "peak": {**peak, "tflops_per_s": peak["flops_per_s"] / 1e12}, "models": rows,
        "note": "FLOPs = 2 x multiply-adds (FlopCounterMode); peak = best large square matmul, same precision",
        "machine": machine_info(ex.device),
    }
    write_result("flops_utilization", result, args.out_dir, ex.device)
    return result


if __name__ == "__main__":
    main()
