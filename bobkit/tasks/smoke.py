"""The runner's self-test task: no model, no data; it returns a number or fails on purpose.

It exists to test and benchmark the batch layer (per-cell papermill overhead, failure recording, OOM retry,
kill-and-resume) without paying for a forward pass. Its metric is a function of its parameters, not a result
about any backbone, and the analysis notebooks ignore the ``smoke`` task.

Mode ``train`` is the stand-in for a fine-tune: a tiny regression MLP trained for ``steps`` optimizer steps through
the same machinery a real training uses (:mod:`bobkit.tasks.train_state` for state that survives, and
:mod:`bobkit.tasks.distributed` for ``$BOB_PROCESSES`` data-parallel processes), so the runner's resume and the
Slurm time-limit tests exercise that code without a backbone.

``publish`` / ``need`` name a tiny artifact (:mod:`bobkit.features.artifacts`: one tensor holding ``value``) that
the cell publishes, or reads (publishing it itself when it is absent, as a real consumer trains what no cell
provides), so the batch's ordering of producers before consumers is tested without a model.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from bobkit.features.artifacts import ArtifactRef, artifact_ref
from bobkit.tasks.blocks import NAME_PATTERN, OUTPUT_DIR, STATE_DIR, STATE_EVERY, seed_param
from bobkit.tasks.contract import Metric, Param, TaskSpec, descriptor
from bobkit.tasks.harness import task_entry

MODES = ("ok", "raise", "nan", "oom", "die", "sleep", "train")
#: The toy training's data: items and input features of a synthetic regression.
TOY_ITEMS, TOY_FEATURES = 256, 8

def artifact_of(name: str) -> ArtifactRef:
    """The smoke artifact called ``name``."""
    return artifact_ref("model", {"smoke": name}, f"smoke artifact {name}")


SPEC = TaskSpec(
    name="smoke",
    summary="The runner's self-test: no model, no data; its score is value + seed.",
    parameters=(
        Param("value", float, 1.0, "the score is value + seed"),
        Param("mode", str, "ok", "what the cell does", choices=MODES),
        Param("sleep_seconds", float, 0.0, "seconds to sleep first", low=0.0, high=86_400.0),
        Param("steps", int, 20, "mode 'train': optimizer steps of the toy training", low=1, high=1_000_000),
        Param("step_seconds", float, 0.0, "mode 'train': seconds each step also sleeps (a stand-in for compute)",
              low=0.0, high=3600.0),
        Param("batch_size", int, 8, "what the runner halves after an out-of-memory error; mode 'train': the global "
              "batch", kind="execution", low=1, high=TOY_ITEMS),
        Param("oom_above_batch", int, None, "mode 'oom': fail only above this batch size (None: always)", low=0),
        Param("publish", str, None, "an artifact name: the cell publishes value as that artifact", pattern=NAME_PATTERN),
        Param("need", str, None, "an artifact name: the cell reads it (published by another cell, else by itself)",
              pattern=NAME_PATTERN),
        seed_param(),
        OUTPUT_DIR,
        STATE_DIR,
        STATE_EVERY,
    ),
    metrics=(
        Metric("score", "value + seed", primary=True),
        descriptor("batch_size_used", "the batch size the cell ran with"),
        descriptor("*_seconds", "wall-clock seconds"),
        descriptor("train_*", "mode 'train': final loss, steps run here, where this run resumed, attempts, "
                   "processes"),
        descriptor("artifact_*", "need: the value of the artifact read, and 1.0 when it was loaded (not made here)"),
    ),
    produces=lambda p: [artifact_of(p["publish"])] if p["publish"] else [],
    needs=lambda p: [artifact_of(p["need"])] if p["need"] else [],
)
#: The declared defaults (what the notebook's parameters cell holds).
PARAMETERS: dict[str, Any] = SPEC.defaults()
validate_params = SPEC.validate


@task_entry(SPEC)
def run(p: dict[str, Any], execution: None = None) -> dict[str, float]:
    """Return ``{"score": value + seed}`` after the requested behaviour (sleep, raise, NaN, OOM, kernel death, or
    a toy training that resumes from ``state_dir``)."""
    start = time.perf_counter()
    if p["sleep_seconds"]:
        time.sleep(p["sleep_seconds"])
    if p["mode"] == "raise":
        raise RuntimeError(f"smoke task asked to fail (value={p['value']})")
    if p["mode"] == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if p["mode"] == "oom" and (p["oom_above_batch"] is None or p["batch_size"] > p["oom_above_batch"]):
        raise MemoryError(f"simulated out of memory at batch_size={p['batch_size']}")
    score = float("nan") if p["mode"] == "nan" else p["value"] + p["seed"]
    metrics = {"score": score, "batch_size_used": float(p["batch_size"])}
    if p["mode"] == "train":
        metrics.update(_train(p))
    if p["need"]:
        metrics.update(_read_artifact(p))
    if p["publish"]:
        _publish_artifact(p["publish"], p["value"])
    metrics["task_seconds"] = time.perf_counter() - start
    return metrics


def _train(p: dict[str, Any]) -> dict[str, float]:
    """The toy training in ``$BOB_PROCESSES`` processes; then its loss over every item, in this process."""
    import torch

    from bobkit.tasks.distributed import micro_batch_size, processes_requested, train

    processes = processes_requested()
    micro_batch_size(p["batch_size"], processes)  # a global batch that does not split fails before any work
    threads = max(1, int(os.environ.get("BOB_NUM_THREADS") or os.cpu_count() or 1) // processes)
    job = {name: p[name] for name in ("seed", "steps", "step_seconds", "batch_size", "state_every_min")}
    result = train("bobkit.tasks.smoke:train_toy", job, processes, state_dir=p["state_dir"], threads=threads)
    model = toy_model(p["seed"])
    model.load_state_dict(result.weights)
    x, y = toy_data(p["seed"])
    with torch.no_grad():
        eval_loss = float(torch.nn.functional.mse_loss(model(x), y))
    record = result.record
    return {"train_final_loss": record["losses"][-1], "train_eval_loss": eval_loss,
            "train_steps_run": float(p["steps"] - record["train_resumed_step"]),
            "train_resumed_step": record["train_resumed_step"], "train_attempts": record["train_attempts"],
            "train_steps_redone": record["train_steps_redone"], "train_processes": float(processes)}


def _publish_artifact(name: str, value: float) -> None:
    import torch

    from bobkit.features import artifacts

    artifacts.note(artifacts.publish(artifact_of(name), {"value": torch.tensor([value])}), "published")


def _read_artifact(p: dict[str, Any]) -> dict[str, float]:
    """The needed artifact's value (published here, from ``value``, when no cell made it)."""
    from bobkit.features import artifacts

    ref = artifact_of(p["need"])
    stored = artifacts.find(ref)
    loaded = stored is not None
    if stored is None:
        _publish_artifact(p["need"], p["value"])
    else:
        artifacts.note(stored, "loaded")
    stored = artifacts.find(ref)
    assert stored is not None
    return {"artifact_value": float(stored.load_tensors()["value"][0]), "artifact_loaded": float(loaded)}


