"""Adversarial robustness and calibration of a trained classifier.

The classifier is the frozen backbone + a linear probe head (:meth:`LinearProbe.as_module`), or the backbone
fine-tuned end to end. The temperature is fitted on ``calibration_fraction`` of the items of ``calibration_split``:

* ``None`` (or the training split): held out of the training items, so the classifier is trained on the rest;
* the test split: held out of the test items, and every metric is reported on the other test items; the probe is
  then trained on the whole training split, the same training as the classification probe's, so the cell uses
  that cell's probe head (:mod:`bobkit.tasks.trained`; the paper-scale suites do this on ImageNet, whose only
  held-out images are its 50k validation images = ``test``);
* another split (a dataset's ``val``): a stratified ``calibration_fraction`` of it (at most ``max_test`` items
  read); the probe is trained on the whole training split too.

Calibration
    ``ece`` (the textbook 15-bin ECE, :func:`bobkit.eval.metrics.expected_calibration_error`), ``nll``, ``brier``
    before and ``ece_ts``, ``nll_ts``, ``brier_ts`` after temperature scaling, with the ``temperature`` used. The
    temperature is fitted within :data:`~bobkit.eval.metrics.TEMPERATURE_BOUNDS` and kept at 1 when the held-out
    split cannot support it (fewer than :data:`~bobkit.eval.metrics.MIN_CALIBRATION_ITEMS` items, a fit at a bound,
    or a cross-fitted held-out NLL worse than at T = 1): ``fallback_temperature`` records why (0: fitted,
    :class:`~bobkit.eval.metrics.TemperatureFallback`), ``n_calibration`` the held-out items.
    :func:`plot_reliability` draws both reliability diagrams from the same bins.
Adversarial robustness
    Accuracy under FGSM and PGD (L-inf, :mod:`bobkit.eval.attacks`) on ``max_attack`` test images for each epsilon in
    pixel units: ``acc/fgsm/<eps>``, ``acc/pgd/<eps>``. The attacks run on ``[0, 1]`` images at the model's input
    size with the backbone's normalisation inside the attacked function. Epsilon 0 gives the clean accuracy of
    the attacked subset, and accuracy never increases with epsilon (see :func:`bobkit.eval.attacks.robust_accuracy`).
Execution
    Feature extraction, fine-tuning and the clean / calibration forward passes use the run's execution settings
    (``precision``, ``channels_last``, ... as in every task); the attacks always run in fp32, so robust accuracy
    does not depend on the device's default precision.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bobkit import backbones
from bobkit.data import dataset_info, get_dataset
from bobkit.data.transforms import to_tensor_batch
from bobkit.eval.attacks import ATTACKS, NormalizedModel, robust_accuracy
from bobkit.eval.metrics import (
    ReliabilityBins,
    calibrate_temperature,
    calibration_metrics,
    reliability_bins,
    softmax,
)
from bobkit.eval.uncertainty import binomial_se
from bobkit.features import artifacts
from bobkit.features.artifacts import ArtifactRef
from bobkit.features.device import Execution, prepare_model
from bobkit.features.extract import extract_features, run_forward
from bobkit.tasks import blocks, trained
from bobkit.tasks.common import as_list, inference_batch_size
from bobkit.tasks.contract import Metric, Param, TaskSpec, descriptor
from bobkit.tasks.harness import task_entry
from bobkit.tasks.recipe import check_recipe, training_metrics
from bobkit.tasks.training import ProbeFit, fit_probe

PROTOCOLS = ("linear_probe", "finetune")
#: Largest L-inf radius in pixel units (/255): the whole pixel range.
MAX_EPSILON = 255.0

def calibration_source(p: dict[str, Any]) -> str | None:
    """The split the temperature's items come from when it is not the training split (``None``: held out of the
    training items)."""
    split = p["calibration_split"]
    return None if split in (None, p["train_split"]) else split


def _holdout(p: dict[str, Any]) -> dict[str, Any] | None:
    """The share of the training items a cell keeps out of training (for the temperature), or None."""
    return None if calibration_source(p) else {"fraction": float(p["calibration_fraction"]), "seed": p["seed"]}


def _check(p: dict[str, Any]) -> None:
    """Rules between parameters: the fine-tuning recipe's; a fine-tuned classifier holds its calibration items out
    of training (its own identity)."""
    check_recipe(p, "robustness")
    if p["protocol"] == "finetune" and calibration_source(p) is not None:
        raise SPEC.error("calibration_split", p["calibration_split"], "is for protocol='linear_probe' (a fine-tuned "
                         "classifier holds its calibration items out of the train split)")


def _needs(p: dict[str, Any]) -> list[ArtifactRef]:
    """The classifier a cell trains: its probe head (the classification probe's when the temperature's items come
    from another split) or its fine-tuned weights."""
    if p["protocol"] == "finetune":
        return [trained.model_ref(p, split=p["train_split"], holdout=_holdout(p))]
    return [trained.probe_ref(p, split=p["train_split"], holdout=_holdout(p))]


SPEC = TaskSpec(
    name="robustness",
    summary="Adversarial robustness (FGSM, PGD) and calibration (ECE, NLL, Brier, temperature scaling) of a "
            "trained classifier.",
    parameters=(
        blocks.backbone_param(),
        blocks.dataset_param("fashion_mnist", "a dataset of the registry (`bob data`)", blocks.dataset_lookup()),
        blocks.protocol_param("linear_probe", PROTOCOLS, "how the classifier is trained"),
        blocks.image_size_param(),
        blocks.split_param("train_split", "train", "the split the classifier is trained on"),
        blocks.split_param("test_split", "test", "the split every metric is reported on"),
        blocks.size_param("max_train", 2000, "class-stratified subsets, as the classification probe's (feature "
                                             "cache shared)"),
        blocks.size_param("max_test", 1000, "class-stratified subset of the test split (None: all)"),
        Param("calibration_fraction", float, 0.2, "items of the calibration split held out to fit the "
              "temperature", low=0.0, low_open=True, high=1.0, high_open=True),
        Param("calibration_split", str, None, "the split the temperature's items come from (None: the train split, "
              "held out of training; the test split: held out of the reported items)", pattern=blocks.NAME_PATTERN),
        Param("n_bins", int, 15, "ECE / reliability-diagram bins", low=1, high=1000),
        Param("attacks", list, ["fgsm", "pgd"], "L-inf attacks", item=str, choices=ATTACKS, min_items=1),
        Param("epsilons", list, [0.0, 1.0, 2.0], "L-inf radii in pixel units (/255)", item=float, low=0.0,
              high=MAX_EPSILON, min_items=1),
        Param("pgd_steps", int, 5, "PGD iterations", low=1, high=1000),
        Param("pgd_step_size", float, None, "PGD step in pixel units; None: 2.5 * eps / steps", low=0.0,
              low_open=True, high=MAX_EPSILON),
        Param("random_start", bool, True, "PGD starts from a random point in the eps-ball"),
        blocks.size_param("max_attack", 64, "stratified test items attacked", nullable=False, high=100_000),
        *blocks.probe_params(),
        *blocks.probe_solver_params(),
        *blocks.finetune_params(),
        blocks.batch_size_param(doc=blocks.TRAINING_BATCH_DOC),
        blocks.seed_param(),
        *blocks.device_params(),
        *blocks.EXECUTION,
        blocks.OUTPUT_DIR,
        blocks.STATE_DIR,
        blocks.STATE_EVERY,
    ),
    metrics=(
        Metric("top1", "clean top-1 accuracy on the test split", n_items="n_test"),
        Metric("ece", "expected calibration error before temperature scaling", higher_is_better=False,
               primary=True, n_items="n_test"),
        Metric("nll", "negative log-likelihood (nats)", higher_is_better=False, n_items="n_test"),
        Metric("brier", "Brier score", higher_is_better=False, n_items="n_test"),
        Metric("*_ts", "the same after temperature scaling", higher_is_better=False, n_items="n_test"),
        descriptor("temperature", "the temperature used (1.0 after a fallback)"),
        descriptor("fallback_temperature", "why T = 1 was kept: 0 fitted, 1 too few held-out items, 2 fit at a "
                   "bound, 3 cross-fitted held-out NLL worse (bobkit.eval.metrics.TemperatureFallback)"),
        descriptor("n_calibration", "held-out training items the temperature is fitted on"),
        Metric("acc/pgd/*", "accuracy under PGD at an epsilon", primary=True),
        Metric("acc/*/*", "accuracy under an attack at an epsilon"),
        *blocks.COMMON_DESCRIPTORS,
        *trained.TRAINING_DESCRIPTORS,
    ),
    check=_check,
    needs=_needs,
)
#: The declared defaults (what the notebook's parameters cell holds).
PARAMETERS: dict[str, Any] = SPEC.defaults()
validate_params = SPEC.validate


def calibration_split(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-class random split of training positions into (fit, held-out) with ``fraction`` held out.

    Every class with two or more items keeps at least one on each side
    (:func:`bobkit.data.sources.stratified_split`).
    """
    from bobkit.data.sources import stratified_split

    return stratified_split(np.asarray(labels), fraction, seed)


