"""Frozen-feature extraction with an on-disk cache.

A cache entry is keyed by everything that changes the numbers: backbone, weights identity, dataset, split,
sampling, transform (size, mean, std, interpolation), storage dtype and this module's version. Entries are written
to a temp folder and renamed into place, so a killed extraction never leaves a half entry that reads as complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bobkit import backbones
from bobkit.data import get_dataset
from bobkit.data.transforms import to_tensor_batch
from bobkit.device import resolve_device
from bobkit.paths import feature_cache_dir

FEATURE_VERSION = "1"
_DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass
class FeatureSet:
    """Pooled features of one dataset split, with the labels they belong to."""

    features: np.ndarray
    labels: np.ndarray
    cache_hit: bool
    seconds: float
    key: str


def feature_key(
    backbone: str,
    dataset: str,
    split: str,
    *,
    image_size: int,
    max_samples: int | None = None,
    seed: int = 0,
    dtype: str = "float32",
) -> str:
    """Hash of everything that determines the features (first 20 hex chars of sha256)."""
    config = backbones.data_config(backbone, image_size=image_size)
    payload = {
        "version": FEATURE_VERSION,
        "backbone": backbone,
        "weights": backbones.weights_id(backbone, seed=seed),
        "dataset": dataset,
        "split": split,
        "max_samples": max_samples,
        "sample_seed": seed,
        "image_size": image_size,
        "mean": [round(float(v), 6) for v in config["mean"]],
        "std": [round(float(v), 6) for v in config["std"]],
        "interpolation": config.get("interpolation"),
        "dtype": dtype,
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def extract_features(
    backbone: str,
    dataset: str,
    split: str,
    *,
    image_size: int,
    max_samples: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: str = "cpu",
    dtype: str = "float32",
    cache: bool = True,
    model: torch.nn.Module | None = None,
) -> FeatureSet:
    """Pooled features of ``dataset[split]`` through a frozen ``backbone``, served from the cache when present.

    Parameters
    ----------
    backbone, dataset, split
        Registry names and split (``"train"`` / ``"test"``).
    image_size
        Side length the images are resized to before the forward pass.
    max_samples, seed
        Class-stratified deterministic subset (and the random-init seed for untrained backbones).
    batch_size, device
        Forward-pass batch and device (``"auto"``, ``"cpu"``, ``"cuda"``).
    dtype
        Storage dtype: ``"float32"`` or ``"float16"`` (half the disk and memory).
    cache
        Read and write the on-disk cache.
    model
        An already built backbone (saves building it twice when several splits are extracted).

    Returns
    -------
    FeatureSet
        Features ``(N, D)``, labels ``(N,)``, whether the cache served them, and the seconds spent.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(_DTYPES)}")
    start = time.perf_counter()
    key = feature_key(backbone, dataset, split, image_size=image_size, max_samples=max_samples, seed=seed, dtype=dtype)
    entry = feature_cache_dir() / key
    if cache and (entry / "meta.json").exists():
        features = np.load(entry / "features.npy", mmap_mode="r")
        labels = np.load(entry / "labels.npy")
        return FeatureSet(features, labels, True, time.perf_counter() - start, key)

    ds = get_dataset(dataset, split, max_samples=max_samples, seed=seed)
    torch_device = resolve_device(device)
    if model is None:
        model = backbones.create_model(backbone, num_classes=0, image_size=image_size, seed=seed)
    model = model.eval().to(torch_device)
    config = backbones.data_config(backbone, image_size=image_size)
    features = forward_batches(model, ds, config, image_size, batch_size, torch_device)
    features = features.astype(_DTYPES[dtype], copy=False)
    labels = np.asarray(ds.labels, dtype=np.int64)
    if cache:
        _write_entry(entry, features, labels, {"key": key, "backbone": backbone, "dataset": dataset, "split": split})
    return FeatureSet(features, labels, False, time.perf_counter() - start, key)


def take_batch(source: Any, indices: np.ndarray | slice) -> np.ndarray:
    """uint8 images at ``indices`` from an in-memory array or an :class:`~bobkit.data.ImageDataset`.

    File-backed datasets decode only the requested items, so a 60k-image dataset is never held in memory at once.
    """
    if isinstance(source, np.ndarray):
        return source[indices]
    if isinstance(indices, slice):
        indices = np.arange(len(source))[indices]
    return source.batch(indices)


def forward_batches(
    model: torch.nn.Module,
    source: Any,
    data_config: dict[str, Any],
    image_size: int,
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """Run ``model`` over uint8 images (array or dataset) in batches; outputs stay on the device until the end."""
    outputs: list[torch.Tensor] = []
    with torch.inference_mode():
        for lo in range(0, len(source), batch_size):
            batch = to_tensor_batch(take_batch(source, slice(lo, lo + batch_size)), data_config, image_size)
            outputs.append(model(batch.to(device, non_blocking=True)).float())
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(outputs).cpu().numpy()


def _write_entry(entry: Path, features: np.ndarray, labels: np.ndarray, meta: dict[str, Any]) -> None:
    """Write a cache entry into a temp folder and rename it into place (atomic; a lost race is harmless)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        np.save(tmp / "features.npy", features)
        np.save(tmp / "labels.npy", labels)
        (tmp / "meta.json").write_text(json.dumps({**meta, "shape": list(features.shape)}, indent=2))
        try:
            os.rename(tmp, entry)
        except OSError:
            # Another process finished the same entry first: theirs is equally valid.
            pass
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
