"""``bob plan``: what a grid will cost before it runs, and what bobkit saves against the paper's way of running it.

Per cell the plan counts images through forward and backward passes and turns them into device seconds with the
architecture's per-image forward time (:mod:`bobkit.rehearsal.throughput`; FLOPs from
:mod:`bobkit.rehearsal.profiles` where an input size was not measured):

=======================  ==================================================================================
extraction               ``n`` forward passes of frozen features; in bobkit a (backbone, dataset, split, size,
                         subset) is extracted once and served from the feature cache to every other cell
fine-tuning              ``epochs x n_train`` training images (``train_over_forward`` forward-pass times each) and
                         the evaluation's forward passes
linear probe             SGD: ``epochs x ceil(n / 256)`` steps; L-BFGS: ``probe_max_iter`` iterations; each at
                         least the device's measured step time, else its FLOPs at the fp32 matmul rate
attacks                  per image: a clean forward, and per epsilon FGSM's forward + backward + check or PGD's
                         ``steps`` forward + backward + check, in fp32 (``fp32_slowdown``)
detection                ``epochs x n_train`` training images of the trunk + FPN at the detector's padded input
                         (the heads are not counted) and ``n_val`` forward passes
=======================  ==================================================================================

Selections multiply the work: a list of ``lr`` trains each rate on the 80% of the training items left after holding
out a validation share, then the winner on all of them (:func:`selection_share`); ``probe_l2="auto"`` fits one probe
per value of its grid on each validation fold and refits the chosen one (:func:`probe_fit_sizes`).

The paper's way (:attr:`CellCost.paper_seconds`): every cell extracts its own features, trains its own classifier,
and every linear probe is the 90-epoch SGD probe. The grid as written is also costed with the L-BFGS probe
(:attr:`CellCost.lbfgs_seconds`).

Each training is counted once (:func:`shared_trainings`): a cell that needs a probe head or fine-tuned weights that
another cell of the grid trains (``Cell.needs`` / ``Cell.produces``: an OOD or robustness cell whose training equals
a classification cell's) is not charged for its training; it loads the artifact.

Peak memory per cell (an estimate from the meta-device counts): weights (4 bytes a parameter; 16 when trained
with AdamW: weights, gradients, two moments) plus the batch's activations (saved for the backward pass when
training; twice the largest activation when only inferring), halved for bf16 autocast. Training memory is kept
as a function of the micro-batch (:class:`~bobkit.rehearsal.feasibility.TrainingMemory`).

Each cell is then placed on the resources it declares (:mod:`bobkit.rehearsal.feasibility`): wall time on its
GPUs, requeues under its time limit with saved training state, memory per GPU at its micro-batch with and without
gradient checkpointing, CPU cores its input needs; :attr:`Plan.failures` are the cells that cannot finish or fit,
each with its remedies.

Training is identified by :attr:`Work.training_key` (backbone, data and recipe) and features by
:attr:`Work.share_key`: features are charged once per key (the feature cache); training is charged to every cell
that trains, and :attr:`Plan.trained_by` names the first cell of each training identity, so that a cost charged
once per training identity is one rule away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from bobkit.rehearsal.feasibility import Feasibility, TrainingMemory, assess
from bobkit.rehearsal.groups import DETECTION_DEFAULT_SIZE, architecture
from bobkit.rehearsal.profiles import Profile
from bobkit.rehearsal.throughput import DeviceTable
from bobkit.tasks.blocks import finetune_params

if TYPE_CHECKING:
    from bobkit.batch.grid import Cell

#: Items per split of datasets the registry does not size (split -> images), from their documentation.
EXTRA_SIZES: dict[str, dict[str, int]] = {
    "roxford5k": {"database": 4993, "query": 70},
    "rparis6k": {"database": 6322, "query": 70},
    # GLDv2 retrieval (Weyand et al. 2020, CVPR): 761,757 index images; the 1,129 test images that have landmarks
    # in retrieval_solution_v2.1.csv are the queries (bobkit.data.sources.load_gldv2_retrieval reads only those).
    "gldv2": {"database": 761757, "query": 1129},
    # INRIA Copydays (Jegou et al. 2008, ECCV): 157 originals; 3,055 attacked copies (all of its blocks).
    "copydays": {"database": 157, "query": 3055},
    "coco2017": {"train": 118287, "val": 5000},
    "sim10k": {"train": 9000, "val": 1000},
    "cityscapes": {"train": 2975, "val": 500},
    "visda2017": {"train": 137157, "test": 15240, "validation": 55388},
}
#: Parameters of a fine-tuning recipe: two cells with equal backbone, training data and these train equal weights.
TRAINING_RECIPE = (*(q.name for q in finetune_params(lr_selection=True)), "batch_size", "seed", "image_size",
                   "label_fraction", "shots_per_class", "train_split")
#: The paper's probe: SGD, 90 epochs, batch 256.
PAPER_PROBE_EPOCHS = 90
PROBE_BATCH = 256
#: Detection: typical image shape (width, height) per dataset, as in the architecture checks.
DETECTION_SHAPES = {"coco2017": (640, 480), "sim10k": (1914, 1052), "cityscapes": (2048, 1024)}
GIB = 2**30


@dataclass
class Work:
    """One piece of a cell's work: forward and backward images, device seconds, images through the input pipeline.

    ``training`` work runs on every process of a data-parallel cell and resumes from saved training state; the
    rest runs in one process and cannot resume part-way.
    """

    what: str
    forward: float = 0.0
    backward: float = 0.0
    seconds: float = 0.0
    share_key: tuple | None = None  # extractions bobkit serves from its cache to later cells
    training_key: tuple | None = None  # a fine-tuning: what identifies the weights it ends with
    training: bool = False  # trains on the cell's processes (fine-tuning, detector training)
    decoded: float = 0.0  # images decoded and prepared on the CPU
    augmented: bool = False  # through the recipe's training augmentation
    cached: bool = False  # set by plan_grid: served from the feature cache (an earlier cell extracted it)
    trains: bool = False  # the cell's training (fine-tuning or probe): not charged when another cell provides it


@dataclass
class CellCost:
    """The plan of one cell."""

    cell: Cell
    work: list[Work] = field(default_factory=list)
    images: int = 0
    peak_bytes: float = 0.0  # besides training: inference and attack batches
    training_memory: TrainingMemory | None = None
    probe_seconds: float = 0.0  # the grid's probe, inside work
    paper_probe_seconds: float = 0.0
    lbfgs_probe_seconds: float = 0.0
    probe_fits: int = 0  # probes the grid's probe fits (an L2 selection fits several; the paper's way one)
    sources: set[str] = field(default_factory=set)
    subsets: list[tuple[str, str, str, int, int]] = field(default_factory=list)  # dataset, split, param, n, of
    seconds: float = 0.0  # filled by plan_grid: with feature sharing
    forward_run: float = 0.0  # filled by plan_grid: forward images bobkit runs (cache hits excluded)
    feasibility: Feasibility | None = None  # filled by plan_grid: the cell on its declared resources
    trained_by: str | None = None  # filled by plan_grid: the cell whose artifact replaces this cell's training

    @property
    def forward(self) -> float:
        return sum(w.forward for w in self.work)

    @property
    def backward(self) -> float:
        return sum(w.backward for w in self.work)

    @property
    def forward_paper(self) -> float:
        """Forward images when the cell extracts everything itself (the paper's way)."""
        return self.forward

    @property
    def lbfgs_seconds(self) -> float:
        """As written, with the L-BFGS probe where the cell fits a probe (a cell using another cell's fits none)."""
        if self.trained_by is not None:
            return self.seconds
        return self.seconds - self.probe_seconds + self.lbfgs_probe_seconds

    @property
    def paper_seconds(self) -> float:
        """Every extraction done by this cell itself, and the 90-epoch SGD probe."""
        return sum(w.seconds for w in self.work) - self.probe_seconds + self.paper_probe_seconds


@dataclass
class Plan:
    """Costs of every cell, the device table they came from and the cells that could not be costed."""

    table: DeviceTable
    cells: list[CellCost]
    skipped: list[tuple[Cell, str]] = field(default_factory=list)
    #: Fine-tunings that repeat one an earlier cell already ran (same backbone, data and recipe): cell, seconds.
    repeated_training: list[tuple[Cell, float]] = field(default_factory=list)
    #: The first cell (grid order) that trains each training identity (:attr:`Work.training_key`).
    trained_by: dict[tuple, Cell] = field(default_factory=dict)
    #: Trainings not run because another cell's artifact is used instead: cell, seconds saved.
    shared_training: list[tuple[Cell, float]] = field(default_factory=list)

    def total(self, attr: str) -> float:
        return sum(getattr(c, attr) for c in self.cells)

    @property
    def lbfgs_seconds(self) -> float:
        """The grid as written, with the L-BFGS probe instead of the SGD one where it asks for SGD."""
        return sum(c.lbfgs_seconds for c in self.cells)

    @property
    def cannot_finish(self) -> list[CellCost]:
        """Cells that cannot finish on their resources under their time limit and ``max_requeues``."""
        return [c for c in self.cells if c.feasibility is not None and not c.feasibility.finishes]

    @property
    def over_memory(self) -> list[CellCost]:
        """Cells whose peak memory per GPU at their micro-batch is more than the device has."""
        return [c for c in self.cells if c.feasibility is not None and not c.feasibility.fits(self.table.memory_gib)]

    @property
    def feasible(self) -> bool:
        """Every costed cell finishes and fits."""
        return not self.cannot_finish and not self.over_memory


# ----------------------------------------------------------------------------------------------------------------
# Sizes
# ----------------------------------------------------------------------------------------------------------------


def split_size(dataset: str, split: str, limit: int | None = None) -> int:
    """Images of ``dataset[split]`` a cell reads (at most ``limit``)."""
    from bobkit.data import dataset_info, dataset_names

    if dataset in dataset_names():
        counts = dataset_info(dataset).num_items
    elif dataset in EXTRA_SIZES:
        counts = EXTRA_SIZES[dataset]
    else:
        raise KeyError(f"no split sizes known for dataset {dataset!r}")
    if split not in counts:
        raise KeyError(f"dataset {dataset!r} has no split {split!r} (splits: {', '.join(counts)})")
    n = int(counts[split])
    return n if limit is None else min(n, int(limit))


def num_classes(dataset: str) -> int:
    from bobkit.data import dataset_info, dataset_names

    return dataset_info(dataset).num_classes if dataset in dataset_names() else 12


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------

ProfileFn = Callable[..., Profile]


@dataclass
class _Context:
    table: DeviceTable
    profile: ProfileFn
    cost: CellCost
    p: dict[str, Any]

    @property
    def backbone(self) -> str:
        return self.p["backbone"]

    @property
    def family(self) -> str:
        from bobkit.backbones import get_backbone

        return get_backbone(self.backbone).family

    def features(self, image_size: int | None = None) -> Profile:
        return self.profile(self.backbone, int(image_size or self.p["image_size"]))

    def forward_seconds(self, prof: Profile, image_size: int | None) -> float:
        seconds, source = self.table.forward_seconds(architecture(self.backbone), self.family, image_size,
                                                     prof.gflops)
        self.cost.sources.add(source)
        return seconds

    def reads(self, dataset: str, split: str, param: str | None = None) -> int:
        """Images of ``dataset[split]`` the cell reads, at most ``p[param]``; a subset is noted for the report."""
        full = split_size(dataset, split)
        limit = self.p.get(param) if param else None
        n = full if limit is None else min(full, int(limit))
        if n < full:
            self.cost.subsets.append((dataset, split, str(param), n, full))
        return n

    def extraction(self, dataset: str, split: str, param: str, what: str) -> int:
        """Frozen-feature forward passes of ``dataset[split]`` (at most ``p[param]``), keyed for sharing as
        bobkit's feature cache keys them (backbone, dataset, split, subset, size, seed)."""
        limit = self.p.get(param)
        n = self.reads(dataset, split, param)
        prof = self.features()
        key = (self.backbone, dataset, split, limit, self.p["image_size"], self.p.get("seed", 0))
        seconds = n * self.forward_seconds(prof, self.p["image_size"])
        self.cost.work.append(Work(what, forward=n, seconds=seconds, share_key=key, decoded=n))
        self.inference_memory(prof)
        return n

    def inference_memory(self, prof: Profile) -> None:
        batch = max(int(self.p.get("batch_size", 64)), 256)  # forward-only batches: >= the GPU's sweet spot
        act = 2 * prof.peak_activation_mb * 2**20 * batch * self._act_scale
        self.peak(prof.params * 4 + act)

    def training_memory(self, prof: Profile, batch: int, trained_params: bool = True) -> None:
        """Training's memory per GPU as a function of its micro-batch (``batch`` is the global batch)."""
        scale = self.table.activation_scale or self._act_scale
        self.cost.training_memory = TrainingMemory(
            params=prof.params, trained=trained_params, image_bytes=prof.saved_mb * 2**20 * scale,
            checkpointed_image_bytes=prof.checkpointed_mb * 2**20 * scale, global_batch=batch)

    def attack_memory(self, prof: Profile, batch: int) -> None:
        """Attacks keep a batch's fp32 activations for the input gradient (one process, frozen weights)."""
        self.peak(prof.params * 4 + prof.input_grad_mb * 2**20 * batch)

    @property
    def _act_scale(self) -> float:
        return 0.5 if self.table.precision in ("bf16", "fp16") else 1.0

    def peak(self, nbytes: float) -> None:
        self.cost.peak_bytes = max(self.cost.peak_bytes, nbytes)

    def finetune(self, n_train: int, n_eval: int) -> None:
        prof = self.features()
        fwd = self.forward_seconds(prof, self.p["image_size"])
        steps = round(self.p["epochs"] * n_train * selection_share(self.p.get("lr")))
        recipe = tuple(_hashable(self.p.get(k, "train" if k == "train_split" else None)) for k in TRAINING_RECIPE)
        self.cost.work.append(Work("fine-tuning", forward=steps, backward=steps,
                                   seconds=steps * fwd * self.table.train_over_forward,
                                   training_key=(self.backbone, self.p["dataset"], n_train, recipe), trains=True,
                                   training=True, decoded=steps, augmented=bool(self.p.get("augment"))))
        self.cost.work.append(Work("evaluation", forward=n_eval, seconds=n_eval * fwd, decoded=n_eval))
        self.training_memory(prof, int(self.p["batch_size"]))

    def probe(self, n_fit: int, n_classes: int, solver: str) -> None:
        """The grid's probe (``solver``), with the SGD-90 and L-BFGS alternatives recorded for comparison."""
        dim = self.features().feature_dim
        fits = probe_fit_sizes(n_fit, self.p.get("probe_l2", "auto"))
        epochs, iterations = int(self.p.get("probe_epochs", PAPER_PROBE_EPOCHS)), int(self.p.get("probe_max_iter", 20))
        sgd = sum(self.sgd_seconds(n, dim, n_classes, epochs) for n in fits)
        lbfgs = sum(self.lbfgs_seconds(n, dim, n_classes, iterations) for n in fits)
        chosen = sgd if solver == "sgd" else lbfgs
        self.cost.work.append(Work(f"{solver} probe", seconds=chosen, trains=True))
        self.cost.probe_seconds += chosen
        self.cost.probe_fits += len(fits)
        self.cost.paper_probe_seconds += self.sgd_seconds(n_fit, dim, n_classes, PAPER_PROBE_EPOCHS)
        self.cost.lbfgs_probe_seconds += lbfgs

    def sgd_seconds(self, n: int, dim: int, n_classes: int, epochs: int) -> float:
        step = max(self.table.sgd_step_seconds, 6 * PROBE_BATCH * dim * n_classes / (self.table.fp32_tflops * 1e12))
        return epochs * math.ceil(n / PROBE_BATCH) * step

    def lbfgs_seconds(self, n: int, dim: int, n_classes: int, iterations: int) -> float:
        # an iteration evaluates the loss and gradient about 1.25 times (line search): 4 N D C FLOPs each
        step = max(self.table.lbfgs_iteration_seconds, 1.25 * 4 * n * dim * n_classes / (self.table.fp32_tflops * 1e12))
        return iterations * step


# ----------------------------------------------------------------------------------------------------------------
# Tasks
# ----------------------------------------------------------------------------------------------------------------


def _classification(ctx: _Context) -> None:
    p = ctx.p
    n_train = ctx.reads(p["dataset"], "train", "max_train")
    n_test = ctx.reads(p["dataset"], "test", "max_test")
    ctx.cost.images = n_train + n_test
    if p["protocol"] == "finetune":
        ctx.finetune(_kept(p, n_train), n_test)
        return
    ctx.extraction(p["dataset"], "train", "max_train", "features (train)")
    ctx.extraction(p["dataset"], "test", "max_test", "features (test)")
    ctx.probe(_kept(p, n_train), num_classes(p["dataset"]), p["probe_solver"])


def _hashable(value: Any) -> Any:
    """A parameter value as a dict key part (an ``lr`` list becomes a tuple)."""
    return tuple(value) if isinstance(value, list) else value


def selection_share(lr: Any) -> float:
    """Training work of a cell relative to one fit: a list of ``k`` learning rates trains each on the fit share of
    the training items (:data:`bobkit.tasks.training.VALIDATION_FRACTION` held out), then the winner on all."""
    from bobkit.tasks.training import VALIDATION_FRACTION, learning_rates

    rates = learning_rates(lr) if lr is not None else [0.0]
    return 1.0 if len(rates) == 1 else len(rates) * (1 - VALIDATION_FRACTION) + 1


def probe_fit_sizes(n_fit: int, l2: Any) -> list[int]:
    """Items of every probe fit a cell makes: one fit for a fixed ``l2``; for ``"auto"``, each value of
    :data:`~bobkit.tasks.training.PROBE_L2_GRID` on each validation fold's fit items, then the refit on all
    (one 80/20 split when it holds out :data:`~bobkit.tasks.training.MIN_VALIDATION_ITEMS`, else five folds)."""
    from bobkit.tasks.training import MIN_VALIDATION_ITEMS, PROBE_L2_GRID, VALIDATION_FRACTION

    if l2 != "auto":
        return [n_fit]
    held_out = round(VALIDATION_FRACTION * n_fit)
    folds = 1 if held_out >= MIN_VALIDATION_ITEMS else max(2, round(1 / VALIDATION_FRACTION))
    fold_fit = n_fit - held_out if folds == 1 else n_fit - n_fit // folds
    return [fold_fit] * (len(PROBE_L2_GRID) * folds) + [n_fit]


def _kept(p: dict[str, Any], n_train: int) -> int:
    """Training items a low-shot rule keeps."""
    if p.get("label_fraction") is not None:
        return max(1, round(p["label_fraction"] * n_train))
    if p.get("shots_per_class") is not None:
        return min(n_train, p["shots_per_class"] * num_classes(p["dataset"]))
    return n_train


def _retrieval(ctx: _Context) -> None:
    p = ctx.p
    if p["protocol"] != "class_folder":  # revisited, gldv2, copydays: a database and queries of their own
        n = ctx.reads(p["dataset"], "database", "max_samples") + split_size(p["dataset"], "query")
        ctx.cost.images = n
        prof = ctx.features()
        ctx.cost.work.append(Work("features (uncached)", forward=n, seconds=n * ctx.forward_seconds(
            prof, p["image_size"]), decoded=n))
        ctx.inference_memory(prof)
        return
    ctx.cost.images = ctx.extraction(p["dataset"], p["split"], "max_samples", f"features ({p['split']})")


def _ood(ctx: _Context) -> None:
    p = ctx.p
    n_train = ctx.reads(p["dataset"], p["train_split"], "max_train")
    n_test = ctx.reads(p["dataset"], p["test_split"], "max_test")
    images = n_train + n_test
    if p["protocol"] == "finetune":
        ctx.finetune(n_train, n_test)
    else:
        ctx.extraction(p["dataset"], p["train_split"], "max_train", "features (source train)")
        ctx.extraction(p["dataset"], p["test_split"], "max_test", "features (source test)")
        ctx.probe(n_train, num_classes(p["dataset"]), p.get("probe_solver", "lbfgs"))
    prof = ctx.features()
    fwd = ctx.forward_seconds(prof, p["image_size"])
    for target in p["targets"]:
        name, _, split = str(target).partition(":")
        if name == "corruptions":
            n = p["max_corrupted"] * len(p["corruptions"]) * len(p["severities"])
            ctx.cost.work.append(Work("corruptions", forward=n, seconds=n * fwd, decoded=n))
            images += p["max_corrupted"]
            continue
        if p["protocol"] == "finetune":
            n = ctx.reads(name, split or p["target_split"], "max_target")
            ctx.cost.work.append(Work(f"target {name}", forward=n, seconds=n * fwd, decoded=n))
        else:
            n = ctx.extraction(name, split or p["target_split"], "max_target", f"features (target {name})")
        images += n
    ctx.cost.images = images


def _robustness(ctx: _Context) -> None:
    p = ctx.p
    n_train = ctx.reads(p["dataset"], p["train_split"], "max_train")
    n_test = ctx.reads(p["dataset"], p["test_split"], "max_test")
    ctx.cost.images = n_train + n_test
    held_out_of_training = p.get("calibration_split") in (None, p["train_split"])
    n_fit = n_train - round(p["calibration_fraction"] * n_train) if held_out_of_training else n_train
    if p["protocol"] == "finetune":
        ctx.finetune(n_fit, n_test + n_train - n_fit)
    else:
        ctx.extraction(p["dataset"], p["train_split"], "max_train", "features (train)")
        ctx.extraction(p["dataset"], p["test_split"], "max_test", "features (test)")
        ctx.probe(n_fit, num_classes(p["dataset"]), p.get("probe_solver", "lbfgs"))
    prof = ctx.features()
    fwd = ctx.forward_seconds(prof, p["image_size"]) * ctx.table.fp32_slowdown.get(ctx.family, 1.0)
    n = split_size(p["dataset"], p["test_split"], p["max_attack"])
    eps = len(p["epsilons"])
    passes = {"fgsm": eps * 1, "pgd": eps * int(p["pgd_steps"])}
    backward = sum(n * passes[a] for a in p["attacks"])
    forward = backward + sum(n * (1 + eps) for _ in p["attacks"])  # clean pass + a check per epsilon
    ctx.cost.work.append(Work("attacks (fp32)", forward=forward, backward=backward,
                              seconds=(forward + 2 * backward) * fwd, decoded=n))
    ctx.attack_memory(prof, int(p["batch_size"]))


def _detection(ctx: _Context) -> None:
    from bobkit.rehearsal.architectures import detector_size

    p = ctx.p
    size = int(p.get("image_size") or DETECTION_DEFAULT_SIZE)
    short, max_size = detector_size(p["dataset"], size)
    shape = DETECTION_SHAPES.get(p["dataset"], (short, short))
    prof = ctx.profile(ctx.backbone, short, (max_size, shape))
    fwd = ctx.forward_seconds(prof, None)  # a detector input is never a measured classification size
    n_train = ctx.reads(p["dataset"], "train", "n_train")
    n_val = ctx.reads(p.get("eval_dataset") or p["dataset"], "val", "n_val")
    trains_trunk = p["protocol"] != "frozen"
    steps = round(p["epochs"] * n_train * selection_share(p.get("lr")))
    per_image = fwd * (ctx.table.train_over_forward if trains_trunk else 1.0)
    ctx.cost.work.append(Work(f"detector training ({prof.height}x{prof.width})", forward=steps,
                              backward=steps if trains_trunk else 0, seconds=steps * per_image, training=True,
                              decoded=steps))
    ctx.cost.work.append(Work("detector evaluation", forward=n_val, seconds=n_val * fwd, decoded=n_val))
    ctx.cost.images = n_train + n_val
    ctx.training_memory(prof, int(p["batch_size"]), trained_params=trains_trunk)


TASK_COSTS: dict[str, Callable[[_Context], None]] = {
    "classification": _classification, "retrieval": _retrieval, "ood": _ood, "robustness": _robustness,
    "detection": _detection,
}


# ----------------------------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------------------------


def cell_cost(cell: Cell, table: DeviceTable, profile: ProfileFn) -> CellCost:
    """The work, images and peak memory of one cell (``seconds`` is set by :func:`plan_grid`)."""
    cost = CellCost(cell)
    if cell.task not in TASK_COSTS:
        raise KeyError(f"no cost model for task {cell.task!r}")
    TASK_COSTS[cell.task](_Context(table, profile, cost, cell.params))
    return cost


def plan_grid(cells: Iterable[Cell], table: DeviceTable, profile: ProfileFn | None = None) -> Plan:
    """Cost every cell; shared extractions are charged once, to the first cell that needs them (grid order); place
    each cell on its declared resources (:attr:`CellCost.feasibility`).

    Cells that cannot be costed (a backbone without a loader, a dataset of unknown size) are listed in
    :attr:`Plan.skipped` with the reason.
    """
    if profile is None:
        from bobkit.rehearsal.profiles import profile as profile_fn

        profile = profile_fn
    cells = list(cells)
    plan = Plan(table, [])
    seen: set[tuple] = set()
    shared = shared_trainings(cells)
    for cell in cells:
        try:
            cost = cell_cost(cell, table, profile)
        except (KeyError, ValueError, RuntimeError) as exc:
            plan.skipped.append((cell, f"{type(exc).__name__}: {exc}"))
            continue
        cost.trained_by = shared.get(cell.run_key)
        for work in cost.work:
            if work.trains and cost.trained_by is not None:
                plan.shared_training.append((cell, work.seconds))  # the producer's artifact is loaded instead
                work.cached = True  # not run by this cell
                if work.training:
                    cost.training_memory = None
                continue
            if work.training_key is not None:
                if work.training_key in plan.trained_by:
                    plan.repeated_training.append((cell, work.seconds))
                plan.trained_by.setdefault(work.training_key, cell)
            if work.share_key is not None and work.share_key in seen:
                work.cached = True  # served from the feature cache
                continue
            if work.share_key is not None:
                seen.add(work.share_key)
            cost.seconds += work.seconds
            cost.forward_run += work.forward
        cost.feasibility = assess(cost, table)
        plan.cells.append(cost)
    return plan


def shared_trainings(cells: Iterable[Cell]) -> dict[str, str]:
    """Run key -> label of the cell whose artifact (probe head, fine-tuned weights) a cell uses instead of training.

    The provider of an artifact is the cell that declares it produced, else the first cell that needs it (it trains
    and publishes it), as the batch runs them (:func:`bobkit.batch.grid.artifact_links`).
    """
    cells = list(cells)
    providers: dict[Any, Cell] = {}
    for cell in cells:
        for ref in getattr(cell, "produces", ()):
            providers.setdefault(ref, cell)
    for cell in cells:
        for ref in getattr(cell, "needs", ()):
            providers.setdefault(ref, cell)
    out: dict[str, str] = {}
    for cell in cells:
        for ref in getattr(cell, "needs", ()):
            if providers[ref].run_key != cell.run_key:
                out[cell.run_key] = providers[ref].label
    return out
