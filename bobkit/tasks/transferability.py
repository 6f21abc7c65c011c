"""Transferability: rank before you run. Cheap scores of how well a frozen backbone suits a labelled target dataset.

Per backbone x dataset, from the frozen features of the target's training split only: the features come from
:func:`bobkit.features.extract.extract_features` with the linear probe's arguments (same dataset, ``train`` split,
``image_size``, ``max_train`` and seed), so after a probe cell they are read from the cache and no image goes
through the backbone (``feature_cache_hit`` says so). Five estimators (:mod:`bobkit.eval.transferability`):

``logme``
    LogME (You et al. 2021/2022), the log maximum evidence of a Bayesian linear model per class.
``leep`` and ``nce``
    LEEP (Nguyen et al. 2020) and NCE (Tran et al. 2019) from the backbone's **own ImageNet-1k head** applied to
    the cached pooled features (the head is the classifier of ``create_model(name, num_classes=1000)``, whose input
    is exactly the pooled feature). Not applicable to random-init controls (no trained head) and to weights that
    carry no ImageNet-1k classifier (self-supervised, vision-language, converted backbone-only checkpoints): those
    cells report neither score and say why in a ``no_source_head/<reason>`` descriptor (a missing score, never a
    NaN: the runner fails cells with non-finite scores).
``h_score``
    H-score (Bao et al. 2019).
``knn_acc``
    Leave-one-out k-nearest-neighbour accuracy under cosine similarity.

The wall time of each estimator is a ``<estimator>_seconds`` descriptor (``source_head_seconds``: building the head
and computing its predictions, shared by LEEP and NCE). The scores predict a measured ranking; they measure nothing
themselves, so the analysis keeps them out of leaderboards (``bobkit.analysis.settings.PRIMARY_METRICS``) and
checks them against the measured battle in notebook 09. ``logme`` is the task's headline score (primary in the
sidecar) because it applies to every backbone and needs no head.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from bobkit import backbones
from bobkit.eval import transferability as estimators
from bobkit.features.device import Execution
from bobkit.features.extract import FeatureSet, extract_features, is_cached
from bobkit.tasks import blocks
from bobkit.tasks.common import inference_batch_size
from bobkit.tasks.contract import Metric, Param, TaskSpec, descriptor
from bobkit.tasks.harness import task_entry

PROTOCOLS = ("frozen",)
#: The source label space LEEP and NCE read: an ImageNet-1k classifier.
IMAGENET_CLASSES = 1000
#: Why LEEP and NCE do not apply (the suffix of the ``no_source_head/<reason>`` descriptor), in words.
NO_HEAD_REASONS: dict[str, str] = {
    "random_init": "a random-init control has no trained classifier head",
    "headless_weights": "these weights carry no ImageNet-1k classifier head",
}
#: Estimators that read the backbone's own ImageNet head.
HEAD_ESTIMATORS = ("leep", "nce")

SPEC = TaskSpec(
    name="transferability",
    summary="Transferability scores (LogME, LEEP, NCE, H-score, kNN) from cached frozen features, no training.",
    parameters=(
        blocks.backbone_param(),
        blocks.dataset_param("fashion_mnist", "the target dataset (`bob data`); its train split is scored",
                             blocks.dataset_lookup()),
        blocks.protocol_param("frozen", PROTOCOLS, "estimators read frozen features (the only protocol)"),
        blocks.image_size_param(doc="square input side in pixels, as the linear probe's (cache shared)"),
        blocks.size_param("max_train", 2000, "class-stratified subset of the train split, as the probe's max_train "
                                             "(cache shared; None: all)"),
        Param("knn_k", int, 5, "neighbours voting in the leave-one-out kNN accuracy", low=1, high=1000),
        blocks.batch_size_param(kind="execution", doc="forward batch when the features are not cached yet (no "
                                                       "effect on the results)"),
        blocks.seed_param(),
        *blocks.device_params(),
        *blocks.EXECUTION,
        blocks.OUTPUT_DIR,
    ),
    metrics=(
        Metric("logme", "LogME: mean per-sample log maximum evidence of a Bayesian linear model per class",
               primary=True),
        Metric("leep", "LEEP: log expected empirical prediction of the backbone's ImageNet head"),
        Metric("nce", "NCE: negative conditional entropy of the labels given the ImageNet head's predictions"),
        Metric("h_score", "H-score: tr(cov(f)^+ cov(E[f | y]))"),
        Metric("knn_acc", "leave-one-out k-nearest-neighbour accuracy under cosine similarity"),
        descriptor("source_head_classes", "classes of the ImageNet head LEEP and NCE read (0: none)"),
        descriptor("no_source_head/*", "1.0: LEEP and NCE do not apply, for the reason the name gives"),
        *blocks.COMMON_DESCRIPTORS,
    ),
)
#: The declared defaults (what the notebook's parameters cell holds).
PARAMETERS: dict[str, Any] = SPEC.defaults()
validate_params = SPEC.validate


@dataclass
class TransferabilityResult:
    """The cell's metrics and, per estimator that does not apply to this backbone, the reason in words."""

    metrics: dict[str, float]
    not_applicable: dict[str, str] = field(default_factory=dict)


