"""Out-of-distribution classification: train on a source, evaluate on shifted targets.

The classifier is a linear probe on cached frozen features or an end-to-end fine-tune
(:func:`bobkit.tasks.training.finetune`). It is a shared artifact (:mod:`bobkit.tasks.trained`): when the training
equals a classification cell's (backbone, source split and subset, probe or fine-tune recipe, seed, image size),
the cell declares that cell's probe head or weights as needed (``SPEC.needs``), the batch runs the classification
cell first, and this cell loads them instead of training (and reads no training features); without one it trains
and publishes them itself. It is evaluated on

- the source's own test split (in-distribution accuracy, ``id_acc``);
- every dataset in ``targets`` (``acc/<target>`` and ``drop_<target>`` = ``id_acc - acc``): a real domain shift
  offline (``mnist5k`` -> ``sklearn_digits``) or the paper's ImageNet-A / -R / -Sketch / -V2 and VisDA-2017 real
  images. ImageNet-A and -R cover 200 classes: logits are masked to those classes before the arg-max. A target
  is ``name`` (split ``target_split``) or ``name:split``;
- the target ``corruptions``: ``max_corrupted`` source test images (a stratified subset) under each of
  ``corruptions`` at each of ``severities`` (:mod:`bobkit.eval.corruptions`): ``acc/<corruption>/<severity>``, their
  mean ``mca`` (mean corruption accuracy) and ``mca_drop`` = ``id_acc - mca``.

Metric names keep their direction readable by :func:`bobkit.results.higher_is_better`: accuracies are
higher-is-better, names starting or ending with ``drop`` lower-is-better. Every score has its sampling standard
error ``se/<metric>`` (binomial for an accuracy; a per-image mean for ``mca``; drops combine their two parts as
independent samples), and ``n/<metric>`` gives the items behind a score when they are not the ``n_test``
in-distribution test items.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from bobkit import backbones
from bobkit.data import ImageDataset, MissingDataError, dataset_info, dataset_names, get_dataset
from bobkit.eval.corruptions import CORRUPTIONS, DEFAULT_CORRUPTIONS, SEVERITIES, corrupt
from bobkit.eval.uncertainty import binomial_se, difference_se, mean_se
from bobkit.features import artifacts
from bobkit.features.artifacts import ArtifactRef
from bobkit.features.device import Execution, frozen_backbone, prepare_model
from bobkit.features.extract import extract_features, run_forward
from bobkit.tasks import blocks, trained
from bobkit.tasks.common import as_list, inference_batch_size
from bobkit.tasks.contract import Metric, Param, TaskSpec
from bobkit.tasks.harness import task_entry
from bobkit.tasks.recipe import check_recipe, training_metrics
from bobkit.tasks.training import ProbeFit, fit_probe

PROTOCOLS = ("linear_probe", "finetune")
CORRUPTION_TARGET = "corruptions"
#: Datasets this task builds itself (on top of :func:`bobkit.data.dataset_names`).
DATASETS = ("visda2017",)
VISDA_CLASSES = ("aeroplane", "bicycle", "bus", "car", "horse", "knife", "motorcycle", "person", "plant",
                 "skateboard", "train", "truck")


def _target_spec(target: str, default_split: str) -> tuple[str, str]:
    """``"name"`` or ``"name:split"`` -> (name, split)."""
    name, _, split = str(target).partition(":")
    return name, split or default_split


def check_target(target: str) -> None:
    """Raise ``ValueError`` unless ``target`` is ``corruptions``, a dataset name or ``name:split``."""
    name, split = _target_spec(target, "test")
    if name != CORRUPTION_TARGET:
        blocks.dataset_lookup(DATASETS)(name)
    if not re.fullmatch(blocks.NAME_PATTERN, split):
        raise ValueError(f"split {split!r} is not a split name")


def _check(p: dict[str, Any]) -> None:
    """Rules between parameters: the fine-tuning recipe's."""
    check_recipe(p, "ood")
