"""Frozen-feature extraction with an on-disk cache.

A cache entry is keyed by everything that changes the numbers: backbone, weights identity, dataset, split,
sampling, transform (size, mean, std, interpolation), storage dtype, autocast precision (when not fp32) and a
fingerprint of the code that computes features (this module, the device settings, transforms, dataset builders).
Entries are written to a temp folder, fsynced and renamed into place (:func:`bobkit.utils.files.atomic_dir`), so a
killed extraction never leaves a half entry that reads as complete. Each entry's ``meta.json`` records the size and
sha256 of its arrays and their shapes; a hit is served only when they match (hashes memoised per inode and change
time), otherwise the entry is moved aside and recomputed. Hits are memory-mapped (``np.load(mmap_mode="r")``).

The hot path (:func:`forward_batches`) never holds the whole dataset as float images: uint8 batches are taken one
at a time (optionally by prefetch threads, pinned for asynchronous copies), converted to normalised float on the
model's device, and each batch's output is copied into one preallocated host array without a host sync.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bobkit import backbones
from bobkit.data import datasets as _datasets
from bobkit.data import get_dataset
from bobkit.data import images as _images
from bobkit.data import listing as _listing
from bobkit.data import sources as _sources
from bobkit.data import transforms as _transforms
from bobkit.data import user as _user
from bobkit.data.transforms import _mean_std, interpolation_mode, resolve_image_size
from bobkit.features import device as _device
from bobkit.features.artifacts import ENTRY_FORMAT, entry_problems, read_entry, write_entry  # noqa: F401
from bobkit.features.device import Execution, prepare_model, resolve_device, resolve_execution, single_thread_on_cpu
from bobkit.utils.files import sha256_bytes, source_fingerprint
from bobkit.utils.paths import feature_cache_dir

ARRAYS = ("features.npy", "labels.npy")
_DTYPES = {"float32": np.float32, "float16": np.float16}
_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}


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
    precision: str = "fp32",
) -> str:
    """Hash of everything that determines the features (first 20 hex chars of sha256).

    ``precision`` is the resolved autocast precision; fp32 adds nothing to the payload, so fp32 keys are the same
    as before autocast existed. A user-declared dataset adds its content key (its file list with sizes and
    modification times, or hashes: :func:`bobkit.data.user.content_key`), so an edited folder is extracted again.
    """
    config = backbones.data_config(backbone, image_size=image_size)
    payload = {
        "version": feature_code_version(),
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
    if precision != "fp32":
        payload["precision"] = precision
    content = _user.content_key(dataset)
    if content is not None:
        payload["dataset_content"] = content
    return sha256_bytes(json.dumps(payload, sort_keys=True))[:20]


@cache
def feature_code_version() -> str:
    """Fingerprint of the code that turns images into features (part of every feature key): this module, the
    device settings, transforms, dataset builders, image decoding and the listing of user datasets."""
    return source_fingerprint(sys.modules[__name__], _device, _transforms, _datasets, _sources, _images, _user,
                              _listing)


def extract_features(
    backbone: str,
    dataset: str,
    split: str,
    *,
    image_size: int,
    max_samples: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    cache: bool = True,
    model: torch.nn.Module | None = None,
    precision: str = "auto",
    channels_last: bool | None = None,
    loader_workers: int | None = None,
    compile: bool = False,
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
        Storage dtype: ``"float32"`` or ``"float16"`` (half the disk and memory; fails on overflow).
    cache
        Read and write the on-disk cache.
    model
        An already built backbone (saves building it twice when several splits are extracted).
    precision, channels_last, loader_workers, compile
        Execution settings (see :func:`bobkit.features.device.resolve_execution`); ``auto`` / ``None`` take the device's
        measured defaults. A precision other than fp32 gets its own cache entries.

    Returns
    -------
    FeatureSet
        Features ``(N, D)``, labels ``(N,)``, whether the cache served them, and the seconds spent.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(_DTYPES)}")
    start = time.perf_counter()
    ex = resolve_execution(device, precision, compile=compile, loader_workers=loader_workers)
    key = feature_key(backbone, dataset, split, image_size=image_size, max_samples=max_samples, seed=seed,
                      dtype=dtype, precision=ex.precision)
    entry = feature_cache_dir() / key
    cached = _read_entry(entry) if cache else None
    if cached is not None:
        return FeatureSet(cached[0], cached[1], True, time.perf_counter() - start, key)

    ds = get_dataset(dataset, split, max_samples=max_samples, seed=seed)
    if model is None:
        model = backbones.create_model(backbone, num_classes=0, image_size=image_size, seed=seed)
    ex = ex.for_model(model, channels_last)
    model = prepare_model(model.eval(), ex)
    config = backbones.data_config(backbone, image_size=image_size)
    features = run_forward(model, ds, config, image_size, batch_size, ex, out_dtype=_DTYPES[dtype])
    if dtype == "float16" and not np.isfinite(features).all():
        raise FloatingPointError(f"{backbone} features overflow float16 storage; use dtype='float32'")
    labels = np.asarray(ds.labels, dtype=np.int64)
    if cache:
        meta = {"key": key, "backbone": backbone, "dataset": dataset, "split": split, "precision": ex.precision}
        _write_entry(entry, features, labels, meta)
    return FeatureSet(features, labels, False, time.perf_counter() - start, key)


def is_cached(
    backbone: str,
    dataset: str,
    split: str,
    *,
    image_size: int,
    max_samples: int | None = None,
    seed: int = 0,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    precision: str = "auto",
) -> bool:
    """True when :func:`extract_features` with these arguments would be served from the cache.

    Lets a task skip building the backbone when every split it needs is cached.
    """
    resolved = resolve_execution(device, precision).precision
    key = feature_key(backbone, dataset, split, image_size=image_size, max_samples=max_samples, seed=seed,
                      dtype=dtype, precision=resolved)
    return _entry_problems(feature_cache_dir() / key) == []


# ------------------------------------------------------------------------------------------------------------
# Batches: uint8 on the host, converted on the device
# ------------------------------------------------------------------------------------------------------------


def take_batch(source: Any, indices: np.ndarray | slice) -> np.ndarray:
    """uint8 images at ``indices`` from an in-memory array or an :class:`~bobkit.data.ImageDataset`.

    File-backed datasets decode only the requested items, so a 60k-image dataset is never held in memory at once.
    """
    if isinstance(source, np.ndarray):
        return source[indices]
    if isinstance(indices, slice):
        indices = np.arange(len(source))[indices]
    return source.batch(indices)


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive ``slice`` objects covering ``range(n)`` in steps of ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be >= 1")
    return [slice(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size)]


def _host_batch(source: Any, indices: np.ndarray | slice, pin_memory: bool) -> torch.Tensor:
    array = np.ascontiguousarray(take_batch(source, indices))
    tensor = torch.from_numpy(array)
    # Page-locked memory makes the later host-to-device copy asynchronous (no host sync per batch).
    return tensor.pin_memory() if pin_memory else tensor


def iter_uint8_batches(
    source: Any,
    batches: Iterable[np.ndarray | slice],
    *,
    workers: int = 0,
    pin_memory: bool = False,
    lookahead: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield uint8 image batches (CPU tensors) for ``batches`` of indices, in order.

    With ``workers > 0`` a thread pool prepares up to ``lookahead`` batches (default ``2 * workers``) while the
    caller runs the model on the current one: decoding (file-backed datasets release the GIL in PIL) and pinning
    overlap with compute. Only the batches in flight are in memory.

    Parameters
    ----------
    source
        uint8 array ``(N, H, W[, 3])`` or an :class:`~bobkit.data.ImageDataset`.
    batches
        Index arrays or slices, one per batch.
    workers
        Prefetch threads; 0 prepares each batch inline when it is asked for.
    pin_memory
        Return page-locked tensors (for asynchronous copies to a GPU).
    lookahead
        Batches prepared ahead of the consumer.
    """
    if workers <= 0:
        for indices in batches:
            yield _host_batch(source, indices, pin_memory)
        return
    ahead = max(1, lookahead or 2 * workers)
    pending: deque[Future[torch.Tensor]] = deque()
    todo = iter(batches)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bob-prefetch") as pool:
        try:
            for indices in todo:
                pending.append(pool.submit(_host_batch, source, indices, pin_memory))
                if len(pending) >= ahead:
                    break
            while pending:
                batch = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(_host_batch, source, nxt, pin_memory))
                yield batch
        finally:
            # The consumer stopped early (break, exception): drop queued work instead of finishing it.
            for fut in pending:
                fut.cancel()


