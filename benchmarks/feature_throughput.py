"""Feature extraction through bobkit vs a hand-written timm forward loop, and a second extraction from the cache.

Same model, weights, images, batch size, threads and device for both paths. The raw loop is what a user would
write: uint8 batch -> float -> resize -> normalise -> ``model(x)`` under ``inference_mode``. Each path is timed
``--repeats`` times after a warm-up batch; the best time counts (least disturbed by other processes).

    python benchmarks/feature_throughput.py [--backbone NAME] [--n 2000] [--image-size 64] [--device cpu]

Writes ``benchmarks/results/feature_throughput[-<device>].json``. Targets: bobkit >= 0.95x raw throughput;
cache hit <= 0.1x the first extraction's time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"


def raw_timm_loop(model: torch.nn.Module, images: np.ndarray, config: dict, size: int, batch: int,
                  device: torch.device) -> np.ndarray:
    """The hand-written baseline: no bobkit code on the hot path."""
    mean = torch.tensor(config["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(config["std"], device=device).view(1, 3, 1, 1)
    out = []
    with torch.inference_mode():
        for lo in range(0, len(images), batch):
            x = torch.from_numpy(images[lo : lo + batch]).to(device)
            x = x.float().div_(255)
            x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            out.append(model((x - mean) / std))
    return torch.cat(out).float().cpu().numpy()


def best_of(repeats: int, fn) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenetv2_100.packaged_tv_in1k")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    os.environ["BOB_CACHE_DIR"] = os.environ.get("BOB_CACHE_DIR") or tempfile.mkdtemp(prefix="bob-bench-")
    torch.set_num_threads(args.threads)

    from bobkit import backbones
    from bobkit.data import get_dataset
    from bobkit.device import device_name, resolve_device
    from bobkit.features import extract_features

    device = resolve_device(args.device)
    ds = get_dataset(args.dataset, "train", max_samples=args.n, seed=0)
    model = backbones.create_model(args.backbone, num_classes=0, image_size=args.image_size).eval().to(device)
    config = backbones.data_config(args.backbone, image_size=args.image_size)
    common = dict(image_size=args.image_size, max_samples=args.n, batch_size=args.batch_size, device=args.device,
                  model=model)

    raw_loop = lambda: raw_timm_loop(model, ds.images, config, args.image_size, args.batch_size, device)  # noqa: E731
    raw_loop()  # warm-up: allocator, kernels
    # Interleave the two paths so that drifting background load hits both alike.
    raw_times, bob_times = [], []
    for _ in range(args.repeats):
        t, raw = best_of(1, raw_loop)
        raw_times.append(t)
        t, fresh = best_of(1, lambda: extract_features(args.backbone, args.dataset, "train", cache=False, **common))
        bob_times.append(t)
    raw_s, bob_s = min(raw_times), min(bob_times)
    first = extract_features(args.backbone, args.dataset, "train", cache=True, **common)
    hit = extract_features(args.backbone, args.dataset, "train", cache=True, **common)
    assert hit.cache_hit and not first.cache_hit
    max_abs_diff = float(np.abs(np.asarray(hit.features) - raw).max())

    n = len(ds)
    result = {
        "benchmark": "feature_throughput",
        "backbone": args.backbone, "dataset": args.dataset, "images": n, "image_size": args.image_size,
        "batch_size": args.batch_size, "threads": torch.get_num_threads(), "device": device_name(device),
        "raw_timm_images_per_s": n / raw_s, "bobkit_images_per_s": n / bob_s,
        "bobkit_over_raw": raw_s / bob_s,
        "first_extraction_s": first.seconds, "cache_hit_s": hit.seconds,
        "cache_hit_over_first": hit.seconds / first.seconds,
        "max_abs_feature_diff_cached_vs_raw": max_abs_diff,
        "targets": {"bobkit_over_raw": ">= 0.95", "cache_hit_over_first": "<= 0.1"},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch": torch.__version__},
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    RESULTS.mkdir(exist_ok=True)
    suffix = "" if device.type == "cpu" else f"-{device.type}"
    out = RESULTS / f"feature_throughput{suffix}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
