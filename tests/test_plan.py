"""`bob plan`: the cost model's arithmetic on a two-cell grid, device tables, meta-device profiles, the command;
feasibility on a cell's resources (requeues under its time limit, memory per GPU, remedies); the shipped suites."""

from __future__ import annotations

import math

import pytest

from bobkit.rehearsal.profiles import Profile
from bobkit.rehearsal.throughput import DeviceTable

MIB = 2**20


def _table(**overrides) -> DeviceTable:
    fields = dict(
        name="test-device", device="Test GPU", memory_gib=80.0, precision="fp32", measured="by hand",
        train_over_forward=3.0, fp32_slowdown={"CNN": 2.0}, sgd_step_seconds=0.001, lbfgs_iteration_seconds=0.01,
        fp32_tflops=1e9,  # so large that every probe step costs its measured overhead
        architectures={"resnet50@224": {"images_per_s": 1000.0, "gflops": 8.0}},
        family_tflops={"CNN": 4.0, "other": 2.0},
    )
    fields.update(overrides)
    return DeviceTable(**fields)


def _profile(backbone: str, image_size: int, detection=None) -> Profile:
    return Profile(gflops=8.0, params=25_000_000, feature_dim=2048, saved_mb=80.0, peak_activation_mb=3.0,
                   height=image_size, width=image_size, checkpointed_mb=20.0, input_grad_mb=50.0)


def _two_cells():
    from bobkit.batch.grid import expand_grid

    common = {"backbone": "resnet50.a1_in1k", "dataset": "cifar100", "protocol": "linear_probe",
              "image_size": 224, "max_train": 1000, "max_test": 500, "seed": 0, "probe_l2": 1e-3}
    spec = {"grid": [
        {"task": "classification", **common, "probe_solver": "sgd", "probe_epochs": 90},
        {"task": "robustness", **common, "attacks": ["fgsm"], "epsilons": [0, 1], "max_attack": 10},
    ]}
    return expand_grid(spec)


def test_plan_arithmetic_on_a_two_cell_grid():
    """Worked by hand. Forward image: 1 ms (measured 1000 img/s). Classification probe cell: 1000 + 500 features
    = 1.5 s, SGD 90 epochs x 4 steps x 1 ms = 0.36 s. Robustness cell: the same features from the cache (0 s;
    the paper's way extracts them again: 1.5 s); L-BFGS on 800 fitting items (20% held out): 20 x 10 ms = 0.2 s
    (paper: SGD 90 x 4 x 1 ms = 0.36 s); FGSM at 2 epsilons on 10 images: 20 backward and 10 x (1 + 2) + 20 = 50
    forward passes, (50 + 2 x 20) x 1 ms x 2 (fp32) = 0.18 s."""
    from bobkit.rehearsal.plan import plan_grid
    from bobkit.rehearsal.plan_report import format_plan, plan_rows

    plan = plan_grid(_two_cells(), _table(), profile=_profile)
    assert not plan.skipped
    probe, robust = plan.cells
    assert probe.seconds == pytest.approx(1.5 + 0.36)
    assert probe.paper_seconds == pytest.approx(1.5 + 0.36)
    assert robust.seconds == pytest.approx(0.2 + 0.18)
    assert robust.paper_seconds == pytest.approx(1.5 + 0.36 + 0.18)
    assert (probe.forward_run, robust.forward_run, robust.forward) == (1500, 50, 1550)
    assert robust.backward == 20 and probe.backward == 0
    assert plan.lbfgs_seconds == pytest.approx(1.5 + 0.2 + 0.38)
    total = plan_rows(plan)[-1]
    assert total["hours"] * 3600 == pytest.approx(2.24)
    assert total["paper_hours"] * 3600 == pytest.approx(3.90)
    assert total["forward"] == 1550 and total["forward_paper"] == 3050 and total["images"] == 3000
    # Peak memory: inference = weights (4 B) + 2 x largest activation x batch 256; attacks keep the fp32
    # activations of the input gradient (frozen weights) of a batch of 64.
    assert probe.peak_bytes == pytest.approx(25e6 * 4 + 2 * 3 * MIB * 256)
    assert robust.peak_bytes == pytest.approx(25e6 * 4 + 50 * MIB * 64)
    text = format_plan(plan)
    assert "3.90 / 2.24" not in text  # hours are printed, not seconds
    assert f"{3.90 / 2.24:.2f}x as written" in text and f"{3.90 / 2.08:.2f}x with the L-BFGS probe" in text
    assert "2 cells measured" in text