@dataclass
class RobustnessResult:
    """Everything one cell computed: the metrics and the reliability diagrams before / after scaling."""

    metrics: dict[str, float]
    reliability: ReliabilityBins
    reliability_ts: ReliabilityBins
    temperature: float
    params: dict[str, Any] = field(default_factory=dict)

    def figure(self):
        """The reliability diagram figure (see :func:`plot_reliability`)."""
        return plot_reliability(self)


def evaluate(**params: Any) -> RobustnessResult:
    """Like :func:`run`, also returning the reliability bins for the figure (``.metrics`` is run's result)."""
    result = run(**params)
    result.details.metrics = result
    return result.details


@task_entry(SPEC)
def run(p: dict[str, Any], ex: Execution) -> RobustnessResult:
    """Run one robustness cell: train the classifier, calibrate it, attack it; returns metric name -> value."""
    config = backbones.data_config(p["backbone"], image_size=p["image_size"])
    n_classes = dataset_info(p["dataset"]).num_classes
    timings: dict[str, float] = {}

    if p["protocol"] == "linear_probe":
        model, ex, calib, test, cache_hit, n_fit = _linear_probe_model(p, ex, n_classes, timings)
    else:
        model, ex, calib, test, cache_hit, n_fit = _finetuned_model(p, ex, config, n_classes, timings)

    t0 = time.perf_counter()
    test_logits, test_labels = test
    metrics = calibrated_scores(calib, test, int(p["n_bins"]), p["seed"])
    temperature = metrics["temperature"]
    timings["calibration_seconds"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    metrics.update(_attack_metrics(p, model, config, ex))
    timings["attack_seconds"] = time.perf_counter() - t1
    metrics.update(timings)
    metrics.update(n_train=float(n_fit), n_test=float(len(test_labels)), feature_cache_hit=float(cache_hit))
    metrics.update(ex.as_metrics())  # exec_*: how it ran (floats; not scores)
    if p["protocol"] == "finetune":
        metrics.update(training_metrics(p, ex.loader_workers))
    return RobustnessResult(
        metrics,
        reliability_bins(softmax(test_logits), test_labels, int(p["n_bins"])),
        reliability_bins(softmax(test_logits, temperature), test_labels, int(p["n_bins"])),
        temperature,
        p,
    )


def calibrated_scores(held_out: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], n_bins: int,
                      seed: int) -> dict[str, float]:
    """Calibration scores of the test logits before and after temperature scaling with the temperature
    :func:`~bobkit.eval.metrics.calibrate_temperature` chose on the ``held_out`` logits, plus ``fallback_temperature``
    (why T = 1 was kept, 0 when it was not) and ``n_calibration``."""
    fit = calibrate_temperature(*held_out)
    if fit.fallback:
        import warnings

        warnings.warn(f"temperature scaling kept T = 1: {fit.reason}", stacklevel=2)
    metrics = _calibration_scores(*test, fit.temperature, n_bins, seed)
    metrics.update(fallback_temperature=float(fit.fallback), n_calibration=float(fit.n_items))
    return metrics


