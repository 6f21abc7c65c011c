"""Which execution settings are fastest on this device: precision x memory format x prefetch threads.

The measurement behind ``bobkit.features.device.execution_defaults``: each backbone's extraction path
(``bobkit.features.extract.run_forward``) is timed in every combination of autocast precision (fp32, bf16) and memory
format (contiguous, channels_last), then the best combination again with and without prefetch threads. Passes are
interleaved across settings and the best of ``--repeats`` counts. The features of every setting are compared with
fp32's (cosine similarity), so a fast setting that changes the numbers shows it.

    python benchmarks/execution_modes.py --device cuda [--backbones ...] [--image-size 224] [--n 2048]

Writes ``benchmarks/results/execution_modes[-cuda].json`` with the fastest setting per backbone and the device's
current defaults next to it.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch
from benchlib import interleaved, machine_info, prepare_run, write_result

GPU_BACKBONES = ["resnet50.random_init", "vit_base_patch16_224.random_init"]
CPU_BACKBONES = ["mobilenetv2_100.random_init", "resnet18.random_init", "vit_tiny_patch16_224.random_init"]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest row-wise cosine similarity between two feature matrices."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12
    return float((num / den).min())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backbones", nargs="+", default=None)
    parser.add_argument("--image-size", type=int, default=None, help="default 224 GPU, 64 CPU")
    parser.add_argument("--n", type=int, default=None, help="images per pass (default 2048 GPU, 256 CPU)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gray", action="store_true", help="28x28 gray sources (Fashion-MNIST-like), resized")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    prepare_run(args.threads, cudnn_benchmark=True)

    from bobkit import backbones
    from bobkit.features.device import Execution, execution_defaults, prepare_model, resolve_device, resolve_execution
    from bobkit.features.extract import run_forward

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    names = args.backbones or (GPU_BACKBONES if cuda else CPU_BACKBONES)
    size = args.image_size or (224 if cuda else 64)
    n = args.n or (2048 if cuda else 256)
    batch = args.batch_size or (256 if cuda else 64)
    rng = np.random.default_rng(0)
    shape = (n, 28, 28) if args.gray else (n, size, size, 3)
    images = rng.integers(0, 256, size=shape, dtype=np.uint8)
    default_workers = resolve_execution(device).loader_workers

    rows = []
    for name in names:
        base = backbones.create_model(name, num_classes=0, image_size=size).eval()
        config = backbones.data_config(name, image_size=size)
        settings = [Execution(device, precision=p, channels_last=cl, loader_workers=default_workers,
                              pin_memory=cuda) for p, cl in itertools.product(args.precisions, (False, True))]
        models = {}
        for s in settings:
            # One copy per memory format: converting in place would change the other settings' model.
            key = s.channels_last
            if key not in models:
                models[key] = prepare_model(base if not key else _copy(base), s)

        def make(s: Execution, models=models, config=config):
            return lambda: run_forward(models[s.channels_last], images, config, size, batch, s)

        fns = {fns_label(s): make(s) for s in settings}
        for fn in fns.values():  # warm-up (cuDNN autotune, oneDNN primitive cache)
            fn()
        timed = interleaved(fns, args.repeats, device)
        reference = timed["fp32"]["result"] if "fp32" in timed else None
        modes = {}
        for label, rec in timed.items():
            modes[label] = {"images_per_s": n / rec["best_s"],
                            "min_cosine_vs_fp32": cosine(rec["result"], reference) if reference is not None else None}
        best_label = max(modes, key=lambda k: modes[k]["images_per_s"])
        best = next(s for s in settings if fns_label(s) == best_label)
        # Prefetch threads on/off on the best setting.
        workers = {}
        alt = 0 if default_workers else 2
        for w in sorted({default_workers, alt}):
            s = Execution(device, best.precision, best.channels_last, loader_workers=w, pin_memory=cuda)
            workers[f"loader_workers={w}"] = make(s)
        timed_w = interleaved(workers, args.repeats, device)
        row = {
            "backbone": name, "modes": modes, "fastest": best_label,
            "fastest_over_fp32": modes[best_label]["images_per_s"] / modes["fp32"]["images_per_s"]
            if "fp32" in modes else None,
            "loader_workers": {k: n / v["best_s"] for k, v in timed_w.items()},
        }
        print(row, flush=True)
        rows.append(row)
        models.clear()
        if cuda:
            torch.cuda.empty_cache()

    result = {
        "device": str(device), "image_size": size, "images": n, "batch_size": batch, "gray_sources": args.gray,
        "models": rows, "current_defaults": execution_defaults(device), "machine": machine_info(device),
    }
    write_result("execution_modes", result, args.out_dir, device)
    return result


def fns_label(s) -> str:
    return f"{s.precision}{'+cl' if s.channels_last else ''}"


def _copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model)


if __name__ == "__main__":
    main()
