"""Training state that survives: a bit-identical continuation after save and restore, damaged states set aside,
a stop signal that saves and raises, and a stop asked from another process (what a Slurm checkpoint does)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_training import killed_after_save
from torch import nn

from bobkit.tasks.train_state import (
    TrainingPreempted,
    TrainState,
    read_attempts,
    registered_pids,
    stop_training,
)

STEPS = 8


def toy(seed: int = 0):
    """A model with dropout (torch RNG), AdamW, a warm-up schedule and a CPU grad scaler."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 4))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    return model, optimizer, scheduler, scaler


def train_step(step: int, model, optimizer, scheduler, scaler) -> float:
    """One optimizer step; its batch is a pure function of the step, and it draws from every RNG the state keeps."""
    data = torch.Generator().manual_seed(1000 + step)
    x, y = torch.randn(16, 6, generator=data), torch.randint(0, 3, (16,), generator=data)
    x = x + 0.01 * torch.from_numpy(np.random.standard_normal((16, 6))).float() + 0.01 * random.random()
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return float(loss.detach())


def seed_all(seed: int = 7) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def run(folder: Path | None, stop_at: int | None = None, objects=None, every_seconds: float = 3600.0):
    """The loop a task runs; returns (model, losses). ``stop_at``: send ourselves SIGUSR2 during that step."""
    model, optimizer, scheduler, scaler = objects or toy()
    with TrainState(folder, every_seconds=every_seconds) as state:
        start = state.restore(model, optimizer, scheduler, scaler)
        losses = list(state.extra.get("losses", []))
        for step in range(start, STEPS):
            if step + 1 == stop_at:
                os.kill(os.getpid(), signal.SIGUSR2)
            losses.append(train_step(step, model, optimizer, scheduler, scaler))
            state.after_step(step + 1, extra={"losses": losses})
        state.finish(STEPS, extra={"losses": losses})
    return model, losses


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_resumed_run_continues_bit_identically(tmp_path: Path):
    seed_all()
    straight, straight_losses = run(None)

    seed_all()
    with pytest.raises(TrainingPreempted) as stopped:
        run(tmp_path, stop_at=3)
    assert stopped.value.step == 3 and "SIGUSR2" in str(stopped.value)
    seed_all(99)  # a new process: other RNG states, other initial weights; the saved state must win over both
    resumed, resumed_losses = run(tmp_path, objects=toy(seed=5))

    assert same_weights(straight, resumed)
    assert resumed_losses == straight_losses  # every loss, the three before the stop included (kept in extra)
    attempts = read_attempts(tmp_path)
    assert [(a.start_step, a.saved_step, a.end_step) for a in attempts] == [(0, 3, 3), (3, STEPS, STEPS)]
    assert [a.why for a in attempts] == ["preempted (SIGUSR2)", "finished"]
    assert sorted(p.name for p in tmp_path.glob("step-*")) == [
        "step-000000003.json", "step-000000003.pt", "step-000000008.json", "step-000000008.pt"]


def test_the_stop_signal_saves_raises_and_chains_the_previous_handler(tmp_path: Path):
    calls: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        model, optimizer, scheduler, scaler = toy()
        with pytest.raises(TrainingPreempted):
            with TrainState(tmp_path) as state:
                assert registered_pids(tmp_path) == [os.getpid()]
                state.restore(model, optimizer, scheduler, scaler)
                train_step(0, model, optimizer, scheduler, scaler)
                os.kill(os.getpid(), signal.SIGUSR2)
                state.after_step(1)
                pytest.fail("after_step must raise once a stop was requested")
        assert calls == [signal.SIGUSR2]  # the handler that was there before still heard it
        assert registered_pids(tmp_path) == []  # unregistered on the way out
        handler = signal.getsignal(signal.SIGUSR2)
        assert handler is not None and handler.__name__ == "<lambda>"  # ours is gone, the previous one is back
    finally:
        signal.signal(signal.SIGUSR2, previous)
    restored = TrainState(tmp_path)
    assert restored.restore(*toy()) == 1


def test_a_damaged_state_is_set_aside_and_the_previous_intact_one_used(tmp_path: Path, capsys):
    model, optimizer, scheduler, scaler = toy()
    with TrainState(tmp_path, keep=2) as state:
        state.restore(model, optimizer, scheduler, scaler)
        for step in range(4):
            train_step(step, model, optimizer, scheduler, scaler)
            if step + 1 in (2, 3, 4):
                state.save(step + 1, extra={"at": step + 1})
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == ["step-000000003.pt", "step-000000004.pt"]
    newest = tmp_path / "step-000000004.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, other sha256
    newest.write_bytes(bytes(data))

    state = TrainState(tmp_path)
    assert state.restore(*toy()) == 3 and state.extra == {"at": 3}
    assert "step-000000004 set aside (step-000000004.pt: sha256 differs" in capsys.readouterr().err
    assert len(list(tmp_path.glob("step-000000004.pt.bad-*"))) == 1 and not newest.exists()
    (tmp_path / "step-000000003.json").write_text("{not json")  # the record itself damaged
    (tmp_path / "step-000000009.pt").write_bytes(b"written but never recorded")
    assert TrainState(tmp_path).restore(*toy()) == 0  # nothing intact left: a fresh start
    assert not list(tmp_path.glob("step-*.pt"))  # every damaged or unrecorded state moved aside, none deleted
    assert len(list(tmp_path.glob("step-*.bad-*"))) == 5
    notes = [line for line in (tmp_path / "attempts.jsonl").read_text().splitlines() if '"set_aside"' in line]
    assert len(notes) == 3


