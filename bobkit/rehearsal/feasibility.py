"""Whether a planned cell can finish on the resources it declares, and what would make it: ``bob plan``'s verdict.

A cell's work (:class:`bobkit.rehearsal.plan.CellCost`) is placed on its resources (:class:`Placement`: the
``processes`` / ``gpus``, ``cpus``, ``timeout_min``, ``max_requeues``, ``job_margin_min`` and ``signal_delay_s``
resources, with :mod:`bobkit.batch.resources`' defaults, and the ``accum_steps`` / ``grad_checkpointing`` /
``state_every_min`` execution parameters) and priced per piece of work:

=====================  ==========================================================================================
training               fine-tuning and detector training run on every process of the cell (DDP): device seconds
                       / (processes x :data:`DATA_PARALLEL_EFFICIENCY`); with gradient checkpointing x the device
                       table's measured ``checkpoint_slowdown`` (else one more forward pass per image); state saved
                       every ``state_every_min`` and on the time-limit signal, so training resumes across requeues
everything else        extraction, evaluation, probes and attacks run in one process and cannot resume part-way:
                       each piece must fit in one attempt
input pipeline         a piece takes at least its decoded images / (input cores x images/s per core,
                       :data:`INPUT_IMAGES_PER_CORE`); input cores = ``cpus`` less one per process
=====================  ==========================================================================================

A cell that trains runs under its Slurm job's limit of ``timeout_min + job_margin_min``: Slurm signals
``signal_delay_s`` (and up to :data:`SIGNAL_EARLY_S` more) before it, the training saves its state and the job is
requeued. Each attempt (the first run and every requeue) so works for that limit less the signal's lead,
:data:`ATTEMPT_STARTUP_S` and the time to save the state; the attempts a cell needs are counted by laying its pieces
end to end (a non-resumable piece that does not fit what is left of an attempt starts the next one, and the time
it ran is lost). It finishes when its requeues (attempts - 1) are at most ``max_requeues`` (submitit's
``max_num_timeout``). A cell without training has no state to resume: its notebook must finish within
``timeout_min`` (the runner's execution timeout) in one attempt. The local backend has no requeues (a cell there
runs to its end or its ``timeout_min``).

Memory per GPU at the micro-batch (global ``batch_size`` / (processes x ``accum_steps``)): weights, gradients and
AdamW state (16 bytes a trained parameter, plus :data:`DDP_BUCKET_BYTES_PER_PARAM` on several processes) and the
activations kept for the backward pass per image (the profile's, or its gradient-checkpointed count). A cell fits
when that peak is within :data:`ALLOCATOR_SHARE` of the device's memory; one that does not gets the remedies that
keep its recipe: gradient accumulation at the same global batch, gradient checkpointing, more processes.

GPU-hours held are wall time x GPUs (idle GPUs of single-process work in a multi-GPU cell, input waits, start-ups
and the scaling loss included), next to the plan's device hours of computation.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bobkit.batch.resources import (
    DEFAULT_JOB_MARGIN_MIN,
    DEFAULT_MAX_REQUEUES,
    DEFAULT_SIGNAL_DELAY_S,
    job_margin_min_of,
    max_requeues_of,
    processes_of,
    signal_delay_s_of,
)

if TYPE_CHECKING:
    from bobkit.batch.grid import Cell
    from bobkit.rehearsal.plan import CellCost
    from bobkit.rehearsal.throughput import DeviceTable

#: Speed-up of data-parallel training on N processes of one node = N x this. Assumed, not measured by this
#: project: DDP on one NVLink node overlaps the gradient all-reduce with the backward pass and is commonly reported
#: at 0.9-0.95 of linear scaling for models of these sizes.
DATA_PARALLEL_EFFICIENCY = 0.9
#: GPUs of one node: the most processes a data-parallel cell runs (the paper fine-tuned on 8).
NODE_GPUS = 8
#: CPU cores of such a node (NVIDIA DGX H100: two 56-core Xeon Platinum 8480C), the most a remedy asks for.
NODE_CPUS = 112
#: Seconds an attempt spends before its work resumes: Slurm start, kernel, imports, model build, state load.
#: Assumed (not measured at scale).
ATTEMPT_STARTUP_S = 300.0
#: Training state written per second: a shared file system and the state's sha256. Assumed.
STATE_WRITE_BYTES_PER_S = 0.5e9
#: Training state is saved this often besides on the time-limit signal, unless a cell sets ``state_every_min``
#: (the training's default: 5 minutes).
STATE_SAVE_INTERVAL_S = 300.0
#: Slurm may send the time-limit signal up to a minute before ``signal_delay_s`` (its signal timer's granularity).
SIGNAL_EARLY_S = 60.0
#: Bytes of training state per trained parameter: fp32 weights and AdamW's two moments (scheduler, scaler, RNG
#: and the position in the data order are small).
STATE_BYTES_PER_PARAM = 12
#: Images per second one CPU core decodes and prepares for the GPU at 224 px. ``augmented``: the recipe's training
#: transform (JPEG decode, random-resized crop, flip, RandAugment m9, random erasing), measured by
#: benchmarks/training_input.py at 8.3 ms of CPU per 500x375 JPEG in one process (AMD EPYC; 121 images/s).
#: ``plain``: decode and resize; assumed (that benchmark's decode alone took 1.4 ms, 700 images/s).
INPUT_IMAGES_PER_CORE: dict[str, float] = {"augmented": 120.0, "plain": 400.0}
#: Cores a training or extraction process keeps for its own loop; the rest of ``cpus`` decode input. Assumed.
CORES_PER_PROCESS = 1
#: torch's DDP keeps gradient buckets beside the gradients (``gradient_as_bucket_view=False``, its default).
DDP_BUCKET_BYTES_PER_PARAM = 4
#: Bytes per trained parameter on its GPU: fp32 weights, gradients and AdamW's two moments.
TRAINED_BYTES_PER_PARAM = 16
#: Share of a GPU's memory that tensors get: torch's caching allocator reserved 12% more than the peak it
#: allocated in benchmarks/results/finetune_step-cuda.json (5,689 / 6,382 MiB bf16; 8,593 / 9,382 MiB fp32).
ALLOCATOR_SHARE = 0.89
GIB = 2**30


@dataclass(frozen=True)
class TrainingMemory:
    """What a cell's training holds on one GPU, as a function of its micro-batch.

    Attributes
    ----------
    params
        Parameters of the trained model (detection: trunk + FPN).
    trained
        Whether the parameters are trained (AdamW state, gradients) or frozen (weights only).
    image_bytes, checkpointed_image_bytes
        Activations kept for the backward pass per image at the training precision, without and with gradient
        checkpointing.
    global_batch
        The cell's ``batch_size``: images per optimizer step over all processes and accumulation steps.
    """

    params: int
    trained: bool
    image_bytes: float
    checkpointed_image_bytes: float
    global_batch: int

    def weight_bytes(self, processes: int) -> float:
        if not self.trained:
            return self.params * 4.0
        buckets = DDP_BUCKET_BYTES_PER_PARAM if processes > 1 else 0
        return self.params * float(TRAINED_BYTES_PER_PARAM + buckets)

    def peak(self, micro_batch: int, processes: int, checkpointing: bool) -> float:
        per_image = self.checkpointed_image_bytes if checkpointing and self.trained else self.image_bytes
        return self.weight_bytes(processes) + micro_batch * per_image


@dataclass(frozen=True)
class Placement:
    """Where and how a cell runs: its resources and execution parameters (see the module docstring)."""

    processes: int = 1
    gpus: int = 0
    accum_steps: int = 1
    grad_checkpointing: bool = False
    cpus: int = 2
    timeout_min: float = 60.0
    max_requeues: int = DEFAULT_MAX_REQUEUES
    job_margin_min: float = DEFAULT_JOB_MARGIN_MIN
    signal_delay_s: float = DEFAULT_SIGNAL_DELAY_S
    state_every_s: float = STATE_SAVE_INTERVAL_S

    @classmethod
    def of(cls, cell: Cell) -> Placement:
        """The placement a cell declares (resources, with the defaults the backends apply)."""
        res, p = cell.resources, cell.params
        every = p.get("state_every_min")
        return cls(
            processes=processes_of(res), gpus=int(res.get("gpus") or 0),
            accum_steps=int(p.get("accum_steps") or 1), grad_checkpointing=bool(p.get("grad_checkpointing")),
            cpus=int(res.get("cpus", 2)), timeout_min=float(res.get("timeout_min", 60)),
            max_requeues=max_requeues_of(res), job_margin_min=job_margin_min_of(res),
            signal_delay_s=float(signal_delay_s_of(res)),
            state_every_s=STATE_SAVE_INTERVAL_S if every is None else float(every) * 60,
        )

    def attempt_seconds(self, trains: bool) -> float:
        """Seconds from an attempt's start to its end: for training, the Slurm job's limit less the time-limit
        signal's lead (the training saves at the signal); else the runner's execution timeout."""
        if not trains:
            return self.timeout_min * 60
        return (self.timeout_min + self.job_margin_min) * 60 - self.signal_delay_s - SIGNAL_EARLY_S

    @property
    def devices(self) -> int:
        """Accelerators held for the cell's whole run (its processes on a CPU-only plan)."""
        return self.gpus or self.processes

    def on_gpus(self, n: int) -> Placement:
        """The same cell on ``n`` GPUs, one process each."""
        return dataclasses.replace(self, gpus=n, processes=n)


