"""The per-architecture throughput ``bob plan`` uses, measured on this device: a throughput table.

Every architecture of the given grids at its cells' classifier input size (forward images/s in the device's
default precision, a synthetic batch, best of 2), the training/forward time ratio (one architecture), the fp32
slowdown of a CNN and a ViT (the attacks run in fp32), the linear probe's step times, the device memory; each
family's achieved TFLOP/s (median of its measured architectures) covers the sizes not measured.

    python benchmarks/plan_throughput.py --device cuda --grids params/bob-small.yaml params/bob-full.yaml --name h100

Writes ``benchmarks/results/plan_throughput[-cuda].json``: a ``bob plan`` table; copy it to
``bobkit/rehearsal/throughput/<name>.json`` to make it ``bob plan --device <name>``.
"""

from __future__ import annotations

import argparse
import time

import torch
from benchlib import machine_info, prepare_run, write_result

FP32_PROBES = {"CNN": "resnet50.random_init", "ViT": "vit_base_patch16_224.random_init"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--grids", nargs="*", default=[], help="grid files whose architectures to measure")
    parser.add_argument("--backbones", nargs="*", default=[], help="more backbones (at --image-size)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 256 on a GPU, 2 on a CPU")
    parser.add_argument("--train-backbone", default="vit_base_patch16_224.random_init")
    parser.add_argument("--fp32-backbones", nargs="*", default=None,
                        help="FAMILY=BACKBONE pairs for the fp32 slowdown (default: ResNet-50 and ViT-B)")
    parser.add_argument("--name", default=None, help="the table's name (default: the device's model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    prepare_run(args.threads, cudnn_benchmark=True)

    from bobkit.backbones import get_backbone
    from bobkit.batch.grid import load_grid
    from bobkit.features.device import device_name, resolve_device, resolve_execution
    from bobkit.rehearsal.groups import architecture
    from bobkit.rehearsal.profiles import profile
    from bobkit.rehearsal.throughput import (
        DeviceTable,
        device_key,
        family_rates,
        measure_forward,
        measure_probe,
        measure_train_ratio,
        measurement_pairs,
        memory_gib,
    )

    device = resolve_device(args.device)
    batch = args.batch_size or (256 if device.type == "cuda" else 2)
    pairs = [p for grid in args.grids for p in measurement_pairs(load_grid(grid), args.image_size)]
    pairs += [(b, architecture(b), get_backbone(b).family, args.image_size) for b in args.backbones]
    pairs = list(dict.fromkeys(pairs))
    table = DeviceTable(
        name=args.name or device_key(device), device=device_name(device), memory_gib=memory_gib(device),
        precision=resolve_execution(device).precision,
        measured=f"{time.strftime('%Y-%m-%d')} by benchmarks/plan_throughput.py (gpu_check.sh)",
        train_over_forward=0.0, fp32_slowdown={}, **measure_probe(device))
    seen: set[str] = set()
    for backbone, arch, family, size in pairs:
        key = f"{arch}@{size}"
        if key in seen:
            continue
        seen.add(key)
        start = time.perf_counter()
        try:
            ips = measure_forward(backbone, size, device, batch=batch)
        except (RuntimeError, ValueError) as exc:  # e.g. out of memory at this batch: say so, measure the rest
            print(f"{key}: not measured ({type(exc).__name__}: {str(exc).splitlines()[0]})", flush=True)
            continue
        table.architectures[key] = {"images_per_s": ips, "gflops": profile(backbone, size).gflops, "family": family,
                                    "source": f"measured, batch {batch}"}
        print(f"{key}: {ips:.0f} img/s ({time.perf_counter() - start:.1f} s)", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    train_size = args.image_size
    forward = measure_forward(args.train_backbone, train_size, device, batch=batch)
    table.train_over_forward = measure_train_ratio(args.train_backbone, train_size, device, forward)
    probes = dict(p.split("=", 1) for p in args.fp32_backbones) if args.fp32_backbones is not None else FP32_PROBES
    for family, backbone in probes.items():
        default = measure_forward(backbone, train_size, device, batch=batch)
        fp32 = measure_forward(backbone, train_size, device, batch=batch, precision="fp32")
        table.fp32_slowdown[family] = default / fp32
    for family in ("hierarchical-ViT", "other"):  # attention-based, as the ViTs
        table.fp32_slowdown.setdefault(family, table.fp32_slowdown.get("ViT", 1.0))
    table.fp32_slowdown.setdefault("CNN", 1.0)
    table.family_tflops = family_rates(table)
    result = {**table.to_json(), "machine": machine_info(device)}
    write_result("plan_throughput", result, args.out_dir, device)
    return result


if __name__ == "__main__":
    main()