def test_without_a_folder_nothing_is_kept_and_no_handler_installed(tmp_path: Path):
    before = signal.getsignal(signal.SIGUSR2)
    model, optimizer, scheduler, scaler = toy()
    with TrainState(None, every_seconds=0) as state:
        assert signal.getsignal(signal.SIGUSR2) is before
        assert state.restore(model, optimizer, scheduler, scaler) == 0
        state.after_step(1)
        state.finish(1)
    assert not list(tmp_path.iterdir())


LOOP = textwrap.dedent("""
    import sys, time
    import torch
    from bobkit.tasks.train_state import TrainState, TrainingPreempted
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    try:
        with TrainState(sys.argv[1]) as state:
            start = state.restore(model, optimizer)
            print("ready", flush=True)
            for step in range(start, 10_000):
                time.sleep(0.05)
                state.after_step(step + 1)
    except TrainingPreempted as stop:
        print("preempted at", stop.step, flush=True)
        sys.exit(3)
""")


@pytest.mark.slow
def test_stop_training_asks_a_running_loop_in_another_process_to_save_and_waits_for_it(tmp_path: Path):
    proc = subprocess.Popen([sys.executable, "-c", LOOP, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert registered_pids(tmp_path) == [proc.pid]
        signalled, still_running = stop_training(tmp_path, wait_s=30)
        assert (signalled, still_running) == (1, 0)
        out = proc.stdout.read()
        assert proc.wait(timeout=30) == 3 and "preempted at" in out
    finally:
        proc.kill()
    (attempt,) = read_attempts(tmp_path)
    step = int(out.split()[-1])
    assert attempt.why == "preempted (SIGUSR2)" and attempt.saved_step == attempt.end_step == step >= 1
    assert TrainState(tmp_path).restore(torch.nn.Linear(2, 1)) == step
    assert stop_training(tmp_path, wait_s=1) == (0, 0)  # nobody left to ask


# ----------------------------------------------------------------------------------------------------------------
# A real fine-tune (the classification task): kill -9 after a save, rerun, same result as without the kill
# ----------------------------------------------------------------------------------------------------------------

FINETUNE = dict(backbone="resnet18.random_init", dataset="fashion_mnist", protocol="finetune", image_size=32,
                max_train=120, max_test=60, epochs=2, lr=3e-3, batch_size=20, seed=0, num_threads=1,
                state_every_min=0.0)
KILLED_AFTER_STEP = 5

KILLED_FINETUNE = killed_after_save("classification")


@pytest.mark.slow
def test_a_fine_tune_killed_after_a_save_resumes_to_the_same_weights_and_top1(tmp_path: Path, monkeypatch):
    import json

    from bobkit.features import artifacts
    from bobkit.tasks import classification

    state_dir = tmp_path / "train-state"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           artifacts.ARTIFACTS_ENV: str(tmp_path / "killed-store")}
    killed = subprocess.run([sys.executable, "-c", KILLED_FINETUNE, json.dumps(FINETUNE), str(state_dir),
                             str(KILLED_AFTER_STEP)], env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "killed-store").exists() or not any((tmp_path / "killed-store").rglob("*.safetensors"))

    monkeypatch.setenv(artifacts.ARTIFACTS_ENV, str(tmp_path / "resumed-store"))
    resumed = classification.run(**FINETUNE, state_dir=str(state_dir))
    monkeypatch.setenv(artifacts.ARTIFACTS_ENV, str(tmp_path / "straight-store"))
    straight = classification.run(**FINETUNE)

    first, second = read_attempts(state_dir)
    assert first.why == "killed" and first.saved_step == KILLED_AFTER_STEP and first.end_step is None
    assert second.start_step == KILLED_AFTER_STEP and second.why == "finished" and second.end_step == 12
    assert resumed["train_resumed_step"] == KILLED_AFTER_STEP and resumed["train_attempts"] == 2
    assert straight["train_resumed_step"] == 0 and resumed["train_steps"] == straight["train_steps"] == 12
    # Same final top-1 and NLL, and bit-identical weights (the artifacts' sha256), as the uninterrupted run.
    assert resumed["top1"] == straight["top1"] and resumed["nll"] == straight["nll"]
    assert resumed.artifacts[0]["sha256"] == straight.artifacts[0]["sha256"]
    assert resumed["train_final_loss"] == straight["train_final_loss"]


@pytest.mark.slow
def test_a_state_saved_by_another_training_is_set_aside_never_resumed(tmp_path: Path, monkeypatch, capsys):
    from bobkit.features import artifacts
    from bobkit.tasks import classification

    state_dir = tmp_path / "train-state"
    short = dict(FINETUNE, epochs=1)
    monkeypatch.setenv(artifacts.ARTIFACTS_ENV, str(tmp_path / "a"))
    classification.run(**short, state_dir=str(state_dir))  # leaves its final state (the runner would remove it)
    monkeypatch.setenv(artifacts.ARTIFACTS_ENV, str(tmp_path / "b"))
    again = classification.run(**short, state_dir=str(state_dir))
    assert again["train_resumed_step"] == 6  # the same training: its final state, nothing trained again
    monkeypatch.setenv(artifacts.ARTIFACTS_ENV, str(tmp_path / "c"))
    capsys.readouterr()
    other = classification.run(**dict(short, lr=1e-3), state_dir=str(state_dir))
    err = capsys.readouterr().err
    assert other["train_resumed_step"] == 0 and "set aside (saved by another training" in err
    assert sorted(p.name for p in state_dir.glob("step-000000006.*.bad-*")) != []
    monkeypatch.setenv(artifacts.ARTIFACTS_ENV, str(tmp_path / "d"))
    fresh = classification.run(**dict(short, lr=1e-3))
    assert other["top1"] == fresh["top1"] and other.artifacts[0]["sha256"] == fresh.artifacts[0]["sha256"]