def test_selections_multiply_the_probe_fits_and_the_training():
    """probe_l2="auto" on 1000 items: 200 held out (enough for one split), 7 L2 values on 800 items + the refit on
    1000: SGD 8 fits x 90 epochs x 4 steps x 1 ms = 2.88 s, L-BFGS 8 x 20 x 10 ms = 1.6 s (the paper's single SGD
    fit: 0.36 s). On 500 items only 100 are held out: five folds of 400, 35 fits + the refit, each 90 x 2 x 1 ms.
    Fine-tuning with two learning rates: each on 80% of the items, then the winner on all: 2 x 0.8 + 1 = 2.6 fits."""
    from bobkit.batch.grid import expand_grid
    from bobkit.rehearsal.plan import plan_grid, probe_fit_sizes, selection_share

    assert probe_fit_sizes(1000, "auto") == [800] * 7 + [1000] and probe_fit_sizes(1000, 0.01) == [1000]
    assert probe_fit_sizes(500, "auto") == [400] * 35 + [500]
    assert selection_share(1e-3) == 1.0 and selection_share([1e-4, 2e-4]) == pytest.approx(2.6)
    common = {"task": "classification", "backbone": "resnet50.a1_in1k", "dataset": "cifar100", "image_size": 224,
              "max_test": 500, "seed": 0}
    cells = expand_grid({"grid": [
        {**common, "protocol": "linear_probe", "probe_solver": "sgd", "probe_epochs": 90, "max_train": 1000},
        {**common, "protocol": "linear_probe", "probe_solver": "sgd", "probe_epochs": 90, "max_train": 500},
        {**common, "protocol": "finetune", "epochs": 2, "lr": [[1e-3, 1e-4]], "max_train": 1000},
    ]})
    auto, folds, tuned = plan_grid(cells, _table(), profile=_profile).cells
    assert auto.probe_seconds == pytest.approx(8 * 0.36) and auto.lbfgs_probe_seconds == pytest.approx(8 * 0.2)
    assert auto.paper_probe_seconds == pytest.approx(0.36)
    assert folds.probe_seconds == pytest.approx(36 * 0.18)
    assert tuned.backward == round(2 * 1000 * 2.6)
    # why probe cells can cost more than the paper's way: the selection repeats the 90-epoch SGD fit
    from bobkit.rehearsal.plan_report import selection_notes

    (note,) = selection_notes(plan_grid(cells, _table(), profile=_profile))
    assert note.startswith("probe selection: 2 SGD probe cell(s) fit 44 probes") and "a fixed probe_l2" in note


def test_a_cell_that_does_not_fit_is_named_and_cells_without_a_cost_model_are_listed():
    from bobkit.batch.grid import expand_grid
    from bobkit.rehearsal.plan import plan_grid
    from bobkit.rehearsal.plan_report import format_plan

    cells = _two_cells()
    plan = plan_grid(cells, _table(memory_gib=3.0), profile=_profile)  # tensors get 89%: 2.67 GiB
    text = format_plan(plan)
    assert [c.cell.task for c in plan.over_memory] == ["robustness"] and not plan.feasible
    over = text.split("over memory: 1 cell(s) need more than the 2.7 GiB")[1]
    assert "robustness" in over and "lower batch_size" in over
    # The runner's self-test has no cost model: listed with the reason, not costed with a guess.
    folder_cells = expand_grid({"grid": [{"task": "smoke"}]})
    plan = plan_grid(folder_cells, _table(), profile=_profile)
    assert plan.cells == [] and "no cost model for task 'smoke'" in plan.skipped[0][1]


