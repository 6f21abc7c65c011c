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
"""

from __future__ import annotations

from functools import cache
from typing import Any, Callable, Mapping

import torch

from bobkit.features import artifacts
from bobkit.features.artifacts import ArtifactRef, StoredArtifact, training_identity
from bobkit.features.extract import feature_code_version
from bobkit.tasks import blocks, common, distributed, recipe, train_state, training
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
    data-parallel jobs, the torch helpers, and the code that reads and transforms images."""
    return f"{source_fingerprint(training, recipe, train_state, distributed, common)}+{feature_code_version()}"


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
    """The fine-tuning parameters that change the weights: every parameter of
    :func:`bobkit.tasks.blocks.finetune_params` (the one declaration of the recipe) and the global ``batch_size``."""
    names = [q.name for q in blocks.finetune_params(lr_selection=True)] + ["batch_size"]
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
