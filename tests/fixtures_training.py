"""Helpers of the training-state tests: a task run killed with SIGKILL right after a complete state save."""

from __future__ import annotations

KILLED_AFTER_SAVE = """
import json, os, signal, sys
from bobkit.tasks import {task}, train_state

saved = train_state.TrainState._write

def write_then_die(self, step, rng, extra):
    saved(self, step, rng, extra)
    if step == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 right after a complete save

train_state.TrainState._write = write_then_die
{task}.run(**json.loads(sys.argv[1]), state_dir=sys.argv[2])
"""


def killed_after_save(task: str) -> str:
    """Python source that runs ``bobkit.tasks.<task>.run(**json argv[1], state_dir=argv[2])`` and kills itself with
    SIGKILL once the state of step ``argv[3]`` is saved."""
    return KILLED_AFTER_SAVE.format(task=task)
