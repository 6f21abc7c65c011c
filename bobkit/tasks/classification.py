"""Image classification by linear probe on frozen features and by end-to-end fine-tuning.

The linear probe is multinomial logistic regression on standardised cached features, its L2 strength chosen on a
validation split of the training items (:func:`bobkit.tasks.training.fit_probe`); fine-tuning is AdamW with
warm-up + cosine and optional layer-wise lr decay, with the paper's augmentation, mixup/cutmix, label smoothing and
drop-path when set (:func:`bobkit.tasks.training.finetune`, :mod:`bobkit.tasks.recipe`), and a list of learning
rates is a selection on held-out training items. The fine-tuned weights are the cell's shared artifact
(:func:`bobkit.tasks.trained.finetuned_model`): OOD and robustness cells of the same training load them; the
training runs in ``$BOB_PROCESSES`` data-parallel processes and resumes from ``state_dir``. Low-shot settings
keep a class-stratified fraction of the labels or ``n`` per class. Every score comes with its sampling standard
error over the test items (``se/<metric>``).

Multi-label datasets (CheXpert: :attr:`bobkit.data.DatasetInfo.multilabel`) carry each item's label set as one
integer code; the probe decodes it and fits one binary logistic regression per label (the same probe, L2 rule
and solver as the single-label one), and the cell reports the per-label AUROC and their mean (``mean_auroc``,
the paper's CheXpert metric), each with a bootstrap standard error over the test items. Fine-tuning on them (the
paper's Medical-MAE recipe) trains one output per label with binary cross-entropy
(:func:`bobkit.tasks.training.multilabel_bce`) and reports the same AUROCs; mixup, cutmix and label smoothing
are refused there.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from bobkit import backbones
from bobkit.data import get_dataset
from bobkit.data.datasets import dataset_info, low_shot_indices, multilabel_targets
from bobkit.eval.metrics import macro_f1, multilabel_auroc_metrics
from bobkit.eval.uncertainty import binomial_se, bootstrap_se, mean_se
from bobkit.features import artifacts
from bobkit.features.artifacts import ArtifactRef
from bobkit.features.device import (
    Execution,
)
from bobkit.features.extract import extract_features, is_cached, run_forward
from bobkit.tasks import blocks, trained
from bobkit.tasks.common import inference_batch_size
from bobkit.tasks.contract import Metric, Param, ParameterError, TaskSpec
from bobkit.tasks.harness import task_entry
from bobkit.tasks.recipe import check_recipe, training_metrics
from bobkit.tasks.training import (
    ProbeFit,
    fit_probe,
    learning_rates,
    select_on_validation,
    validation_split,
)

PROTOCOLS = ("linear_probe", "finetune")


def _check(p: dict[str, Any]) -> None:
    """Rules between parameters: one low-shot rule at a time; the fine-tuning recipe's rules; no class mixing or
    label smoothing in multi-label fine-tuning."""
    if p["label_fraction"] is not None and p["shots_per_class"] is not None:
        raise ParameterError(f"classification parameters label_fraction={p['label_fraction']!r} and "
                             f"shots_per_class={p['shots_per_class']!r}: give one low-shot rule, not both")
    check_recipe(p, "classification")
    if p["protocol"] == "finetune" and _multilabel(p["dataset"]):
        trained.refuse_multilabel_mixing(p, f"classification (multi-label dataset {p['dataset']!r})")


def _multilabel(dataset: str) -> tuple[str, ...]:
    """The binary labels of a multi-label dataset (empty for single-label ones)."""
    return dataset_info(dataset).multilabel


def _produces(p: dict[str, Any]) -> list[ArtifactRef]:
    """What a cell publishes: a probe cell its probe head (single-label datasets), a fine-tune cell its weights
    (:func:`bobkit.tasks.trained.finetuned_model`)."""
    if p["protocol"] == "finetune":
        return [trained.model_ref(p)]
    return [] if _multilabel(p["dataset"]) else [trained.probe_ref(p)]


PROBE_SOLVER, PROBE_EPOCHS, PROBE_LR = blocks.probe_solver_params()

SPEC = TaskSpec(
    name="classification",
    summary="Image classification by linear probe on frozen features or end-to-end fine-tuning.",
    parameters=(
        blocks.backbone_param(),
        blocks.dataset_param("fashion_mnist", "a dataset of the registry (`bob data`)", blocks.dataset_lookup()),
        blocks.protocol_param("linear_probe", PROTOCOLS, "how the backbone is trained"),
        blocks.image_size_param(),
        blocks.size_param("max_train", 2000, "class-stratified subset of the train split (None: all)"),
        blocks.size_param("max_test", 1000, "class-stratified subset of the test split (None: all)"),
        Param("label_fraction", float, None, "low-shot: fraction of train labels kept per class", low=0.0,
              low_open=True, high=1.0),
        Param("shots_per_class", int, None, "low-shot: n labels per class", low=1, high=blocks.MAX_ITEMS),
        PROBE_SOLVER,
        *blocks.probe_params(),
        PROBE_EPOCHS,
        PROBE_LR,
        *blocks.finetune_params(lr_selection=True),
        blocks.batch_size_param(doc=blocks.TRAINING_BATCH_DOC),
        blocks.seed_param(),
        *blocks.device_params(),
        *blocks.EXECUTION,
        blocks.OUTPUT_DIR,
        blocks.STATE_DIR,
        blocks.STATE_EVERY,
    ),
    metrics=(
        *blocks.accuracy_metrics(),
        Metric("mean_auroc", "multi-label datasets: mean of the per-label AUROCs on the test split", primary=True,
               n_items="n_test"),
        Metric("auroc/*", "multi-label datasets: AUROC of one label on the test split", n_items="n_test"),
        *blocks.COMMON_DESCRIPTORS,
        *trained.TRAINING_DESCRIPTORS,
    ),
    check=_check,
    produces=_produces,
)
#: The declared defaults (what the notebook's parameters cell holds).
PARAMETERS: dict[str, Any] = SPEC.defaults()
validate_params = SPEC.validate


def classification_metrics(logits: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> dict[str, float]:
    """Top-1 (and top-5 when there are more than 5 classes), macro-F1 and NLL (nats) from logits, each with its
    sampling standard error over the test items as ``se/<metric>``: binomial for the accuracies, the mean's for
    NLL, a seeded bootstrap over items for macro-F1 (:mod:`bobkit.eval.uncertainty`)."""
    logits_t = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if not torch.isfinite(logits_t).all():
        raise FloatingPointError("classifier produced non-finite logits; refusing to report metrics")
    n = len(labels_t)
    y, pred = labels_t.numpy(), logits_t.argmax(1).numpy()
    item_nll = F.cross_entropy(logits_t, labels_t, reduction="none").numpy()
    metrics = {"top1": float((pred == y).mean()), "macro_f1": macro_f1(y, pred), "nll": float(item_nll.mean())}
    if logits_t.shape[1] > 5:
        top5 = logits_t.topk(5, dim=1).indices
        metrics["top5"] = float((top5 == labels_t[:, None]).any(1).double().mean())
    for name in ("top1", "top5"):
        if name in metrics:
            metrics[f"se/{name}"] = binomial_se(metrics[name], n)
    metrics["se/nll"] = mean_se(item_nll)
    metrics["se/macro_f1"] = bootstrap_se(lambda counts: macro_f1(y, pred, counts), n, seed=seed)
    return metrics


def check_shots(p: dict[str, Any]) -> None:
    """Refuse ``shots_per_class`` above what a class of the training items holds, before any work.

    ``low_shot_indices`` would keep all of such a class: the cell would silently run on more of the data than its
    setting says (all of it, when every class is short).
    """
    shots = p["shots_per_class"]
    if shots is None:
        return
    train = get_dataset(p["dataset"], "train", max_samples=p["max_train"], seed=p["seed"])
    sizes = np.bincount(np.asarray(train.labels), minlength=len(train.classes))
    short = [(train.classes[c], int(n)) for c, n in enumerate(sizes) if n < shots]
    if short:
        listed = ", ".join(f"{name} {n}" for name, n in short[:5]) + (f", ... ({len(short) - 5} more)"
                                                                       if len(short) > 5 else "")
        raise ParameterError(
            f"classification parameter shots_per_class={shots} is more than {len(short)} of the {len(sizes)} classes "
            f"of {p['dataset']!r} train (max_train={p['max_train']}) hold ({listed}; smallest {int(sizes.min())}, "
            f"largest {int(sizes.max())}): those classes would silently keep all their items. Lower shots_per_class "
            f"or raise max_train")


@task_entry(SPEC)
def run(p: dict[str, Any], ex: Execution) -> dict[str, float]:
    """Run one classification cell (linear probe or fine-tuning); returns metric name -> value."""
    check_shots(p)  # before any backbone is built or feature extracted
    if p["protocol"] == "linear_probe":
        return _run_linear_probe(p, ex)
    return _run_finetune(p, ex)


def _run_linear_probe(p: dict[str, Any], ex: Execution) -> dict[str, float]:
    """Probe the frozen features: the head is the cell's probe artifact (:func:`bobkit.tasks.trained.probe_ref`),
    loaded when an intact one exists (then the training features are not even read), else fitted and published."""
    batch = inference_batch_size(p["batch_size"], ex)
    common = dict(image_size=p["image_size"], seed=p["seed"], batch_size=batch, device=ex.device,
                  precision=ex.precision, channels_last=p["channels_last"], loader_workers=ex.loader_workers,
                  compile=ex.compile)
    multilabel = bool(_multilabel(p["dataset"]))
    ref = None if multilabel else trained.probe_ref(p)
    needs_train = ref is None or artifacts.find(ref) is None
    splits = [("test", p["max_test"])] + ([("train", p["max_train"])] if needs_train else [])
    cached = all(
        is_cached(p["backbone"], p["dataset"], split, image_size=p["image_size"], max_samples=n, seed=p["seed"],
                  device=ex.device, precision=ex.precision)
        for split, n in splits
    )
    t0 = time.perf_counter()
    # Every split it reads cached: no backbone to build (a rerun of a probe cell never touches the weights).
    model = None if cached else backbones.create_model(
        p["backbone"], num_classes=0, image_size=p["image_size"], seed=p["seed"])
    load_seconds = time.perf_counter() - t0
    if model is not None:
        ex = ex.for_model(model, p["channels_last"])  # what extraction resolves too (for the metrics)
    extracted: list[Any] = []  # the training features, once read

    def training_items() -> tuple[Any, np.ndarray]:
        """The training features (read on first use) and the positions the low-shot rule keeps."""
        if not extracted:
            extracted.append(extract_features(p["backbone"], p["dataset"], "train", max_samples=p["max_train"],
                                              model=model, **common))
        keep = low_shot_indices(extracted[0].labels, fraction=p["label_fraction"], per_class=p["shots_per_class"],
                                seed=p["seed"])
        return extracted[0], keep

    if needs_train:
        training_items()
    test = extract_features(p["backbone"], p["dataset"], "test", max_samples=p["max_test"], model=model, **common)
    t1 = time.perf_counter()
    if ref is None:
        train, keep = training_items()
        scorer = _fit_multilabel_probe(p, ex, train.features[keep], train.labels[keep])
        n_train = len(keep)
    else:
        n_classes = len(get_dataset(p["dataset"], "train").classes)

        def fit() -> tuple[ProbeFit, int]:
            train, keep = training_items()
            fitted = fit_probe(
                train.features[keep], train.labels[keep], num_classes=n_classes, l2=p["probe_l2"],
                solver=p["probe_solver"], max_iter=p["probe_max_iter"], epochs=p["probe_epochs"],
                lr=p["probe_lr"], seed=p["seed"], device=ex.device,
            )
            return fitted, len(keep)

        fitted, n_train, _ = trained.fitted_probe(ref, fit, ex.device)

        def scorer(features: np.ndarray, labels: np.ndarray) -> dict[str, float]:
            return {**classification_metrics(fitted.probe.logits(features), labels, seed=p["seed"]),
                    **fitted.descriptors()}
    train_seconds = time.perf_counter() - t1
    t2 = time.perf_counter()
    metrics = scorer(test.features, test.labels)
    metrics.update(
        n_train=float(n_train), n_test=float(len(test.labels)), load_seconds=load_seconds,
        extract_seconds=sum(fs.seconds for fs in [*extracted, test]), train_seconds=train_seconds,
        evaluate_seconds=time.perf_counter() - t2,
        feature_cache_hit=float(all(fs.cache_hit for fs in [*extracted, test])),
    )
    metrics.update(ex.as_metrics())  # exec_*: how it ran (floats; not scores)
    return metrics


def _fit_multilabel_probe(p: dict[str, Any], ex: Execution, features: np.ndarray,
                          codes: np.ndarray) -> Callable[[np.ndarray, np.ndarray], dict[str, float]]:
    """One binary linear probe per label of a multi-label dataset (each :func:`fit_probe` with two classes: a
    logistic regression, its L2 strength chosen per label by the probe's rule); returns the scorer of test
    features and codes (:func:`multilabel_auroc_metrics` of the probes' log-odds)."""
    names = _multilabel(p["dataset"])
    targets = multilabel_targets(codes, names)
    probes, descriptors = [], {}
    for k, name in enumerate(names):
        fitted = fit_probe(
            features, targets[:, k], num_classes=2, l2=p["probe_l2"], solver=p["probe_solver"],
            max_iter=p["probe_max_iter"], epochs=p["probe_epochs"], lr=p["probe_lr"], seed=p["seed"],
            device=ex.device,
        )
        probes.append(fitted.probe)
        word = "_".join(name.lower().split())
        descriptors.update({f"{key}/{word}": value for key, value in fitted.descriptors().items()})

    def scorer(test_features: np.ndarray, test_codes: np.ndarray) -> dict[str, float]:
        # log-odds of label k: the difference of the two-class probe's logits (a monotone map of its probability)
        scores = np.stack([np.diff(np.asarray(probe.logits(test_features), dtype=np.float64), axis=1)[:, 0]
                           for probe in probes], axis=1)
        return {**multilabel_auroc_metrics(multilabel_targets(test_codes, names), scores, names, seed=p["seed"]),
                **descriptors}

    return scorer


def training_items(p: dict[str, Any]) -> Any:
    """The items a fine-tune trains on: the (``max_train``) train split, less what a low-shot rule drops (the
    fine-tune job rebuilds them from the parameters, :func:`bobkit.tasks.trained.finetune_job`)."""
    train_ds = get_dataset(p["dataset"], "train", max_samples=p["max_train"], seed=p["seed"])
    keep = low_shot_indices(train_ds.labels, fraction=p["label_fraction"], per_class=p["shots_per_class"],
                            seed=p["seed"])
    return train_ds if len(keep) == len(train_ds) else train_ds.subset(keep, "low_shot")


#: :func:`training_items`, by name (what a fine-tune job calls).
TRAINING_ITEMS = "bobkit.tasks.classification:training_items"


def _run_finetune(p: dict[str, Any], ex: Execution) -> dict[str, float]:
    """Fine-tune on the (low-shot) training items and score the test split. The weights are the cell's artifact
    (:func:`bobkit.tasks.trained.finetuned_model`): loaded when an intact one exists, else trained and published.
    With several ``lr``, each is fine-tuned on a class-stratified 80% of the training items and scored on the
    other 20% (top-1; mean AUROC on a multi-label dataset), and the winner is fine-tuned again on all of them
    (``selected_lr``, kept in the artifact's record)."""
    rates = learning_rates(p["lr"])
    t0 = time.perf_counter()
    train = training_items(p)
    test_ds = get_dataset(p["dataset"], "test", max_samples=p["max_test"], seed=p["seed"])
    config = backbones.data_config(p["backbone"], image_size=p["image_size"])
    names = _multilabel(p["dataset"])
    outputs = len(names) or len(train.classes)
    load_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    trained.check_processes(p, trained.training_processes())  # before any training
    job = dict(items=TRAINING_ITEMS, num_classes=outputs, multilabel=len(names))

    def score(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        if names:
            return multilabel_auroc_metrics(multilabel_targets(labels, names), np.asarray(logits, dtype=np.float64),
                                            names, seed=p["seed"])
        return classification_metrics(logits, labels, seed=p["seed"])

    ref = trained.model_ref(p)

    def select_and_train() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        extra: dict[str, Any] = {}
        best = rates[0]
        if len(rates) > 1:
            _, val_idx = validation_split(train.labels, seed=p["seed"], name=f"lr={rates}")
            val_part = train.subset(val_idx, "lr_validation")

            def validation_score(lr: float) -> float:
                weights, _ = trained.train_weights(
                    p, ex, lr=lr, part="lr_fit", identity={"artifact": ref.key, "lr": lr, "part": "lr_fit"},
                    state_dir=trained.state_subfolder(p["state_dir"], f"lr-fit-{lr:g}"), **job)
                _, model, run_ex = trained.build_finetuned(p, ex, outputs, weights)
                logits = run_forward(model, val_part, config, p["image_size"],
                                     inference_batch_size(p["batch_size"], run_ex), run_ex)
                held = score(logits, val_part.labels)
                return held["mean_auroc"] if names else held["top1"]

            best, _ = select_on_validation(rates, validation_score)
            extra = {"selected_lr": best, "n_validation": len(val_idx)}
        weights, record = trained.train_weights(p, ex, lr=best, identity={"artifact": ref.key, "lr": best},
                                                state_dir=p["state_dir"], **job)
        return weights, {**record, **extra}

    tuned = trained.finetuned_model(p, ex, ref, train=select_and_train, **job)
    ex = tuned.ex
    train_seconds = time.perf_counter() - t1
    t2 = time.perf_counter()
    batch = inference_batch_size(p["batch_size"], ex)
    logits = run_forward(tuned.prepared, test_ds, config, p["image_size"], batch, ex)
    metrics: dict[str, float] = {}
    if "selected_lr" in tuned.record:
        metrics.update(selected_lr=float(tuned.record["selected_lr"]),
                       n_validation=float(tuned.record["n_validation"]))
    metrics.update(score(logits, test_ds.labels))
    metrics.update(
        n_train=float(len(train)), n_test=float(len(test_ds.labels)), load_seconds=load_seconds,
        train_seconds=train_seconds, evaluate_seconds=time.perf_counter() - t2,
    )
    metrics.update(ex.as_metrics(), **training_metrics(p, ex.loader_workers), **tuned.metrics())
    return metrics