def _needs(p: dict[str, Any]) -> list[ArtifactRef]:
    """The classifier a cell trains on its source: a probe head or fine-tuned weights (a classification cell of the
    same training produces it; without one, the cell trains and publishes it itself)."""
    if p["protocol"] == "finetune":
        return [trained.model_ref(p, split=p["train_split"])]
    return [trained.probe_ref(p, split=p["train_split"])]


SPEC = TaskSpec(
    name="ood",
    summary="Out-of-distribution classification: train on a source, evaluate on shifted targets.",
    parameters=(
        blocks.backbone_param(),
        blocks.dataset_param("fashion_mnist", "the source the classifier is trained on",
                             blocks.dataset_lookup(DATASETS)),
        blocks.protocol_param("linear_probe", PROTOCOLS, "how the classifier is trained"),
        Param("targets", list, [CORRUPTION_TARGET], "dataset names (or name:split) and/or 'corruptions'", item=str,
              lookup=check_target, min_items=1),
        Param("corruptions", list, list(DEFAULT_CORRUPTIONS), "image corruptions of the source test items", item=str,
              choices=CORRUPTIONS, min_items=1),
        Param("severities", list, list(SEVERITIES), "corruption severities", item=int, choices=SEVERITIES,
              min_items=1),
        blocks.image_size_param(),
        blocks.split_param("train_split", "train", "the source split the classifier is trained on"),
        blocks.split_param("test_split", "test", "the source split of the in-distribution accuracy"),
        blocks.split_param("target_split", "test", "the split of a target given without ':split'"),
        blocks.size_param("max_train", 2000, "class-stratified subset of the train split (None: all)"),
        blocks.size_param("max_test", 1000, "class-stratified subset of the test split (None: all)"),
        blocks.size_param("max_target", None, "class-stratified items per target dataset (None: all)"),
        blocks.size_param("max_corrupted", 200, "source test items corrupted at every corruption x severity",
                          nullable=False, high=100_000),
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
        Metric("id_acc", "in-distribution accuracy (the source's test split)", n_items="n_test"),
        Metric("acc/*/*", "accuracy under a corruption at a severity"),
        Metric("acc/*", "accuracy on a target dataset", primary=True),
        Metric("drop_*", "id_acc minus the target accuracy", higher_is_better=False),
        Metric("mca", "mean corruption accuracy", primary=True),
        Metric("mca_drop", "id_acc minus mca", higher_is_better=False),
        *blocks.COMMON_DESCRIPTORS,
        *trained.TRAINING_DESCRIPTORS,
    ),
    check=_check,
    needs=_needs,
)
#: The declared defaults (what the notebook's parameters cell holds).
PARAMETERS: dict[str, Any] = SPEC.defaults()
validate_params = SPEC.validate


# ----------------------------------------------------------------------------------------------------------------
# Datasets this task builds itself
# ----------------------------------------------------------------------------------------------------------------


VISDA_HELD_OUT = 0.1  # synthetic images kept out of training for the in-distribution accuracy