def _calibration_scores(logits: np.ndarray, labels: np.ndarray, temperature: float, n_bins: int,
                        seed: int) -> dict[str, float]:
    """``top1``, ``ece``, ``nll``, ``brier`` before and ``*_ts`` after temperature scaling, the ``temperature``,
    and every score's standard error over the test items (``se/<metric>``)."""
    before = calibration_metrics(logits, labels, n_bins=n_bins, seed=seed)
    after = calibration_metrics(logits, labels, temperature=temperature, n_bins=n_bins, seed=seed)
    names = {"top1": "acc", "ece": "ece", "nll": "nll", "brier": "brier"}
    out = {name: before[key] for name, key in names.items()}
    out.update({f"{name}_ts": after[name] for name in ("ece", "nll", "brier")})
    out.update({f"se/{name}": before[f"se/{key}"] for name, key in names.items()})
    out.update({f"se/{name}_ts": after[f"se/{name}"] for name in ("ece", "nll", "brier")})
    out["temperature"] = temperature
    return out


def _linear_probe_model(p: dict[str, Any], ex: Execution, n_classes: int, timings: dict[str, float]):
    """Backbone + probe head; logits of the temperature's and the reported test items from the cached features.

    The head is the cell's probe artifact (:func:`bobkit.tasks.trained.probe_ref`), loaded when an intact one
    exists, else fitted and published. Returns the classifier (on ``ex.device``), ``ex`` with channels_last settled
    for the backbone, the temperature's and the reported test ``(logits, labels)``, whether every split read was
    cached, and the number of fitting items.
    """
    t0 = time.perf_counter()
    backbone = backbones.create_model(p["backbone"], num_classes=0, image_size=p["image_size"], seed=p["seed"])
    ex = ex.for_model(backbone, p["channels_last"])
    common = dict(image_size=p["image_size"], seed=p["seed"], batch_size=inference_batch_size(p["batch_size"], ex),
                  device=ex.device, precision=ex.precision, channels_last=ex.channels_last,
                  loader_workers=ex.loader_workers, compile=ex.compile)
    timings["load_seconds"] = time.perf_counter() - t0
    source, fraction = calibration_source(p), float(p["calibration_fraction"])
    ref = trained.probe_ref(p, split=p["train_split"], holdout=_holdout(p))
    read: list[Any] = []  # every feature set read (for the cache-hit descriptor)

    def features(split: str, limit: int | None) -> Any:
        # Same cache keys as the classification probe: a robustness cell after a probe cell extracts nothing.
        fs = extract_features(p["backbone"], p["dataset"], split, max_samples=limit, model=backbone, **common)
        read.append(fs)
        return fs

    # Held out of training: the held-out training items are scored, so the training split is read either way.
    train = features(p["train_split"], p["max_train"]) if source is None or artifacts.find(ref) is None else None
    test = features(p["test_split"], p["max_test"])
    if source is None:
        assert train is not None
        fit_idx, held_idx = calibration_split(train.labels, fraction, p["seed"])
    else:
        fit_idx = held_idx = None

    def fit() -> tuple[ProbeFit, int]:
        items = train if train is not None else features(p["train_split"], p["max_train"])
        keep = fit_idx if fit_idx is not None else slice(None)
        x, y = np.array(items.features)[keep], items.labels[keep]
        return fit_probe(x, y, num_classes=n_classes, l2=p["probe_l2"], solver=p["probe_solver"],
                         max_iter=p["probe_max_iter"], epochs=p["probe_epochs"], lr=p["probe_lr"], seed=p["seed"],
                         device=ex.device), len(y)

    t1 = time.perf_counter()
    fitted, n_fit, _ = trained.fitted_probe(ref, fit, ex.device)
    timings["train_seconds"] = time.perf_counter() - t1
    timings.update(fitted.descriptors())  # descriptors beside the timings
    probe = fitted.probe
    timings["extract_seconds"] = sum(fs.seconds for fs in read)
    test_x = np.array(test.features)
    if source is None:
        calib = (probe.logits(np.array(train.features)[held_idx]), train.labels[held_idx])
        test_out = (probe.logits(test_x), test.labels)
    elif source == p["test_split"]:
        reported, held = calibration_split(test.labels, fraction, p["seed"])
        calib = (probe.logits(test_x[held]), test.labels[held])
        test_out = (probe.logits(test_x[reported]), test.labels[reported])
    else:
        other = features(source, p["max_test"])
        _, held = calibration_split(other.labels, fraction, p["seed"])
        calib = (probe.logits(np.array(other.features)[held]), other.labels[held])
        test_out = (probe.logits(test_x), test.labels)
        timings["extract_seconds"] += other.seconds
    # Device and memory format as extraction set them (in place) on a cache miss, and checkpointing for the
    # attacks' backward pass; uncompiled, since the attacks differentiate through it.
    backbone = prepare_model(backbone.eval(), ex, compile=False)
    model = torch.nn.Sequential(backbone, probe.as_module().to(ex.device))
    return model, ex, calib, test_out, all(fs.cache_hit for fs in read), n_fit


