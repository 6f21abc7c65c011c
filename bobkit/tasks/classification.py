"""Image classification by linear probe on frozen features and by end-to-end fine-tuning.

The linear probe is multinomial logistic regression on standardised cached features, solved with L-BFGS
(converges in seconds); fine-tuning is AdamW with warm-up + cosine and optional layer-wise lr decay (the paper's
recipe). Low-shot settings keep a class-stratified fraction of the labels or ``n`` per class.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from bobkit import backbones
from bobkit.data import get_dataset
from bobkit.data.datasets import low_shot_indices
from bobkit.data.transforms import to_tensor_batch
from bobkit.device import resolve_device, set_threads
from bobkit.features import extract_features, forward_batches, take_batch

VERSION = "1"
PROTOCOLS = ("linear_probe", "finetune")
PROBE_SOLVERS = ("lbfgs", "sgd")

PARAMETERS: dict[str, Any] = {
    "backbone": "mobilenetv2_100.packaged_tv_in1k",
    "dataset": "fashion_mnist",
    "protocol": "linear_probe",
    "image_size": 64,
    "max_train": 2000,
    "max_test": 1000,
    "label_fraction": None,
    "shots_per_class": None,
    "probe_solver": "lbfgs",
    "probe_l2": 1e-3,
    "probe_max_iter": 100,
    "probe_epochs": 90,
    "probe_lr": 0.1,
    "epochs": 1,
    "lr": 1e-3,
    "weight_decay": 0.05,
    "layer_decay": None,
    "warmup_epochs": 0.0,
    "batch_size": 64,
    "seed": 0,
    "device": "auto",
    "num_threads": None,
}


@dataclass
class LinearProbe:
    """A fitted linear classifier on standardised features."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Class logits ``(N, C)`` for raw (unstandardised) features."""
        x = torch.as_tensor(np.asarray(features), dtype=torch.float32, device=self.weight.device)
        return (((x - self.mean) / self.std) @ self.weight.T + self.bias).cpu().numpy()

    def as_module(self) -> torch.nn.Linear:
        """The probe folded into one ``nn.Linear`` on raw features (for attacks and end-to-end evaluation)."""
        layer = torch.nn.Linear(self.weight.shape[1], self.weight.shape[0])
        with torch.no_grad():
            layer.weight.copy_(self.weight / self.std)
            layer.bias.copy_(self.bias - (self.weight * (self.mean / self.std)).sum(1))
        return layer.cpu()