@dataclass
class Feasibility:
    """A cell on its placement: wall time, attempts under the time limit, memory per GPU, input pipeline."""

    placement: Placement
    micro_batch: int | None = None  # None: the cell does not train
    wall_seconds: float = 0.0  # first start to last save, requeues' start-ups and lost time included
    attempts: int | None = 1  # None: a piece that cannot resume is longer than one attempt
    too_long: str = ""  # that piece
    useful_seconds: float = 0.0  # work time of one attempt
    peak_bytes: float = 0.0  # at the micro-batch, as declared (gradient checkpointing on or off)
    peak_checkpointed_bytes: float = 0.0  # the same with gradient checkpointing on
    cores_needed: float = 0.0  # CPU cores that keep the processes fed (input workers + one per process)
    input_bound: bool = False
    busy_seconds: float = 0.0  # device seconds of computation (the rest of gpu_seconds waits or idles)
    indivisible: str = ""  # the global batch does not split into processes x accum_steps
    time_remedies: list[str] = field(default_factory=list)  # best first
    memory_remedies: list[str] = field(default_factory=list)  # cheapest first

    @property
    def requeues(self) -> int | None:
        return None if self.attempts is None else self.attempts - 1

    @property
    def finishes(self) -> bool:
        return not self.indivisible and self.attempts is not None and self.attempts - 1 <= self.placement.max_requeues

    def fits(self, memory_gib: float) -> bool:
        return self.peak_bytes <= usable_bytes(memory_gib)

    @property
    def gpu_seconds(self) -> float:
        """Accelerator seconds held: wall time x GPUs (what the allocation costs, idle GPUs included)."""
        return self.wall_seconds * self.placement.devices