def training_items(p: dict[str, Any]) -> Any:
    """The items a fine-tune trains on: the train split less the items held out for the temperature (the
    fine-tune job rebuilds them from the parameters)."""
    train_ds = get_dataset(p["dataset"], p["train_split"], max_samples=p["max_train"], seed=p["seed"])
    fit_idx, _ = calibration_split(train_ds.labels, float(p["calibration_fraction"]), p["seed"])
    return train_ds.subset(fit_idx, "calibration_fit")


def _finetuned_model(p: dict[str, Any], ex: Execution, config: dict[str, Any], n_classes: int,
                     timings: dict[str, float]):
    """Backbone fine-tuned with a new head on the non-held-out training items: the weights of the cell's
    :func:`bobkit.tasks.trained.model_ref`, loaded when an intact artifact exists, else trained here
    (data-parallel, resumable) and published.

    Returns the plain fine-tuned module (no ``torch.compile`` wrapper: the attacks differentiate through it),
    ``ex`` with channels_last settled, the held-out and test ``(logits, labels)``, ``False`` (no feature cache)
    and the number of fitting items.
    """
    t0 = time.perf_counter()
    train_ds = get_dataset(p["dataset"], p["train_split"], max_samples=p["max_train"], seed=p["seed"])
    test_ds = get_dataset(p["dataset"], p["test_split"], max_samples=p["max_test"], seed=p["seed"])
    fit_idx, held_idx = calibration_split(train_ds.labels, float(p["calibration_fraction"]), p["seed"])
    timings["load_seconds"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    tuned = trained.finetuned_model(p, ex, trained.model_ref(p, split=p["train_split"], holdout=_holdout(p)),
                                    items="bobkit.tasks.robustness:training_items", num_classes=n_classes)
    timings["train_seconds"] = time.perf_counter() - t1
    timings.update(tuned.metrics())
    ex, prepared = tuned.ex, tuned.prepared
    t2 = time.perf_counter()
    batch = inference_batch_size(p["batch_size"], ex)
    images = train_ds.images
    calib = (run_forward(prepared, images[held_idx], config, p["image_size"], batch, ex), train_ds.labels[held_idx])
    test_out = (run_forward(prepared, test_ds.images, config, p["image_size"], batch, ex), test_ds.labels)
    timings["extract_seconds"] = time.perf_counter() - t2
    return tuned.model, ex, calib, test_out, False, len(fit_idx)


def pixel_batch(images: np.ndarray, data_config: dict[str, Any], image_size: int) -> torch.Tensor:
    """uint8 images -> ``[0, 1]`` tensors at the model's input size, resized exactly as for feature extraction."""
    identity = {**data_config, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    return to_tensor_batch(images, identity, image_size)


def _attack_metrics(p: dict[str, Any], model: torch.nn.Module, config: dict[str, Any],
                    ex: Execution) -> dict[str, float]:
    """``acc/<attack>/<eps>`` for every attack and epsilon on ``max_attack`` stratified test images, with their
    binomial standard errors (``se/acc/...``) and the number of attacked images (``n/acc/...``).

    The attacks run on ``ex.device`` in fp32 whatever ``ex.precision``: the gradient sign of an autocast
    forward would mostly agree, but fp32 keeps the attack strength independent of the execution settings, so
    robust accuracies stay comparable across devices (the extra cost is small: ``max_attack`` images).
    """
    attack_ds = get_dataset(p["dataset"], p["test_split"], max_samples=p["max_attack"], seed=p["seed"])
    x = pixel_batch(attack_ds.images, config, p["image_size"])
    y = torch.as_tensor(attack_ds.labels, dtype=torch.long)
    attacked = NormalizedModel(model, config["mean"], config["std"]).to(ex.device).eval()
    for param in attacked.parameters():
        param.requires_grad_(False)  # gradients are needed for the input only
    epsilons = as_list(p["epsilons"], float)
    out: dict[str, float] = {}
    for attack in as_list(p["attacks"], str):
        accs = robust_accuracy(
            attacked, x, y, epsilons, attack=attack, steps=int(p["pgd_steps"]), step_size=p["pgd_step_size"],
            random_start=bool(p["random_start"]), batch_size=int(p["batch_size"]), seed=int(p["seed"]),
        )
        for eps, acc in accs.items():
            name = f"acc/{attack}/{eps:g}"
            out.update({name: acc, f"se/{name}": binomial_se(acc, len(y)), f"n/{name}": float(len(y))})
    return out


def plot_reliability(result: RobustnessResult, ax=None):
    """Reliability diagrams before and after temperature scaling: per-bin accuracy against confidence.

    Bars show each bin's accuracy at its mean confidence, the diagonal is perfect calibration; the legend gives
    ECE. Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.6), sharey=True)
    else:
        axes = np.atleast_1d(ax)
        fig = axes[0].figure
    title = f"{result.params.get('backbone', '')} on {result.params.get('dataset', '')}"
    panels = [(result.reliability, "before scaling"), (result.reliability_ts, f"T = {result.temperature:.2f}")]
    for a, (bins, label) in zip(axes, panels):
        width = np.diff(bins.edges)
        filled = bins.counts > 0
        a.bar(bins.edges[:-1][filled], bins.accuracy[filled], width=width[filled], align="edge",
              edgecolor="black", alpha=0.7, label=f"accuracy (ECE {bins.ece:.3f})")
        a.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        a.scatter(bins.confidence[filled], bins.accuracy[filled], s=10, c="C3", zorder=3, label="mean confidence")
        a.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", title=label)
        a.legend(loc="upper left", fontsize=7)
    axes[0].set_ylabel("accuracy")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
