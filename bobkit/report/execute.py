"""Running the analysis notebooks for a report: papermill, one kernel per notebook, errors kept readable.

Each kernel starts with :func:`bobkit.analysis.tables.use_readable_tables` switched on, so every DataFrame a notebook
displays is rendered by the report's one table helper. Kernels are started by :class:`QuietKernelManager`: over IPC
(local sockets, so ipykernel has no unencrypted-TCP warning to print) and stopped by a shutdown request without the
interrupt jupyter_client sends first (which made an idle kernel print a KeyboardInterrupt into the build's output). A failing notebook does not stop the others: its executed
copy (with the error in the failing cell) is kept and :class:`NotebookRun` carries the error message.
"""

from __future__ import annotations

import functools
import os
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

KERNEL = "python3"
# Runs in each kernel before the notebook's first cell.
KERNEL_SETUP = "__import__('bobkit.analysis.tables', fromlist=['_']).use_readable_tables()"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class NotebookRun:
    """One analysis notebook's execution: where its executed copy is, how long it took and what failed."""

    name: str
    executed: Path
    figures_dir: Path
    seconds: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when every cell ran."""
        return self.error is None


@functools.cache
def _kernel_manager_class() -> type:
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.paths import jupyter_runtime_dir

    class QuietKernelManager(AsyncKernelManager):
        """A kernel on local IPC sockets, shut down without a preceding SIGINT."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.transport = "ipc"  # local sockets: nothing listens on a TCP port
            # one socket prefix per kernel (the default, "kernel-ipc" in the working folder, is shared by every
            # kernel started from it, and concurrent notebooks would talk to each other's kernels)
            os.makedirs(jupyter_runtime_dir(), exist_ok=True)
            self.ip = os.path.join(jupyter_runtime_dir(), f"bob-{uuid.uuid4().hex[:12]}-ipc")

        async def _async_interrupt_kernel(self) -> None:
            # jupyter_client interrupts before every shutdown; a finished notebook's kernel is idle, and the
            # interrupt only makes it print KeyboardInterrupt. A real interrupt (not shutting down) still goes through.
            if self.shutting_down:
                return
            await super()._async_interrupt_kernel()

    return QuietKernelManager


def __getattr__(name: str) -> Any:
    if name == "QuietKernelManager":  # built on first use: jupyter_client loads only when a report runs
        return _kernel_manager_class()
    raise AttributeError(name)


def error_message(exc: BaseException) -> str:
    """One readable line for a failed notebook: the exception raised in the cell (``ValueError: ...``), with the
    cell's number, without the terminal colour codes papermill keeps."""
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:
        cell = getattr(exc, "exec_count", None)
        where = f" (cell [{cell}])" if cell is not None else ""
        return _ANSI.sub("", f"{ename}: {evalue}{where}").strip()
    text = _ANSI.sub("", f"{type(exc).__name__}: {exc}").strip()
    return text.splitlines()[0] if text else type(exc).__name__


def execute_notebook(source: Path, executed: Path, parameters: dict[str, Any], *, timeout: int = 600,
                     cwd: Path | None = None) -> tuple[float, str | None]:
    """Run one notebook with papermill; returns ``(seconds, error)``. ``executed`` is written even when a cell
    fails."""
    import papermill as pm

    executed.parent.mkdir(parents=True, exist_ok=True)
    # The kernel starts in ``cwd`` through nbclient's resources; papermill's own ``cwd`` chdirs the whole process,
    # and two notebooks run from threads then start a kernel in the other's (or the original) folder.
    resources = {"metadata": {"path": str(cwd)}} if cwd else {}
    start = time.perf_counter()
    error = None
    try:
        pm.execute_notebook(str(source), str(executed), parameters=parameters, kernel_name=KERNEL,
                            resources=resources, execution_timeout=timeout, start_timeout=120,
                            progress_bar=False, log_output=False, kernel_manager_class=_kernel_manager_class(),
                            extra_arguments=[f"--IPKernelApp.exec_lines={KERNEL_SETUP}"])
    except Exception as exc:  # noqa: BLE001 - a failed notebook is reported; the others still run
        error = error_message(exc)
    return time.perf_counter() - start, error


@dataclass
class NotebookJob:
    """What to run: a notebook, where its executed copy and figures go, and its parameters."""

    name: str
    source: Path
    executed: Path
    figures_dir: Path
    parameters: dict[str, Any]

    def relative_parameters(self, cwd: Path | None) -> dict[str, Any]:
        """The papermill parameters with ``figures_dir`` and ``results_path`` relative to the kernel's working
        folder ``cwd``: the executed notebook's injected-parameters cell, published in the book, then shows no
        absolute path of the machine that built it."""
        params = {"figures_dir": str(self.figures_dir), **self.parameters}
        if cwd is not None:
            for name in ("figures_dir", "results_path"):
                if params.get(name):
                    params[name] = Path(os.path.relpath(Path(params[name]).resolve(), Path(cwd).resolve())).as_posix()
        return params


def run_notebooks(jobs: Sequence[NotebookJob], *, workers: int = 1, timeout: int = 600,
                  cwd: Path | None = None) -> list[NotebookRun]:
    """Run ``jobs`` (``workers`` at a time: each notebook has its own kernel, so threads only wait); results in
    the order of ``jobs``."""
    def run(job: NotebookJob) -> NotebookRun:
        job.figures_dir.mkdir(parents=True, exist_ok=True)
        seconds, error = execute_notebook(job.source, job.executed, job.relative_parameters(cwd), timeout=timeout,
                                          cwd=cwd)
        return NotebookRun(job.name, job.executed, job.figures_dir, round(seconds, 2), error)

    if workers > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(run, jobs))
    return [run(job) for job in jobs]