def test_device_tables_say_how_each_figure_was_obtained():
    table = _table()
    assert table.forward_seconds("resnet50", "CNN", 224, 8.0) == (pytest.approx(1e-3), "measured")
    # another size of a measured architecture: its FLOP rate (1000 img/s x 8 GFLOP = 8 TFLOP/s)
    assert table.forward_seconds("resnet50", "CNN", None, 80.0) == (pytest.approx(80 / 8000), "flops-scaled")
    # an unmeasured architecture: its family's rate (4 TFLOP/s), else the catch-all
    assert table.forward_seconds("convnext_tiny", "CNN", 224, 8.0) == (pytest.approx(8 / 4000), "family rate")
    assert table.forward_seconds("vit_base", "ViT", 224, 8.0) == (pytest.approx(8 / 2000), "family rate")


def test_the_stored_h100_table_holds_the_recorded_gpu_figures():
    from bobkit.rehearsal.throughput import load_table, table_names

    assert "h100" in table_names()
    table = load_table("h100")
    assert table.architectures["vit_base_patch16_224@224"]["images_per_s"] == pytest.approx(8237.5, rel=1e-3)
    # the recorded fine-tuning figure: 8237.5 forward / 2053.8 training img/s for ViT-B in bf16
    assert table.train_over_forward == pytest.approx(8237.5 / 2053.8, rel=0.01)
    assert set(table.family_tflops) >= {"CNN", "ViT", "hierarchical-ViT"}
    with pytest.raises(ValueError, match="no stored throughput table for device 'a100'.*h100"):
        load_table("a100")


def test_profiles_count_the_flops_and_memory_the_h100_measured(tmp_path, monkeypatch):
    """On the meta device: ViT-B/16 at 224 is 35.1 GFLOPs (the count behind the H100 utilisation figure), and the
    memory model reproduces the measured fine-tuning peak (bf16, batch 64: 5,689 MiB; fp32: 8,593 MiB) within 15%:
    weights x 16 bytes plus the activations saved for the backward pass, with fused attention keeping no L x L
    matrix."""
    monkeypatch.setenv("BOB_CACHE_DIR", str(tmp_path))
    from bobkit.rehearsal import profiles
    from bobkit.rehearsal.profiles import profile

    monkeypatch.setattr(profiles, "_shipped", dict)  # counted here, not read from the shipped file
    vit = profile("vit_base_patch16_224.augreg_in1k", 224)
    assert vit.gflops == pytest.approx(35.126, rel=1e-3) and vit.feature_dim == 768
    for scale, measured_mib in ((0.5, 5689), (1.0, 8593)):
        predicted = vit.params * 16 + vit.saved_mb * MIB * 64 * scale
        assert predicted / MIB == pytest.approx(measured_mib, rel=0.15)
    assert (tmp_path / "plan" / "profiles.json").is_file()  # counted once, then read back
    assert profile("vit_base_patch16_224.augreg_in1k", 224) == vit


def test_detection_profiles_count_the_padded_input_of_a_typical_image(tmp_path, monkeypatch):
    monkeypatch.setenv("BOB_CACHE_DIR", str(tmp_path))
    from bobkit.rehearsal.profiles import profile

    coco = profile("resnet18.random_init", 256, (426, (640, 480)))  # 640x480 -> 341x256 -> padded to 352x256
    square = profile("resnet18.random_init", 256)
    assert (coco.height, coco.width) == (256, 352) and coco.feature_dim == 0
    assert coco.gflops > square.gflops * 352 / 256  # bigger input, and the FPN on top


