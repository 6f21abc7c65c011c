"""Helpers shared by the benchmark scripts: machine description, timing, peak FLOP/s, result files.

Every script writes one JSON file to ``benchmarks/results/`` (or ``--out-dir``) with a ``machine`` block, so a
figure can always be traced to the hardware and load it was measured on.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent

if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` without installing bobkit
    sys.path.insert(0, str(REPO))


def prepare_run(threads: int, *, cudnn_benchmark: bool = False) -> None:
    """A private bobkit cache for the run unless ``$BOB_CACHE_DIR`` names one, torch's intra-op threads, and cuDNN's
    algorithm autotuning when a script times convolutions on a GPU."""
    os.environ["BOB_CACHE_DIR"] = os.environ.get("BOB_CACHE_DIR") or tempfile.mkdtemp(prefix="bob-bench-")
    torch.set_num_threads(threads)
    if cudnn_benchmark:
        torch.backends.cudnn.benchmark = True


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() is often empty on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """Hardware, software and load of the machine a result was measured on."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    if device is not None:
        info["device"] = str(device)
    return info


def sync(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work (a no-op on CPU) so a timer sees the real end."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: torch.device | str | None = None) -> tuple[float, float, Any]:
    """``(wall seconds, process CPU seconds, result)`` of one call, GPU work included."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device | str | None = None
                ) -> dict[str, dict[str, Any]]:
    """Time each function ``repeats`` times, alternating between them, and keep the best (least disturbed) run.

    Alternating spreads drifting background load over all the compared paths alike.

    Returns
    -------
    dict
        name -> ``{"best_s", "best_cpu_s", "all_s", "result"}`` (result of the last call).
    """
    out: dict[str, dict[str, Any]] = {k: {"all_s": [], "all_cpu_s": [], "result": None} for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu, result = timed(fn, device)
            out[name]["all_s"].append(wall)
            out[name]["all_cpu_s"].append(cpu)
            out[name]["result"] = result
    for rec in out.values():
        rec["best_s"] = min(rec["all_s"])
        rec["best_cpu_s"] = min(rec["all_cpu_s"])
    return out


def matmul_peak_flops(device: torch.device, precision: str = "fp32", size: int | None = None,
                      repeats: int = 10) -> dict[str, Any]:
    """Measured peak FLOP/s of a large square matrix product in ``precision`` on ``device``.

    The denominator of "fraction of peak": what this device reaches on the friendliest workload in the same
    precision the model runs in (``2 * n^3`` FLOPs per product, best of ``repeats`` after warm-up).
    """
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    n = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    best = float("inf")
    inner = 5 if device.type == "cuda" else 1
    for _ in range(repeats if device.type == "cuda" else max(2, repeats // 3)):
        sync(device)
        t = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - t) / inner)
    tf32 = device.type == "cuda" and precision == "fp32" and torch.backends.cuda.matmul.allow_tf32
    return {"precision": precision, "size": n, "seconds": best, "flops_per_s": 2 * n**3 / best, "tf32": tf32}


def write_result(name: str, result: dict[str, Any], out_dir: str | os.PathLike | None = None,
                 device: torch.device | None = None) -> Path:
    """Write ``<out_dir>/<name>[-cuda].json`` atomically (temp file + rename) and print it."""
    folder = Path(out_dir) if out_dir else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "" if device is None or device.type == "cpu" else f"-{device.type}"
    path = folder / f"{name}{suffix}.json"
    payload = {"benchmark": name, **result, "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)
    print(json.dumps(payload, indent=2, default=_jsonable))
    print(f"wrote {path}")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.device):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