def fit_linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int | None = None,
    l2: float = 1e-3,
    max_iter: int = 100,
    device: str = "cpu",
) -> LinearProbe:
    """Fit multinomial logistic regression with L2 penalty ``l2`` by full-batch L-BFGS.

    Parameters
    ----------
    features, labels
        Training features ``(N, D)`` and integer labels ``(N,)``.
    num_classes
        Number of classes (default: ``labels.max() + 1``).
    l2
        Weight of ``0.5 * ||W||^2`` added to the mean cross-entropy.
    max_iter
        L-BFGS iterations; the strong-Wolfe line search makes 100 plenty for a convex problem this size.
    device
        Where to solve (the GPU when there is one).
    """
    dev = resolve_device(device)
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32, device=dev)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=dev)
    n_classes = int(num_classes or int(y.max()) + 1)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    xs = (x - mean) / std
    weight = torch.zeros(n_classes, x.shape[1], device=dev, requires_grad=True)
    bias = torch.zeros(n_classes, device=dev, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(xs @ weight.T + bias, y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    if not torch.isfinite(torch.as_tensor(loss)):
        raise FloatingPointError(f"linear probe loss is {float(loss)} (l2={l2}); check the features for NaN/inf")
    return LinearProbe(mean, std, weight.detach(), bias.detach())


def fit_sgd_probe(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int | None = None,
    l2: float = 1e-3,
    epochs: int = 90,
    lr: float = 0.1,
    batch_size: int = 256,
    seed: int = 0,
    device: str = "cpu",
) -> LinearProbe:
    """The paper's epoch-based probe: mini-batch SGD (momentum 0.9, cosine lr) on standardised features.

    Same objective as :func:`fit_linear_probe` (mean cross-entropy + ``0.5 * l2 * ||W||^2``), solved the slow way;
    kept for comparison with the paper's recipe and for features too large for full-batch L-BFGS.
    """
    dev = resolve_device(device)
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32, device=dev)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=dev)
    n_classes = int(num_classes or int(y.max()) + 1)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    xs = (x - mean) / std
    layer = torch.nn.Linear(x.shape[1], n_classes).to(dev)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    optimizer = torch.optim.SGD(layer.parameters(), lr=lr, momentum=0.9)
    steps = epochs * max(1, math.ceil(len(xs) / batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=generator).to(dev)
        for lo in range(0, len(xs), batch_size):
            idx = order[lo : lo + batch_size]
            loss = F.cross_entropy(layer(xs[idx]), y[idx]) + 0.5 * l2 * layer.weight.pow(2).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    if not torch.isfinite(loss):
        raise FloatingPointError(f"SGD probe loss is {loss.item()} (lr={lr}, l2={l2})")
    return LinearProbe(mean, std, layer.weight.detach(), layer.bias.detach())


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 (and top-5 when there are more than 5 classes), macro-F1 and NLL (nats) from logits."""
    logits_t = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if not torch.isfinite(logits_t).all():
        raise FloatingPointError("classifier produced non-finite logits; refusing to report metrics")
    pred = logits_t.argmax(1)
    metrics = {
        "top1": float((pred == labels_t).double().mean()),
        "macro_f1": float(f1_score(labels_t.numpy(), pred.numpy(), average="macro")),
        "nll": float(F.cross_entropy(logits_t, labels_t)),
    }
    if logits_t.shape[1] > 5:
        top5 = logits_t.topk(5, dim=1).indices
        metrics["top5"] = float((top5 == labels_t[:, None]).any(1).double().mean())
    return metrics


def validate_params(params: dict[str, Any]) -> None:
    """Reject bad values before anything runs (also called by the grid on every cell)."""
    if params["protocol"] not in PROTOCOLS:
        raise ValueError(f"protocol={params['protocol']!r} is not one of {PROTOCOLS}")
    if params["probe_solver"] not in PROBE_SOLVERS:
        raise ValueError(f"probe_solver={params['probe_solver']!r} is not one of {PROBE_SOLVERS}")
    for name in ("image_size", "batch_size"):
        if not isinstance(params[name], int) or params[name] < 1:
            raise ValueError(f"{name}={params[name]!r} must be a positive integer")
    if params["label_fraction"] is not None and not 0 < params["label_fraction"] <= 1:
        raise ValueError(f"label_fraction={params['label_fraction']!r} must be in (0, 1]")


def run(**params: Any) -> dict[str, float]:
    """Run one classification cell; ``params`` override :data:`PARAMETERS`. Returns metric name -> value."""
    p = {**PARAMETERS, **params}
    unknown = set(params) - set(PARAMETERS)
    if unknown:
        raise TypeError(f"unknown classification parameter(s): {', '.join(sorted(unknown))}")
    validate_params(p)
    threads = set_threads(p["num_threads"])
    torch.manual_seed(p["seed"])
    if p["protocol"] == "linear_probe":
        metrics = _run_linear_probe(p)
    else:
        metrics = _run_finetune(p)
    metrics["threads"] = float(threads)
    return metrics


def _run_linear_probe(p: dict[str, Any]) -> dict[str, float]:
    common = dict(image_size=p["image_size"], seed=p["seed"], batch_size=p["batch_size"], device=p["device"])
    t0 = time.perf_counter()
    model = backbones.create_model(p["backbone"], num_classes=0, image_size=p["image_size"], seed=p["seed"])
    load_seconds = time.perf_counter() - t0
    train = extract_features(p["backbone"], p["dataset"], "train", max_samples=p["max_train"], model=model, **common)
    test = extract_features(p["backbone"], p["dataset"], "test", max_samples=p["max_test"], model=model, **common)
    keep = low_shot_indices(train.labels, fraction=p["label_fraction"], per_class=p["shots_per_class"], seed=p["seed"])
    n_classes = len(get_dataset(p["dataset"], "train").classes)
    t1 = time.perf_counter()
    if p["probe_solver"] == "sgd":
        probe = fit_sgd_probe(
            train.features[keep], train.labels[keep], num_classes=n_classes, l2=p["probe_l2"],
            epochs=p["probe_epochs"], lr=p["probe_lr"], seed=p["seed"], device=p["device"],
        )
    else:
        probe = fit_linear_probe(
            train.features[keep], train.labels[keep], num_classes=n_classes,
            l2=p["probe_l2"], max_iter=p["probe_max_iter"], device=p["device"],
        )
    train_seconds = time.perf_counter() - t1
    t2 = time.perf_counter()
    metrics = classification_metrics(probe.logits(test.features), test.labels)
    metrics.update(
        n_train=float(len(keep)), n_test=float(len(test.labels)), load_seconds=load_seconds,
        extract_seconds=train.seconds + test.seconds, train_seconds=train_seconds,
        evaluate_seconds=time.perf_counter() - t2, feature_cache_hit=float(train.cache_hit and test.cache_hit),
    )
    return metrics


def _run_finetune(p: dict[str, Any]) -> dict[str, float]:
    device = resolve_device(p["device"])
    t0 = time.perf_counter()
    train_ds = get_dataset(p["dataset"], "train", max_samples=p["max_train"], seed=p["seed"])
    test_ds = get_dataset(p["dataset"], "test", max_samples=p["max_test"], seed=p["seed"])
    keep = low_shot_indices(train_ds.labels, fraction=p["label_fraction"], per_class=p["shots_per_class"], seed=p["seed"])
    n_classes = len(train_ds.classes)
    model = backbones.create_model(p["backbone"], num_classes=n_classes, image_size=p["image_size"], seed=p["seed"])
    config = backbones.data_config(p["backbone"], image_size=p["image_size"])
    model = model.to(device)
    load_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    train = train_ds if len(keep) == len(train_ds) else train_ds.subset(keep, "low_shot")
    finetune(
        model, train, train.labels, config, image_size=p["image_size"],
        epochs=p["epochs"], lr=p["lr"], weight_decay=p["weight_decay"], layer_decay=p["layer_decay"],
        warmup_epochs=p["warmup_epochs"], batch_size=p["batch_size"], seed=p["seed"], device=device,
    )
    train_seconds = time.perf_counter() - t1
    t2 = time.perf_counter()
    logits = forward_batches(model.eval(), test_ds, config, p["image_size"], p["batch_size"], device)
    metrics = classification_metrics(logits, test_ds.labels)
    metrics.update(
        n_train=float(len(keep)), n_test=float(len(test_ds.labels)), load_seconds=load_seconds,
        train_seconds=train_seconds, evaluate_seconds=time.perf_counter() - t2,
    )
    return metrics


def finetune(
    model: torch.nn.Module,
    images: Any,
    labels: np.ndarray,
    data_config: dict[str, Any],
    *,
    image_size: int,
    epochs: float,
    lr: float,
    weight_decay: float,
    layer_decay: float | None,
    warmup_epochs: float,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> list[float]:
    """Train ``model`` end to end with AdamW, linear warm-up and cosine decay; return the per-step losses.

    ``images`` is a uint8 array or an :class:`~bobkit.data.ImageDataset` aligned with ``labels``.

    Raises ``FloatingPointError`` on a non-finite loss (a failed run, never a metric).
    """
    import timm.optim

    optimizer = timm.optim.create_optimizer_v2(
        model, opt="adamw", lr=lr, weight_decay=weight_decay, layer_decay=layer_decay
    )
    steps_per_epoch = max(1, math.ceil(len(images) / batch_size))
    total = max(1, round(epochs * steps_per_epoch))
    warmup = round(warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _warmup_cosine(step, warmup, total))
    generator = np.random.default_rng(seed)
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    losses: list[float] = []
    model.train()
    step = 0
    while step < total:
        order = generator.permutation(len(images))
        for lo in range(0, len(order), batch_size):
            if step >= total:
                break
            idx = np.sort(order[lo : lo + batch_size])
            x = to_tensor_batch(take_batch(images, idx), data_config, image_size).to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), labels_t[idx].to(device))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite fine-tuning loss {loss.item()} at step {step} (lr={lr})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            step += 1
    return losses


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Multiplier on the base lr: linear warm-up for ``warmup`` steps, then cosine to zero at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
