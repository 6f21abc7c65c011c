"""Data-parallel training on one node: torch's elastic launcher, gloo on 2 CPU processes.

The toy job is the smoke task's (``bobkit.tasks.smoke:train_toy``: an MLP without BatchNorm, SGD with momentum,
a cosine schedule, the global batch split into fixed rank shares).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bobkit.tasks import distributed
from bobkit.tasks.contract import ParameterError
from bobkit.tasks.distributed import Job, World, micro_batch_size, rank_share
from bobkit.tasks.train_state import TrainingPreempted, read_attempts, registered_pids, stop_training

TOY = "bobkit.tasks.smoke:train_toy"
STEPS = 20
PARAMS = {"seed": 3, "steps": STEPS, "step_seconds": 0.0, "batch_size": 64, "state_every_min": 60.0}
# Two ranks at 32 and one at 64 compute the same mathematics in another float32 summation order: one reduction
# over 64 items versus two means over 32 averaged by the all-reduce, in every matrix product and gradient. Each
# order rounds differently (float32's epsilon is 1.2e-7); over 20 momentum steps the losses measured differ by at
# most ~2e-7 relative. 1e-5 leaves room for other CPUs' kernels, while a wrong split (a rank taking other items,
# a gradient summed instead of averaged) moves the losses by 1e-3 or more.
LOSS_RTOL = 1e-5


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> distributed.LaunchResult:
    """The toy job trained by the launcher in 2 processes (global batch 64: 32 per rank)."""
    return distributed.launch(TOY, PARAMS, 2, work_dir=tmp_path_factory.mktemp("ddp"), threads=1)


def test_rank_shares_are_fixed_slices_that_make_up_the_global_batch():
    batch = np.arange(100, 164)
    shares = [rank_share(batch, World(rank=r, size=2)) for r in range(2)]
    assert [len(s) for s in shares] == [32, 32]
    assert np.array_equal(np.concatenate(shares), batch)  # 2 x 32 is the same data as 1 x 64
    assert np.array_equal(rank_share(batch, World()), batch)
    with pytest.raises(ValueError, match="64 items does not split into 3"):
        rank_share(batch, World(rank=0, size=3))


def test_a_global_batch_that_does_not_split_is_refused_naming_the_values():
    assert micro_batch_size(1024, 8, 4) == 32
    with pytest.raises(ParameterError, match=r"batch_size=100 .* processes=8 x accum_steps=1 .* multiple of 8"):
        micro_batch_size(100, 8)


def test_a_job_file_names_bobkit_code_and_holds_json_parameters_only(tmp_path: Path):
    job = Job(TOY, dict(PARAMS), str(tmp_path / "result"), None, 1)
    assert Job.read(job.write(tmp_path / "job.json")) == job
    assert json.loads((tmp_path / "job.json").read_text())["params"] == PARAMS
    with pytest.raises(ValueError, match="must name a function of a bobkit module"):
        Job("os:system", {}, str(tmp_path))
    with pytest.raises(TypeError):  # an object cannot travel in a job file
        Job(TOY, {"model": torch.nn.Linear(1, 1)}, str(tmp_path)).write(tmp_path / "bad.json")
    one = World()
    assert (one.max(2), one.gather("x"), one.broadcast(5), one.mean(1.5), one.is_main) == (2, ["x"], 5, 1.5, True)


@pytest.mark.slow
def test_two_gloo_processes_at_32_follow_one_process_at_64(two_ranks: distributed.LaunchResult):
    one = distributed.train(TOY, PARAMS, 1, threads=1)
    two_losses, one_losses = np.array(two_ranks.record["losses"]), np.array(one.record["losses"])
    assert len(two_losses) == len(one_losses) == STEPS
    np.testing.assert_allclose(two_losses, one_losses, rtol=LOSS_RTOL)
    assert two_losses[-1] < 0.5 * two_losses[0]  # it trained
    weights = two_ranks.load_weights()
    for name, tensor in one.weights.items():
        torch.testing.assert_close(weights[name], tensor, rtol=LOSS_RTOL, atol=1e-6)
    # Rank 0 alone wrote: one weights file and one record, beside the job file.
    assert sorted(p.name for p in two_ranks.folder.iterdir()) == ["result.json", "weights.safetensors"]
    assert sorted(p.name for p in two_ranks.folder.parent.iterdir()) == ["job.json", "result"]


@pytest.mark.slow
def test_a_stopped_data_parallel_training_saves_and_resumes_to_the_same_losses(tmp_path: Path, two_ranks):
    state_dir = tmp_path / "train-state"
    slow = {**PARAMS, "step_seconds": 0.3}
    asked: list[tuple[int, int]] = []

    def stop_when_training() -> None:  # what a Slurm checkpoint does: ask the registered ranks to save and stop
        deadline = time.time() + 240
        while time.time() < deadline and len(registered_pids(state_dir)) < 2:
            time.sleep(0.2)
        time.sleep(2.0)  # a few steps in
        asked.append(stop_training(state_dir, wait_s=60))

    thread = threading.Thread(target=stop_when_training, daemon=True)
    thread.start()
    with pytest.raises(TrainingPreempted) as stopped:
        distributed.launch(TOY, slow, 2, work_dir=tmp_path / "first", state_dir=state_dir, threads=1)
    thread.join(timeout=60)
    assert asked == [(2, 0)]  # both ranks were asked, both ended
    (first,) = read_attempts(state_dir)
    assert first.why == "preempted (SIGUSR2)" and 0 < first.saved_step == first.end_step == stopped.value.step < STEPS
    assert first.world_size == 2

    resumed = distributed.launch(TOY, slow, 2, work_dir=tmp_path / "second", state_dir=state_dir, threads=1)
    attempts = read_attempts(state_dir)
    assert [(a.start_step, a.saved_step, a.why) for a in attempts] == [
        (0, stopped.value.step, "preempted (SIGUSR2)"), (stopped.value.step, STEPS, "finished")]
    assert resumed.record["losses"] == two_ranks.record["losses"]  # same bits as the uninterrupted run
    assert resumed.record["train_resumed_step"] == stopped.value.step


# A real fine-tune (the classification task's, through the shared fine-tune job): ViT-Tiny (LayerNorm, no
# BatchNorm, so a rank's 32 items are normalised as they are in one batch of 64), AdamW, 3 epochs of 2 steps.
# Measured: the 2-process losses differ from the 1-process ones by at most 3.1e-7 relative, the weights by at
# most 2.2e-5 absolute (AdamW divides by sqrt(v), which magnifies the summation-order differences of near-zero
# gradients). The loss tolerance is the toy's (1e-5); a rank on the wrong items moves the losses by 1e-2.
REAL = dict(backbone="vit_tiny_patch16_224.random_init", dataset="fashion_mnist", protocol="finetune",
            image_size=32, max_train=128, max_test=60, epochs=3, lr=1e-3, batch_size=64, seed=0, num_threads=1)
WEIGHT_ATOL = 1e-3


@pytest.mark.slow
def test_a_real_fine_tune_in_two_gloo_processes_at_32_follows_one_process_at_64(tmp_path: Path, monkeypatch):
    from bobkit.features import artifacts
    from bobkit.tasks import classification, trained

    runs = {}
    for processes in (1, 2):
        monkeypatch.setenv(distributed.PROCESSES_ENV, str(processes))
        monkeypatch.setenv(artifacts.ARTIFACTS_ENV, str(tmp_path / f"store-{processes}"))
        result = classification.run(**REAL)
        weights, record = trained.load_model(trained.model_ref(classification.SPEC.validate(REAL)))
        runs[processes] = (result, weights, record)
    (one, one_weights, one_record), (two, two_weights, two_record) = runs[1], runs[2]
    assert (one["train_processes"], two["train_processes"]) == (1.0, 2.0)
    assert one_record["processes"] == 1 and two_record["processes"] == 2
    assert len(one_record["losses"]) == len(two_record["losses"]) == 6
    np.testing.assert_allclose(two_record["losses"], one_record["losses"], rtol=LOSS_RTOL)
    assert one_record["losses"][-1] < 0.8 * one_record["losses"][0]  # it trained
    for name, tensor in one_weights.items():
        torch.testing.assert_close(two_weights[name], tensor, rtol=0, atol=WEIGHT_ATOL)
    assert abs(two["top1"] - one["top1"]) <= 1 / 60  # at most one of the 60 test items on the other side


def test_a_real_fine_tune_whose_batch_does_not_split_over_the_processes_is_refused_before_training(monkeypatch):
    from bobkit.tasks import classification, trained

    monkeypatch.setenv(distributed.PROCESSES_ENV, "3")
    monkeypatch.setattr(trained.distributed, "train", lambda *a, **k: pytest.fail("trained anyway"))
    with pytest.raises(ParameterError, match=r"batch_size=64 does not split into processes=3 x accum_steps=1 equal"):
        classification.run(**REAL)
