"""L-infinity FGSM and PGD on images in the model's input space ``[0, 1]``.

The attacked function takes un-normalised pixels in ``[0, 1]`` (already resized to the model's input size); the
backbone's mean/std normalisation happens inside it (:class:`NormalizedModel`), so epsilons mean pixels:
``epsilon=2`` allows every pixel to move by ``2/255``.

Robust accuracy is reported per sample as "correct on the clean image and on every adversarial example found at
this or any smaller epsilon, at any PGD iterate". Every such example lies inside the larger epsilon ball, so this is
still a valid attack, and it makes the curve non-increasing in epsilon and in the number of steps by construction
(a weaker attack can never look stronger because of an unlucky step).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

ATTACKS = ("fgsm", "pgd")


class NormalizedModel(torch.nn.Module):
    """``model((x - mean) / std)`` for ``x`` in ``[0, 1]``: the attack surface in pixel space."""

    def __init__(self, model: torch.nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def fgsm(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, epsilon: float
) -> torch.Tensor:
    """One signed-gradient step of size ``epsilon / 255`` on the cross-entropy; returns images in ``[0, 1]``."""
    return pgd(model, x, y, epsilon, steps=1, step_size=epsilon, random_start=False)[0]


def pgd(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    *,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected gradient ascent on the cross-entropy inside the L-inf ball of radius ``epsilon / 255``.

    Parameters
    ----------
    model
        Maps images in ``[0, 1]`` to logits (normalisation inside, see :class:`NormalizedModel`); eval mode.
    x, y
        Clean images ``(B, C, H, W)`` in ``[0, 1]`` and labels ``(B,)``.
    epsilon
        Radius in pixel units (``/255``).
    steps
        Gradient steps (0 = only the random start, if any).
    step_size
        Step in pixel units; default ``2.5 * epsilon / steps`` (Madry et al.).
    random_start
        Start from a uniform point in the ball.
    generator
        Random source of the start (for reproducible runs).

    Returns
    -------
    (x_adv, fooled)
        The last iterate, and a boolean ``(B,)``: whether any iterate (start included) was misclassified.
    """
    eps = float(epsilon) / 255.0
    alpha = (2.5 * float(epsilon) / max(steps, 1) if step_size is None else float(step_size)) / 255.0
    x = x.detach()
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    if eps == 0.0:
        # The ball is one point: the clean image.
        with torch.no_grad():
            fooled |= model(x).argmax(1) != y
        return x.clone(), fooled
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device="cpu").to(x.device)
        x_adv = (x + (2 * noise - 1) * eps).clamp(0, 1)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        fooled |= (logits.argmax(1) != y).detach()
        loss = F.cross_entropy(logits, y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    with torch.no_grad():
        fooled |= model(x_adv).argmax(1) != y
    return x_adv.detach(), fooled


def robust_accuracy(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epsilons: Sequence[float],
    *,
    attack: str = "pgd",
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[float, float]:
    """Accuracy under ``attack`` for each epsilon (pixel units), non-increasing in epsilon (see module notes).

    ``images`` are ``[0, 1]`` tensors at the model's input size; ``model`` includes normalisation. Batches are
    processed on the device of ``model``'s first parameter or buffer.
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack={attack!r} is not one of {ATTACKS}")
    if any(e < 0 for e in epsilons):
        raise ValueError(f"epsilons must be >= 0, got {list(epsilons)}")
    model = model.eval()
    device = next(iter(list(model.parameters()) + list(model.buffers()))).device
    order = sorted(set(float(e) for e in epsilons))
    robust = {e: np.zeros(len(images), dtype=bool) for e in order}
    generator = torch.Generator().manual_seed(int(seed))
    for lo in range(0, len(images), batch_size):
        x = images[lo : lo + batch_size].to(device)
        y = labels[lo : lo + batch_size].to(device)
        with torch.no_grad():
            still_correct = model(x).argmax(1) == y
        for eps in order:
            if attack == "fgsm":
                x_adv = fgsm(model, x, y, eps)
                with torch.no_grad():
                    fooled = model(x_adv).argmax(1) != y
            else:
                _, fooled = pgd(model, x, y, eps, steps=steps, step_size=step_size, random_start=random_start,
                                generator=generator)
            still_correct = still_correct & ~fooled
            robust[eps][lo : lo + len(x)] = still_correct.cpu().numpy()
    return {e: float(robust[e].mean()) if len(images) else float("nan") for e in order}