# ----------------------------------------------------------------------------------------------------------------
# The toy training (one job function: the same code in one process or in each data-parallel rank)
# ----------------------------------------------------------------------------------------------------------------


def toy_model(seed: int):
    """A small MLP without BatchNorm (so N ranks at batch k compute what one rank at N*k does)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(TOY_FEATURES, 16), nn.Tanh(), nn.Linear(16, 1))


def toy_data(seed: int):
    """A synthetic regression (inputs, targets) drawn from ``seed``."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(TOY_ITEMS, TOY_FEATURES, generator=generator)
    w = torch.randn(TOY_FEATURES, 1, generator=generator)
    return x, torch.tanh(x @ w) + 0.1 * torch.randn(TOY_ITEMS, 1, generator=generator)


def toy_batch(step: int, batch: int, seed: int):
    """The item indices of global batch ``step``: a pure function of (items, batch, step, seed), epoch by epoch."""
    import numpy as np

    per_epoch = TOY_ITEMS // batch
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(TOY_ITEMS)
    return order[position * batch:(position + 1) * batch]


def train_toy(job: Any, world: Any) -> Any:
    """The toy training job (:func:`bobkit.tasks.distributed.train` runs it): SGD with momentum and a cosine
    schedule; each rank takes its share of every global batch; the state survives in ``job.state_dir``."""
    import torch

    from bobkit.tasks.distributed import JobResult, rank_share, wrap_ddp
    from bobkit.tasks.train_state import TrainState

    p = job.params
    steps, batch = int(p["steps"]), int(p["batch_size"])
    x, y = toy_data(p["seed"])
    model = toy_model(p["seed"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    every = 60.0 * float(p["state_every_min"])
    with TrainState(job.state_dir, every_seconds=every, world=world) as state:
        start = state.restore(model, optimizer, scheduler)
        trained = wrap_ddp(model, world)
        losses = list(state.extra.get("losses", []))
        for step in range(start, steps):
            mine = torch.as_tensor(rank_share(toy_batch(step, batch, p["seed"]), world))
            loss = torch.nn.functional.mse_loss(trained(x[mine]), y[mine])
            optimizer.zero_grad()
            loss.backward()  # DDP averages the ranks' gradients: the gradient of the global batch's mean loss
            optimizer.step()
            scheduler.step()
            losses.append(world.mean(float(loss.detach())))
            if p["step_seconds"]:
                time.sleep(float(p["step_seconds"]))
            state.after_step(step + 1, extra={"losses": losses})
        state.finish(steps, extra={"losses": losses})
        summary = state.summary()
    return JobResult(weights=dict(model.state_dict()), record={"losses": losses, "steps": steps, **summary})
