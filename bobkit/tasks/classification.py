"""Image classification by linear probe on frozen features and by end-to-end fine-tuning.

The linear probe is multinomial logistic regression on standardised cached features, solved with
preconditioned L-BFGS (about 13x faster than the paper's 90-epoch SGD probe at equal accuracy); fine-tuning is
AdamW with warm-up + cosine and optional layer-wise lr decay (the paper's recipe). Low-shot settings keep a
class-stratified fraction of the labels or ``n`` per class.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from bobkit import backbones
from bobkit.data import get_dataset
from bobkit.data.datasets import low_shot_indices
from bobkit.features.device import (
    Execution,
    prepare_model,
    resolve_device,
    resolve_precision,
)
from bobkit.features.extract import BatchConverter, extract_features, is_cached, iter_uint8_batches, run_forward
from bobkit.tasks import blocks
from bobkit.tasks.blocks import PROBE_MAX_ITER
from bobkit.tasks.common import inference_batch_size
from bobkit.tasks.contract import Param, ParameterError, TaskSpec
from bobkit.tasks.harness import task_entry

VERSION = "1"
PROTOCOLS = ("linear_probe", "finetune")
PROBE_SOLVERS = ("lbfgs", "sgd")


def _check(p: dict[str, Any]) -> None:
    """Rules between parameters: one low-shot rule at a time."""
    if p["label_fraction"] is not None and p["shots_per_class"] is not None:
        raise ParameterError(f"classification parameters label_fraction={p['label_fraction']!r} and "
                             f"shots_per_class={p['shots_per_class']!r}: give one low-shot rule, not both")


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
        Param("probe_solver", str, "lbfgs", "linear probe solver (sgd: the paper's 90-epoch recipe)",
              choices=PROBE_SOLVERS),
        *blocks.probe_params(),
        Param("probe_epochs", int, 90, "linear probe, sgd solver: epochs", low=1, high=1000),
        Param("probe_lr", float, 0.1, "linear probe, sgd solver: learning rate", low=0.0, low_open=True),
        *blocks.finetune_params(),
        blocks.batch_size_param(),
        blocks.seed_param(),
        *blocks.device_params(),
        *blocks.EXECUTION,
        blocks.OUTPUT_DIR,
    ),
    metrics=(
        *blocks.accuracy_metrics(),
        *blocks.COMMON_DESCRIPTORS,
    ),
    check=_check,
)
#: The declared defaults (what the notebook's parameters cell holds).
PARAMETERS: dict[str, Any] = SPEC.defaults()
validate_params = SPEC.validate


@dataclass
class LinearProbe:
    """A fitted linear classifier on standardised features."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Class logits ``(N, C)`` for raw (unstandardised) features."""
        if isinstance(features, torch.Tensor):
            x = features.to(self.weight.device, torch.float32)
        else:  # a copy: cached features are read-only (possibly float16) memory maps
            x = torch.from_numpy(np.array(features, dtype=np.float32)).to(self.weight.device)
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
    max_iter: int = PROBE_MAX_ITER,
    precondition_rank: int = 16,
    device: str | torch.device = "cpu",
) -> LinearProbe:
    """Fit multinomial logistic regression with L2 penalty ``l2`` by full-batch, preconditioned L-BFGS.

    Parameters
    ----------
    features, labels
        Training features ``(N, D)`` and integer labels ``(N,)``.
    num_classes
        Number of classes (default: ``labels.max() + 1``).
    l2
        Weight of ``0.5 * ||W||^2`` added to the mean cross-entropy.
    max_iter
        L-BFGS iterations (strong-Wolfe line search). 20 is the median budget that held-out validation splits
        pick over pretrained and random-init backbones (``benchmarks/probe_solver.py``); more iterations lower
        the training objective of near-separable features further without changing their accuracy.
    precondition_rank
        Rescale the ``k`` highest-variance feature directions (a randomized range finder, seeded) so their
        curvature matches the ``k``-th: a change of variables, the objective is unchanged. Strongly correlated
        features (random-init controls) otherwise need about 100 iterations instead of 20. 0 turns it off.
    device
        Where to solve (the GPU when there is one).
    """
    dev = resolve_device(device)
    xs, y, mean, std = _standardised(features, labels, dev)
    n_classes = int(num_classes or int(y.max()) + 1)
    precondition = _top_direction_preconditioner(xs, precondition_rank, l2)
    weight_p = torch.zeros(n_classes, xs.shape[1], device=dev)  # weights in preconditioned coordinates
    bias = torch.zeros(n_classes, device=dev)
    optimizer = torch.optim.LBFGS(
        [weight_p, bias], lr=1.0, max_iter=max_iter, history_size=10, line_search_fn="strong_wolfe"
    )
    objective = _probe_objective(xs, y, n_classes, l2)

    def closure() -> torch.Tensor:
        loss, grad_w, bias.grad = objective(precondition(weight_p), bias)
        weight_p.grad = precondition(grad_w)  # chain rule through W = W_p P (P symmetric)
        return loss

    loss = optimizer.step(closure)
    if not torch.isfinite(torch.as_tensor(loss)):
        raise FloatingPointError(f"linear probe loss is {float(loss)} (l2={l2}); check the features for NaN/inf")
    weight_p.grad = bias.grad = None
    return LinearProbe(mean, std, precondition(weight_p).detach(), bias.detach())