def test_measured_table_measures_once_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("BOB_CACHE_DIR", str(tmp_path))
    import bobkit.rehearsal.throughput as T

    pairs = [("resnet18.random_init", "resnet18", "CNN", 32)]
    table = T.measured_table(pairs, "cpu")
    entry = table.architectures["resnet18@32"]
    assert entry["images_per_s"] > 0 and entry["gflops"] == pytest.approx(3.64 * (32 / 224) ** 2, rel=0.02)
    assert table.train_over_forward > 1 and table.sgd_step_seconds > 0 and table.fp32_tflops > 0
    assert table.family_tflops["CNN"] == pytest.approx(entry["images_per_s"] * entry["gflops"] / 1e3)

    def refuse(*args, **kwargs):
        raise AssertionError("measured again instead of reading the cache")

    monkeypatch.setattr(T, "measure_forward", refuse)
    again = T.measured_table(pairs, "cpu")
    assert again.architectures == table.architectures and math.isfinite(again.memory_gib)


def test_bob_plan_prints_the_table(tmp_path, monkeypatch, capsys):
    from bobkit.cli import main

    monkeypatch.setenv("BOB_CACHE_DIR", str(tmp_path / "cache"))
    grid = tmp_path / "grid.yaml"
    grid.write_text("grid:\n  - task: classification\n    backbone: resnet18.random_init\n    dataset: cifar100\n"
                    "    protocol: [linear_probe, finetune]\n    image_size: 64\n    epochs: 2\n    max_train: null\n")
    assert main(["plan", str(grid), "--device", "h100", "--cells", str(tmp_path / "cells.csv")]) == 0
    out = capsys.readouterr().out
    assert "plan of" in out and "classification" in out and "total" in out and "saving against" in out
    import pandas as pd

    cells = pd.read_csv(tmp_path / "cells.csv")
    assert len(cells) == 2 and cells.set_index("cell").filter(like="finetune", axis=0)["backward"].item() == 100_000
    assert main(["plan", str(grid), "--device", "nope"]) == 2
    assert "no stored throughput table for device 'nope'" in capsys.readouterr().err


def test_the_plan_counts_a_shared_fine_tune_once_names_a_repeated_one_and_subsampled_splits():
    """OOD's fine-tuned ImageNet classifier is the classification fine-tune of the same backbone and recipe: the OOD
    cell loads those weights (a shared artifact), so the plan charges the training once and says what it saves; a
    training that only looks the same (another precision: another artifact) is named as repeated. Detection's
    n_train default (240) silently subsamples COCO."""
    from bobkit.batch.grid import expand_grid
    from bobkit.rehearsal.plan import plan_grid
    from bobkit.rehearsal.plan_report import format_plan

    recipe = {"backbone": "resnet50.a1_in1k", "dataset": "imagenet_1k", "image_size": 224, "protocol": "finetune",
              "epochs": 2, "lr": 0.001, "max_train": None, "max_test": None}
    cells = expand_grid({"grid": [
        {"task": "classification", **recipe},
        {"task": "ood", **recipe, "targets": ["imagenet_a"]},
        {"task": "detection", "backbone": "resnet50.a1_in1k", "dataset": "coco2017", "protocol": "frozen",
         "image_size": 224, "epochs": 1},
    ]})
    plan = plan_grid(cells, _table(), profile=_profile)
    (shared, seconds), = plan.shared_training
    assert shared.task == "ood" and seconds == pytest.approx(2 * 1_281_167 * 1e-3 * 3.0)  # epochs x n x fwd x 3
    assert not plan.repeated_training
    ood_cost = next(c for c in plan.cells if c.cell.task == "ood")
    assert ood_cost.trained_by == cells[0].label and ood_cost.paper_seconds - ood_cost.seconds == pytest.approx(
        seconds)
    text = format_plan(plan)
    assert "frozen-feature cells" not in text  # a frozen-trunk detector trains its heads: not a frozen-feature cell
    assert "trained once: 1 ood cell(s) use the probe head or fine-tuned weights another cell trains" in text
    other = expand_grid({"grid": [{"task": "classification", **recipe},
                                  {"task": "ood", **recipe, "targets": ["imagenet_a"], "precision": "fp32"}]})
    (repeat, _), = plan_grid(other, _table(), profile=_profile).repeated_training
    assert repeat.task == "ood"
    assert "repeated fine-tuning: 1 ood cell(s)" in format_plan(plan_grid(other, _table(), profile=_profile))
    assert "subset: 1 detection cell(s) read 240 of coco2017's 118,287 train images (n_train=240)" in text


