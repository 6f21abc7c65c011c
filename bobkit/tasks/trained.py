"""Trained classifiers as shared artifacts: a probe head or fine-tuned weights is trained once and used by every cell
whose training is the same.

A training's identity (:func:`probe_ref`, :func:`model_ref`) is what made it: backbone and weights, dataset, split
and the rules that pick its items (``max_train``, a low-shot rule, a held-out share), the recipe's parameters, seed,
image size, declared precision and the training code's fingerprint (:func:`probe_code`, :func:`model_code`). A
classification cell produces the artifact of its training; an OOD or robustness cell whose training is the same
declares it as needed (``TaskSpec.needs``), so the batch runs the producer first and the consumer loads the
artifact instead of training. A consumer that finds no artifact (a lone notebook, a producer outside the grid, a
damaged artifact set aside) trains and publishes it itself: the numbers are the same either way.

Probe heads (:func:`fitted_probe`): ``weight``, ``bias``, ``mean``, ``std`` of the
:class:`~bobkit.tasks.training.LinearProbe` in safetensors, with the L2 it used and how it was set in the meta.

Fine-tuned weights (:func:`publish_model`, :func:`load_model`, :func:`finetuned_weights`): a model's state dict
(the rank-0 ``JobResult.weights`` of :func:`bobkit.tasks.distributed.train`) in safetensors, with the job's record
(losses, selected lr, ...) in the meta.

Every load and publish is noted in the cell's ledger (:func:`bobkit.features.artifacts.note`), which the runner
keeps in the sidecar.

The fine-tune of every task (classification, OOD, robustness) goes through :func:`finetuned_model`: the weights of
the cell's :func:`model_ref` are loaded when an intact artifact exists, else trained by :func:`train_weights` and
published. Training is one job function, :func:`finetune_job`, run by :func:`bobkit.tasks.distributed.train` in
this process or, with ``$BOB_PROCESSES`` > 1, in that many data-parallel processes; it resumes from the cell's
``state_dir`` (:mod:`bobkit.tasks.train_state`: saved every ``state_every_min`` and on SIGTERM / SIGUSR2). The
job rebuilds its training items from the task's parameters through the task's ``training_items`` function (named,
never pickled), so a worker process reads exactly the items the cell would.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from bobkit.features import artifacts
from bobkit.features.artifacts import ArtifactRef, StoredArtifact, training_identity
from bobkit.features.extract import feature_code_version
from bobkit.tasks import blocks, common, distributed, recipe, train_state, training
from bobkit.tasks.contract import Metric, ParameterError, descriptor
from bobkit.tasks.training import LinearProbe, ProbeFit
from bobkit.utils.files import source_fingerprint

#: The tensors of a probe artifact.
PROBE_TENSORS = ("weight", "bias", "mean", "std")


# ----------------------------------------------------------------------------------------------------------------
# Identities
# ----------------------------------------------------------------------------------------------------------------


@cache
def probe_code() -> str:
    """Fingerprint of the code behind a probe head: the training module and the code that makes features."""
    return f"{source_fingerprint(training)}+{feature_code_version()}"


@cache
def model_code() -> str:
    """Fingerprint of the code behind fine-tuned weights: training, the recipe's input and loss, its state and
    data-parallel jobs, the fine-tune job (this module), the torch helpers, and the code that reads and transforms
    images."""
    import sys

    this = sys.modules[__name__]  # the fine-tune job lives here
    return f"{source_fingerprint(training, recipe, train_state, distributed, common, this)}+{feature_code_version()}"


def probe_recipe(p: Mapping[str, Any]) -> dict[str, Any]:
    """The probe parameters that change the head: solver, L2, and the solver's own budget (L-BFGS iterations, or
    SGD epochs and lr); a task without ``probe_solver`` fits L-BFGS."""
    solver = p.get("probe_solver", "lbfgs")
    recipe: dict[str, Any] = {"solver": solver, "l2": p["probe_l2"]}
    if solver == "sgd":
        recipe.update(epochs=p["probe_epochs"], lr=p["probe_lr"])
    else:
        recipe["max_iter"] = p["probe_max_iter"]
    return recipe


def finetune_recipe(p: Mapping[str, Any]) -> dict[str, Any]:
    """The fine-tuning parameters that change the weights: every setting of
    :func:`bobkit.tasks.blocks.finetune_params` (the one declaration of the recipe) and the global ``batch_size``.
    How the global batch is split (``accum_steps``, an execution parameter, like the process count) is not part of
    it: the runner's out-of-memory retry doubles it and the training stays the same recipe."""
    names = [q.name for q in blocks.finetune_params(lr_selection=True) if q.kind != "execution"] + ["batch_size"]
    return {name: p.get(name) for name in names}


