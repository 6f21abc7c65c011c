"""Device, precision and execution settings shared by every task.

One place decides *how* a cell runs (device, autocast precision, memory format, compilation, loader threads,
gradient checkpointing) so every task gets the same fast path and records the same settings:

>>> ex = resolve_execution("auto")                # per-device defaults from :func:`execution_defaults`
>>> model = prepare_model(model, ex)              # to device, channels_last where it helps, optional compile
>>> with torch.inference_mode(), ex.autocast():   # bf16 on GPU
...     y = model(x)
>>> metrics.update(ex.as_metrics(), **peak_memory(ex.device))

Settings are reported as floats under the ``exec_`` prefix (a task's metrics dict holds floats only) and peak
memory under ``*_mb`` keys, so both stay out of the score table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ContextManager

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------------------------------------
# Device and threads
# ------------------------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:N"`` into a torch device, failing clearly on a bad value."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" or device.startswith("cuda"):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was requested but CUDA is not available on this machine")
        return torch.device(device)
    raise ValueError(f"device={device!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'")


def set_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op threads (``$BOB_NUM_THREADS`` when not given) and return the number in use."""
    wanted = num_threads or int(os.environ.get("BOB_NUM_THREADS", "0") or 0)
    if wanted > 0:
        torch.set_num_threads(wanted)
    return torch.get_num_threads()


