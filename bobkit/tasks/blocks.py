"""Parameter and metric declarations several tasks share, declared once (no task imports another for them).

Registries are asked lazily (backbones, datasets, CUDA), so importing this module stays cheap.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable, Iterable

from bobkit.tasks.contract import MAX_SEED, MEMORY_NOTE, Metric, Param, descriptor

#: The offline default backbone: real ImageNet weights that ship in a registry package.
PACKAGED_BACKBONE = "mobilenetv2_100.packaged_tv_in1k"
#: Upper bound of item counts (train / test / database sizes): above ImageNet-1k's 1.28 M training images.
MAX_ITEMS = 2_000_000
#: Upper bound of square input sides of the classifiers (the paper: 224; 1024 leaves room for 384 and 512 px).
MAX_IMAGE_SIZE = 1024
MAX_BATCH_SIZE = 4096
#: L-BFGS iterations of the linear probe: the median budget that held-out validation splits pick over pretrained
#: and random-init backbones (benchmarks/probe_solver.py). Classification, OOD and robustness share it.
PROBE_MAX_ITER = 20
#: The probe's solvers (what :func:`bobkit.tasks.training.fit_probe` accepts: its ``PROBE_SOLVERS``).
PROBE_SOLVERS = ("lbfgs", "sgd")
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"
#: Split and file-name-like values become cache paths: letters, digits, ``_``, ``-`` and ``.`` only, no ``..``.
NAME_PATTERN = r"(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9_.-]*"


# ------------------------------------------------------------------------------------------------------------
# Registry lookups (each raises ValueError naming the value and its close matches)
# ------------------------------------------------------------------------------------------------------------


def check_backbone(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is in the backbone registry (`bob backbones`)."""
    from bobkit.backbones import get_backbone

    get_backbone(name)


def dataset_lookup(extra: Iterable[str] = (), *, registry: bool = True,
                   folder_file: str | None = None) -> Callable[[str], None]:
    """A lookup accepting :func:`bobkit.data.dataset_names` (when ``registry``), the ``extra`` names and, when
    ``folder_file`` is given, a declared COCO-format dataset or an existing folder holding that file (a user's own
    COCO-format dataset)."""
    extra = tuple(extra)

    def check(name: str) -> None:
        known = list(extra)
        if registry:
            from bobkit.data import dataset_names

            known = sorted({*dataset_names(), *known})
        if folder_file:
            from bobkit.data.user import coco_dataset_names

            known = sorted({*coco_dataset_names(), *known})
        if name in known or (folder_file and (Path(name) / folder_file).is_file()):
            return
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        folder = f" or a folder holding {folder_file}" if folder_file else ""
        raise ValueError(f"unknown dataset {name!r}{hint} (known: `bob data`{folder})")

    return check


def check_device_here(device: str) -> None:
    """Raise ``ValueError`` when ``device`` names a CUDA device this machine does not have."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ValueError("CUDA is not available on this machine (use device='auto' or 'cpu')")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(f"this machine has {torch.cuda.device_count()} CUDA device(s)")


def _precisions() -> tuple[str, ...]:
    from bobkit.features.device import PRECISIONS

    return PRECISIONS


# ------------------------------------------------------------------------------------------------------------
# Parameters
# ------------------------------------------------------------------------------------------------------------


def backbone_param(default: str = PACKAGED_BACKBONE) -> Param:
    """The backbone under test."""
    return Param("backbone", str, default, "registry name (`bob backbones`)", kind="backbone", lookup=check_backbone)


def dataset_param(default: str, doc: str, lookup: Callable[[str], None], name: str = "dataset",
                  nullable: bool = False) -> Param:
    """A dataset name checked against the registries the task reads."""
    return Param(name, str, default, doc, lookup=lookup, nullable=nullable)


def image_size_param(default: int | None = 64, high: int = MAX_IMAGE_SIZE,
                     doc: str = "square input side in pixels (the backbone's own normalisation)") -> Param:
    """The input side fed to the backbone."""
    return Param("image_size", int, default, doc, low=16, high=high, high_note=MEMORY_NOTE)


def size_param(name: str, default: int | None, doc: str, nullable: bool = True, high: int = MAX_ITEMS) -> Param:
    """An item count (``None``: all items, when ``nullable``)."""
    return Param(name, int, default, doc, low=1, high=high, high_note=MEMORY_NOTE, nullable=nullable)


def split_param(name: str, default: str, doc: str) -> Param:
    """A split name (it becomes part of cache paths)."""
    return Param(name, str, default, doc, pattern=NAME_PATTERN)


def protocol_param(default: str, choices: tuple[str, ...], doc: str) -> Param:
    """The task's protocol."""
    return Param("protocol", str, default, doc, choices=choices)