def _top_direction_preconditioner(xs: torch.Tensor, rank: int, l2: float, oversample: int = 8,
                                  power_iterations: int = 1) -> Callable[[torch.Tensor], torch.Tensor]:
    """``M -> M P`` with ``P = I + V diag(s) V^T``: the top ``rank`` principal directions ``V`` of ``xs``
    scaled by ``sqrt((lambda_k + l2) / (lambda_i + l2))``, so the objective's curvature along them matches the
    ``rank``-th's. Found by a seeded randomized range finder (Halko et al. 2011): O(N D rank), deterministic.
    The identity when ``rank`` is 0 or not below the feature dimension."""
    n, d = xs.shape
    if rank <= 0 or rank >= min(n, d):
        return lambda m: m
    q = min(rank + oversample, d, n)
    generator = torch.Generator(device=xs.device).manual_seed(0)
    basis = xs @ torch.randn(d, q, generator=generator, device=xs.device)
    for _ in range(power_iterations):
        basis = torch.linalg.qr(basis).Q
        basis = xs @ (xs.T @ basis)
    basis = torch.linalg.qr(basis).Q
    _, singular, vh = torch.linalg.svd(basis.T @ xs, full_matrices=False)
    directions = vh[:rank].T  # (D, rank)
    variances = singular[:rank] ** 2 / n
    # Never shrink a direction below the average variance (1 for standardised features): with few latent
    # factors the rank-th direction is noise, and scaling signal down to it would slow L-BFGS, not help it.
    floor = torch.clamp(variances[-1], min=float(xs.pow(2).mean()))
    scale = torch.sqrt((torch.minimum(variances, floor) + l2) / (variances + l2)) - 1.0  # 0 below the floor

    def apply(m: torch.Tensor) -> torch.Tensor:
        return m + ((m @ directions) * scale) @ directions.T

    return apply