# ----------------------------------------------------------------------------------------------------------------
# Pricing one placement
# ----------------------------------------------------------------------------------------------------------------


def usable_bytes(memory_gib: float) -> float:
    """Bytes of a device of ``memory_gib`` that a cell's peak may take (:data:`ALLOCATOR_SHARE`)."""
    return memory_gib * GIB * ALLOCATOR_SHARE


def checkpoint_slowdown(table: DeviceTable) -> float:
    """Training time with gradient checkpointing over without: the table's measurement, else one more forward pass
    per training image."""
    return table.checkpoint_slowdown or 1.0 + 1.0 / table.train_over_forward


def state_save_seconds(cost: CellCost) -> float:
    """Seconds to write the cell's training state once (0 when it trains nothing)."""
    memory = cost.training_memory
    return 0.0 if memory is None else memory.params * STATE_BYTES_PER_PARAM / STATE_WRITE_BYTES_PER_S


def input_cores(placement: Placement) -> int:
    """Cores left for decoding input: ``cpus`` less one per process (at least one)."""
    return max(1, placement.cpus - CORES_PER_PROCESS * placement.processes)


def micro_batch(global_batch: int, placement: Placement) -> tuple[int, str]:
    """(images per process and accumulation step, the problem when ``global_batch`` does not split evenly)."""
    parts = placement.processes * placement.accum_steps
    if global_batch % parts:
        return max(1, global_batch // parts), (f"batch_size {global_batch} does not split into {placement.processes} "
                                               f"process(es) x accum_steps {placement.accum_steps}")
    return global_batch // parts, ""