# ----------------------------------------------------------------------------------------------------------------
# On the cell's resources: time limits, requeues, memory per GPU, remedies
# ----------------------------------------------------------------------------------------------------------------

LONG_GRID = """\
resources: {timeout_min: 60, cpus: 64%s}
grid:
  - task: classification
    backbone: resnet50.a1_in1k
    dataset: cifar100
    protocol: finetune
    image_size: 224
    epochs: 100
    max_train: null
    max_test: null
"""


def _long_cells(resources: str = ""):
    import yaml

    from bobkit.batch.grid import expand_grid

    return expand_grid(yaml.safe_load(LONG_GRID % resources))


def test_attempts_lay_resumable_and_non_resumable_work_end_to_end():
    from bobkit.rehearsal.feasibility import attempts_needed

    # training resumes across attempts; the evaluation after it cannot and starts the next attempt
    assert attempts_needed([(100, True, "train"), (30, False, "eval")], 50) == (3, 0.0, "")
    # a piece that cannot resume and does not fit what is left runs until the limit: that time is lost
    assert attempts_needed([(40, False, "a"), (20, False, "b")], 50) == (2, 10.0, "")
    assert attempts_needed([(60, False, "extraction")], 50) == (None, 0.0, "extraction")
    assert attempts_needed([], 0)[0] is None


def test_a_cell_longer_than_its_limit_fails_the_plan_with_its_remedy(tmp_path, monkeypatch, capsys):
    """Worked by hand (1 ms forward, training 3x): 100 epochs x 50,000 images x 3 ms = 15,000 s of fine-tuning
    + 15,000 / 300 periodic saves of 25M x 12 B at 0.5 GB/s (0.6 s each) = 15,030 s, then 10,000 x 1 ms of
    evaluation. An attempt under the job's limit of 60 + 5 min works 3,900 - 120 signal delay - 60 (Slurm may
    signal early) - 300 start-up - 0.6 save = 3,419.4 s: 5 attempts, 4 requeues > max_requeues 3. On 8 GPUs:
    15,000 / (8 x 0.9) + its saves = 2,087.5 s, one attempt."""
    from bobkit.cli import main
    from bobkit.rehearsal import feasibility as F
    from bobkit.rehearsal.plan import plan_grid
    from bobkit.rehearsal.plan_report import format_plan

    plan = plan_grid(_long_cells(), _table(), profile=_profile)
    (cost,) = plan.cannot_finish
    found = cost.feasibility
    assert found.useful_seconds == pytest.approx(3419.4) and (found.attempts, found.requeues) == (5, 4)
    assert found.wall_seconds == pytest.approx(15_030 + 10 + 5 * F.ATTEMPT_STARTUP_S + 4 * 0.6)
    assert found.time_remedies == ["gpus: 8 -> 0.7 h on 8 GPUs, 0 requeue(s) under 1 h with saved state",
                                   "max_requeues: 4 (4.6 h on 1 process(es) under 1 h with saved state)"]
    text = format_plan(plan)
    assert "cannot finish: 1 cell(s)" in text and "classification resnet50.a1_in1k cifar100 finetune" in text
    assert "feasibility: 1 cell(s) cannot finish, 0 over memory" in text

    # bob plan exits 1 naming the cell and its remedy; with either remedy applied it passes
    monkeypatch.setattr("bobkit.rehearsal.throughput.load_table", lambda name: _table())
    monkeypatch.setattr("bobkit.rehearsal.profiles.profile", _profile)
    grid = tmp_path / "long.yaml"
    for extra, code in (("", 1), (", max_requeues: 4", 0), (", gpus: 8", 0)):
        grid.write_text(LONG_GRID % extra)
        assert main(["plan", str(grid), "--device", "test", "--cells", str(tmp_path / "cells.csv")]) == code
        captured = capsys.readouterr()
        assert ("set max_requeues" not in captured.out) and ("max_requeues: 4 (4.6 h" in captured.out) == (code == 1)
    fixed = plan_grid(_long_cells(", max_requeues: 4"), _table(), profile=_profile)
    assert fixed.feasible and fixed.cells[0].feasibility.requeues == 4
    import pandas as pd

    row = pd.read_csv(tmp_path / "cells.csv").iloc[0]  # the last run: gpus 8
    assert (row["processes"], row["gpus"], row["micro_batch"], row["requeues"], bool(row["finishes"])) == (
        8, 8, 8, 0, True)
    assert row["wall_hours"] == pytest.approx((2087.5 + 10 + 300) / 3600, rel=1e-4)
    assert row["gpu_hours_held"] == pytest.approx(8 * row["wall_hours"])