def _subset(p: Mapping[str, Any], holdout: Mapping[str, Any] | None) -> dict[str, Any]:
    """The rules that pick the training items from the split."""
    subset = {"max_train": p.get("max_train"), "label_fraction": p.get("label_fraction"),
              "shots_per_class": p.get("shots_per_class")}
    if holdout is not None:
        subset["holdout"] = dict(holdout)
    return subset


def probe_ref(p: Mapping[str, Any], *, split: str = "train", holdout: Mapping[str, Any] | None = None) -> ArtifactRef:
    """The identity of the probe head a cell with parameters ``p`` fits on ``split`` (less a ``holdout``: e.g.
    ``{"fraction": 0.2, "seed": 0}`` held out for a temperature)."""
    return training_identity(
        "probe", backbone=p["backbone"], seed=p["seed"], dataset=p["dataset"], split=split,
        image_size=p.get("image_size"), subset=_subset(p, holdout), recipe=probe_recipe(p),
        precision=p.get("precision", "auto"), code=probe_code())


def model_ref(p: Mapping[str, Any], *, split: str = "train", holdout: Mapping[str, Any] | None = None) -> ArtifactRef:
    """The identity of the weights a cell with parameters ``p`` fine-tunes on ``split`` (less a ``holdout``)."""
    return training_identity(
        "model", backbone=p["backbone"], seed=p["seed"], dataset=p["dataset"], split=split,
        image_size=p.get("image_size"), subset=_subset(p, holdout), recipe=finetune_recipe(p),
        precision=p.get("precision", "auto"), code=model_code())


# ----------------------------------------------------------------------------------------------------------------
# Probe heads
# ----------------------------------------------------------------------------------------------------------------


def save_probe(ref: ArtifactRef, fit: ProbeFit, n_train: int) -> StoredArtifact:
    """Publish a fitted probe (its tensors, the L2 it used and how it was set, the items it was fitted on)."""
    probe = fit.probe
    tensors = {name: getattr(probe, name) for name in PROBE_TENSORS}
    meta = {"l2": fit.l2, "selected": fit.selected, "fallback": fit.fallback, "n_train": int(n_train),
            "validation_top1": {repr(k): v for k, v in fit.validation_top1.items()},
            "validation_nll": {repr(k): v for k, v in fit.validation_nll.items()}}
    return artifacts.publish(ref, tensors, meta)


def load_probe(stored: StoredArtifact, device: str | torch.device = "cpu") -> tuple[ProbeFit, int]:
    """The probe of a verified artifact on ``device``, and the number of items it was fitted on."""
    tensors = stored.load_tensors()
    missing = [name for name in PROBE_TENSORS if name not in tensors]
    if missing:
        raise ValueError(f"probe artifact {stored.path} lacks {missing}")
    probe = LinearProbe(**{name: tensors[name].to(device) for name in PROBE_TENSORS})
    meta = stored.meta
    fit = ProbeFit(probe, float(meta["l2"]), selected=bool(meta["selected"]), fallback=bool(meta["fallback"]),
                   validation_top1={float(k): v for k, v in meta.get("validation_top1", {}).items()},
                   validation_nll={float(k): v for k, v in meta.get("validation_nll", {}).items()})
    return fit, int(meta["n_train"])


def fitted_probe(ref: ArtifactRef, fit: Callable[[], tuple[ProbeFit, int]],
                 device: str | torch.device = "cpu") -> tuple[ProbeFit, int, bool]:
    """The probe of ``ref``: loaded from the store when an intact artifact exists, else ``fit()`` (the probe and
    the number of items it was fitted on) and published. Returns the probe, that number, and whether it was loaded.
    """
    stored = artifacts.find(ref)
    if stored is not None:
        probe, n_train = load_probe(stored, device)
        artifacts.note(stored, "loaded")
        return probe, n_train, True
    probe, n_train = fit()
    artifacts.note(save_probe(ref, probe, n_train), "published")
    return probe, n_train, False


