"""FGSM/PGD correctness on a small fixed model, and the robustness task end to end on offline data."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from bobkit.eval.attacks import NormalizedModel, fgsm, pgd, robust_accuracy

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is faster (and immune to a busy shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _fixed_model_and_batch() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A seeded tiny CNN, 48 images in [0, 1], labels = its own clean predictions except every 5th (wrong)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
        torch.nn.Linear(128, 5),
    )
    model = NormalizedModel(net, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)).eval()
    x = torch.rand(48, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::5] = (y[::5] + 1) % 5
    return model, x, y


def _clean_accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_epsilon_zero_is_clean_accuracy_and_curve_non_increasing(attack):
    model, x, y = _fixed_model_and_batch()
    acc = robust_accuracy(model, x, y, [0, 0.5, 1, 2, 4, 8], attack=attack, steps=5, step_size=0.5, batch_size=16)
    assert acc[0.0] == _clean_accuracy(model, x, y)
    values = [acc[e] for e in sorted(acc)]
    assert all(b <= a for a, b in zip(values, values[1:]))
    assert values[-1] < values[0]  # the attack does something on this model


def test_more_pgd_steps_never_raise_accuracy():
    model, x, y = _fixed_model_and_batch()
    accs = [
        robust_accuracy(model, x, y, [1.0], attack="pgd", steps=s, step_size=0.25, seed=3)[1.0]
        for s in (0, 1, 2, 5, 10)
    ]
    assert all(b <= a for a, b in zip(accs, accs[1:])), accs
    assert accs[-1] < accs[0]


def test_perturbations_stay_in_the_ball_and_image_range():
    model, x, y = _fixed_model_and_batch()
    eps = 4.0
    x_fgsm = fgsm(model, x, y, eps)
    x_pgd, _ = pgd(model, x, y, eps, steps=3, step_size=2.0, generator=torch.Generator().manual_seed(0))
    for x_adv in (x_fgsm, x_pgd):
        assert (x_adv - x).abs().max() <= eps / 255 + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
    # FGSM moves (almost) every pixel by exactly epsilon, except where clipped at 0/1
    moved = (x_fgsm - x).abs()
    inside = (x > eps / 255) & (x < 1 - eps / 255)
    assert torch.allclose(moved[inside], torch.full_like(moved[inside], eps / 255), atol=1e-6)


def test_normalized_model_normalises_inside():
    net = torch.nn.Identity()
    model = NormalizedModel(net, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = torch.full((1, 3, 2, 2), 0.75)
    assert torch.allclose(model(x), torch.ones_like(x))


def test_unknown_attack_and_negative_epsilon_rejected():
    model, x, y = _fixed_model_and_batch()
    with pytest.raises(ValueError, match="attack"):
        robust_accuracy(model, x, y, [1], attack="cw")
    with pytest.raises(ValueError, match="epsilons"):
        robust_accuracy(model, x, y, [-1])


# --- the robustness task -----------------------------------------------------------------------------------------

PACKAGED = "mobilenetv2_100.packaged_tv_in1k"
TINY = dict(image_size=32, max_train=300, max_test=300, max_attack=24, epsilons=[0, 1, 4], pgd_steps=2,
            num_threads=1, device="cpu")


def test_calibration_split_is_stratified_and_disjoint():
    from bobkit.tasks.robustness import calibration_split

    labels = np.repeat(np.arange(3), [10, 5, 2])
    fit, held = calibration_split(labels, 0.2, seed=0)
    assert len(np.intersect1d(fit, held)) == 0 and len(fit) + len(held) == len(labels)
    assert np.bincount(labels[held], minlength=3).tolist() == [2, 1, 1]
    assert np.bincount(labels[fit], minlength=3).min() >= 1


def test_a_small_separable_held_out_split_keeps_t_one_and_says_why():
    """The run page's case: T fitted to 0.01 on a small held-out split the probe got all right, ECE 0.235 -> 0.083
    while test NLL went 1.14 -> 85.3. Now T = 1 is kept and recorded, so the scaled metrics equal the raw ones."""
    from bobkit.eval.metrics import TemperatureFallback
    from bobkit.tasks.robustness import calibrated_scores

    rng = np.random.default_rng(0)
    held_logits = rng.normal(size=(30, 5))
    test_logits = rng.normal(size=(200, 5))
    test_labels = np.where(rng.random(200) < 0.7, test_logits.argmax(1), rng.integers(0, 5, 200))
    with pytest.warns(UserWarning, match="kept T = 1: 30 held-out items"):
        m = calibrated_scores((held_logits, held_logits.argmax(1)), (test_logits, test_labels), n_bins=15, seed=0)
    assert m["temperature"] == 1.0 and m["fallback_temperature"] == float(TemperatureFallback.TOO_FEW_ITEMS)
    assert m["n_calibration"] == 30.0
    assert m["nll_ts"] == m["nll"] and m["ece_ts"] == m["ece"]


def test_unknown_parameter_and_bad_values_are_named():
    from bobkit.tasks import robustness

    with pytest.raises(TypeError, match="epsilon"):
        robustness.run(epsilon=[1])
    with pytest.raises(ValueError, match="epsilons"):
        robustness.run(epsilons=[-1])
    with pytest.raises(ValueError, match="cw"):
        robustness.run(attacks=["cw"])


def test_robustness_task_offline():
    import matplotlib

    matplotlib.use("Agg")
    from bobkit.tasks import robustness

    result = robustness.evaluate(backbone=PACKAGED, dataset="fashion_mnist", **TINY)
    m = result.metrics
    for attack in ("fgsm", "pgd"):
        curve = [m[f"acc/{attack}/{e}"] for e in ("0", "1", "4")]
        assert all(b <= a for a, b in zip(curve, curve[1:])), (attack, curve)
    assert m["acc/fgsm/0"] == m["acc/pgd/0"]  # both are the clean accuracy of the attacked subset
    assert m["acc/pgd/4"] <= m["acc/fgsm/4"] + 1e-9 or m["acc/pgd/4"] < m["acc/pgd/0"]
    assert m["top1"] > 0.5 and 0 <= m["ece"] <= 1 and m["nll"] > 0 and 0 <= m["brier"] <= 2
    assert m["temperature"] > 0 and m["nll_ts"] <= m["nll"] + 0.05
    assert m["n_calibration"] == 60 and m["fallback_temperature"] == 1.0  # 60 held-out items: too few to fit T
    assert m["n_train"] == 240 and m["n_test"] == 300
    assert m["se/top1"] == pytest.approx(np.sqrt(m["top1"] * (1 - m["top1"]) / 300))
    assert all(0 < m[f"se/{k}"] < 0.2 for k in ("ece", "nll", "brier", "ece_ts", "nll_ts", "brier_ts"))
    n_attacked = m["n/acc/pgd/1"]
    assert n_attacked == TINY["max_attack"]
    assert m["se/acc/pgd/1"] == pytest.approx(np.sqrt(m["acc/pgd/1"] * (1 - m["acc/pgd/1"]) / n_attacked))
    assert result.reliability.ece == m["ece"]  # the diagram is drawn from the reported ECE's bins
    fig = result.figure()
    assert len(fig.axes) == 2
    assert result.reliability.counts.sum() == 300


def test_execution_settings_are_recorded_and_attacks_stay_monotone():
    from bobkit.tasks import robustness

    params = {**TINY, "max_attack": 8, "epsilons": [0, 2]}
    probe = robustness.run(backbone=PACKAGED, dataset="fashion_mnist", precision="bf16", loader_workers=1, **params)
    assert probe["exec_cuda"] == 0.0 and probe["exec_bf16"] == 1.0 and probe["exec_autocast_bits"] == 16.0
    assert probe["exec_loader_workers"] == 1.0 and probe["exec_channels_last"] == 1.0  # auto: a CNN, NHWC
    tuned = robustness.run(backbone=PACKAGED, dataset="fashion_mnist", protocol="finetune", precision="bf16",
                           channels_last=False, grad_checkpointing=True,
                           **{**params, "max_train": 64, "max_test": 64, "batch_size": 32})
    assert tuned["exec_bf16"] == 1.0 and tuned["exec_channels_last"] == 0.0
    assert tuned["exec_grad_checkpointing"] == 1.0
    for m in (probe, tuned):  # attacks run in fp32 through the (checkpointed) model
        assert m["acc/pgd/2"] <= m["acc/pgd/0"] and m["acc/fgsm/2"] <= m["acc/fgsm/0"]
