"""Per-architecture throughput of a device: stored tables for named devices, or measured briefly here and cached.

A table (``bobkit/rehearsal/throughput/<name>.json``, or ``cache_dir()/plan/device-<id>.json`` for this machine)
holds forward images/s per ``architecture@image_size`` with the FLOPs per image they were measured at, the
device's training-over-forward time ratio, the slowdown of fp32 passes (attacks) against the default precision,
the linear probe's step times, and per backbone family the achieved forward TFLOP/s used for architectures and
input sizes it did not measure (time = FLOPs / that rate). Optional training figures, where the table's GPU
measured them: the slowdown of gradient checkpointing and the activation memory of the table's precision against
fp32. ``benchmarks/gpu_check.sh`` records a table for the
GPU it runs on (``benchmarks/plan_throughput.py``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from bobkit.utils import paths
from bobkit.utils.files import write_json

TABLES = Path(__file__).resolve().parent / "throughput"
FAMILIES = ("CNN", "ViT", "hierarchical-ViT", "other")


@dataclass
class DeviceTable:
    """Throughput figures of one device (see the module docstring for the fields)."""

    name: str
    device: str
    memory_gib: float
    precision: str
    measured: str
    train_over_forward: float
    fp32_slowdown: dict[str, float]
    sgd_step_seconds: float
    lbfgs_iteration_seconds: float
    fp32_tflops: float
    architectures: dict[str, dict[str, Any]] = field(default_factory=dict)
    family_tflops: dict[str, float] = field(default_factory=dict)
    checkpoint_slowdown: float | None = None  # training time with / without gradient checkpointing
    activation_scale: float | None = None  # training activations at ``precision`` / in fp32
    notes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> DeviceTable:
        known = {f for f in cls.__dataclass_fields__ if f != "notes"}
        optional = {"architectures", "family_tflops", "checkpoint_slowdown", "activation_scale"}
        missing = sorted(known - set(payload) - optional)
        if missing:
            raise ValueError(f"throughput table {payload.get('name')!r} lacks {', '.join(missing)}")
        notes = {k: str(v) for k, v in payload.items() if k.endswith("_source")}
        return cls(**{k: v for k, v in payload.items() if k in known}, notes=notes)

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        payload.update(payload.pop("notes"))
        return payload

    def forward_seconds(self, architecture: str, family: str, image_size: int | None,
                        gflops: float) -> tuple[float, str]:
        """Seconds of one image's forward pass, and how the figure was obtained.

        ``measured`` at exactly this architecture and square size; else the architecture's measured FLOP rate at
        another size (``flops-scaled``; ``image_size=None`` for non-square inputs), else its family's rate
        (``family rate``).
        """
        exact = self.architectures.get(f"{architecture}@{image_size}")
        if exact:
            return 1.0 / float(exact["images_per_s"]), "measured"
        for key, entry in self.architectures.items():
            if key.rsplit("@", 1)[0] == architecture:
                rate = float(entry["images_per_s"]) * float(entry["gflops"]) / 1e3  # TFLOP/s
                return gflops / 1e3 / rate, "flops-scaled"
        rate = self.family_tflops.get(family) or self.family_tflops.get("other")
        if not rate:
            raise KeyError(f"throughput table {self.name!r} has no figure for {architecture} and no rate for the "
                           f"{family} family")
        return gflops / 1e3 / float(rate), "family rate"


def table_names() -> list[str]:
    """Names of the stored device tables (``bob plan --device NAME``)."""
    return sorted(p.stem for p in TABLES.glob("*.json"))


def load_table(name: str) -> DeviceTable:
    """The stored table ``name``; a ``ValueError`` naming the known ones otherwise."""
    path = TABLES / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"no stored throughput table for device {name!r}; stored: {', '.join(table_names())} "
                         "(or leave --device out to measure this machine)")
    return DeviceTable.from_json(json.loads(path.read_text(encoding="utf-8")))


# ----------------------------------------------------------------------------------------------------------------
# Measuring this machine
# ----------------------------------------------------------------------------------------------------------------


def device_key(device: torch.device) -> str:
    """A file-name-safe identity of this machine's device (GPU model, or CPU model and thread count)."""
    from bobkit.features.device import device_name

    label = device_name(device) if device.type == "cuda" else f"{device_name(device)} {torch.get_num_threads()}t"
    return "".join(c if c.isalnum() else "-" for c in label).strip("-").lower()