def _piece_seconds(work: Any, placement: Placement, table: DeviceTable) -> tuple[float, float]:
    """(wall seconds of one piece of work on the placement, CPU cores its input needs to keep the GPUs busy)."""
    seconds = work.seconds
    if work.training:
        if placement.grad_checkpointing and work.backward:
            seconds *= checkpoint_slowdown(table)
        if placement.processes > 1:
            seconds /= placement.processes * DATA_PARALLEL_EFFICIENCY
    if not work.decoded or not seconds:
        return seconds, 0.0
    rate = INPUT_IMAGES_PER_CORE["augmented" if work.augmented else "plain"]
    cores = work.decoded / seconds / rate
    return max(seconds, work.decoded / (input_cores(placement) * rate)), cores


def evaluate(cost: CellCost, placement: Placement, table: DeviceTable) -> Feasibility:
    """Price ``cost`` on ``placement``: wall time, attempts under its time limit, memory per GPU, input need."""
    result = Feasibility(placement)
    memory = cost.training_memory
    result.peak_bytes = result.peak_checkpointed_bytes = cost.peak_bytes
    if memory is not None:
        result.micro_batch, result.indivisible = micro_batch(memory.global_batch, placement)
        for checkpointing in {placement.grad_checkpointing, True}:
            peak = max(cost.peak_bytes, memory.peak(result.micro_batch, placement.processes, checkpointing))
            if checkpointing == placement.grad_checkpointing:
                result.peak_bytes = peak
            if checkpointing:
                result.peak_checkpointed_bytes = peak
    save = state_save_seconds(cost)
    every = max(placement.state_every_s, 1.0)
    pieces: list[tuple[float, bool, str]] = []
    cores = 0.0
    for work in cost.work:
        if work.cached:
            continue
        slower = work.training and placement.grad_checkpointing and work.backward
        result.busy_seconds += work.seconds * (checkpoint_slowdown(table) if slower else 1.0)
        seconds, piece_cores = _piece_seconds(work, placement, table)
        if work.training:
            seconds += seconds / every * save  # the periodic saves
        pieces.append((seconds, work.training, work.what))
        cores = max(cores, piece_cores)
    result.cores_needed = cores + CORES_PER_PROCESS * placement.processes
    result.input_bound = result.cores_needed > placement.cpus
    trains = any(resumable for _, resumable, _ in pieces)
    result.useful_seconds = placement.attempt_seconds(trains) - ATTEMPT_STARTUP_S - save
    if trains:
        result.attempts, lost, result.too_long = attempts_needed(pieces, result.useful_seconds)
    else:  # nothing to resume: one run of the notebook
        lost, total = 0.0, sum(seconds for seconds, _, _ in pieces)
        result.attempts, result.too_long = (1, "") if total <= result.useful_seconds else (None, "work")
    n = result.attempts or 1
    result.wall_seconds = sum(seconds for seconds, _, _ in pieces) + lost + n * ATTEMPT_STARTUP_S + (n - 1) * save
    return result


