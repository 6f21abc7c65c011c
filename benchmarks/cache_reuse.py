"""Feature cache reuse: first extraction vs a cache hit, float32 vs compact float16 storage.

For each storage dtype: time of the first extraction (forward passes + atomic write), of a cache hit (a
memory map: nothing read until used), of reading every value from the hit, bytes on disk, and, for float16, the
largest error against float32 and whether a linear probe on it predicts the same test labels.

    python benchmarks/cache_reuse.py [--backbone NAME] [--n 2000] [--image-size 64] [--device cpu]

Writes ``benchmarks/results/cache_reuse[-cuda].json``. Target: cache hit <= 0.1x the first extraction.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
from benchlib import machine_info, write_result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenetv2_100.packaged_tv_in1k")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    # A fresh cache folder: the first extraction must really be a miss.
    os.environ["BOB_CACHE_DIR"] = tempfile.mkdtemp(prefix="bob-bench-cache-")
    torch.set_num_threads(args.threads)

    from bobkit import backbones
    from bobkit.features.device import resolve_device
    from bobkit.features.extract import extract_features
    from bobkit.tasks.training import fit_linear_probe
    from bobkit.utils.paths import feature_cache_dir

    device = resolve_device(args.device)
    batch = args.batch_size or (256 if device.type == "cuda" else 64)
    model = backbones.create_model(args.backbone, num_classes=0, image_size=args.image_size).eval()
    common = dict(image_size=args.image_size, batch_size=batch, device=device, model=model)
    extract_features(args.backbone, args.dataset, "train", max_samples=64, cache=False, **common)  # warm-up

    rows, features = {}, {}
    for dtype in ("float32", "float16"):
        first = extract_features(args.backbone, args.dataset, "train", max_samples=args.n, dtype=dtype, **common)
        hit = extract_features(args.backbone, args.dataset, "train", max_samples=args.n, dtype=dtype, **common)
        assert hit.cache_hit and not first.cache_hit
        t = time.perf_counter()
        values = np.array(hit.features, dtype=np.float32)  # every byte read from the map
        read_all = time.perf_counter() - t
        test = extract_features(args.backbone, args.dataset, "test", max_samples=args.n_test, dtype=dtype,
                                **common)
        probe = fit_linear_probe(hit.features, hit.labels, num_classes=10, device=device)
        pred = probe.logits(test.features).argmax(1)
        entry = feature_cache_dir() / hit.key / "features.npy"
        rows[dtype] = {
            "first_extraction_s": first.seconds, "cache_hit_s": hit.seconds, "read_all_values_s": read_all,
            "cache_hit_over_first": hit.seconds / first.seconds,
            "hit_and_read_over_first": (hit.seconds + read_all) / first.seconds,
            "bytes_on_disk": entry.stat().st_size, "probe_top1": float((pred == test.labels).mean()),
        }
        features[dtype] = (values, pred)
    f32, f16 = features["float32"][0], features["float16"][0]
    rows["float16"]["max_abs_error_vs_float32"] = float(np.abs(f16 - f32).max())
    rows["float16"]["max_rel_error_vs_float32"] = float((np.abs(f16 - f32) / (np.abs(f32) + 1e-6)).max())
    rows["float16"]["same_test_predictions"] = float((features["float16"][1] == features["float32"][1]).mean())
    result = {
        "backbone": args.backbone, "dataset": args.dataset, "images": args.n, "image_size": args.image_size,
        "device": str(device), "storage": rows,
        "cache_hit_over_first": rows["float32"]["cache_hit_over_first"],
        "float16_bytes_ratio": rows["float16"]["bytes_on_disk"] / rows["float32"]["bytes_on_disk"],
        "targets": {"cache_hit_over_first": "<= 0.1"},
        "machine": machine_info(device),
    }
    write_result("cache_reuse", result, args.out_dir, device)
    return result


if __name__ == "__main__":
    main()