def test_processes_divide_the_training_time_as_the_stated_scaling():
    """On 4 processes the fine-tuning takes 15,000 / (4 x DATA_PARALLEL_EFFICIENCY) s; the evaluation runs in one
    process and is not divided; the cell holds 4 GPUs for its whole wall time."""
    from bobkit.rehearsal.feasibility import ATTEMPT_STARTUP_S, DATA_PARALLEL_EFFICIENCY, Placement, evaluate
    from bobkit.rehearsal.plan import plan_grid

    cost = plan_grid(_long_cells(), _table(), profile=_profile).cells[0]
    save_share = 1 + 0.6 / 300  # a 0.6 s save every 5 minutes
    one = evaluate(cost, Placement(processes=1, gpus=1, cpus=64, timeout_min=600), _table())
    four = evaluate(cost, Placement(processes=4, gpus=4, cpus=64, timeout_min=600), _table())
    assert one.wall_seconds == pytest.approx(15_000 * save_share + 10 + ATTEMPT_STARTUP_S)
    training = 15_000 / (4 * DATA_PARALLEL_EFFICIENCY)
    assert four.wall_seconds == pytest.approx(training * save_share + 10 + ATTEMPT_STARTUP_S)
    assert four.gpu_seconds == pytest.approx(4 * four.wall_seconds) and one.attempts == four.attempts == 1
    # input: 5M images in 4,166.7 s at 400 images/s a core = 3 cores, + one per process
    assert four.cores_needed == pytest.approx(5e6 / training / 400 + 4) and not four.input_bound
    starved = evaluate(cost, Placement(processes=4, gpus=4, cpus=5, timeout_min=600), _table())
    assert starved.input_bound and starved.wall_seconds > four.wall_seconds + 5e6 / 400 - training - 1


