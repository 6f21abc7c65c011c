"""Training shared by the tasks: the linear probe on frozen features, end-to-end fine-tuning, and selection.

Linear probe
    Multinomial logistic regression on standardised features: mean cross-entropy + ``0.5 * l2 * ||W||^2``, solved
    full-batch by preconditioned L-BFGS (:func:`fit_linear_probe`, about 13x faster than the paper's 90-epoch SGD
    probe at equal accuracy) or by that SGD recipe (:func:`fit_sgd_probe`). :func:`fit_probe` picks ``l2`` from
    :data:`PROBE_L2_GRID` on a class-stratified validation split carved from the training items (never the test
    split) and refits on all of them. On CPU the fit runs on one thread, so its result does not depend on the
    thread count (see :func:`bobkit.features.device.single_thread_on_cpu`).
Fine-tuning
    :func:`finetune`: AdamW (no weight decay on biases and norms), optional layer-wise lr decay, linear warm-up
    then cosine decay stepped per optimizer step by timm's scheduler (:func:`warmup_cosine`), which is what applies
    each parameter group's ``lr_scale``; the input, mixing and loss of the recipe (:mod:`bobkit.tasks.recipe`).
    The loop is explicit for data-parallel and resumed runs: the data order is a pure function
    (:class:`BatchPlan`), its progress one object (:class:`FinetuneProgress`), one optimizer step one call
    (:func:`train_step`); the progress survives interruptions through :mod:`bobkit.tasks.train_state` and the
    steps run data-parallel over a :class:`~bobkit.tasks.distributed.World`. On CPU it runs on one thread, so its
    result does not depend on the thread count.
    :func:`make_optimizer` and :func:`warmup_cosine` also drive detection.
Selection
    A swept hyperparameter is a selection on held-out training items (:func:`validation_split`,
    :func:`validation_folds`), and the cell reports the winner's test metric: the probe's L2 by
    :func:`choose_probe_l2`, a list of learning rates by :func:`select_on_validation`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from bobkit.eval.uncertainty import binomial_se
from bobkit.features.device import Execution, resolve_device, resolve_precision, single_thread_on_cpu
from bobkit.features.extract import BatchConverter, iter_uint8_batches
from bobkit.tasks.blocks import PROBE_MAX_ITER
from bobkit.tasks.recipe import AugmentedImages, BatchMixer, Recipe, micro_batch_size, step_seed

#: L2 strengths :func:`fit_probe` chooses from when ``l2="auto"`` (log-spaced; features are standardised). Test-NLL
#: optima measured on Fashion-MNIST: 1e-2..1e-1 with 2000 labels, 1..3 with 10 per class (benchmarks/probe_l2.py).
PROBE_L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
#: The L2 strength of ``l2="auto"`` when a class has a single training item, so nothing can be held out (Flowers-102
#: at 10% labels): the strong end of the measured optima (1..3 with 10 labels per class, benchmarks/probe_l2.py),
#: recorded as ``fallback_probe_l2``.
PROBE_L2_ONE_SHOT = 1.0
#: Share of the training items held out (per class) to choose a hyperparameter.
VALIDATION_FRACTION = 0.2
#: Fewer held-out items than this and :func:`validation_folds` cross-validates instead: NLL on a few dozen items is
#: dominated by the rare confident mistake (a 20-item split picked an L2 ten times too small for a 10-shot probe).
MIN_VALIDATION_ITEMS = 200
PROBE_SOLVERS = ("lbfgs", "sgd")

Candidate = TypeVar("Candidate")


# ------------------------------------------------------------------------------------------------------------
# Linear probe
# ------------------------------------------------------------------------------------------------------------


@dataclass
class LinearProbe:
    """A fitted linear classifier on standardised features."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Class logits ``(N, C)`` for raw (unstandardised) features (one CPU thread: thread-count invariant)."""
        if isinstance(features, torch.Tensor):
            x = features.to(self.weight.device, torch.float32)
        else:  # a copy: cached features are read-only (possibly float16) memory maps
            x = torch.from_numpy(np.array(features, dtype=np.float32)).to(self.weight.device)
        with single_thread_on_cpu(self.weight.device):
            return (((x - self.mean) / self.std) @ self.weight.T + self.bias).cpu().numpy()

    def as_module(self) -> torch.nn.Linear:
        """The probe folded into one ``nn.Linear`` on raw features (for attacks and end-to-end evaluation)."""
        layer = torch.nn.Linear(self.weight.shape[1], self.weight.shape[0])
        with torch.no_grad():
            layer.weight.copy_(self.weight / self.std)
            layer.bias.copy_(self.bias - (self.weight * (self.mean / self.std)).sum(1))
        return layer.cpu()