def batch_size_param(default: int = 64, kind: str = "setting",
                     doc: str = "training batch (forward-only passes may use larger batches)",
                     high: int = MAX_BATCH_SIZE) -> Param:
    """The batch size (the runner halves it after an out-of-memory error)."""
    return Param("batch_size", int, default, doc, kind=kind, low=1, high=high, high_note=MEMORY_NOTE)


def seed_param() -> Param:
    """The seed: sampling, initialisation, shuffling."""
    return Param("seed", int, 0, "seeds sampling, initialisation and shuffling", kind="seed", low=0, high=MAX_SEED)


def device_params(num_threads: int | None = None,
                  threads_doc: str = "CPU threads for torch (None: $BOB_NUM_THREADS or torch's default)",
                  ) -> tuple[Param, ...]:
    """``device`` and ``num_threads``: where the cell runs."""
    return (
        Param("device", str, "auto", "auto | cpu | cuda | cuda:N", kind="execution", pattern=DEVICE_PATTERN,
              lookup=check_device_here, machine_dependent=True),
        Param("num_threads", int, num_threads, threads_doc, kind="execution", low=1, high=1024),
    )


#: Execution parameters (how fast, not what), the same in every task with a model: None / "auto" take the
#: device's measured defaults (:func:`bobkit.features.device.resolve_execution`).
EXECUTION: tuple[Param, ...] = (
    Param("precision", str, "auto", "autocast precision (auto: bf16 on a GPU, fp32 on CPU)", kind="execution",
          choices=_precisions),
    Param("channels_last", bool, None, "channels_last memory format (None: on for CNNs)", kind="execution"),
    Param("compile", bool, False, "torch.compile the model", kind="execution"),
    Param("grad_checkpointing", bool, False, "recompute activations in backward (less memory)", kind="execution"),
    Param("loader_workers", int, None, "threads decoding images ahead (None: the device's default)",
          kind="execution", low=0, high=64),
)

#: Set by the runner: where the task writes its output (``task_metrics.json``) for the sidecar.
OUTPUT_DIR = Param("output_dir", str, None, "set by `bob run`: where the metrics are handed to the runner",
                   kind="execution")
#: Set by the runner for a task that declares it: the cell's training state folder (``<run dir>/train-state``), which
#: a rerun of the same run key resumes from (:mod:`bobkit.tasks.train_state`); the runner removes it once the cell is
#: recorded complete. ``None`` (a lone notebook): nothing is kept.
STATE_DIR = Param("state_dir", str, None, "set by `bob run`: the training state folder a rerun resumes from (None: "
                  "none kept)", kind="execution")
#: How often a training loop saves its state (it also saves at every stop signal: SIGTERM, SIGUSR2).
STATE_EVERY = Param("state_every_min", float, 5.0, "minutes between saves of the training state (0: every step); "
                    "it is also saved when the scheduler signals a stop", kind="execution", low=0.0, high=1440.0)


def probe_params() -> tuple[Param, ...]:
    """The linear probe's penalty and L-BFGS budget (classification, OOD and robustness)."""
    return (
        Param("probe_l2", float, "auto", "linear probe: L2 penalty 0.5 * l2 * ||W||^2; auto: chosen on held-out "
              "training items", low=0.0, low_open=True, words=("auto",)),
        Param("probe_max_iter", int, PROBE_MAX_ITER, "linear probe: L-BFGS iterations", low=1, high=10_000),
    )


#: ``batch_size`` of the tasks that fine-tune: the global batch of an optimizer step.
TRAINING_BATCH_DOC = "global training batch of one step (accum_steps splits it); forward-only passes may use larger"


def probe_solver_params() -> tuple[Param, Param, Param]:
    """The probe's solver and the SGD solver's budget (classification, OOD and robustness: a cell whose probe
    equals a classification cell's uses that cell's probe head, :mod:`bobkit.tasks.trained`)."""
    return (
        Param("probe_solver", str, "lbfgs", "linear probe solver (sgd: the paper's 90-epoch recipe)",
              choices=PROBE_SOLVERS),
        Param("probe_epochs", int, 90, "linear probe, sgd solver: epochs", low=1, high=1000),
        Param("probe_lr", float, 0.1, "linear probe, sgd solver: learning rate", low=0.0, low_open=True),
    )