def test_memory_falls_with_accumulation_and_checkpointing_as_computed_from_the_profile():
    """The stub profile keeps 80 MiB an image for the backward pass (20 MiB with gradient checkpointing) and has
    25M parameters (16 B each when trained, 4 more per DDP bucket); fp32, so activations count in full."""
    from bobkit.batch.grid import expand_grid
    from bobkit.rehearsal.feasibility import Placement, evaluate
    from bobkit.rehearsal.plan import plan_grid

    cell = {"task": "classification", "backbone": "resnet50.a1_in1k", "dataset": "cifar100", "protocol": "finetune",
            "image_size": 224, "epochs": 1, "max_train": 1000, "max_test": 100, "batch_size": 256}
    table = _table(memory_gib=16.0)  # tensors get 89%: 14.24 GiB
    cells = [*expand_grid({"grid": [cell]}), *expand_grid({"grid": [{**cell, "grad_checkpointing": True}]})]
    plan = plan_grid(cells, table, profile=_profile)  # one run key: checkpointing is how it runs, not what
    plain, checkpointed = plan.cells
    weights = 25e6 * 16
    assert plain.feasibility.micro_batch == 256
    assert plain.feasibility.peak_bytes == pytest.approx(weights + 256 * 80 * MIB)
    assert plain.feasibility.peak_checkpointed_bytes == pytest.approx(weights + 256 * 20 * MIB)
    assert checkpointed.feasibility.peak_bytes == pytest.approx(weights + 256 * 20 * MIB)
    # gradient checkpointing costs one more forward pass per training image (the table measured no slowdown)
    assert checkpointed.feasibility.busy_seconds - plain.feasibility.busy_seconds == pytest.approx(1000 * 1e-3)
    # accumulation keeps the global batch: 256 = 1 process x 2 steps x 128; 4 processes x 2 steps x 32
    two = evaluate(plain, Placement(accum_steps=2), table)
    spread = evaluate(plain, Placement(processes=4, gpus=4, accum_steps=2), table)
    assert (two.micro_batch, spread.micro_batch) == (128, 32)
    assert two.peak_bytes == pytest.approx(weights + 128 * 80 * MIB)
    assert spread.peak_bytes == pytest.approx(25e6 * 20 + 32 * 80 * MIB)
    assert evaluate(plain, Placement(processes=3, gpus=3), table).indivisible.startswith("batch_size 256 does not")
    # over memory: the remedies keep the recipe, cheapest first
    assert plan.over_memory == [plain]
    assert plain.feasibility.memory_remedies == ["accum_steps: 2 fits 10.4 GiB",
                                                 "grad_checkpointing: true fits 5.4 GiB", "gpus: 8 fits 3.0 GiB"]


@pytest.mark.slow
def test_the_shipped_suites_pass_their_own_plan(monkeypatch):
    """bob-full, bob-small and bob-2026 declare the resources that let every cell finish under its time limit
    and fit an H100, planned from the shipped profiles alone (a fresh machine counts nothing: the file is current)."""
    from bobkit.batch.grid import load_grid
    from bobkit.rehearsal import profiles
    from bobkit.rehearsal.plan import plan_grid
    from bobkit.rehearsal.throughput import load_table
    from bobkit.utils.paths import repo_root

    def stale(*args):
        raise AssertionError(f"no shipped profile for {args}: run make profiles")

    monkeypatch.setattr(profiles, "_classifier_profile", stale)
    monkeypatch.setattr(profiles, "_detection_profile", stale)
    monkeypatch.setattr(profiles, "_MEMO", {})
    for suite in ("bob-full", "bob-small", "bob-2026"):
        plan = plan_grid(load_grid(repo_root() / "params" / f"{suite}.yaml"), load_table("h100"))
        assert not plan.skipped and plan.cells
        assert [c.cell.label for c in plan.cannot_finish] == [] and [c.cell.label for c in plan.over_memory] == []
        # the fine-tunes run on several GPUs, so ImageNet's largest need requeues, and saved state carries them
        assert max(c.feasibility.placement.processes for c in plan.cells) > 1


def test_a_cell_without_training_must_finish_in_one_run():
    """Nothing to resume: a probe cell's notebook runs once within timeout_min (the runner's execution timeout).
    1,400 s of features and 0.36 s of probe fit 30 min less the 300 s start-up; not 25 min."""
    from bobkit.rehearsal.feasibility import Placement, evaluate
    from bobkit.rehearsal.plan import plan_grid

    probe = plan_grid(_two_cells()[:1], _table(), profile=_profile).cells[0]
    probe.work[0].seconds = probe.work[1].seconds = 700.0  # train and test features
    assert evaluate(probe, Placement(timeout_min=30, cpus=64), _table()).attempts == 1
    short = evaluate(probe, Placement(timeout_min=25, cpus=64), _table())
    assert short.attempts is None and not short.finishes
    from bobkit.rehearsal.feasibility import time_remedies

    assert time_remedies(probe, short, _table()) == [
        "timeout_min: 29 (it has no training state to resume and takes longer than one attempt under 25 min)"]
