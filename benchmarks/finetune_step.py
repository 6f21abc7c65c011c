"""Fine-tuning throughput and peak memory: fp32 vs bf16 autocast vs bf16 + gradient checkpointing.

Runs ``bobkit.tasks.training.finetune`` (AdamW, warm-up + cosine, prefetching loader, losses kept on the
device) for ``--steps`` steps on uint8 images, after a short warm-up run, in each setting. Reports images/s of
training and the peak GPU memory (or peak RSS on CPU): gradient checkpointing trades compute for activation
memory, which is what lets large backbones fine-tune at the paper's batch sizes.

    python benchmarks/finetune_step.py --device cuda [--backbone vit_base_patch16_224.random_init] [--batch-size 64]

Writes ``benchmarks/results/finetune_step[-cuda].json``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from benchlib import machine_info, prepare_run, sync, write_result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backbone", default=None, help="default: vit_base_patch16_224 (GPU), resnet18 (CPU)")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    prepare_run(args.threads, cudnn_benchmark=True)

    from bobkit import backbones
    from bobkit.features.device import Execution, peak_memory, prepare_model, reset_peak_memory, resolve_execution
    from bobkit.tasks.training import finetune

    base = resolve_execution(args.device)
    cuda = base.device.type == "cuda"
    name = args.backbone or ("vit_base_patch16_224.random_init" if cuda else "resnet18.random_init")
    size = args.image_size or (224 if cuda else 64)
    batch = args.batch_size or (64 if cuda else 16)
    steps = args.steps or (20 if cuda else 3)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(batch * steps, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=len(images))
    config = backbones.data_config(name, image_size=size)
    half = "bf16" if not cuda or torch.cuda.is_bf16_supported() else "fp16"
    settings = {"fp32": ("fp32", False), half: (half, False), f"{half}+grad_ckpt": (half, True)}

    rows = {}
    for label, (precision, ckpt) in settings.items():
        torch.manual_seed(0)
        model = backbones.create_model(name, num_classes=10, image_size=size)
        ex = Execution(base.device, precision, loader_workers=base.loader_workers, pin_memory=base.pin_memory,
                       grad_checkpointing=ckpt).for_model(model)
        model = prepare_model(model, ex)
        kwargs = dict(image_size=size, lr=1e-4, weight_decay=0.05, layer_decay=None, warmup_epochs=0.0,
                      batch_size=batch, seed=0, device=ex.device, precision=ex.precision,
                      channels_last=ex.channels_last, loader_workers=ex.loader_workers, pin_memory=ex.pin_memory)
        finetune(model, images[: 2 * batch], labels[: 2 * batch], config, epochs=1, **kwargs)  # warm-up
        sync(ex.device)
        reset_peak_memory(ex.device)
        t = time.perf_counter()
        losses = finetune(model, images, labels, config, epochs=1, **kwargs)
        sync(ex.device)
        seconds = time.perf_counter() - t
        rows[label] = {"images_per_s": len(images) / seconds, "seconds": seconds, "steps": len(losses),
                       "final_loss": losses[-1], **peak_memory(ex.device), "execution": ex.describe()}
        print(label, {k: v for k, v in rows[label].items() if k != "execution"}, flush=True)
        del model
        if cuda:
            torch.cuda.empty_cache()

    key = "peak_gpu_mb" if cuda else "peak_rss_mb"
    result = {
        "backbone": name, "image_size": size, "batch_size": batch, "device": str(base.device), "settings": rows,
        f"{half}_speedup_over_fp32": rows[half]["images_per_s"] / rows["fp32"]["images_per_s"],
        "grad_ckpt_memory_ratio": rows[f"{half}+grad_ckpt"][key] / rows[half][key],
        "grad_ckpt_speed_ratio": rows[f"{half}+grad_ckpt"]["images_per_s"] / rows[half]["images_per_s"],
        "machine": machine_info(base.device),
    }
    write_result("finetune_step", result, args.out_dir, base.device)
    return result


if __name__ == "__main__":
    main()