class BatchConverter:
    """uint8 batches ``(N, H, W[, 3])`` -> normalised float ``(N, 3, H', W')`` on ``device``.

    The arithmetic of :func:`bobkit.data.transforms.to_tensor_batch` (antialiased resize in float32 with the
    config's interpolation, clamp to the pixel range, mean/std; equal up to float rounding, ~1e-6), rearranged
    for speed:

    * the mean/std constants are made once on the device (``to_tensor_batch`` builds them per call, and on a GPU
      each build is a blocking copy that waits for the model's queued work);
    * ``/255``, ``-mean`` and ``/std`` are one fused multiply-add after the resize (resizing is linear, so scaling
      before or after it is the same), written straight into the output's memory format;
    * gray batches are resized as one channel and broadcast to three by that multiply-add (a third of the work);
    * the clamp is skipped for bilinear/nearest resizing, whose non-negative weights cannot overshoot.

    Parameters
    ----------
    data_config
        ``mean``, ``std``, ``interpolation``, ``input_size`` of the backbone.
    image_size
        Output side (or (H, W)); ``None`` takes the config's ``input_size``.
    device
        Where the conversion runs (the model's device: uint8 travels, 4x fewer bytes than float).
    channels_last
        Return NHWC-strided batches (matches a channels_last model).
    """

    def __init__(self, data_config: Mapping[str, Any], image_size: int | Sequence[int] | None,
                 device: str | torch.device = "cpu", *, channels_last: bool = False) -> None:
        self.device = resolve_device(device)
        self.size = resolve_image_size(data_config, image_size)
        self.mode = interpolation_mode(data_config)
        mean, std = _mean_std(data_config)
        m = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
        # x_uint8 * scale + offset == (x_uint8 / 255 - mean) / std
        self.scale = (1.0 / (255.0 * s)).float().to(self.device)
        self.offset = (-m / s).float().to(self.device)
        self.channels_last = channels_last

    def __call__(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
        if x.dtype != torch.uint8:
            raise TypeError(f"BatchConverter expects uint8 images, got {x.dtype}")
        if x.ndim == 3:
            x = x.unsqueeze(-1)
        if x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise ValueError(f"expected (N,H,W) or (N,H,W,3) images, got shape {tuple(x.shape)}")
        # non_blocking: from pinned memory the copy is queued behind the model's work instead of waiting for it.
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        if tuple(x.shape[-2:]) != self.size:
            kwargs = {} if self.mode == "nearest" else {"align_corners": False, "antialias": True}
            x = F.interpolate(x, size=self.size, mode=self.mode, **kwargs)
            if self.mode not in ("bilinear", "nearest"):
                x = x.clamp_(0.0, 255.0)  # bicubic overshoot, as PIL's uint8 output clips it
        shape = (x.shape[0], 3, *x.shape[-2:])
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        out = torch.empty(shape, dtype=torch.float32, device=self.device, memory_format=fmt)
        # Broadcasting (N,1,H,W) against (1,3,1,1) makes the three gray channels here, after the resize.
        return torch.addcmul(self.offset, x, self.scale, out=out)


# ------------------------------------------------------------------------------------------------------------
# The forward loop
# ------------------------------------------------------------------------------------------------------------


def forward_batches(
    model: torch.nn.Module,
    source: Any,
    data_config: dict[str, Any],
    image_size: int,
    batch_size: int,
    device: str | torch.device,
    *,
    precision: str = "auto",
    channels_last: bool | None = None,
    loader_workers: int | None = None,
    out_dtype: type[np.floating] | np.dtype = np.float32,
) -> np.ndarray:
    """Run ``model`` over uint8 images (array or dataset) in batches and return the outputs as one host array.

    Execution settings left on ``auto`` / ``None`` take the device's defaults (bf16 autocast on a GPU, fp32 on
    CPU; channels_last for CNNs). With channels_last the model is converted in place (same results for any input
    layout).

    Returns
    -------
    ndarray
        ``(N, ...)`` outputs in ``out_dtype`` (float32 unless asked otherwise).
    """
    ex = resolve_execution(device, precision, channels_last=channels_last, loader_workers=loader_workers,
                           model=model)
    if ex.channels_last:
        model.to(memory_format=torch.channels_last)
    return run_forward(model, source, data_config, image_size, batch_size, ex, out_dtype=out_dtype)


def run_forward(
    model: torch.nn.Module,
    source: Any,
    data_config: Mapping[str, Any],
    image_size: int | Sequence[int] | None,
    batch_size: int,
    execution: Execution,
    *,
    out_dtype: type[np.floating] | np.dtype = np.float32,
) -> np.ndarray:
    """:func:`forward_batches` with resolved settings and a model already prepared for them.

    On CPU the forward runs on one intra-op thread (:func:`~bobkit.features.device.single_thread_on_cpu`): torch
    splits reductions across threads, so the rounding of a feature would follow the thread count of whichever
    process filled the cache (whose key has no thread count). CPU batches parallelise over cells (``bob run
    --workers``), not over threads.
    """
    with single_thread_on_cpu(execution.device):
        return _run_forward(model, source, data_config, image_size, batch_size, execution, out_dtype=out_dtype)


def _run_forward(
    model: torch.nn.Module,
    source: Any,
    data_config: Mapping[str, Any],
    image_size: int | Sequence[int] | None,
    batch_size: int,
    execution: Execution,
    *,
    out_dtype: type[np.floating] | np.dtype,
) -> np.ndarray:
    ex = execution
    n = len(source)
    if n == 0:
        return np.zeros((0, 0), dtype=out_dtype)
    convert = BatchConverter(data_config, image_size, ex.device, channels_last=ex.channels_last)
    pin = ex.pin_memory and ex.device.type == "cuda"
    slices = batch_slices(n, batch_size)
    out: torch.Tensor | None = None
    torch_dtype = _TORCH_DTYPES[np.dtype(out_dtype)]
    with torch.inference_mode(), ex.autocast():
        batches = iter_uint8_batches(source, slices, workers=ex.loader_workers, pin_memory=pin)
        for sl, batch in zip(slices, batches):
            y = model(convert(batch))
            if out is None:
                # One preallocated host buffer: no list of per-batch outputs, no final concatenation copy.
                out = torch.empty((n, *y.shape[1:]), dtype=torch_dtype, pin_memory=pin)
            out[sl].copy_(y, non_blocking=pin)
    if ex.device.type == "cuda":
        torch.cuda.synchronize(ex.device)  # the one host sync: every asynchronous copy into `out` has landed
    assert out is not None
    return out.numpy()


def _array_problems(entry: Path, meta: dict[str, Any]) -> list[str]:
    """The feature entry's own check (after the store's size and sha256 check): the arrays' headers have the
    recorded shapes and dtypes."""
    for name, expected in meta.get("arrays", {}).items():
        try:
            array = np.load(entry / name, mmap_mode="r")
        except (OSError, ValueError) as exc:
            return [f"{name}: {exc}"]
        if [list(array.shape), str(array.dtype)] != [expected["shape"], expected["dtype"]]:
            return [f"{name}: shape {array.shape} {array.dtype}, recorded {expected}"]
    return []


def _entry_problems(entry: Path) -> list[str] | None:
    """What is wrong with a cache entry: None when there is no entry, ``[]`` when it is intact.

    The store's check (:func:`bobkit.features.artifacts.entry_problems`: format, sizes and sha256 recorded in
    ``meta.json``, memoised hashes) and the arrays' shapes and dtypes.
    """
    return entry_problems(entry, _array_problems)


def _read_entry(entry: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """Features (memory-mapped) and labels of an intact entry; a damaged one is moved aside (then recomputed)."""
    if read_entry(entry, "feature cache entry", _array_problems) is None:
        return None
    return np.load(entry / "features.npy", mmap_mode="r"), np.load(entry / "labels.npy")


def _write_entry(entry: Path, features: np.ndarray, labels: np.ndarray, meta: dict[str, Any]) -> None:
    """Write a cache entry (arrays, then their sizes, hashes and shapes in ``meta.json``) atomically and durably
    (:func:`bobkit.features.artifacts.write_entry`).

    A lost race with another process writing the same entry is harmless: theirs is equally valid.
    """
    arrays = {"features.npy": features, "labels.npy": labels}

    def write(tmp: Path) -> dict[str, Any]:
        for name, array in arrays.items():
            np.save(tmp / name, array)
        return {"shape": list(features.shape),
                "arrays": {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in arrays.items()}}

    write_entry(entry, write, {**meta, "kind": "features"})