def finetune_params(lr_selection: bool = False) -> tuple[Param, ...]:
    """End-to-end fine-tuning: AdamW with warm-up + cosine, optional layer-wise lr decay, and the recipe's input
    and regularisation (:mod:`bobkit.tasks.recipe`: timm's augmentation, mixup/cutmix, label smoothing,
    drop-path), all off by default; with ``lr_selection`` the task takes a list of learning rates and selects one
    on held-out training items. ``accum_steps`` (how the global ``batch_size`` is split) is an execution setting.
    Rules between them: :func:`bobkit.tasks.recipe.check_recipe`."""
    return (
        Param("epochs", int, 1, "fine-tuning epochs (the paper: 100)", low=1, high=1000),
        lr_param(lr_selection),
        Param("weight_decay", float, 0.05, "fine-tuning: AdamW weight decay", low=0.0),
        Param("layer_decay", float, None, "fine-tuning: layer-wise lr decay, e.g. 0.75 as in the paper; None disables",
              low=0.0, low_open=True, high=1.0),
        Param("warmup_epochs", float, 0.0, "fine-tuning: linear warm-up epochs before the cosine decay", low=0.0),
        Param("warmup_lr", float, 0.0, "fine-tuning: learning rate the warm-up starts from", low=0.0),
        Param("min_lr", float, 0.0, "fine-tuning: learning rate the cosine decay ends at", low=0.0),
        Param("augment", bool, False, "fine-tuning input through timm's create_transform(is_training=True): "
              "random-resized crop, flip and the options below; False: plain resize, as for frozen features"),
        Param("rrc_scale", list, [0.08, 1.0], "augment: random-resized crop area range [low, high]", item=float,
              low=0.0, low_open=True, high=1.0, min_items=2),
        Param("hflip", float, 0.5, "augment: horizontal flip probability", low=0.0, high=1.0),
        Param("auto_augment", str, None, "augment: timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1 (the paper's "
              "RandAugment); None: off", lookup=_check_auto_augment),
        Param("color_jitter", float, None, "augment: colour jitter strength (timm turns it off with auto_augment); "
              "None: off", low=0.0),
        Param("re_prob", float, 0.0, "augment: random erasing probability (per-pixel noise)", low=0.0, high=1.0),
        Param("mixup", float, 0.0, "fine-tuning: mixup alpha (timm's Mixup); 0: off", low=0.0),
        Param("cutmix", float, 0.0, "fine-tuning: cutmix alpha (with mixup: one of the two per step); 0: off",
              low=0.0),
        Param("label_smoothing", float, 0.0, "fine-tuning: label smoothing", low=0.0, high=1.0, high_open=True),
        Param("drop_path", float, 0.0, "fine-tuning: stochastic depth rate (timm's drop_path_rate)", low=0.0,
              high=1.0, high_open=True),
        Param("accum_steps", int, 1, "gradient accumulation: the global batch_size is split into this many equal "
              "micro-batches, same gradient (BatchNorm normalises each micro-batch)", kind="execution", low=1,
              high=MAX_BATCH_SIZE),
    )


def _check_auto_augment(value: str) -> None:
    from bobkit.tasks.recipe import check_auto_augment

    check_auto_augment(value)


def lr_param(selection: bool, default: float = 1e-3) -> Param:
    """The peak AdamW learning rate; with ``selection`` also a list, the one that validates best is used."""
    if selection:
        return Param("lr", float, default, "fine-tuning: peak AdamW learning rate; a list: the one that validates "
                     "best on held-out training items", low=0.0, low_open=True, or_list=True)
    return Param("lr", float, default, "fine-tuning: peak AdamW learning rate", low=0.0, low_open=True)


# ------------------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------------------

#: Run descriptors every task with a model reports (timings, sizes, what ran, peak memory).
COMMON_DESCRIPTORS: tuple[Metric, ...] = (
    descriptor("*_seconds", "wall-clock seconds of a stage"),
    descriptor("exec_*", "execution setting that ran (1.0: on)"),
    descriptor("peak_*", "peak memory of the run"),
    descriptor("*_mb", "memory in MiB"),
    descriptor("threads", "torch intra-op threads used"),
    descriptor("feature_cache_hit", "1.0 when every frozen feature came from the cache"),
    descriptor("n_*", "item counts (train, test, queries, database, ...)"),
    descriptor("selected_*", "a value chosen on held-out training items (probe L2, learning rate)"),
    descriptor("fallback_*", "a value used where nothing could be held out to choose it (one item per class)"),
)


def accuracy_metrics(primary: bool = True) -> tuple[Metric, ...]:
    """Top-1 / top-5 accuracy, macro-F1 and NLL of a classifier on the test split."""
    return (
        Metric("top1", "top-1 accuracy on the test split", primary=primary, n_items="n_test"),
        Metric("top5", "top-5 accuracy (more than 5 classes)", n_items="n_test"),
        Metric("macro_f1", "macro-averaged F1", n_items="n_test"),
        Metric("nll", "negative log-likelihood in nats", higher_is_better=False, n_items="n_test"),
        Metric("ece", "expected calibration error (15 bins)", higher_is_better=False, n_items="n_test"),
    )

