"""Correctness of the fast paths (not their speed): autocast, channels_last, prefetching, the feature cache,
compact storage, the closed-form probe objective, peak-memory bookkeeping and the GPU check script on CPU.

Tolerances (stated once, used below):

* channels_last in fp32 only reorders memory: features within 1e-4 of the default layout (max abs, features
  of order 1; oneDNN/cuDNN may pick other convolution algorithms).
* bf16 autocast keeps 8 mantissa bits per op: every feature vector's cosine similarity to fp32 >= 0.99 and the
  max abs difference <= 5% of the largest fp32 feature.
* float16 storage: relative error <= 2**-10 per value (half precision's rounding).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bobkit.data.transforms import to_tensor_batch
from bobkit.features.device import (
    Execution,
    autocast,
    execution_defaults,
    is_convnet,
    peak_memory,
    prepare_model,
    reset_peak_memory,
    resolve_execution,
)
from bobkit.features.extract import (
    BatchConverter,
    batch_slices,
    extract_features,
    forward_batches,
    is_cached,
    iter_uint8_batches,
    run_forward,
    take_batch,
)

REPO = Path(__file__).resolve().parents[1]
BACKBONE = "resnet18.random_init"  # small, offline, has BatchNorm + many convs (a real channels_last case)
CONFIG = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "interpolation": "bicubic"}


def _images(n: int = 24, shape: tuple[int, ...] = (28, 28), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


@pytest.fixture(scope="module")
def small_model() -> torch.nn.Module:
    from bobkit import backbones

    return backbones.create_model(BACKBONE, num_classes=0, image_size=32).eval()


# ------------------------------------------------------------------------------------------------------------
# Batch conversion and prefetching
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
@pytest.mark.parametrize("shape", [(28, 28), (20, 20, 3), (32, 32)])
def test_batch_converter_matches_to_tensor_batch(interpolation, shape):
    config = {**CONFIG, "interpolation": interpolation}
    images = _images(6, shape)
    expected = to_tensor_batch(images, config, 32)
    for channels_last in (False, True):
        got = BatchConverter(config, 32, "cpu", channels_last=channels_last)(images)
        assert got.shape == expected.shape == (6, 3, 32, 32)
        assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)


def test_prefetching_loader_yields_the_same_batches_in_order_as_the_plain_loop():
    images = _images(103)
    slices = batch_slices(len(images), 10)
    assert [s.stop - s.start for s in slices] == [10] * 10 + [3]
    plain = [take_batch(images, s) for s in slices]
    for workers in (0, 1, 3):
        got = list(iter_uint8_batches(images, slices, workers=workers))
        assert len(got) == len(plain)
        for a, b in zip(got, plain):
            assert a.dtype == torch.uint8 and np.array_equal(a.numpy(), b)
    # Shuffled index batches (fine-tuning) come back in the order asked for, too.
    order = np.random.default_rng(1).permutation(len(images))
    index_batches = [np.sort(order[i : i + 16]) for i in range(0, len(order), 16)]
    got = list(iter_uint8_batches(images, index_batches, workers=2, lookahead=3))
    assert all(np.array_equal(a.numpy(), images[idx]) for a, idx in zip(got, index_batches))


def test_prefetching_loader_stops_cleanly_when_the_consumer_breaks():
    images = _images(50)
    it = iter_uint8_batches(images, batch_slices(50, 5), workers=2)
    first = next(it)
    it.close()  # GeneratorExit inside: queued work is cancelled, the pool shuts down
    assert first.shape == (5, 28, 28)


def test_forward_batches_matches_a_plain_loop_and_never_concatenates(small_model):
    images = _images(37)
    expected = []
    with torch.inference_mode():
        for s in batch_slices(len(images), 8):
            expected.append(small_model(to_tensor_batch(images[s], CONFIG, 32)).numpy())
    expected = np.concatenate(expected)
    got = forward_batches(small_model, images, CONFIG, 32, 8, "cpu", precision="fp32", channels_last=False,
                          loader_workers=2)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------------------------
# Precision and memory format
# ------------------------------------------------------------------------------------------------------------


def test_channels_last_and_bf16_features_are_close_to_fp32(small_model):
    import copy

    images = _images(16, (32, 32, 3))
    kwargs = dict(data_config=CONFIG, image_size=32, batch_size=8, device="cpu", loader_workers=0)
    fp32 = forward_batches(copy.deepcopy(small_model), images, precision="fp32", channels_last=False, **kwargs)
    cl = forward_batches(copy.deepcopy(small_model), images, precision="fp32", channels_last=True, **kwargs)
    bf16 = forward_batches(copy.deepcopy(small_model), images, precision="bf16", channels_last=True, **kwargs)
    scale = np.abs(fp32).max()
    np.testing.assert_allclose(cl, fp32, atol=1e-4 * max(1.0, scale), rtol=0)
    assert _cosine_min(bf16, fp32) >= 0.99
    assert np.abs(bf16 - fp32).max() <= 0.05 * scale
    assert not np.array_equal(bf16, fp32)  # autocast really ran in bf16


def test_autocast_contexts():
    with autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        autocast("cpu", "int8")


def test_execution_resolution_and_metrics(small_model):
    defaults = execution_defaults("cpu")
    assert defaults["precision"] == "fp32" and defaults["compile"] is False
    ex = resolve_execution("cpu")
    assert ex.precision == "fp32" and not ex.channels_last  # no model yet: off
    assert ex.for_model(small_model).channels_last  # a CNN: on by default
    vit = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 16, 16), torch.nn.Flatten(), torch.nn.Linear(8, 4))
    assert is_convnet(small_model) and not is_convnet(vit)
    assert not ex.for_model(vit).channels_last
    assert ex.for_model(small_model, False).channels_last is False  # an explicit choice wins
    metrics = resolve_execution("cpu", "bf16", loader_workers=2, grad_checkpointing=True).as_metrics()
    assert all(k.startswith("exec_") and isinstance(v, float) for k, v in metrics.items())
    assert metrics["exec_bf16"] == 1.0 and metrics["exec_autocast_bits"] == 16.0
    assert metrics["exec_loader_workers"] == 2.0 and metrics["exec_grad_checkpointing"] == 1.0
    with pytest.raises(ValueError, match="loader_workers"):
        resolve_execution("cpu", loader_workers=-1)


def test_prepare_model_channels_last_and_grad_checkpointing():
    from bobkit import backbones

    model = backbones.create_model(BACKBONE, num_classes=3, image_size=32)
    ex = Execution(torch.device("cpu"), channels_last=True, grad_checkpointing=True)
    model = prepare_model(model, ex)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.grad_checkpointing  # timm's flag: activations recomputed in backward
    x = torch.randn(2, 3, 32, 32, requires_grad=False)
    model.train()
    F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="set_grad_checkpointing"):
        prepare_model(torch.nn.Linear(2, 2), Execution(torch.device("cpu"), grad_checkpointing=True))


# ------------------------------------------------------------------------------------------------------------
# Cache, compact storage, memory
# ------------------------------------------------------------------------------------------------------------


def test_cached_features_are_identical_to_fresh_ones_and_memory_mapped():
    common = dict(image_size=32, max_samples=40, batch_size=16, device="cpu")
    fresh = extract_features(BACKBONE, "fashion_mnist", "test", cache=False, **common)
    assert not is_cached(BACKBONE, "fashion_mnist", "test", image_size=32, max_samples=40)
    first = extract_features(BACKBONE, "fashion_mnist", "test", **common)
    assert is_cached(BACKBONE, "fashion_mnist", "test", image_size=32, max_samples=40)
    hit = extract_features(BACKBONE, "fashion_mnist", "test", **common)
    assert not first.cache_hit and hit.cache_hit
    assert isinstance(hit.features, np.memmap)  # read lazily from disk, not loaded
    assert np.array_equal(np.asarray(hit.features), fresh.features)
    assert np.array_equal(first.features, fresh.features)
    assert np.array_equal(hit.labels, fresh.labels)
    # Another precision is another cache entry (bf16 features are not fp32 features).
    bf16 = extract_features(BACKBONE, "fashion_mnist", "test", precision="bf16", **common)
    assert not bf16.cache_hit and bf16.key != hit.key


def test_cpu_features_do_not_depend_on_the_thread_count_that_filled_the_cache():
    """Issue 25 item 16: the feature key has no thread count, so the forward runs on one thread on CPU (torch splits
    reductions across threads, and their rounding follows the split)."""
    seen: list[int] = []
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    model.register_forward_pre_hook(lambda module, args: seen.append(torch.get_num_threads()))
    images = np.random.default_rng(0).integers(0, 256, (12, 20, 20, 3), dtype=np.uint8)
    config = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "interpolation": "bilinear"}
    before = torch.get_num_threads()
    outputs = []
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            outputs.append(run_forward(model, images, config, 24, 5, resolve_execution("cpu", "fp32")))
            assert torch.get_num_threads() == threads  # restored afterwards
    finally:
        torch.set_num_threads(before)
    assert seen == [1] * len(seen) and len(seen) == 6  # every batch, whatever the process's thread count
    assert np.array_equal(outputs[0], outputs[1])


def test_float16_storage_round_trips_within_half_precision():
    common = dict(image_size=32, max_samples=30, batch_size=16, device="cpu")
    full = extract_features(BACKBONE, "fashion_mnist", "train", dtype="float32", **common)
    extract_features(BACKBONE, "fashion_mnist", "train", dtype="float16", **common)
    half = extract_features(BACKBONE, "fashion_mnist", "train", dtype="float16", **common)
    assert half.cache_hit and half.features.dtype == np.float16 and half.key != full.key
    ref = np.asarray(full.features, dtype=np.float64)
    err = np.abs(np.asarray(half.features, dtype=np.float64) - ref)
    assert (err <= 2.0**-10 * np.abs(ref) + 1e-7).all()
    # The probe reads float16 maps directly (widened on the way in).
    from bobkit.tasks.training import fit_linear_probe

    probe = fit_linear_probe(half.features, half.labels, num_classes=10, max_iter=20)
    assert probe.logits(half.features).shape == (30, 10)


def test_extraction_streams_batches_instead_of_holding_all_images(monkeypatch):
    """Proxy for the 60k x 224 px check: peak RSS grows by far less than the float images would need."""
    n, size = 600, 224
    images = _images(n)
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten())  # (almost) no compute
    all_at_once_mb = n * 3 * size * size * 4 / 2**20  # ~344 MiB of float32 images
    forward_batches(model, images[:32], CONFIG, size, 32, "cpu", precision="fp32")  # allocator warm-up
    reset_peak_memory()
    before = peak_memory()["peak_rss_mb"]
    out = forward_batches(model, images, CONFIG, size, 32, "cpu", precision="fp32")
    grown = peak_memory()["peak_rss_mb"] - before
    assert out.shape == (n, 48)
    assert grown < 0.25 * all_at_once_mb, (grown, all_at_once_mb)


def test_peak_memory_reports_megabytes():
    reset_peak_memory("cpu")
    mem = peak_memory("cpu")
    assert set(mem) == {"peak_rss_mb"} and mem["peak_rss_mb"] > 10


# ------------------------------------------------------------------------------------------------------------
# Linear probe solver and fine-tuning execution
# ------------------------------------------------------------------------------------------------------------


def test_closed_form_probe_objective_matches_autograd():
    from bobkit.tasks.training import _probe_objective

    g = torch.Generator().manual_seed(0)
    xs, y = torch.randn(50, 7, generator=g), torch.randint(0, 4, (50,), generator=g)
    w, b = torch.randn(4, 7, generator=g), torch.randn(4, generator=g)
    loss, gw, gb = _probe_objective(xs, y, 4, 0.1)(w, b)
    wr, br = w.clone().requires_grad_(), b.clone().requires_grad_()
    ref = F.cross_entropy(xs @ wr.T + br, y) + 0.05 * wr.pow(2).sum()
    ref.backward()
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(gw, wr.grad)
    torch.testing.assert_close(gb, br.grad)


def test_classification_run_records_execution_and_memory_as_floats():
    from bobkit.results.sidecars import split_metrics
    from bobkit.tasks.classification import run

    m = run(backbone=BACKBONE, dataset="fashion_mnist", max_train=40, max_test=20, image_size=32, device="cpu",
            batch_size=16)
    assert all(isinstance(v, float) for v in m.values())
    assert m["exec_cuda"] == 0.0 and m["exec_autocast_bits"] == 32.0 and m["peak_rss_mb"] > 0
    again = run(backbone=BACKBONE, dataset="fashion_mnist", max_train=40, max_test=20, image_size=32,
                device="cpu", batch_size=16)
    assert again["feature_cache_hit"] == 1.0 and again["top1"] == m["top1"]
    _, info = split_metrics(m)
    assert "peak_rss_mb" in info
    with pytest.raises(ValueError, match="precision"):
        run(precision="fp8")


def test_finetune_with_bf16_autocast_and_prefetch_lowers_the_loss():
    from bobkit.tasks.training import finetune

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(64, 8, 8), dtype=np.uint8)
    labels = (images.reshape(64, -1).mean(1) > 127).astype(np.int64)
    images[labels == 1] = np.clip(images[labels == 1].astype(int) + 60, 0, 255).astype(np.uint8)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    config = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear"}
    losses = finetune(model, images, labels, config, image_size=8, epochs=8, lr=1e-2, weight_decay=0.0,
                      layer_decay=None, warmup_epochs=1, batch_size=16, seed=0, device=torch.device("cpu"),
                      precision="bf16", loader_workers=2, check_every=5)
    assert len(losses) == 32 and np.mean(losses[-4:]) < np.mean(losses[:4])
    with pytest.raises(FloatingPointError, match="non-finite"):
        finetune(model, images, labels, config, image_size=8, epochs=8, lr=float("inf"), weight_decay=0.0,
                 layer_decay=None, warmup_epochs=1, batch_size=16, seed=0, device=torch.device("cpu"),
                 check_every=5)


# ------------------------------------------------------------------------------------------------------------
# The GPU check script, on CPU in its tiny mode
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_gpu_check_script_runs_on_cpu_in_tiny_mode(tmp_path):
    env = {**os.environ, "BOB_CACHE_DIR": str(tmp_path / "cache"), "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--tiny", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    written = sorted(p.name for p in tmp_path.glob("*.json"))
    assert "feature_throughput.json" in written and "probe_solver.json" in written
    assert json.loads((tmp_path / "feature_throughput.json").read_text())["bobkit_images_per_s"] > 0
    table = proc.stdout.strip().splitlines()
    assert any(line.startswith("|") for line in table[-15:])  # the table is printed last


# ------------------------------------------------------------------------------------------------------------
# Every task: the same execution parameters, validated before any work
# ------------------------------------------------------------------------------------------------------------

EXECUTION_TASKS = ("classification", "retrieval", "ood", "robustness", "detection")
EXECUTION_NAMES = ("precision", "channels_last", "compile", "grad_checkpointing", "loader_workers")
BAD_EXECUTION = [("precision", "fp8"), ("precision", "BF16"), ("loader_workers", -1), ("loader_workers", 1.5),
                 ("loader_workers", True), ("channels_last", "yes"), ("compile", 1), ("grad_checkpointing", None)]


@pytest.mark.parametrize("task", EXECUTION_TASKS)
def test_every_task_has_the_execution_parameters_with_the_same_defaults(task):
    from bobkit.tasks import get_task

    reference = {"precision": "auto", "channels_last": None, "compile": False, "grad_checkpointing": False,
                 "loader_workers": None}
    assert {name: get_task(task).PARAMETERS[name] for name in EXECUTION_NAMES} == reference


@pytest.mark.parametrize("task", EXECUTION_TASKS)
@pytest.mark.parametrize(("name", "bad"), BAD_EXECUTION)
def test_every_task_rejects_a_bad_execution_value_before_any_work(task, name, bad, monkeypatch):
    import re

    from bobkit.tasks import get_task

    module = get_task(task)

    def started(*args, **kwargs):
        raise AssertionError(f"{task} started work before rejecting {name}={bad!r}")

    monkeypatch.setattr("bobkit.features.device.set_threads", started)  # the harness's first step after validation
    message = re.escape(f"{name}={bad!r}")
    with pytest.raises(ValueError, match=message):
        module.run(**{name: bad})
    with pytest.raises(ValueError, match=message):  # what the grid calls on every cell
        module.validate_params({**module.PARAMETERS, name: bad})