def _timed(fn: Any, device: torch.device, repeats: int) -> float:
    """Best wall seconds of ``fn()`` over ``repeats`` runs after one warm-up (GPU work included)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def measure_forward(backbone: str, image_size: int, device: torch.device, *, batch: int | None = None,
                    repeats: int = 2, precision: str = "auto") -> float:
    """Forward images/s of ``backbone``'s architecture (random weights, initialised on the device) at
    ``image_size`` in ``precision`` (auto: the device's default) and its memory format, on a synthetic batch (64
    on a GPU, 2 on a CPU)."""
    from bobkit import backbones
    from bobkit.features.device import prepare_model, resolve_execution

    with torch.device(device):
        model = backbones.create_model(backbone, num_classes=0, image_size=image_size, pretrained=False)
    ex = resolve_execution(device, precision).for_model(model)
    model = prepare_model(model.eval(), ex)
    n = batch or (64 if device.type == "cuda" else 2)
    fmt = torch.channels_last if ex.channels_last else torch.contiguous_format
    x = torch.randn(n, 3, image_size, image_size, device=device).contiguous(memory_format=fmt)

    def forward() -> None:
        with torch.inference_mode(), ex.autocast():
            model(x)

    return n / _timed(forward, device, repeats)


def measure_train_ratio(backbone: str, image_size: int, device: torch.device, forward_ips: float) -> float:
    """Seconds of a training image (forward + backward + AdamW step) over seconds of a forward image."""
    from bobkit import backbones
    from bobkit.features.device import prepare_model, resolve_execution

    with torch.device(device):
        model = backbones.create_model(backbone, num_classes=10, image_size=image_size, pretrained=False)
    ex = resolve_execution(device).for_model(model)
    model = prepare_model(model.train(), ex)
    n = 32 if device.type == "cuda" else 2
    x = torch.randn(n, 3, image_size, image_size, device=device)
    y = torch.zeros(n, dtype=torch.long, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with ex.autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return (_timed(step, device, 1) / n) * forward_ips


def measure_probe(device: torch.device) -> dict[str, float]:
    """Seconds of one SGD probe step (batch 256) and of one L-BFGS iteration on small synthetic features, and the
    fp32 matmul rate (TFLOP/s) that large probes approach."""
    from bobkit.tasks.training import fit_linear_probe, fit_sgd_probe

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2048, 256, generator=generator).numpy()
    labels = torch.randint(0, 10, (2048,), generator=generator).numpy()
    sgd = _timed(lambda: fit_sgd_probe(features, labels, epochs=2, device=device), device, 1) / (2 * 8)
    lbfgs = _timed(lambda: fit_linear_probe(features, labels, max_iter=10, device=device), device, 1) / 10
    size = 4096 if device.type == "cuda" else 1024
    a = torch.randn(size, size, device=device)
    matmul = _timed(lambda: a @ a, device, 2)
    return {"sgd_step_seconds": sgd, "lbfgs_iteration_seconds": lbfgs, "fp32_tflops": 2 * size**3 / matmul / 1e12}


def measurement_pairs(cells: Iterable[Any], image_size: int = 224) -> list[tuple[str, str, str, int]]:
    """(backbone, architecture, family, size) to measure for a grid: each architecture at its cells' classifier
    sizes (detection-only architectures at ``image_size``; detector inputs are FLOPs-scaled from them)."""
    from bobkit.backbones import get_backbone
    from bobkit.rehearsal.groups import architecture

    pairs: dict[tuple[str, int], tuple[str, str, str, int]] = {}
    for cell in cells:
        name = cell.params.get("backbone")
        entry = get_backbone(name) if name else None
        if entry is None or entry.source == "unsupported":
            continue
        size = int(cell.params["image_size"]) if cell.task != "detection" else image_size
        arch = architecture(name)
        pairs.setdefault((arch, size), (name, arch, entry.family, size))
    return list(pairs.values())


def _cached_path(device: torch.device) -> Path:
    return paths.cache_dir() / "plan" / f"device-{device_key(device)}.json"


def measured_table(pairs: Iterable[tuple[str, str, str, int]], device: torch.device | None = None,
                   *, log: Any = None) -> DeviceTable:
    """This machine's table, measuring what the cache lacks: ``pairs`` of (backbone, architecture, family,
    image size). Each architecture is timed once at its size (seconds on a GPU; on a CPU big models take a
    minute) and kept in ``cache_dir()/plan``; families get the median rate of their measured architectures."""
    from bobkit.features.device import device_name, resolve_device
    from bobkit.rehearsal.profiles import profile

    device = resolve_device(device or "auto")
    path = _cached_path(device)
    try:
        table = DeviceTable.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        table = None
    pairs = list(dict.fromkeys(pairs))
    if table is None:
        first = pairs[0] if pairs else ("resnet18.random_init", "resnet18", "CNN", 64)
        forward = measure_forward(first[0], first[3], device)
        probe = measure_probe(device)
        table = DeviceTable(
            name=device_key(device), device=device_name(device), memory_gib=memory_gib(device),
            precision="bf16" if device.type == "cuda" else "fp32",
            measured=f"{time.strftime('%Y-%m-%d')} by bob plan on this machine",
            train_over_forward=measure_train_ratio(first[0], first[3], device, forward),
            fp32_slowdown={f: 1.0 for f in FAMILIES} if device.type == "cpu" else {f: 2.0 for f in FAMILIES},
            **probe,
        )
    changed = False
    for backbone, arch, family, size in pairs:
        key = f"{arch}@{size}"
        if key in table.architectures:
            continue
        if log is not None:
            log(f"measuring {arch} at {size} px on {table.device} ...")
        table.architectures[key] = {"images_per_s": measure_forward(backbone, size, device),
                                    "gflops": profile(backbone, size).gflops, "family": family,
                                    "source": "measured by bob plan"}
        changed = True
    if changed or not table.family_tflops:
        table.family_tflops = family_rates(table)
        write_json(path, table.to_json())
    return table


def family_rates(table: DeviceTable) -> dict[str, float]:
    """Median achieved TFLOP/s per family over the measured architectures (others: the overall median)."""
    import statistics

    rates: dict[str, list[float]] = {}
    for entry in table.architectures.values():
        rate = float(entry["images_per_s"]) * float(entry["gflops"]) / 1e3
        rates.setdefault(entry.get("family", "other"), []).append(rate)
    overall = statistics.median([r for rs in rates.values() for r in rs]) if rates else 0.0
    return {f: statistics.median(rates[f]) if f in rates else overall for f in FAMILIES}


def memory_gib(device: torch.device) -> float:
    """Memory of the device in GiB (the GPU's, or this machine's RAM)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**30
    try:
        with open("/proc/meminfo") as fh:
            return int(next(line for line in fh if line.startswith("MemTotal")).split()[1]) / 2**20
    except (OSError, StopIteration, ValueError):
        return float("nan")