def attempts_needed(pieces: list[tuple[float, bool, str]], useful: float) -> tuple[int | None, float, str]:
    """(attempts, seconds of work lost to restarts, the piece that cannot fit) for ``pieces`` laid end to end.

    Each piece is (seconds, resumable, what). A resumable piece continues in the next attempt where it stopped; one
    that cannot resume and does not fit what is left of an attempt runs until the limit, is lost and starts again
    in the next attempt. Attempts are ``None`` when such a piece is longer than a whole attempt (or an attempt has
    no time at all).
    """
    if useful <= 0:
        return None, 0.0, "the start-up, signal delay and state save alone"
    attempts, left, lost = 1, useful, 0.0
    for seconds, resumable, what in pieces:
        if resumable:
            extra = math.ceil(max(seconds - left, 0.0) / useful)
            attempts += extra
            left = left - seconds + extra * useful
            continue
        if seconds > useful:
            return None, lost, what
        if seconds > left:
            attempts, lost, left = attempts + 1, lost + left, useful
        left -= seconds
    return attempts, lost, ""


# ----------------------------------------------------------------------------------------------------------------
# Remedies
# ----------------------------------------------------------------------------------------------------------------


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:,.1f} h" if hours < 10 else f"{hours:,.0f} h"


def time_limit_text(minutes: float) -> str:
    """``timeout_min`` in words: ``25 min``, ``12 h``."""
    return f"{minutes:g} min" if minutes < 60 else f"{minutes / 60:.3g} h"


def _gib(nbytes: float) -> str:
    return f"{nbytes / GIB:,.0f} GiB" if nbytes >= 100 * GIB else f"{nbytes / GIB:,.1f} GiB"


def time_remedies(cost: CellCost, found: Feasibility, table: DeviceTable) -> list[str]:
    """What would let a cell that cannot finish under its time limit finish (best first)."""
    here = found.placement
    limit = time_limit_text(here.timeout_min)
    if found.attempts is None:
        trains = any(w.training for w in cost.work)
        seconds = piece_seconds(cost, here, table, found.too_long if trains else None)
        window = here.attempt_seconds(trains) - here.timeout_min * 60  # what the limit adds to timeout_min
        needed = math.ceil((seconds + ATTEMPT_STARTUP_S + state_save_seconds(cost) - window) / 60)
        what = (f"its {found.too_long} cannot resume" if trains else "it has no training state to resume")
        return [f"timeout_min: {needed} ({what} and takes longer than one attempt under {limit})"]
    remedies = []
    trains = any(w.training for w in cost.work)
    if trains and here.processes < NODE_GPUS:
        wide = widened(cost, here, table)
        if wide.attempts is not None and not wide.indivisible:
            cpus = f", cpus: {wide.placement.cpus}" if wide.placement.cpus != here.cpus else ""
            text = (f"gpus: {NODE_GPUS}{cpus} -> {_hours(wide.wall_seconds)} on {NODE_GPUS} GPUs, {wide.requeues} "
                    f"requeue(s) under {limit} with saved state")
            remedies.append(text + (f": set max_requeues >= {wide.requeues}" if wide.requeues > here.max_requeues
                                    else ""))
    remedies.append(f"max_requeues: {found.requeues} ({_hours(found.wall_seconds)} on {here.processes} "
                    f"process(es) under {limit} with saved state)")
    return remedies


def widened(cost: CellCost, placement: Placement, table: DeviceTable) -> Feasibility:
    """The cell on a whole node: :data:`NODE_GPUS` processes and the cores that feed them (at most
    :data:`NODE_CPUS`, at least its own ``cpus``)."""
    wide = placement.on_gpus(NODE_GPUS)
    needed = math.ceil(evaluate(cost, wide, table).cores_needed)
    return evaluate(cost, dataclasses.replace(wide, cpus=max(placement.cpus, min(needed, NODE_CPUS))), table)