def no_head_reason(backbone: str) -> str | None:
    """Why ``backbone`` has no ImageNet-1k head for LEEP and NCE (a key of :data:`NO_HEAD_REASONS`), or ``None``
    when ``create_model(backbone, num_classes=1000)`` loads its pretrained ImageNet-1k classifier.

    A head is pretrained when the weights come whole from their source (timm's hub download, a packaged file
    converted with its classifier) and their timm pretrained config has 1000 classes. Checkpoints converted from a
    user file or a URL keep the backbone only (:func:`bobkit.backbones.create_model` would add a fresh head).
    """
    import timm

    entry = backbones.get_backbone(backbone)
    if entry.source == "random":
        return "random_init"
    whole = (entry.source == "packaged"
             or (entry.source == "timm_hub" and backbones.weights_id(backbone).startswith("timm:")))
    if not whole:
        return "headless_weights"
    reference = entry.cfg_tag if entry.source == "packaged" else entry.timm_name
    try:
        classes = timm.models.get_pretrained_cfg(reference).num_classes
    except (RuntimeError, AttributeError):  # unknown tag: no config to read a head from
        return "headless_weights"
    return None if classes == IMAGENET_CLASSES else "headless_weights"


def source_head_probabilities(backbone: str, features: np.ndarray, *, image_size: int, seed: int,
                              device: torch.device) -> np.ndarray:
    """Softmax of the backbone's own ImageNet-1k head applied to its pooled ``features`` (N, D): (N, 1000) float64.

    The head is the classifier of ``create_model(backbone, num_classes=1000)``, whose input is the pooled feature
    that ``num_classes=0`` returns (``tests/test_transferability_task.py`` checks the composition equals the full
    model's logits).
    """
    model = backbones.create_model(backbone, num_classes=IMAGENET_CLASSES, image_size=image_size, seed=seed)
    head = model.get_classifier()
    heads = head if isinstance(head, (tuple, list)) else (head,)  # distilled ViTs: timm averages both in eval
    x = torch.from_numpy(np.array(features, dtype=np.float32))  # a copy: cached features are read-only
    with torch.no_grad():
        logits = sum(h.float().to(device)(x.to(device)) for h in heads) / len(heads)
    return torch.softmax(logits.double(), dim=1).cpu().numpy()


def _timed(fn: Callable[[], float]) -> tuple[float, float]:
    """``(fn(), seconds)``."""
    t0 = time.perf_counter()
    value = fn()
    return float(value), time.perf_counter() - t0


def _train_features(p: dict[str, Any], ex: Execution) -> tuple[FeatureSet, float, Execution]:
    """The probe's training-split features (from the cache when a probe cell filled it), seconds to build the
    backbone (0 on a cache hit) and the execution settled for the model."""
    cached = is_cached(p["backbone"], p["dataset"], "train", image_size=p["image_size"],
                       max_samples=p["max_train"], seed=p["seed"], device=ex.device, precision=ex.precision)
    t0 = time.perf_counter()
    model = None if cached else backbones.create_model(
        p["backbone"], num_classes=0, image_size=p["image_size"], seed=p["seed"])
    load_seconds = time.perf_counter() - t0
    if model is not None:
        ex = ex.for_model(model, p["channels_last"])
    fs = extract_features(
        p["backbone"], p["dataset"], "train", image_size=p["image_size"], max_samples=p["max_train"],
        seed=p["seed"], batch_size=inference_batch_size(p["batch_size"], ex), device=ex.device, model=model,
        precision=ex.precision, channels_last=p["channels_last"], loader_workers=ex.loader_workers,
        compile=ex.compile,
    )
    return fs, load_seconds, ex


def score_features(features: np.ndarray, labels: np.ndarray, *, knn_k: int = 5,
                   source_probs: Callable[[], np.ndarray] | None = None) -> dict[str, float]:
    """Every estimator on ``features`` (N, D) and integer ``labels`` (N,), each with its ``<name>_seconds``.

    ``source_probs`` computes the source head's probabilities (N, C_s) for LEEP and NCE (its time is
    ``source_head_seconds``); ``None`` leaves both out.
    """
    f = np.asarray(features, dtype=np.float64)  # one copy: cached features are read-only memory maps
    y = np.asarray(labels, dtype=np.int64)
    out: dict[str, float] = {}
    out["logme"], out["logme_seconds"] = _timed(lambda: estimators.logme(f, y))
    out["h_score"], out["h_score_seconds"] = _timed(lambda: estimators.h_score(f, y))
    out["knn_acc"], out["knn_acc_seconds"] = _timed(lambda: estimators.knn_loo_accuracy(f, y, k=knn_k))
    if source_probs is not None:
        t0 = time.perf_counter()
        probs = source_probs()
        out["source_head_seconds"] = time.perf_counter() - t0
        out["leep"], out["leep_seconds"] = _timed(lambda: estimators.leep(probs, y))
        out["nce"], out["nce_seconds"] = _timed(lambda: estimators.nce(probs.argmax(axis=1), y))
    return out


@task_entry(SPEC)
def run(p: dict[str, Any], ex: Execution) -> TransferabilityResult:
    """Score one backbone for one target dataset from its cached frozen features; returns the scores, timings and
    the estimators that do not apply (with the reason)."""
    fs, load_seconds, ex = _train_features(p, ex)
    reason = no_head_reason(p["backbone"])
    probs = None if reason is not None else (lambda: source_head_probabilities(
        p["backbone"], fs.features, image_size=p["image_size"], seed=p["seed"], device=ex.device))
    metrics = score_features(fs.features, fs.labels, knn_k=p["knn_k"], source_probs=probs)
    metrics.update(
        n_train=float(len(fs.labels)), n_classes=float(len(np.unique(fs.labels))),
        n_features=float(fs.features.shape[1]), load_seconds=load_seconds, extract_seconds=fs.seconds,
        feature_cache_hit=float(fs.cache_hit), source_head_classes=float(IMAGENET_CLASSES if reason is None else 0),
    )
    not_applicable = {}
    if reason is not None:
        metrics[f"no_source_head/{reason}"] = 1.0
        not_applicable = {name: NO_HEAD_REASONS[reason] for name in HEAD_ESTIMATORS}
    metrics.update(ex.as_metrics())  # exec_*: how it ran (floats; not scores)
    return TransferabilityResult(metrics, not_applicable)