def _standardised(
    features: np.ndarray, labels: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features as float32 on ``device``, standardised per dimension in place; labels; the mean and std used.

    Copies once (cached features are read-only memory maps, possibly float16); float16 travels to a GPU as is
    and is widened there (half the bytes over the bus).
    """
    array = np.asarray(features)
    if device.type == "cuda" and array.dtype == np.float16:
        x = torch.from_numpy(np.array(array)).to(device).float()
    else:
        x = torch.from_numpy(np.array(array, dtype=np.float32)).to(device)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)
    mean = x.mean(0)
    x.sub_(mean)
    # the unbiased std from the centred columns' norms: a quarter of Tensor.std(0)'s time on CPU
    std = (torch.linalg.vector_norm(x, dim=0) / math.sqrt(max(len(x) - 1, 1))).clamp_min(1e-6)
    return x.div_(std), y, mean, std


def _probe_objective(xs: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float):
    """Mean cross-entropy + ``0.5 * l2 * ||W||^2`` and its exact gradient, in closed form.

    The same objective autograd would differentiate, at two matrix products per evaluation and without building
    a graph (about a third less work per L-BFGS step). Returns ``f(weight, bias) -> (loss, grad_w, grad_b)``.
    """
    n = xs.shape[0]
    onehot = F.one_hot(y, num_classes).to(xs.dtype)

    def evaluate(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = torch.addmm(bias, xs, weight.T)
        lse = torch.logsumexp(logits, dim=1)
        loss = (lse.sum() - (logits * onehot).sum()) / n + 0.5 * l2 * weight.pow(2).sum()
        grad = logits.sub_(lse[:, None]).exp_().sub_(onehot).div_(n)  # (softmax - onehot) / n, in place
        grad_w = torch.addmm(weight, grad.T, xs, beta=l2)
        return loss, grad_w, grad.sum(0)

    return evaluate


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
    device: str | torch.device = "cpu",
) -> LinearProbe:
    """The paper's epoch-based probe: mini-batch SGD (momentum 0.9, cosine lr) on standardised features.

    Same objective as :func:`fit_linear_probe` (mean cross-entropy + ``0.5 * l2 * ||W||^2``), solved the slow way;
    kept for comparison with the paper's recipe and for features too large for full-batch L-BFGS.
    """
    dev = resolve_device(device)
    xs, y, mean, std = _standardised(features, labels, dev)
    n_classes = int(num_classes or int(y.max()) + 1)
    layer = torch.nn.Linear(xs.shape[1], n_classes).to(dev)
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


@task_entry(SPEC)
def run(p: dict[str, Any], ex: Execution) -> dict[str, float]:
    """Run one classification cell (linear probe or fine-tuning); returns metric name -> value."""
    if p["protocol"] == "linear_probe":
        return _run_linear_probe(p, ex)
    return _run_finetune(p, ex)


def _run_linear_probe(p: dict[str, Any], ex: Execution) -> dict[str, float]:
    batch = inference_batch_size(p["batch_size"], ex)
    common = dict(image_size=p["image_size"], seed=p["seed"], batch_size=batch, device=ex.device,
                  precision=ex.precision, channels_last=p["channels_last"], loader_workers=ex.loader_workers,
                  compile=ex.compile)
    cached = all(
        is_cached(p["backbone"], p["dataset"], split, image_size=p["image_size"], max_samples=n, seed=p["seed"],
                  device=ex.device, precision=ex.precision)
        for split, n in (("train", p["max_train"]), ("test", p["max_test"]))
    )
    t0 = time.perf_counter()
    # Both splits cached: no backbone to build (a rerun of a probe cell never touches the weights).
    model = None if cached else backbones.create_model(
        p["backbone"], num_classes=0, image_size=p["image_size"], seed=p["seed"])
    load_seconds = time.perf_counter() - t0
    if model is not None:
        ex = ex.for_model(model, p["channels_last"])  # what extraction resolves too (for the metrics)
    train = extract_features(p["backbone"], p["dataset"], "train", max_samples=p["max_train"], model=model, **common)
    test = extract_features(p["backbone"], p["dataset"], "test", max_samples=p["max_test"], model=model, **common)
    keep = low_shot_indices(train.labels, fraction=p["label_fraction"], per_class=p["shots_per_class"], seed=p["seed"])
    n_classes = len(get_dataset(p["dataset"], "train").classes)
    t1 = time.perf_counter()
    if p["probe_solver"] == "sgd":
        probe = fit_sgd_probe(
            train.features[keep], train.labels[keep], num_classes=n_classes, l2=p["probe_l2"],
            epochs=p["probe_epochs"], lr=p["probe_lr"], seed=p["seed"], device=ex.device,
        )
    else:
        probe = fit_linear_probe(
            train.features[keep], train.labels[keep], num_classes=n_classes,
            l2=p["probe_l2"], max_iter=p["probe_max_iter"], device=ex.device,
        )
    train_seconds = time.perf_counter() - t1
    t2 = time.perf_counter()
    metrics = classification_metrics(probe.logits(test.features), test.labels)
    metrics.update(
        n_train=float(len(keep)), n_test=float(len(test.labels)), load_seconds=load_seconds,
        extract_seconds=train.seconds + test.seconds, train_seconds=train_seconds,
        evaluate_seconds=time.perf_counter() - t2, feature_cache_hit=float(train.cache_hit and test.cache_hit),
    )
    metrics.update(ex.as_metrics())  # exec_*: how it ran (floats; not scores)
    return metrics


def _run_finetune(p: dict[str, Any], ex: Execution) -> dict[str, float]:
    device = ex.device
    t0 = time.perf_counter()
    train_ds = get_dataset(p["dataset"], "train", max_samples=p["max_train"], seed=p["seed"])
    test_ds = get_dataset(p["dataset"], "test", max_samples=p["max_test"], seed=p["seed"])
    keep = low_shot_indices(train_ds.labels, fraction=p["label_fraction"], per_class=p["shots_per_class"], seed=p["seed"])
    n_classes = len(train_ds.classes)
    model = backbones.create_model(p["backbone"], num_classes=n_classes, image_size=p["image_size"], seed=p["seed"])
    config = backbones.data_config(p["backbone"], image_size=p["image_size"])
    ex = ex.for_model(model, p["channels_last"])
    model = prepare_model(model, ex)  # device, channels_last, gradient checkpointing, compile
    load_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    train = train_ds if len(keep) == len(train_ds) else train_ds.subset(keep, "low_shot")
    finetune(
        model, train, train.labels, config, image_size=p["image_size"],
        epochs=p["epochs"], lr=p["lr"], weight_decay=p["weight_decay"], layer_decay=p["layer_decay"],
        warmup_epochs=p["warmup_epochs"], batch_size=p["batch_size"], seed=p["seed"], device=device,
        precision=ex.precision, channels_last=ex.channels_last, loader_workers=ex.loader_workers,
        pin_memory=ex.pin_memory,
    )
    train_seconds = time.perf_counter() - t1
    t2 = time.perf_counter()
    batch = inference_batch_size(p["batch_size"], ex)
    logits = run_forward(model.eval(), test_ds, config, p["image_size"], batch, ex)
    metrics = classification_metrics(logits, test_ds.labels)
    metrics.update(
        n_train=float(len(keep)), n_test=float(len(test_ds.labels)), load_seconds=load_seconds,
        train_seconds=train_seconds, evaluate_seconds=time.perf_counter() - t2,
    )
    metrics.update(ex.as_metrics())
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
    precision: str = "fp32",
    channels_last: bool = False,
    loader_workers: int = 0,
    pin_memory: bool = False,
    check_every: int | None = None,
) -> list[float]:
    """Train ``model`` end to end with AdamW, linear warm-up and cosine decay; return the per-step losses.

    ``images`` is a uint8 array or an :class:`~bobkit.data.ImageDataset` aligned with ``labels``. ``model`` must
    already be on ``device`` (see :func:`bobkit.features.device.prepare_model` for channels_last, checkpointing, compile).

    Execution: ``precision`` autocast (``fp16`` adds a gradient scaler), ``channels_last`` input batches,
    ``loader_workers`` prefetch threads with ``pin_memory`` host batches. Losses stay on the device; they are
    checked for non-finite values every ``check_every`` steps (default: every step on CPU, every 50 on a GPU, so
    the GPU is not stalled by a host sync per step).

    Raises ``FloatingPointError`` on a non-finite loss (a failed run, never a metric).
    """
    import timm.optim

    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    # Parameter groups from the plain module: a torch.compile wrapper prefixes names, which layer decay matches.
    base = getattr(model, "_orig_mod", model)
    optimizer = timm.optim.create_optimizer_v2(
        base, opt="adamw", lr=lr, weight_decay=weight_decay, layer_decay=layer_decay
    )
    steps_per_epoch = max(1, math.ceil(len(images) / batch_size))
    total = max(1, round(epochs * steps_per_epoch))
    warmup = round(warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _warmup_cosine(step, warmup, total))
    plan = _batch_plan(len(images), batch_size, total, seed)
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    convert = BatchConverter(data_config, image_size, device, channels_last=channels_last)
    ex = Execution(device=device, precision=precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    every = check_every or (1 if device.type == "cpu" else 50)
    pin = pin_memory and device.type == "cuda"
    losses: list[torch.Tensor] = []
    checked = 0
    model.train()
    batches = iter_uint8_batches(images, plan, workers=loader_workers, pin_memory=pin)
    for step, (idx, batch) in enumerate(zip(plan, batches)):
        x = convert(batch)
        y = labels_t[idx].to(device, non_blocking=True)
        with ex.autocast():
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        losses.append(loss.detach())
        if (step + 1) % every == 0 or step + 1 == total:
            _raise_if_not_finite(losses, checked, lr)
            checked = len(losses)
    return torch.stack(losses).float().cpu().tolist()


def _batch_plan(n: int, batch_size: int, total: int, seed: int) -> list[np.ndarray]:
    """Sorted index batches for ``total`` steps: a fresh permutation per epoch (seeded), cut into batches."""
    generator = np.random.default_rng(seed)
    plan: list[np.ndarray] = []
    while len(plan) < total:
        order = generator.permutation(n)
        for lo in range(0, n, batch_size):
            if len(plan) >= total:
                break
            plan.append(np.sort(order[lo : lo + batch_size]))
    return plan


def _raise_if_not_finite(losses: list[torch.Tensor], start: int, lr: float) -> None:
    """One host sync for the losses since ``start``: raise at the first non-finite one."""
    recent = torch.stack(losses[start:])
    bad = ~torch.isfinite(recent)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise FloatingPointError(
            f"non-finite fine-tuning loss {float(recent[first])} at step {start + first} (lr={lr})"
        )


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Multiplier on the base lr: linear warm-up for ``warmup`` steps, then cosine to zero at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