def piece_seconds(cost: CellCost, placement: Placement, table: DeviceTable, what: str | None = None) -> float:
    """Wall seconds of the cell's pieces of work called ``what`` (``None``: all) on ``placement``."""
    return sum(_piece_seconds(w, placement, table)[0] for w in cost.work
               if not w.cached and what in (None, w.what))


def memory_remedies(cost: CellCost, found: Feasibility, table: DeviceTable) -> list[str]:
    """Placements that bring a cell over memory within the device (same global batch, same recipe), cheapest
    first: gradient accumulation, then gradient checkpointing (:func:`checkpoint_slowdown`), then more GPUs."""
    memory, here = cost.training_memory, found.placement
    limit = usable_bytes(table.memory_gib)
    if memory is None or cost.peak_bytes > limit:
        batch = cost.cell.params.get("batch_size")
        return [f"lower batch_size ({batch}): {_gib(cost.peak_bytes)} is the peak of an inference or attack batch"]
    if memory.weight_bytes(here.processes) > limit:
        return [f"nothing on one GPU: weights, gradients and AdamW state alone take "
                f"{_gib(memory.weight_bytes(here.processes))} (sharded training is not supported)"]
    remedies = []
    for checkpointing in sorted({here.grad_checkpointing, memory.trained}):
        fitted = _smallest_accumulation(cost, dataclasses.replace(here, grad_checkpointing=checkpointing), table)
        if fitted is None:
            continue
        placement, peak = fitted
        keys = []
        if checkpointing != here.grad_checkpointing:
            keys.append("grad_checkpointing: true")
        if placement.accum_steps != here.accum_steps:
            keys.append(f"accum_steps: {placement.accum_steps}")
        remedies.append(f"{', '.join(keys)} fits {_gib(peak)}")
    if here.processes < NODE_GPUS:
        fitted = _smallest_accumulation(cost, here.on_gpus(NODE_GPUS), table)
        if fitted is not None:
            placement, peak = fitted
            extra = f", accum_steps: {placement.accum_steps}" if placement.accum_steps != here.accum_steps else ""
            remedies.append(f"gpus: {NODE_GPUS}{extra} fits {_gib(peak)}")
    return remedies or [f"nothing fits: {_gib(found.peak_checkpointed_bytes)} per GPU with gradient checkpointing "
                        "at a micro-batch of one"]


def _smallest_accumulation(cost: CellCost, placement: Placement,
                           table: DeviceTable) -> tuple[Placement, float] | None:
    """The placement with the fewest accumulation steps (at least the given ones) whose micro-batch fits."""
    memory = cost.training_memory
    assert memory is not None
    limit = usable_bytes(table.memory_gib)
    per_process = memory.global_batch // placement.processes
    if memory.global_batch % placement.processes:
        return None
    for steps in range(placement.accum_steps, per_process + 1):
        if per_process % steps:
            continue
        candidate = dataclasses.replace(placement, accum_steps=steps)
        peak = max(cost.peak_bytes, memory.peak(per_process // steps, placement.processes,
                                                placement.grad_checkpointing))
        if peak <= limit:
            return candidate, peak
    return None


def assess(cost: CellCost, table: DeviceTable) -> Feasibility:
    """The cell on its declared placement, with the remedies for whatever stops it from finishing or fitting."""
    found = evaluate(cost, Placement.of(cost.cell), table)
    if found.indivisible:
        found.time_remedies.append("choose processes x accum_steps that divide it")
    elif not found.finishes:
        found.time_remedies += time_remedies(cost, found, table)
    if not found.fits(table.memory_gib):
        found.memory_remedies += memory_remedies(cost, found, table)
    return found