@contextlib.contextmanager
def single_thread_on_cpu(device: torch.device | str):
    """Run the block with one intra-op thread on CPU (no change on a GPU), restoring the count afterwards.

    Why: torch splits CPU reductions (sums, matrix products) across threads, so their rounding, and everything an
    iterative solver builds on them, depends on the thread count. One thread gives the same bits on every machine
    setting; use it for small, iterative fits whose result is a reported number (the linear probe).
    """
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def device_name(device: torch.device) -> str:
    """A human-readable device name for provenance (GPU model or CPU model)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "cpu"


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and Slurm restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@lru_cache(maxsize=1)
def cpu_has_amx_bf16() -> bool:
    """True when the CPU has AMX bf16 tiles (Sapphire Rapids and later), where oneDNN runs bf16 convs fast."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in f)
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------------------
# Precision
# ------------------------------------------------------------------------------------------------------------


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> the device's default; validate the others (bf16 needs hardware support on GPU)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {PRECISIONS}")
    if precision == "auto":
        return execution_defaults(device)["precision"]
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision='bf16' was requested but {device_name(device)} has no bf16 support; use fp16")
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None for fp32: no autocast)."""
    if precision not in _AUTOCAST_DTYPES:
        raise ValueError(f"precision={precision!r} is not one of {tuple(_AUTOCAST_DTYPES)} (resolve 'auto' first)")
    return _AUTOCAST_DTYPES[precision]


def autocast(device: torch.device | str, precision: str) -> ContextManager[Any]:
    """``torch.autocast`` for ``precision`` on ``device`` (a no-op context for fp32).

    Autocast rather than casting the model keeps numerically sensitive ops (softmax, norms, losses) in fp32.
    """
    device = resolve_device(device)
    dtype = autocast_dtype(resolve_precision(precision, device))
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ------------------------------------------------------------------------------------------------------------
# Per-device defaults and the resolved settings of one run
# ------------------------------------------------------------------------------------------------------------


def execution_defaults(device: torch.device | str) -> dict[str, Any]:
    """Execution settings used when a task leaves them on ``auto``, chosen per device by measurement.

    Measurements: ``benchmarks/execution_modes.py`` (files and table in ``benchmarks/README.md``).

    GPU (H100): bf16 autocast is 1.4x fp32 for ResNet-50 and 6.6x for ViT-B/16 (fp32 without TF32 matmuls);
    channels_last adds 1.37x to ResNet-50 in bf16 and nothing to ViT-B, so it is on for CNNs (``"convnets"``,
    see :func:`is_convnet`). uint8 batches travel pinned and are resized/normalised on the GPU; prefetch threads
    prepare them (decoding, for file-backed datasets) while the model runs; extraction batches are >= 256.

    CPU (2 cores, AMX): fp32 by default, the exact reference the tests and cached CPU results use.
    channels_last for CNNs (1.3x MobileNetV2, neutral for ResNet-18; it slows ViTs, whose NHWC patch embedding
    makes the later matmuls strided). Batches are converted inline: a prefetch thread measured -9% to +3% on two
    shared cores. ``precision="bf16"`` is opt-in on CPU: on AMX CPUs it measured 2.0-2.5x (MobileNetV2,
    ResNet-18, ViT-Ti; features at cosine >= 0.999 to fp32), elsewhere it is slower than fp32.
    ``torch.compile`` is off everywhere by default (opt-in per task): its compile time exceeds what a short cell
    saves.
    """
    device = resolve_device(device)
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        return {
            "precision": "bf16" if bf16 else "fp16",
            "channels_last": "convnets",
            "compile": False,
            "loader_workers": min(4, max(1, usable_cpus() // 2)),
            "pin_memory": True,
            "batch_size_hint": 256,
        }
    return {
        "precision": "fp32",
        "channels_last": "convnets",
        "compile": False,
        "loader_workers": 0 if usable_cpus() <= 4 else 1,
        "pin_memory": False,
        "batch_size_hint": 64,
    }


def is_convnet(model: torch.nn.Module) -> bool:
    """True when ``model`` has convolutions beyond a patch embedding (CNNs, hybrids), where NHWC pays off."""
    convs = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            convs += 1
            if convs >= 3:
                return True
    return False


@dataclass(frozen=True)
class Execution:
    """The resolved execution settings of one run (no ``auto`` left).

    Attributes
    ----------
    device : torch.device
    precision : str
        ``fp32`` | ``bf16`` | ``fp16`` (autocast dtype; parameters stay fp32).
    channels_last : bool
        Model weights and input batches in NHWC (faster convolutions on tensor cores).
    compile : bool
        Wrap the model in ``torch.compile``.
    loader_workers : int
        Threads preparing uint8 batches ahead of the model (0: inline).
    pin_memory : bool
        Page-locked host batches, so host-to-device copies are asynchronous.
    grad_checkpointing : bool
        Recompute activations in the backward pass (fine-tuning large backbones in less memory).
    """

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    loader_workers: int = 0
    pin_memory: bool = False
    grad_checkpointing: bool = False

    def autocast(self) -> ContextManager[Any]:
        """The autocast context of this run's precision."""
        return autocast(self.device, self.precision)

    def as_metrics(self) -> dict[str, float]:
        """Settings as floats for a task's metrics dict (``exec_`` keys describe the run, they are not scores)."""
        return {
            "exec_cuda": float(self.device.type == "cuda"),
            "exec_autocast_bits": 32.0 if self.precision == "fp32" else 16.0,
            "exec_bf16": float(self.precision == "bf16"),
            "exec_channels_last": float(self.channels_last),
            "exec_compile": float(self.compile),
            "exec_loader_workers": float(self.loader_workers),
            "exec_grad_checkpointing": float(self.grad_checkpointing),
        }

    def for_model(self, model: torch.nn.Module, channels_last: bool | None = None) -> Execution:
        """These settings with ``channels_last`` settled for ``model`` (``None``: the device's default for it)."""
        if channels_last is None:
            default = execution_defaults(self.device)["channels_last"]
            channels_last = is_convnet(model) if default == "convnets" else bool(default)
        return dataclasses.replace(self, channels_last=bool(channels_last))

    def describe(self) -> dict[str, Any]:
        """Settings as JSON-friendly values (for benchmark files and logs)."""
        return {
            "device": str(self.device), "device_name": device_name(self.device), "precision": self.precision,
            "channels_last": self.channels_last, "compile": self.compile, "loader_workers": self.loader_workers,
            "pin_memory": self.pin_memory, "grad_checkpointing": self.grad_checkpointing,
        }


def resolve_execution(
    device: str | torch.device = "auto",
    precision: str = "auto",
    *,
    channels_last: bool | None = None,
    compile: bool = False,
    loader_workers: int | None = None,
    grad_checkpointing: bool = False,
    model: torch.nn.Module | None = None,
) -> Execution:
    """Resolve task parameters (``None`` / ``"auto"`` = the device's measured default) into :class:`Execution`.

    ``channels_last=None`` needs the ``model`` to decide (on for CNNs); without one it resolves to off, and
    :meth:`Execution.for_model` settles it once the model exists.
    """
    dev = resolve_device(device)
    defaults = execution_defaults(dev)
    workers = defaults["loader_workers"] if loader_workers is None else int(loader_workers)
    if workers < 0:
        raise ValueError(f"loader_workers={loader_workers!r} must be >= 0")
    ex = Execution(
        device=dev,
        precision=resolve_precision(precision, dev),
        channels_last=bool(channels_last),
        compile=bool(compile),
        loader_workers=workers,
        pin_memory=bool(defaults["pin_memory"]),
        grad_checkpointing=bool(grad_checkpointing),
    )
    return ex.for_model(model, channels_last) if model is not None else ex


