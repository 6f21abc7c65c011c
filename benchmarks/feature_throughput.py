"""Feature extraction through bobkit vs a hand-written timm forward loop, and a second extraction from the cache.

Same model object, weights, images, batch size, threads, device, autocast precision and memory format for both
paths. The raw loop is what a careful user would write: uint8 batch -> device -> float -> resize (the model's
interpolation) -> normalise -> ``model(x)`` under ``inference_mode`` (and ``autocast`` / channels_last when
those are on). The paths are timed alternately ``--repeats`` times after a warm-up; the best time counts (least
disturbed by other processes).

    python benchmarks/feature_throughput.py [--backbone NAME] [--n 2000] [--image-size 64] [--device cpu]
        [--precision auto|fp32|bf16|fp16] [--channels-last auto|on|off] [--loader-workers N] [--out-dir DIR]

Writes ``benchmarks/results/feature_throughput[-cuda].json``. Targets: bobkit >= 0.95x raw throughput on CPU,
>= 0.9x a raw bf16 loop on GPU; cache hit <= 0.1x the first extraction's time.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from benchlib import interleaved, machine_info, write_result


def raw_timm_loop(model: torch.nn.Module, images: np.ndarray, config: dict, size: int, batch: int,
                  device: torch.device, precision: str = "fp32", channels_last: bool = False) -> np.ndarray:
    """The hand-written baseline: no bobkit code on the hot path."""
    from bobkit.data.transforms import interpolation_mode

    mean = torch.tensor(config["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(config["std"], device=device).view(1, 3, 1, 1)
    mode = interpolation_mode(config)
    kwargs = {} if mode == "nearest" else {"antialias": True, "align_corners": False}
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    out = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for lo in range(0, len(images), batch):
            x = torch.from_numpy(images[lo : lo + batch]).to(device)
            x = x.float().div_(255)
            x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
            x = F.interpolate(x, size=(size, size), mode=mode, **kwargs)
            x = (x - mean) / std
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(model(x))
    return torch.cat(out).float().cpu().numpy()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenetv2_100.packaged_tv_in1k")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--loader-workers", type=int, default=None, help="prefetch threads (default: device's)")
    parser.add_argument("--out-dir", default=None, help="where the JSON goes (default benchmarks/results)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    # A fresh cache: the "first extraction" must really be a miss.
    os.environ["BOB_CACHE_DIR"] = tempfile.mkdtemp(prefix="bob-bench-")
    torch.set_num_threads(args.threads)

    from bobkit import backbones
    from bobkit.data import get_dataset
    from bobkit.features.device import peak_memory, prepare_model, reset_peak_memory, resolve_execution
    from bobkit.features.extract import extract_features

    cl = {"auto": None, "on": True, "off": False}[args.channels_last]
    ex = resolve_execution(args.device, args.precision, channels_last=cl, loader_workers=args.loader_workers)
    device = ex.device
    ds = get_dataset(args.dataset, "train", max_samples=args.n, seed=0)
    model = backbones.create_model(args.backbone, num_classes=0, image_size=args.image_size).eval()
    ex = ex.for_model(model, cl)  # auto: channels_last for CNNs
    model = prepare_model(model, ex)
    config = backbones.data_config(args.backbone, image_size=args.image_size)
    common = dict(image_size=args.image_size, max_samples=args.n, batch_size=args.batch_size, device=device,
                  model=model, precision=ex.precision, channels_last=ex.channels_last,
                  loader_workers=ex.loader_workers)

    def raw():
        return raw_timm_loop(model, ds.images, config, args.image_size, args.batch_size, device,
                             ex.precision, ex.channels_last)

    def bob():
        return extract_features(args.backbone, args.dataset, "train", cache=False, **common).features

    raw()  # warm-up: allocator, kernels, cuDNN autotuning
    bob()
    timings = interleaved({"raw": raw, "bobkit": bob}, args.repeats, device)
    raw_s, bob_s = timings["raw"]["best_s"], timings["bobkit"]["best_s"]
    reset_peak_memory(device)
    first = extract_features(args.backbone, args.dataset, "train", cache=True, **common)
    memory = peak_memory(device)
    hit = extract_features(args.backbone, args.dataset, "train", cache=True, **common)
    assert hit.cache_hit and not first.cache_hit
    raw_features = timings["raw"]["result"]
    max_abs_diff = float(np.abs(np.asarray(hit.features, dtype=np.float32) - raw_features).max())
    scale = float(np.abs(raw_features).max())

    n = len(ds)
    result = {
        "backbone": args.backbone, "dataset": args.dataset, "images": n, "image_size": args.image_size,
        "batch_size": args.batch_size, "threads": torch.get_num_threads(), "device": str(device),
        "execution": ex.describe(),
        "raw_timm_images_per_s": n / raw_s, "bobkit_images_per_s": n / bob_s,
        "bobkit_over_raw": raw_s / bob_s,
        "raw_timm_s_all": timings["raw"]["all_s"], "bobkit_s_all": timings["bobkit"]["all_s"],
        "first_extraction_s": first.seconds, "cache_hit_s": hit.seconds,
        "cache_hit_over_first": hit.seconds / first.seconds,
        "max_abs_feature_diff_cached_vs_raw": max_abs_diff, "max_abs_feature": scale,
        "peak_memory_first_extraction": memory,
        "targets": {"bobkit_over_raw": ">= 0.95 (CPU), >= 0.9 (GPU bf16)", "cache_hit_over_first": "<= 0.1"},
        "machine": machine_info(device),
    }
    write_result("feature_throughput", result, args.out_dir, device)
    return result


if __name__ == "__main__":
    main()