@dataclass
class ProbeFit:
    """A probe and how its L2 strength was set: ``selected`` when chosen on held-out training items, with every
    candidate's held-out top-1 and NLL (empty for a fixed ``l2``; NaN for a candidate whose fit diverged)."""

    probe: LinearProbe
    l2: float
    selected: bool = False
    validation_top1: dict[float, float] = field(default_factory=dict)
    validation_nll: dict[float, float] = field(default_factory=dict)
    fallback: bool = False

    def descriptors(self) -> dict[str, float]:
        """How the L2 strength was set, as run descriptors: ``selected_probe_l2`` (chosen on held-out items) or
        ``fallback_probe_l2`` (:data:`PROBE_L2_ONE_SHOT`: a class had one item); nothing for a fixed value."""
        if self.selected:
            return {"selected_probe_l2": self.l2}
        return {"fallback_probe_l2": self.l2} if self.fallback else {}


def fit_probe(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int | None = None,
    l2: float | str = "auto",
    solver: str = "lbfgs",
    max_iter: int = PROBE_MAX_ITER,
    epochs: int = 90,
    lr: float = 0.1,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> ProbeFit:
    """Fit the linear probe with a fixed ``l2`` or, for ``l2="auto"``, the one that validates best.

    ``"auto"`` holds out :data:`VALIDATION_FRACTION` of each class's training items (seeded by ``seed``; with few
    items, every item once over stratified folds, :func:`validation_folds`), fits one probe per value of
    :data:`PROBE_L2_GRID` on the rest, scores each on the held-out items, picks by :func:`choose_probe_l2` (top-1,
    the primary metric, within one standard error of the best; then the lowest NLL) and refits on all training
    items with it. The test split is never seen; a value whose fit diverges (SGD with a large ``lr * l2``) is left
    out.
    ``solver`` is ``"lbfgs"`` (:func:`fit_linear_probe`, ``max_iter``) or ``"sgd"`` (:func:`fit_sgd_probe`,
    ``epochs``, ``lr``).

    Raises
    ------
    ValueError
        A bad ``l2`` or ``solver`` (naming it), or ``"auto"`` when a class has fewer than two training items.
    """
    if solver not in PROBE_SOLVERS:
        raise ValueError(f"probe_solver={solver!r} is not one of {PROBE_SOLVERS}")
    labels = np.asarray(labels)
    n_classes = int(num_classes or int(labels.max()) + 1)

    def fit(x: np.ndarray, y: np.ndarray, strength: float) -> LinearProbe:
        if solver == "sgd":
            return fit_sgd_probe(x, y, num_classes=n_classes, l2=strength, epochs=epochs, lr=lr, seed=seed,
                                 device=device)
        return fit_linear_probe(x, y, num_classes=n_classes, l2=strength, max_iter=max_iter, device=device)

    if l2 != "auto":
        if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not l2 > 0 or not math.isfinite(l2):
            raise ValueError(f"probe_l2={l2!r} must be a positive number or 'auto'")
        return ProbeFit(fit(features, labels, float(l2)), float(l2))
    if len(labels) and _smallest_class(labels) < 2:
        return ProbeFit(fit(features, labels, PROBE_L2_ONE_SHOT), PROBE_L2_ONE_SHOT, fallback=True)
    folds = validation_folds(labels, seed=seed, name="probe_l2='auto'")
    x = np.asarray(features)

    def held_out_scores(strength: float) -> tuple[float, float]:
        """Top-1 and mean NLL over every held-out item (pooled over the folds); NaN when the fit diverges."""
        correct, nll = 0.0, 0.0
        for fit_idx, val_idx in folds:
            try:
                probe = fit(x[fit_idx], labels[fit_idx], strength)
            except FloatingPointError:  # SGD diverges when lr * l2 is too large: not a candidate
                return float("nan"), float("nan")
            logits = torch.as_tensor(probe.logits(x[val_idx]), dtype=torch.float64)
            y = torch.as_tensor(labels[val_idx])
            correct += float((logits.argmax(1) == y).sum())
            nll += float(F.cross_entropy(logits, y, reduction="sum"))
        n = sum(len(val_idx) for _, val_idx in folds)
        return correct / n, nll / n

    scores = {strength: held_out_scores(strength) for strength in PROBE_L2_GRID}
    n_held_out = sum(len(val_idx) for _, val_idx in folds)
    best = choose_probe_l2(scores, n_held_out)
    return ProbeFit(fit(x, labels, best), best, selected=True,
                    validation_top1={k: v[0] for k, v in scores.items()},
                    validation_nll={k: v[1] for k, v in scores.items()})


def _smallest_class(labels: np.ndarray) -> int:
    """Items of the rarest class present in ``labels``."""
    return int(np.unique(labels, return_counts=True)[1].min())


def choose_probe_l2(scores: dict[float, tuple[float, float]], n_held_out: int) -> float:
    """The L2 strength to use, from each candidate's held-out ``(top1, nll)`` over ``n_held_out`` items.

    Candidates whose top-1 is within one binomial standard error of the best are equally good on the primary
    metric (the one-standard-error rule); among them the lowest NLL wins (a proper score: it prefers calibrated
    probabilities, so the probe does not report an NLL of 4 at 66% top-1), the smaller L2 on exact ties. NLL
    alone is not used: a few confidently wrong held-out items can drive it to an L2 that costs points of top-1.
    """
    finite = {k: v for k, v in scores.items() if math.isfinite(v[0]) and math.isfinite(v[1])}
    if not finite:
        raise ValueError(f"every L2 candidate {sorted(scores)} failed to fit")
    best_top1 = max(top1 for top1, _ in finite.values())
    floor = best_top1 - binomial_se(best_top1, n_held_out) - 1e-12
    return min((k for k, (top1, _) in finite.items() if top1 >= floor), key=lambda k: (finite[k][1], k))


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
        Where to solve (the GPU when there is one). On CPU the solve uses one thread: the result is then the same
        for any thread count (a 2000 x 1280 probe takes about 0.2 s either way).
    """
    dev = resolve_device(device)
    with single_thread_on_cpu(dev):
        return _fit_lbfgs(features, labels, num_classes, l2, max_iter, precondition_rank, dev)


def _fit_lbfgs(features: np.ndarray, labels: np.ndarray, num_classes: int | None, l2: float, max_iter: int,
               precondition_rank: int, dev: torch.device) -> LinearProbe:
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
    kept for comparison with the paper's recipe and for features too large for full-batch L-BFGS. One thread on
    CPU, as :func:`fit_linear_probe`.
    """
    dev = resolve_device(device)
    with single_thread_on_cpu(dev):
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


# ------------------------------------------------------------------------------------------------------------
# Selection on held-out training items
# ------------------------------------------------------------------------------------------------------------


def validation_split(labels: np.ndarray, *, seed: int = 0, fraction: float = VALIDATION_FRACTION,
                     name: str = "selection") -> tuple[np.ndarray, np.ndarray]:
    """Class-stratified (fit, validation) positions of training ``labels``, seeded: each class holds out
    ``round(fraction * n_c)`` items, at least one and never all (:func:`bobkit.data.sources.stratified_split`).

    Raises ``ValueError`` (naming ``name``) when a class has fewer than two items: it could not be both fitted
    and validated.
    """
    from bobkit.data.sources import stratified_split

    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if (counts < 2).any():
        small = classes[counts < 2][:5].tolist()
        raise ValueError(f"{name} needs at least 2 training items per class to carve a validation split; "
                         f"class(es) {small} have 1")
    return stratified_split(labels, fraction, seed)


def validation_folds(labels: np.ndarray, *, seed: int = 0, fraction: float = VALIDATION_FRACTION,
                     min_items: int = MIN_VALIDATION_ITEMS,
                     name: str = "selection") -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit, validation) position pairs for a selection: one :func:`validation_split` when it holds out at least
    ``min_items``, otherwise ``round(1 / fraction)`` class-stratified folds in which every item is held out once
    (each class's items, seeded-shuffled, dealt round-robin to the folds)."""
    labels = np.asarray(labels)
    single = validation_split(labels, seed=seed, fraction=fraction, name=name)
    if len(single[1]) >= min_items:
        return [single]
    n_folds = max(2, round(1 / fraction))
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        fold[idx[rng.permutation(len(idx))]] = np.arange(len(idx)) % n_folds
    return [(np.flatnonzero(fold != k), np.flatnonzero(fold == k)) for k in range(n_folds)]


def learning_rates(value: Any) -> list[float]:
    """``lr`` as a non-empty list of positive numbers: one number, a list (a selection, see
    :func:`select_on_validation`) or a comma-separated string. Raises ``ValueError`` naming the bad value."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    try:
        rates = [float(v) for v in items if not isinstance(v, bool)]
    except (TypeError, ValueError):
        rates = []
    if not rates or len(rates) != len(items) or not all(math.isfinite(r) and r > 0 for r in rates):
        raise ValueError(f"lr={value!r} must be a positive number or a non-empty list of them")
    return rates


def select_on_validation(candidates: Sequence[Candidate],
                         score: Callable[[Candidate], float]) -> tuple[Candidate, list[float]]:
    """The candidate with the highest validation ``score`` (the first listed on ties; NaN never wins) and every
    candidate's score, in order. Raises ``ValueError`` for no candidates or when every score is NaN."""
    if not candidates:
        raise ValueError("nothing to select from: the candidate list is empty")
    scores = [float(score(c)) for c in candidates]
    finite = [i for i, s in enumerate(scores) if math.isfinite(s)]
    if not finite:
        raise ValueError(f"every candidate {list(candidates)} scored NaN on validation")
    best = max(finite, key=lambda i: (scores[i], -i))
    return candidates[best], scores


# ------------------------------------------------------------------------------------------------------------
# Fine-tuning: optimizer, schedule, loop
# ------------------------------------------------------------------------------------------------------------


class _LayerGrouped(torch.nn.Module):
    """``model`` seen through a ``group_matcher`` (parameter name -> layer ordinal) for timm's layer decay."""

    def __init__(self, model: torch.nn.Module, layer_of: Callable[[str], float]) -> None:
        super().__init__()
        self.model = model
        self._layer_of = layer_of

    def group_matcher(self, coarse: bool = False) -> Callable[[str], float]:
        return lambda name: self._layer_of(name.removeprefix("model."))


def make_optimizer(
    model: torch.nn.Module,
    *,
    lr: float,
    weight_decay: float,
    layer_decay: float | None = None,
    layer_of: Callable[[str], float] | None = None,
) -> torch.optim.Optimizer:
    """AdamW over ``model``'s trainable parameters, timm's way: no weight decay on biases and norms, and with
    ``layer_decay`` a group per depth whose ``lr_scale`` is ``layer_decay ** (depth below the head)``.

    Depths come from the model's ``group_matcher`` (every timm classifier has one), or from ``layer_of``
    (parameter name -> layer ordinal; larger is nearer the output) for models that are not timm classifiers,
    such as a detector around a timm trunk. ``lr_scale`` only takes effect through :func:`warmup_cosine` (timm's
    scheduler multiplies it in; torch's schedulers ignore it).
    """
    import timm.optim

    base = getattr(model, "_orig_mod", model)  # a torch.compile wrapper prefixes names, which layer decay matches
    grouped = _LayerGrouped(base, layer_of) if layer_decay is not None and layer_of is not None else base
    return timm.optim.create_optimizer_v2(grouped, opt="adamw", lr=lr, weight_decay=weight_decay,
                                          layer_decay=layer_decay)


def trunk_layer_of(arch: str, trunk: torch.nn.Module, prefix: str) -> Callable[[str], float]:
    """Layer ordinals for :func:`make_optimizer` of a model built around a timm ``features_only`` trunk.

    Trunk parameter ``<prefix><name>`` takes the depth its counterpart has in the timm classifier ``arch`` (from
    its ``group_matcher``: stem 0, then block by block); every other parameter (necks, heads) sits one layer above
    the deepest trunk layer, so it trains at the full lr and the last trunk block at ``lr * layer_decay``.

    Raises ``ValueError`` naming a trunk parameter with no counterpart (layer decay would silently skip it).
    """
    import timm
    from timm.models import group_parameters

    with torch.device("meta"):  # names only: no memory, no weights
        classifier = timm.create_model(arch, pretrained=False)
    depth = group_parameters(classifier, classifier.group_matcher(coarse=False), reverse=True)
    layers: dict[str, int] = {}
    for name, _ in trunk.named_parameters():
        counterpart = _classifier_name(name)
        if counterpart not in depth:
            raise ValueError(f"layer decay: trunk parameter {name!r} has no counterpart {counterpart!r} in timm's "
                             f"{arch}")
        layers[prefix + name.replace("_orig_mod.", "")] = depth[counterpart]
    top = max(layers.values()) + 1

    def layer_of(name: str) -> float:
        return layers.get(name.replace("_orig_mod.", ""), top)

    return layer_of


def _classifier_name(trunk_name: str) -> str:
    """A ``features_only`` parameter name as the classifier spells it: timm's feature wrappers prefix ``model.``
    (ViT) or flatten ``stages.0`` to ``stages_0`` (FeatureListNet)."""
    name = trunk_name.replace("_orig_mod.", "").removeprefix("model.")
    head, dot, rest = name.partition(".")
    return re.sub(r"^([A-Za-z]\w*?)_(\d+)$", r"\1.\2", head) + dot + rest


def warmup_cosine(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int = 0,
                  warmup_lr: float = 0.0, min_lr: float = 0.0):
    """timm's per-step schedule: linear warm-up from ``warmup_lr`` over ``warmup_steps``, then cosine from the
    optimizer's lr down to ``min_lr`` at ``total_steps``.

    Call ``scheduler.step_update(s + 1)`` after optimizer step ``s``; step ``s`` then runs at
    ``lr_scale * (warmup_lr + (lr - warmup_lr) * s / warmup_steps)`` during warm-up and ``lr_scale * (min_lr +
    (lr - min_lr) * 0.5 * (1 + cos(pi * (s - warmup) / (total - warmup))))`` after (timm scales the warm-up and
    floor values by each group's ``lr_scale`` too, as the paper's MAE-style schedule does). The learning rates of
    step 0 are set here.
    """
    from timm.scheduler import CosineLRScheduler

    warmup = max(0, min(int(warmup_steps), int(total_steps) - 1))
    scheduler = CosineLRScheduler(optimizer, t_initial=max(1, int(total_steps) - warmup), lr_min=float(min_lr),
                                  warmup_t=warmup, warmup_lr_init=float(warmup_lr), warmup_prefix=True,
                                  t_in_epochs=False)
    scheduler.step_update(0)  # without warm-up timm leaves step 0 at the unscaled lr
    return scheduler


# ------------------------------------------------------------------------------------------------------------
# Fine-tuning: the data order, one optimizer step, the loop
# ------------------------------------------------------------------------------------------------------------

#: At most this many micro-batches re-estimate the BatchNorm statistics after fine-tuning
#: (:func:`recalibrate_batchnorm`; fvcore's PreciseBN default).
PRECISE_BN_BATCHES = 200


@dataclass(frozen=True)
class BatchPlan:
    """The data order of a training run: a pure function of ``(n_items, global_batch, total_steps, seed)``.

    Epoch ``e`` visits the items in the permutation drawn from ``(seed, e)``; its steps take consecutive global
    batches of it, the last partial one dropped (``drop_last``, as timm's and MAE's training loaders do). An epoch
    of fewer items than one global batch is one step whose batch wraps around the permutation (as torch's
    ``DistributedSampler`` pads: the paper's Flowers-102 fine-tuning, 1020 images at 8 x 128, took one step per
    epoch). Any step's batch is known without replaying the steps before it, so a resumed run continues the same
    order, and a micro-batch (one of ``processes x accum_steps`` equal parts) is a fixed slice of its global batch.
    """

    n_items: int
    global_batch: int
    total_steps: int
    seed: int

    @classmethod
    def for_epochs(cls, n_items: int, global_batch: int, epochs: float, seed: int) -> BatchPlan:
        """The plan of ``epochs`` epochs (at least one step)."""
        if n_items < 1 or global_batch < 1:
            raise ValueError(f"a training plan needs items and a batch: {n_items} items, batch_size={global_batch}")
        per_epoch = max(1, n_items // global_batch)
        return cls(int(n_items), int(global_batch), max(1, round(epochs * per_epoch)), int(seed))

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.n_items // self.global_batch)

    def __len__(self) -> int:
        return self.total_steps

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The items of epoch ``epoch`` in the order they are visited (read-only)."""
        return _epoch_order(self.n_items, self.seed, int(epoch))

    def batch(self, step: int) -> np.ndarray:
        """Item indices of the global batch of optimizer step ``step`` (in visiting order, not sorted)."""
        if not 0 <= step < self.total_steps:
            raise IndexError(f"step {step} is outside the plan's {self.total_steps} steps")
        epoch, k = divmod(int(step), self.steps_per_epoch)
        order = self.epoch_order(epoch)
        if len(order) < self.global_batch:
            return np.resize(order, self.global_batch)  # wraps around: repeats the order's first items
        return order[k * self.global_batch:(k + 1) * self.global_batch].copy()  # the cached order stays intact

    def micro_batches(self, step: int, accum_steps: int = 1, *, processes: int = 1, rank: int = 0) -> list[np.ndarray]:
        """The ``accum_steps`` micro-batches process ``rank`` of ``processes`` trains on at ``step``: the global
        batch cut into ``processes x accum_steps`` equal consecutive parts, process ``r`` taking parts
        ``r * accum_steps`` to ``(r + 1) * accum_steps - 1``."""
        parts = processes * accum_steps
        if self.global_batch % parts or not 0 <= rank < processes:
            raise ValueError(f"global batch {self.global_batch} into {processes} processes x {accum_steps} "
                             f"micro-batches (rank {rank}): does not split")
        size = self.global_batch // parts
        batch = self.batch(step)
        first = rank * accum_steps
        return [batch[(first + k) * size:(first + k + 1) * size] for k in range(accum_steps)]


@functools.lru_cache(maxsize=2)
def _epoch_order(n_items: int, seed: int, epoch: int) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(n_items)
    order.flags.writeable = False  # shared by the cache
    return order


@dataclass
class FinetuneProgress:
    """What a training loop carries from one optimizer step to the next (all of it is what a resumed run
    restores through :class:`bobkit.tasks.train_state.TrainState`): the model (wrapped in DDP when data-parallel),
    AdamW, timm's per-step scheduler, the fp16 gradient scaler and the next step's index."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    step: int = 0


@dataclass(frozen=True)
class Objective:
    """The loss of a training step: the recipe's criterion and batch mixing, and the run's seed (the model's own
    randomness, drop-path and dropout, is drawn from ``(seed, step, rank)``)."""

    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    mixer: BatchMixer | None
    seed: int
    rank: int = 0


def start_training(model: torch.nn.Module, *, lr: float, weight_decay: float, layer_decay: float | None,
                   total_steps: int, warmup_steps: int, warmup_lr: float = 0.0, min_lr: float = 0.0,
                   precision: str = "fp32", device: torch.device | str = "cpu") -> FinetuneProgress:
    """A fresh :class:`FinetuneProgress` at step 0 (:func:`make_optimizer`, :func:`warmup_cosine`, a scaler for fp16)."""
    optimizer = make_optimizer(model, lr=lr, weight_decay=weight_decay, layer_decay=layer_decay)
    scheduler = warmup_cosine(optimizer, total_steps=total_steps, warmup_steps=warmup_steps, warmup_lr=warmup_lr,
                              min_lr=min_lr)
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")
    return FinetuneProgress(model, optimizer, scheduler, scaler)


def train_step(state: FinetuneProgress, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
               objective: Objective, mean_over: int, execution: Execution) -> torch.Tensor:
    """Optimizer step ``state.step`` over ``micro_batches`` (images and integer labels, on the device); returns
    the step's loss (detached, on the device) and advances ``state``.

    Each micro-batch's mean loss is weighted by ``len(micro-batch) / mean_over`` and its gradient accumulated,
    so the step's gradient is the mean over the ``mean_over`` items of the global batch, however it is split.
    (A data-parallel caller whose gradients are averaged over ``P`` processes passes the per-process batch,
    ``global batch / P``.) Mixing is drawn from ``(seed, step)``, the model's randomness from ``(seed, step,
    rank)``: the step is a function of its inputs and ``state``.
    """
    torch.manual_seed(step_seed(objective.seed, state.step, objective.rank))
    state.optimizer.zero_grad(set_to_none=True)
    total: torch.Tensor | None = None
    last = len(micro_batches) - 1
    for k, (x, y) in enumerate(micro_batches):
        target = y
        if objective.mixer is not None:
            x, target = objective.mixer(x, y, state.step)
        # DDP averages gradients over the processes once per step, at the last micro-batch's backward
        sync = state.model.no_sync() if k < last and hasattr(state.model, "no_sync") else contextlib.nullcontext()
        with sync:
            with execution.autocast():
                loss = objective.criterion(state.model(x), target) * (len(y) / mean_over)
            state.scaler.scale(loss).backward()
        total = loss.detach() if total is None else total + loss.detach()
    if total is None:
        raise ValueError(f"step {state.step} has no micro-batches")
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.step += 1
    state.scheduler.step_update(state.step)
    return total


class PlanSampler:
    """A ``DataLoader`` batch sampler following a :class:`BatchPlan`: micro-batches of ``(step, index)`` keys
    (:class:`~bobkit.tasks.recipe.AugmentedImages` seeds each item's augmentation from them), from
    ``start_step`` on, ``accum_steps`` per step, of process ``rank`` of ``processes``."""

    def __init__(self, plan: BatchPlan, accum_steps: int = 1, *, start_step: int = 0, processes: int = 1,
                 rank: int = 0) -> None:
        self.plan, self.accum_steps, self.start_step = plan, accum_steps, start_step
        self.processes, self.rank = processes, rank

    def __len__(self) -> int:
        return (len(self.plan) - self.start_step) * self.accum_steps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step, micro in self.indices():
            yield [(step, int(i)) for i in micro]

    def indices(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(step, item indices)`` of each micro-batch, in training order."""
        for step in range(self.start_step, len(self.plan)):
            for micro in self.plan.micro_batches(step, self.accum_steps, processes=self.processes, rank=self.rank):
                yield step, micro


def training_batches(
    images: Any,
    labels: np.ndarray,
    plan: BatchPlan,
    data_config: dict[str, Any],
    *,
    image_size: int,
    recipe: Recipe,
    execution: Execution,
    accum_steps: int = 1,
    start_step: int = 0,
    processes: int = 1,
    rank: int = 0,
) -> Iterator[tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]]:
    """``(step, micro-batches on the device)`` for the plan's steps from ``start_step`` on.

    Without ``recipe.augment``: the frozen-feature path, uint8 batches (``execution.loader_workers`` prefetch
    threads) resized and normalised on the device (:class:`~bobkit.features.extract.BatchConverter`). With it: a
    torch ``DataLoader`` over :class:`~bobkit.tasks.recipe.AugmentedImages` whose ``loader_workers`` worker
    processes decode and augment (persistent, pinned batches on a GPU), fed by a :class:`PlanSampler`.
    """
    device = execution.device
    memory = torch.channels_last if execution.channels_last else torch.contiguous_format
    labels_t = torch.as_tensor(np.array(labels, dtype=np.int64))
    sampler = PlanSampler(plan, accum_steps, start_step=start_step, processes=processes, rank=rank)
    if recipe.augment:
        workers = execution.loader_workers
        dataset = AugmentedImages(images, labels_t.numpy(), recipe.transform(data_config, image_size), plan.seed)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                             persistent_workers=workers > 0, pin_memory=execution.pin_memory)
        micro = ((x.to(device, non_blocking=True, memory_format=memory), y.to(device, non_blocking=True))
                 for x, y in loader)
    else:
        convert = BatchConverter(data_config, image_size, device, channels_last=execution.channels_last)
        for_images, for_labels = itertools.tee(micro for _, micro in sampler.indices())
        host = iter_uint8_batches(images, for_images, workers=execution.loader_workers,
                                  pin_memory=execution.pin_memory)
        micro = ((convert(x), labels_t[idx].to(device, non_blocking=True)) for x, idx in zip(host, for_labels))
    for step in range(start_step, len(plan)):
        yield step, [next(micro) for _ in range(accum_steps)]


def recalibrate_batchnorm(model: torch.nn.Module, images: Any, order: np.ndarray, data_config: dict[str, Any], *,
                          image_size: int, batch_size: int, execution: Execution,
                          max_batches: int = PRECISE_BN_BATCHES) -> int:
    """Re-estimate the running statistics of ``model``'s BatchNorm layers on training items ("precise BN").

    Why: BatchNorm evaluates with running averages that each training step moves by ``momentum`` (0.1) toward
    the batch's statistics, so after ``s`` steps a share ``0.9 ** s`` of the *pretraining* statistics is left:
    1% after 44 steps. A channel that barely varies on the new data (pretrained low-level filters on 8x8 digits)
    then evaluates with a variance several times its own, and accuracy collapses although the training loss is
    low: MobileNetV2 on scikit-learn digits with layer decay 0.75 (which keeps those filters) scored 0.70 in eval
    mode, 0.89 with batch statistics. Here the statistics are the exact average over up to ``max_batches``
    batches of ``batch_size`` items taken in ``order`` (plain resize, as evaluation sees them), with the final
    weights; dropout and drop-path are off, as at evaluation. Long runs (the paper's 100 epochs) have forgotten
    the pretraining statistics anyway, and there this changes little.

    Returns the number of batches used (0 when the model has no BatchNorm layer in training mode).
    """
    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.training]
    if not norms or max_batches <= 0:
        return 0
    size = min(int(batch_size), len(order))
    batches = [order[lo:lo + size] for lo in range(0, len(order) - size + 1, size)][:max_batches]
    momenta = [m.momentum for m in norms]
    was_training = model.training
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
        m.train()
    convert = BatchConverter(data_config, image_size, execution.device, channels_last=execution.channels_last)
    try:
        with torch.no_grad():
            for batch in iter_uint8_batches(images, batches, workers=execution.loader_workers,
                                            pin_memory=execution.pin_memory):
                with execution.autocast():
                    model(convert(batch))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return len(batches)


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
    warmup_lr: float = 0.0,
    min_lr: float = 0.0,
    recipe: Recipe | None = None,
    num_classes: int | None = None,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    accum_steps: int = 1,
    precision: str = "fp32",
    channels_last: bool = False,
    loader_workers: int = 0,
    pin_memory: bool = False,
    check_every: int | None = None,
    precise_bn_batches: int = PRECISE_BN_BATCHES,
    world: Any = None,
    state: Any = None,
) -> list[float]:
    """Train ``model`` end to end; return the per-step losses (each the mean over its global batch).

    The loop: a :class:`BatchPlan` (data order), :func:`start_training` (AdamW with optional layer decay,
    warm-up from ``warmup_lr`` then cosine to ``min_lr``, per step), then :func:`train_step` once per step over the
    micro-batches :func:`training_batches` yields, then :func:`recalibrate_batchnorm`. On CPU it runs on one
    thread (:func:`~bobkit.features.device.single_thread_on_cpu`), so the trained weights, and every number made
    from them, are the same bits for any thread count.

    Parameters
    ----------
    model
        Already on ``device`` (see :func:`bobkit.features.device.prepare_model`), with its new head; drop-path is
        set where it is made (``drop_path_rate`` of :func:`bobkit.backbones.create_model`).
    images, labels
        A uint8 array or an :class:`~bobkit.data.ImageDataset`, and the integer labels aligned with it.
    batch_size
        The global batch of one optimizer step, split into ``processes x accum_steps`` equal micro-batches whose
        gradients are accumulated (a batch that does not split raises :class:`~bobkit.tasks.contract.ParameterError`).
        Each epoch has ``len(images) // batch_size`` steps, at least one (:class:`BatchPlan`).
    recipe
        Augmentation, mixing, label smoothing (:class:`~bobkit.tasks.recipe.Recipe`; default: none of them).
    num_classes
        Classes of the mixed targets (default: ``labels.max() + 1``).
    criterion
        The loss of logits and integer labels (default: the recipe's, :meth:`Recipe.criterion`); multi-label
        fine-tuning passes :func:`multilabel_bce`.
    precision, channels_last, loader_workers, pin_memory
        Execution: autocast (``fp16`` adds a gradient scaler), NHWC batches, loader threads (plain path) or worker
        processes (augmented path), page-locked batches on a GPU.
    check_every
        Losses stay on the device and are checked for non-finite values every ``check_every`` steps (default: every
        step on CPU, every 50 on a GPU, so the GPU is not stalled by a host sync per step).
    precise_bn_batches
        Batches :func:`recalibrate_batchnorm` re-estimates BatchNorm statistics on (0: keep the running averages).
    world
        The data-parallel processes (:class:`bobkit.tasks.distributed.World`; default: this process alone). Each
        trains its fixed share of every global batch in DDP; the losses are the means over the processes.
    state
        A :class:`bobkit.tasks.train_state.TrainState` the caller has entered: the loop resumes from its newest
        intact state, saves when it is due and on a stop signal (then raises
        :class:`~bobkit.tasks.train_state.TrainingPreempted`), and saves the final state. Default: nothing kept.

    Raises ``FloatingPointError`` on a non-finite loss (a failed run, never a metric).
    """
    from bobkit.tasks.distributed import World, wrap_ddp
    from bobkit.tasks.train_state import TrainState

    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr={lr!r} must be one positive number here (a list is a selection: see learning_rates)")
    recipe = recipe or Recipe()
    world = world or World(device=str(device))
    state = state if state is not None else TrainState(None)
    micro_batch_size(batch_size, accum_steps, world.size, mixes=recipe.mixes)
    device = resolve_device(device)
    ex = Execution(device=device, precision=resolve_precision(precision, device), channels_last=channels_last,
                   loader_workers=loader_workers, pin_memory=pin_memory and device.type == "cuda")
    labels = np.asarray(labels)
    plan = BatchPlan.for_epochs(len(images), batch_size, epochs, seed)
    progress = start_training(model, lr=lr, weight_decay=weight_decay, layer_decay=layer_decay,
                              total_steps=len(plan), warmup_steps=round(warmup_epochs * plan.steps_per_epoch),
                              warmup_lr=warmup_lr, min_lr=min_lr, precision=ex.precision, device=device)
    objective = Objective(criterion or recipe.criterion(), recipe.mixer(int(num_classes or labels.max() + 1), seed),
                          seed, rank=world.rank)
    every = check_every or (1 if device.type == "cpu" else 50)
    progress.step = state.restore(model, progress.optimizer, progress.scheduler, progress.scaler)
    done = [float(v) for v in state.extra.get("losses", [])][:progress.step]  # the steps of earlier attempts
    losses: list[torch.Tensor] = []
    checked = 0

    def all_losses() -> list[float]:
        """Every step's loss so far, averaged over the processes (collective: every rank calls it together)."""
        mine = torch.stack(losses).float().cpu().tolist() if losses else []
        if world.size > 1:
            mine = [float(np.mean(values)) for values in zip(*world.gather(mine))]
        return done + mine

    with single_thread_on_cpu(device):
        model.train()
        progress.model = wrap_ddp(model, world)
        batches = training_batches(images, labels, plan, data_config, image_size=image_size, recipe=recipe,
                                   execution=ex, accum_steps=accum_steps, start_step=progress.step,
                                   processes=world.size, rank=world.rank)
        for step, micro in batches:
            losses.append(train_step(progress, micro, objective=objective, mean_over=batch_size // world.size,
                                     execution=ex))
            if (step + 1) % every == 0 or step + 1 == len(plan):
                _raise_if_not_finite(losses, checked, lr)
                checked = len(losses)
            state.after_step(step + 1, extra=lambda: {"losses": all_losses()})
        history = all_losses()
        state.finish(len(plan), extra={"losses": history})
        progress.model = model
        recalibrate_batchnorm(model, images, plan.epoch_order(0), data_config, image_size=image_size,
                              batch_size=batch_size // accum_steps, execution=ex, max_batches=precise_bn_batches)
    return history


def multilabel_bce(n_labels: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The multi-label loss of label-set codes: mean binary cross-entropy with logits over items and labels, the
    targets decoded from each item's integer code (bit ``k``: label ``k``, as
    :func:`bobkit.data.datasets.multilabel_targets`), so the data pipeline carries one integer per item."""
    bits = torch.arange(int(n_labels))

    def loss(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        targets = ((codes[:, None] >> bits.to(codes.device)) & 1).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, targets)

    return loss


def _raise_if_not_finite(losses: list[torch.Tensor], start: int, lr: float) -> None:
    """One host sync for the losses since ``start``: raise at the first non-finite one."""
    recent = torch.stack(losses[start:])
    bad = ~torch.isfinite(recent)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise FloatingPointError(
            f"non-finite fine-tuning loss {float(recent[first])} at step {start + first} (lr={lr})"
        )