def as_execution(execution: Execution | torch.device | str) -> Execution:
    """An :class:`Execution`; a bare device means fp32, no loader workers and unpinned batches."""
    return execution if isinstance(execution, Execution) else Execution(device=resolve_device(execution))


def prepare_model(
    model: torch.nn.Module,
    execution: Execution | torch.device | str,
    *,
    channels_last: bool | None = None,
    compile: bool | None = None,
    grad_checkpointing: bool | None = None,
) -> torch.nn.Module:
    """Move ``model`` to the run's device and memory format; optionally checkpoint and compile it.

    Keyword arguments override the settings in ``execution``. The module is converted in place (channels_last
    weights give the same results for any input layout); the returned module is the compiled wrapper when
    ``compile`` is on, else ``model`` itself. The train/eval mode is left to the caller.
    """
    ex = as_execution(execution)
    cl = ex.channels_last if channels_last is None else channels_last
    model = model.to(ex.device)
    if ex.device.type == "cuda":
        # Extraction and training run fixed batch shapes: let cuDNN time its algorithms once per shape.
        torch.backends.cudnn.benchmark = True
    if cl:
        model = model.to(memory_format=torch.channels_last)
    ckpt = ex.grad_checkpointing if grad_checkpointing is None else grad_checkpointing
    if ckpt:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ValueError(f"{type(model).__name__} has no set_grad_checkpointing (timm models have it)")
        model.set_grad_checkpointing(True)
    if ex.compile if compile is None else compile:
        model = torch.compile(model)  # type: ignore[assignment]
    return model


def frozen_backbone(name: str, execution: Execution, *, image_size: int, seed: int,
                    channels_last: bool | None = None) -> tuple[torch.nn.Module, Execution]:
    """Build registry backbone ``name`` as a frozen feature extractor and prepare it for inference.

    Returns the model (on the device, eval mode, channels_last / compiled as settled) and ``execution`` with
    ``channels_last`` settled for it (``None``: the device's measured default for this kind of model). Gradient
    checkpointing is left off: no backward pass runs through it.
    """
    from bobkit import backbones

    model = backbones.create_model(name, num_classes=0, image_size=image_size, seed=seed)
    ex = execution.for_model(model, channels_last)
    return prepare_model(model.eval(), ex, grad_checkpointing=False), ex


# ------------------------------------------------------------------------------------------------------------
# Memory
# ------------------------------------------------------------------------------------------------------------


def _status_kb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_memory(device: torch.device | str | None = None) -> None:
    """Start a new peak-memory window: the process's peak RSS (Linux) and the GPU's max allocated bytes.

    Linux resets ``VmHWM`` when ``5`` is written to ``/proc/self/clear_refs``; elsewhere the RSS peak stays the
    process's lifetime peak (``ru_maxrss``).
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    dev = resolve_device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def current_rss_mb() -> float:
    """Resident memory of this process now, in MiB."""
    kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else float("nan")


def peak_memory(device: torch.device | str | None = None) -> dict[str, float]:
    """Peak memory since the last :func:`reset_peak_memory` (or process start), in MiB.

    Returns ``peak_rss_mb`` and, on a CUDA device, ``peak_gpu_mb`` (max bytes allocated by PyTorch's allocator)
    and ``peak_gpu_reserved_mb``; ``*_mb`` keys are run descriptors, never scores.
    """
    kb = _status_kb("VmHWM")
    if kb is None:  # not Linux: lifetime peak (kB on Linux, bytes on macOS)
        import sys

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
    out = {"peak_rss_mb": kb / 1024}
    dev = resolve_device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        out["peak_gpu_reserved_mb"] = torch.cuda.max_memory_reserved(dev) / 2**20
    return out