# ----------------------------------------------------------------------------------------------------------------
# Fine-tuned weights
# ----------------------------------------------------------------------------------------------------------------


def publish_model(ref: ArtifactRef, weights: Mapping[str, torch.Tensor],
                  record: Mapping[str, Any] | None = None) -> StoredArtifact:
    """Publish fine-tuned weights (a state dict) as the artifact of ``ref``, with the training's ``record`` (JSON
    values: losses, selected lr...) in its meta; noted in the cell's ledger."""
    stored = artifacts.publish(ref, weights, {"record": dict(record or {})})
    artifacts.note(stored, "published")
    return stored


def load_model(ref: ArtifactRef, device: str | torch.device = "cpu"
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The weights and record of ``ref`` after verification (``None``: absent, or damaged and set aside); noted in
    the cell's ledger."""
    stored = artifacts.find(ref)
    if stored is None:
        return None
    weights = stored.load_tensors(device)
    artifacts.note(stored, "loaded")
    return weights, dict(stored.meta.get("record") or {})


def finetuned_weights(ref: ArtifactRef,
                      train: Callable[[], tuple[Mapping[str, torch.Tensor], Mapping[str, Any]]],
                      device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any], bool]:
    """The weights of ``ref``: loaded when an intact artifact exists, else ``train()`` (weights, record) and
    published. Returns the weights, the training's record and whether they were loaded."""
    loaded = load_model(ref, device)
    if loaded is not None:
        return loaded[0], loaded[1], True
    weights, record = train()
    publish_model(ref, weights, record)
    return {k: v.to(device) for k, v in weights.items()}, dict(record), False


# ----------------------------------------------------------------------------------------------------------------
# The fine-tune of every task: one job function, data-parallel and resumable, its weights a shared artifact
# ----------------------------------------------------------------------------------------------------------------

#: The job :func:`bobkit.tasks.distributed.train` runs for every fine-tune (in one process or in each rank).
FINETUNE_JOB = "bobkit.tasks.trained:finetune_job"

#: Run descriptors of a fine-tune (declared by the tasks that fine-tune).
TRAINING_DESCRIPTORS: tuple[Metric, ...] = (
    descriptor("train_*", "fine-tuning: final loss, steps, data-parallel processes, attempts and the step this run "
               "resumed from, and 1.0 in train_loaded when the weights were a shared artifact (not trained here)"),
)


@dataclass
class Finetuned:
    """A fine-tuned classifier ready to evaluate: ``model`` (the plain module, for attacks), ``prepared`` (on the
    device, possibly compiled; eval mode), the run's ``ex``, the training's ``record`` and whether the weights
    were loaded from the store (``loaded``) rather than trained here."""

    model: torch.nn.Module
    prepared: torch.nn.Module
    ex: Any
    record: dict[str, Any]
    loaded: bool

    def metrics(self) -> dict[str, float]:
        """``train_*`` run descriptors of the training behind the weights."""
        record = self.record
        out = {"train_loaded": float(self.loaded), "train_steps": float(len(record.get("losses", []))),
               "train_processes": float(record.get("processes", 1))}
        if record.get("losses"):
            out["train_final_loss"] = float(record["losses"][-1])
        if not self.loaded:
            out.update({k: float(record[k]) for k in ("train_attempts", "train_resumed_step", "train_steps_redone")
                        if k in record})
        return out


def training_processes() -> int:
    """Training processes of this cell (``$BOB_PROCESSES``, set by the runner from its ``processes`` resource)."""
    return distributed.processes_requested()


def check_processes(p: Mapping[str, Any], processes: int) -> None:
    """The global batch splits into ``processes x accum_steps`` equal micro-batches (a ParameterError naming the
    values, before any training)."""
    recipe.micro_batch_size(p["batch_size"], p["accum_steps"], processes, mixes=p["mixup"] > 0 or p["cutmix"] > 0,
                            task="fine-tuning")