def load_visda2017(split: str, *, root: str | Path | None = None, storage_size: int = 256) -> ImageDataset:
    """VisDA-2017 classification, synthetic -> real.

    Splits: ``train`` (synthetic renderings minus a stratified 10%), ``test`` (that held-out 10%: the
    in-distribution test) and ``validation`` (the real COCO crops: the target). Reads
    ``<root>/{train,validation}/<class>/*`` with the 12 VisDA classes; ``root`` defaults to the manifest folder.
    Raises :class:`~bobkit.data.MissingDataError` naming the folder when it is absent.
    """
    from bobkit.data import resolve_dir
    from bobkit.data.sources import stratified_split

    if split not in ("train", "test", "validation"):
        raise ValueError(f"visda2017 has splits 'train', 'test' (held-out synthetic) and 'validation' (real), "
                         f"not {split!r}")
    folder = (Path(root) if root is not None else resolve_dir("visda2017")) / (
        "validation" if split == "validation" else "train")
    if not folder.is_dir():
        raise MissingDataError(
            f"VisDA-2017 folder {folder} not found (layout: visda2017/{{train,validation}}/<class>/)")
    paths: list[Path] = []
    labels: list[int] = []
    for i, cls in enumerate(VISDA_CLASSES):
        files = sorted(p for p in (folder / cls).glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        paths += files
        labels += [i] * len(files)
    if not paths:
        raise MissingDataError(f"no VisDA-2017 images under {folder}/<class>/ (classes: {', '.join(VISDA_CLASSES)})")
    ds = ImageDataset(None, np.asarray(labels), list(VISDA_CLASSES), "visda2017", split, paths=paths,
                      storage_size=storage_size)
    if split == "validation":
        return ds
    train_idx, test_idx = stratified_split(ds.labels, VISDA_HELD_OUT, seed=0)
    return ds.subset(train_idx if split == "train" else test_idx, f"synthetic_{split}")


def _load(name: str, split: str, max_samples: int | None, seed: int) -> ImageDataset:
    """A registry dataset (:func:`bobkit.data.get_dataset`) or one of this task's own (:data:`DATASETS`)."""
    if name == "visda2017":
        from bobkit.data import stratified_indices

        ds = load_visda2017(split)
        if max_samples is not None and max_samples < len(ds):
            ds = ds.subset(stratified_indices(ds.labels, int(max_samples), seed),
                           f"stratified(n={int(max_samples)},seed={seed})")
        return ds
    return get_dataset(name, split, max_samples=max_samples, seed=seed)


def _class_subset(ds: ImageDataset, n_outputs: int) -> np.ndarray | None:
    """Classes the target covers when the classifier predicts more (ImageNet-A/-R: 200 of the 1000)."""
    subset = ds.meta.get("class_subset")
    if subset is None or len(subset) >= n_outputs:
        return None
    return np.asarray(subset, dtype=np.int64)


def masked_accuracy(logits: np.ndarray, labels: np.ndarray, class_subset: np.ndarray | None = None) -> float:
    """Top-1 accuracy; with ``class_subset``, the arg-max is taken over those classes only."""
    correct = masked_correct(logits, labels, class_subset)
    return float(correct.mean()) if len(correct) else float("nan")


def masked_correct(logits: np.ndarray, labels: np.ndarray, class_subset: np.ndarray | None = None) -> np.ndarray:
    """Per-item top-1 correctness (bool); with ``class_subset``, the arg-max is over those classes only."""
    logits = np.asarray(logits)
    if class_subset is not None:
        pred = class_subset[np.argmax(logits[:, class_subset], axis=1)]
    else:
        pred = np.argmax(logits, axis=1)
    return pred == np.asarray(labels)


def accuracy_metrics(key: str, correct: np.ndarray, id_acc: float, id_n: int) -> dict[str, float]:
    """``acc/<key>``, ``drop_<key>`` (``id_acc - acc``), their standard errors and the items behind them."""
    acc = float(correct.mean()) if len(correct) else float("nan")
    se = binomial_se(acc, len(correct))
    return {f"acc/{key}": acc, f"drop_{key}": id_acc - acc, f"se/acc/{key}": se,
            f"se/drop_{key}": difference_se(binomial_se(id_acc, id_n), se), f"n/acc/{key}": float(len(correct))}


# ----------------------------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------------------------


@task_entry(SPEC)
def run(p: dict[str, Any], ex: Execution) -> dict[str, float]:
    """Run one OOD cell: train on the source, evaluate on every target; returns metric name -> value."""
    check_label_spaces(p)  # every dataset the cell reads, loaded before any feature is extracted
    config = backbones.data_config(p["backbone"], image_size=p["image_size"])
    timings = {"extract_seconds": 0.0, "train_seconds": 0.0, "evaluate_seconds": 0.0}

    if p["protocol"] == "linear_probe":
        predict, id_logits, id_labels = _linear_probe_classifier(p, ex, config, timings)
    else:
        predict, id_logits, id_labels = _finetuned_classifier(p, ex, config, timings)

    t0, extract_before = time.perf_counter(), predict.extract_seconds
    id_acc, id_n = masked_accuracy(id_logits, id_labels), len(id_labels)
    metrics: dict[str, float] = {"id_acc": id_acc, "se/id_acc": binomial_se(id_acc, id_n)}
    targets = as_list(p["targets"], str)
    for target in targets:
        name, split = _target_spec(target, p["target_split"])
        if name == CORRUPTION_TARGET:
            metrics.update(_corruption_metrics(p, predict, id_acc, id_n))
            continue
        logits, labels, subset = predict.dataset(name, split)
        key = name if split == p["target_split"] else f"{name}:{split}"
        metrics.update(accuracy_metrics(key, masked_correct(logits, labels, subset), id_acc, id_n))
    timings["evaluate_seconds"] = time.perf_counter() - t0 - (predict.extract_seconds - extract_before)
    timings["extract_seconds"] += predict.extract_seconds
    metrics.update(timings)
    metrics.update(n_train=float(predict.n_train), n_test=float(len(id_labels)),
                   feature_cache_hit=float(predict.cache_hit))
    metrics.update(predict.ex.as_metrics())  # exec_*: how it ran (floats; not scores)
    if p["protocol"] == "finetune":
        metrics.update(training_metrics(p, predict.ex.loader_workers))
    return metrics


def check_label_spaces(p: dict[str, Any]) -> None:
    """Every dataset the cell reads is there (the source's train and test splits, every target split: a missing
    one raises :class:`~bobkit.data.MissingDataError` naming it before any work), and every dataset target shares
    the source's classes or is labelled in the ImageNet-1k index space."""
    source = _load(p["dataset"], p["train_split"], None, 0).classes
    _load(p["dataset"], p["test_split"], None, 0)
    for target in as_list(p["targets"], str):
        name, split = _target_spec(target, p["target_split"])
        if name == CORRUPTION_TARGET:
            continue
        target_classes = _load(name, split, None, 0).classes  # lists the files (cached for the cell's own read)
        if name in dataset_names() and dataset_info(name).label_space != "own":
            continue
        classes = target_classes
        if list(classes) != list(source):
            raise ValueError(f"target {name!r} has classes {classes[:4]}... but the source {p['dataset']!r} has "
                             f"{source[:4]}...: OOD targets must share the source's label space")


class _Predictor:
    """Logits for images or for whole target datasets, from a probe on frozen features or a fine-tuned model.

    ``build`` makes the (raw) frozen backbone when a forward pass first needs it; a model that is already
    prepared for ``ex`` (fine-tuned, or built for uncached source features) is given as ``model``. ``ex`` is the
    run's execution, its ``channels_last`` settled once a model exists (read it for the metrics).
    """

    def __init__(self, p: dict[str, Any], ex: Execution, config: dict[str, Any],
                 build: Callable[[], torch.nn.Module] | None, head: Callable[[np.ndarray], np.ndarray] | None,
                 n_train: int, cache_hit: bool, model: torch.nn.Module | None = None) -> None:
        self.p, self.ex, self.config = p, ex, config
        self._build, self._model = build, model
        self.head = head  # features -> logits (linear probe); None when the model outputs logits itself
        self.n_train, self.cache_hit = n_train, cache_hit
        self.extract_seconds = 0.0

    @property
    def model(self) -> torch.nn.Module:
        """The model prepared for :attr:`ex` (built on first use)."""
        if self._model is None:
            assert self._build is not None
            raw = self._build().eval()
            self.ex = self.ex.for_model(raw, self.p["channels_last"])
            self._model = prepare_model(raw, self.ex, grad_checkpointing=False)  # inference only
        return self._model

    def images(self, images: np.ndarray | ImageDataset) -> np.ndarray:
        """Logits of uint8 images, an array or a dataset (uncached forward pass)."""
        t0 = time.perf_counter()
        batch = inference_batch_size(self.p["batch_size"], self.ex)
        out = run_forward(self.model, images, self.config, self.p["image_size"], batch, self.ex)
        self.extract_seconds += time.perf_counter() - t0
        return self.head(out) if self.head is not None else out

    def dataset(self, name: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Logits, labels and the class subset (or None) of a target dataset split."""
        p = self.p
        if name in dataset_names() and self.head is not None:
            # Registry dataset + frozen features: through the feature cache.
            fs = extract_features(dataset=name, split=split, max_samples=p["max_target"], model=self._raw_model(),
                                  **_extraction_args(p, self.ex))
            self.extract_seconds += fs.seconds
            self.cache_hit = self.cache_hit and fs.cache_hit
            logits = self.head(np.array(fs.features))
            ds_meta = get_dataset(name, split) if dataset_info(name).label_space != "own" else None
            subset = _class_subset(ds_meta, logits.shape[1]) if ds_meta is not None else None
            return logits, fs.labels, subset
        ds = _load(name, split, p["max_target"], p["seed"])
        logits = self.images(ds)  # file-backed targets are decoded batch by batch
        self.cache_hit = False
        return logits, ds.labels, _class_subset(ds, logits.shape[1])

    def _raw_model(self) -> torch.nn.Module | None:
        """The built backbone without a ``torch.compile`` wrapper (extraction prepares it itself), or None."""
        return getattr(self._model, "_orig_mod", self._model)


def _extraction_args(p: dict[str, Any], ex: Execution) -> dict[str, Any]:
    """Keyword arguments of :func:`extract_features` shared by every split: the backbone, sizes, execution."""
    return dict(backbone=p["backbone"], image_size=p["image_size"], seed=p["seed"],
                batch_size=inference_batch_size(p["batch_size"], ex), device=ex.device, precision=ex.precision,
                channels_last=p["channels_last"], loader_workers=ex.loader_workers, compile=ex.compile)


def _linear_probe_classifier(p: dict[str, Any], ex: Execution, config: dict[str, Any],
                             timings: dict[str, float]) -> tuple[_Predictor, np.ndarray, np.ndarray]:
    """The probe on frozen source features: the cell's probe artifact (:func:`bobkit.tasks.trained.probe_ref`, the
    classification probe's when the training is the same), loaded when an intact one exists (then the source's
    training features are not read), else fitted here and published."""
    def build() -> torch.nn.Module:
        return backbones.create_model(p["backbone"], num_classes=0, image_size=p["image_size"], seed=p["seed"])

    ref = trained.probe_ref(p, split=p["train_split"])
    needs_train = artifacts.find(ref) is None
    model = None
    training: list[tuple[np.ndarray, np.ndarray]] = []  # the source's training features and labels, once read
    if p["dataset"] in dataset_names():
        args = _extraction_args(p, ex)

        cache_hits: list[bool] = []

        def read_train() -> None:
            train = extract_features(dataset=p["dataset"], split=p["train_split"], max_samples=p["max_train"],
                                     **args)
            timings["extract_seconds"] += train.seconds
            training.append((train.features, train.labels))
            cache_hits.append(train.cache_hit)

        if needs_train:
            read_train()
        test = extract_features(dataset=p["dataset"], split=p["test_split"], max_samples=p["max_test"], **args)
        test_x, test_y = test.features, test.labels
        timings["extract_seconds"] += test.seconds
        cache_hits.append(test.cache_hit)
        n_classes = dataset_info(p["dataset"]).num_classes
    else:  # a source this task builds itself (VisDA): uncached features, decoded batch by batch
        t0 = time.perf_counter()
        model, ex = frozen_backbone(p["backbone"], ex, image_size=p["image_size"], seed=p["seed"],
                                    channels_last=p["channels_last"])
        batch = inference_batch_size(p["batch_size"], ex)
        timings["extract_seconds"] += time.perf_counter() - t0

        def read_train() -> None:
            t = time.perf_counter()
            tr = _load(p["dataset"], p["train_split"], p["max_train"], p["seed"])
            training.append((run_forward(model, tr, config, p["image_size"], batch, ex), tr.labels))
            timings["extract_seconds"] += time.perf_counter() - t

        cache_hits = [False]
        if needs_train:
            read_train()
        t0 = time.perf_counter()
        te = _load(p["dataset"], p["test_split"], p["max_test"], p["seed"])
        test_x, test_y = run_forward(model, te, config, p["image_size"], batch, ex), te.labels
        n_classes = len(te.classes)
        timings["extract_seconds"] += time.perf_counter() - t0

    def fit() -> tuple[ProbeFit, int]:
        if not training:
            read_train()
        train_x, train_y = training[0]
        return fit_probe(np.array(train_x), train_y, num_classes=n_classes, l2=p["probe_l2"],
                         solver=p["probe_solver"], max_iter=p["probe_max_iter"], epochs=p["probe_epochs"],
                         lr=p["probe_lr"], seed=p["seed"], device=ex.device), len(train_y)

    t1 = time.perf_counter()
    fitted, n_train, _ = trained.fitted_probe(ref, fit, ex.device)
    timings["train_seconds"] += time.perf_counter() - t1
    timings.update(fitted.descriptors())  # descriptors beside the timings
    probe = fitted.probe
    predictor = _Predictor(p, ex, config, build, probe.logits, n_train, all(cache_hits), model=model)
    return predictor, probe.logits(np.array(test_x)), np.asarray(test_y)


def training_items(p: dict[str, Any]) -> ImageDataset:
    """The source items a fine-tune trains on (the fine-tune job rebuilds them from the parameters)."""
    return _load(p["dataset"], p["train_split"], p["max_train"], p["seed"])


def _finetuned_classifier(p: dict[str, Any], ex: Execution, config: dict[str, Any],
                          timings: dict[str, float]) -> tuple[_Predictor, np.ndarray, np.ndarray]:
    """The source fine-tune: the weights of the cell's :func:`bobkit.tasks.trained.model_ref` (a classification
    cell of the same training made them), else trained here (data-parallel, resumable) and published."""
    t0 = time.perf_counter()
    train_ds = training_items(p)
    test_ds = _load(p["dataset"], p["test_split"], p["max_test"], p["seed"])
    timings["extract_seconds"] += time.perf_counter() - t0
    t1 = time.perf_counter()
    tuned = trained.finetuned_model(p, ex, trained.model_ref(p, split=p["train_split"]),
                                    items="bobkit.tasks.ood:training_items", num_classes=len(train_ds.classes))
    timings["train_seconds"] += time.perf_counter() - t1
    timings.update(tuned.metrics())
    predictor = _Predictor(p, tuned.ex, config, None, None, len(train_ds), False, model=tuned.prepared)
    return predictor, predictor.images(test_ds), test_ds.labels


def _corruption_metrics(p: dict[str, Any], predict: _Predictor, id_acc: float, id_n: int) -> dict[str, float]:
    """``acc/<corruption>/<severity>``, ``mca`` and ``mca_drop`` on corrupted source test images, with standard
    errors: binomial per condition; for ``mca`` the SE of the per-image mean over conditions (the conditions share
    their images, so their errors are not independent)."""
    ds = _load(p["dataset"], p["test_split"], p["max_corrupted"], p["seed"])
    images, labels = ds.images, ds.labels
    out: dict[str, float] = {}
    per_condition: list[np.ndarray] = []
    for name in as_list(p["corruptions"], str):
        for severity in as_list(p["severities"], int):
            correct = masked_correct(predict.images(corrupt(images, name, severity, seed=p["seed"])), labels)
            out.update({k: v for k, v in accuracy_metrics(f"{name}/{severity}", correct, id_acc, id_n).items()
                        if not k.startswith(("drop_", "se/drop_"))})
            per_condition.append(correct)
    if per_condition:
        per_image = np.mean(per_condition, axis=0)  # each image's accuracy over the conditions
        out.update(mca=float(per_image.mean()), mca_drop=id_acc - float(per_image.mean()),
                   **{"se/mca": mean_se(per_image), "n/mca": float(len(per_image))})
        out["se/mca_drop"] = difference_se(binomial_se(id_acc, id_n), out["se/mca"])
    return out