def job_params(p: Mapping[str, Any], ex: Any, *, items: str, num_classes: int, lr: float,
               multilabel: int = 0, part: str | None = None, identity: Mapping[str, Any] | None = None
               ) -> dict[str, Any]:
    """The JSON parameters of a :func:`finetune_job`: the task's parameters, the function that rebuilds the training
    items (``bobkit.tasks.<task>:training_items``), the head's size, the learning rate, the execution settings and
    the identity its training state is saved under (``part="lr_fit"``: the items less a validation split, for a
    learning-rate selection)."""
    task = json.loads(json.dumps({k: v for k, v in p.items() if k not in ("state_dir", "output_dir")},
                                 default=str))
    execution = {"device": str(ex.device), "precision": ex.precision, "channels_last": bool(ex.channels_last),
                 "compile": bool(ex.compile), "grad_checkpointing": bool(ex.grad_checkpointing),
                 "loader_workers": recipe.training_loader_workers(p, ex.loader_workers),
                 "pin_memory": bool(ex.pin_memory)}
    return {**task, "items": items, "num_classes": int(num_classes), "lr": float(lr), "multilabel": int(multilabel),
            "part": part, "execution": execution, "identity": dict(identity or {})}


def train_weights(p: Mapping[str, Any], ex: Any, *, items: str, num_classes: int, lr: float, multilabel: int = 0,
                  part: str | None = None, identity: Mapping[str, Any] | None = None,
                  state_dir: str | os.PathLike[str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Fine-tune (:func:`finetune_job`) in ``$BOB_PROCESSES`` processes (this one when 1), resuming from
    ``state_dir``; returns rank 0's weights (CPU tensors) and record (losses, attempts, processes)."""
    processes = training_processes()
    check_processes(p, processes)
    params = job_params(p, ex, items=items, num_classes=num_classes, lr=lr, multilabel=multilabel, part=part,
                        identity=identity)
    threads = None
    if processes > 1:
        threads = max(1, int(os.environ.get("BOB_NUM_THREADS") or os.cpu_count() or 1) // processes)
    result = distributed.train(FINETUNE_JOB, params, processes, state_dir=state_dir, threads=threads,
                               device=str(ex.device))
    assert result.weights is not None
    return dict(result.weights), dict(result.record)


def build_finetuned(p: Mapping[str, Any], ex: Any, num_classes: int, weights: Mapping[str, torch.Tensor]
                    ) -> tuple[torch.nn.Module, torch.nn.Module, Any]:
    """The model of ``p`` with ``weights`` loaded: (plain module, prepared for ``ex`` in eval mode, ``ex`` with
    channels_last settled)."""
    from bobkit import backbones
    from bobkit.features.device import prepare_model

    model = backbones.create_model(p["backbone"], num_classes=num_classes, image_size=p["image_size"],
                                   seed=p["seed"], drop_path_rate=p["drop_path"])
    model.load_state_dict({k: v.to("cpu") for k, v in weights.items()})
    ex = ex.for_model(model, p["channels_last"])
    prepared = prepare_model(model, ex)
    return model, prepared.eval(), ex


def finetuned_model(p: Mapping[str, Any], ex: Any, ref: ArtifactRef, *, items: str, num_classes: int,
                    multilabel: int = 0,
                    train: Callable[[], tuple[Mapping[str, torch.Tensor], Mapping[str, Any]]] | None = None
                    ) -> Finetuned:
    """The fine-tuned classifier of a cell: the weights of ``ref`` loaded when an intact artifact exists (a
    classification cell of the same training made them), else trained and published (``train``: the cell's own
    way, e.g. a learning-rate selection; default: :func:`train_weights` at ``p["lr"]`` on ``items``, resuming from
    ``p["state_dir"]``). The cell's sidecar records the artifact it loaded or published."""

    def default_train() -> tuple[Mapping[str, torch.Tensor], Mapping[str, Any]]:
        return train_weights(p, ex, items=items, num_classes=num_classes, lr=float(p["lr"]), multilabel=multilabel,
                             identity={"artifact": ref.key, "lr": float(p["lr"])}, state_dir=p.get("state_dir"))

    weights, record, loaded = finetuned_weights(ref, train or default_train)
    model, prepared, ex = build_finetuned(p, ex, num_classes, weights)
    return Finetuned(model, prepared, ex, record, loaded)


def _training_items(p: Mapping[str, Any]) -> Any:
    """The job's training items: the task's ``training_items(p)`` (a function of a bobkit module, by name), less a
    class-stratified validation split for ``part="lr_fit"``."""
    import importlib

    if not distributed.TARGET_PATTERN.fullmatch(str(p["items"])):
        raise ValueError(f"items={p['items']!r} must name a function of a bobkit module")
    module, name = str(p["items"]).split(":")
    items = getattr(importlib.import_module(module), name)(p)
    if p.get("part") == "lr_fit":
        fit_idx, _ = training.validation_split(items.labels, seed=p["seed"], name=f"lr={p['lr']}")
        items = items.subset(fit_idx, "lr_fit")
    elif p.get("part") is not None:
        raise ValueError(f"part={p['part']!r} is not a part of the training items (None or 'lr_fit')")
    return items


def finetune_job(job: distributed.Job, world: distributed.World) -> distributed.JobResult:
    """The fine-tuning job (:func:`bobkit.tasks.distributed.train` runs it in this process or in each rank): build
    the items and the model from the parameters, train (:func:`bobkit.tasks.training.finetune`) with the state in
    ``job.state_dir``; returns the trained weights (CPU copies) and a record of losses and attempts."""
    from bobkit import backbones
    from bobkit.features.device import Execution, prepare_model, resolve_device

    p = job.params
    run = p["execution"]
    device = resolve_device(world.device if world.size > 1 else run["device"])
    ex = Execution(device=device, precision=run["precision"] if device.type == run_device_type(run) else "fp32",
                   channels_last=run["channels_last"], compile=run["compile"], loader_workers=run["loader_workers"],
                   pin_memory=run["pin_memory"], grad_checkpointing=run["grad_checkpointing"])
    items = _training_items(p)
    torch.manual_seed(p["seed"])  # each training (a selection's candidates too) starts as it would alone
    model = backbones.create_model(p["backbone"], num_classes=p["num_classes"], image_size=p["image_size"],
                                   seed=p["seed"], drop_path_rate=p["drop_path"])
    prepared = prepare_model(model, ex)  # device, channels_last, gradient checkpointing, compile
    config = backbones.data_config(p["backbone"], image_size=p["image_size"])
    criterion = training.multilabel_bce(p["multilabel"]) if p["multilabel"] else None
    every = 60.0 * float(p.get("state_every_min", blocks.STATE_EVERY.default))
    with train_state.TrainState(job.state_dir, every_seconds=every, world=world, identity=p["identity"]) as state:
        losses = training.finetune(
            prepared, items, items.labels, config, image_size=p["image_size"], lr=p["lr"],
            batch_size=p["batch_size"], seed=p["seed"], num_classes=p["num_classes"], criterion=criterion,
            **recipe.finetune_args(p), device=ex.device, precision=ex.precision, channels_last=ex.channels_last,
            loader_workers=run["loader_workers"], pin_memory=ex.pin_memory, world=world, state=state)
        summary = state.summary()
    weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    return distributed.JobResult(weights, {"losses": losses, "processes": world.size, **summary})


def run_device_type(execution: Mapping[str, Any]) -> str:
    """The device type (``cpu``, ``cuda``) a job's execution settings were resolved for."""
    return str(execution["device"]).split(":")[0]


def state_subfolder(state_dir: str | os.PathLike[str] | None, name: str) -> str | None:
    """A training state folder inside the cell's (one per training of a selection), or ``None``."""
    return None if state_dir is None else str(Path(state_dir) / name)


def refuse_multilabel_mixing(p: Mapping[str, Any], task: str) -> None:
    """Multi-label fine-tuning trains binary targets: mixup/cutmix and label smoothing of a softmax target are not
    defined for them (ParameterError naming the values)."""
    mixing = {k: p[k] for k in ("mixup", "cutmix", "label_smoothing") if p[k]}
    if mixing:
        raise ParameterError(f"{task} parameters {mixing}: multi-label fine-tuning trains one binary target per label "
                             "(binary cross-entropy), which mixup, cutmix and label smoothing of a class distribution "
                             "do not apply to; set them to 0")
