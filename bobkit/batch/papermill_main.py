"""``python -m bobkit.batch.papermill_main SPEC.json``: run one notebook with papermill, fast to start and to stop.

The runner starts one such process per cell (a kernel of its own, killable as a whole), so papermill's start-up
and tear-down are paid per cell. Compared with ``python -m papermill`` this saves, per cell:

* most of papermill's import time (on the 2-core dev VM: 2.5 of 4.2 CPU-seconds per cell; 13.7 s -> 5.1 s wall
  per empty cell under load, see ``benchmarks/runner_overhead.py``): jsonschema's IRI format checker (``rfc3987_syntax``) compiles a Lark
  grammar at import time whenever the package is installed (Jupyter Lab pulls it in), and nbformat imports
  jsonschema. nbformat never asks jsonschema to check formats, so marking the format-checker packages absent
  changes no validation. papermill's HDFS / GCS / GitHub stores (``pyarrow.fs``, ``gcsfs``, ``github``) are
  skipped the same way; both libraries catch the ImportError.
* ~0.7 s of graceful kernel shutdown: every output has arrived when the last cell ends, so the kernel is
  stopped at once (``shutdown_kernel="immediate"``).

The spec is a JSON object: ``input``, ``output``, ``parameters`` (dict), ``cwd``, ``execution_timeout`` (s),
``kernel`` (optional). Errors propagate with papermill's usual traceback (the runner classifies that text), and
the exit code is non-zero. This module imports nothing from bobkit, so it stays cheap.

A scheduler's stop signals (Slurm sends SIGTERM and, before a time limit, SIGUSR2 to every process of the job)
are meant for the training in the kernel, which saves its state and stops (:mod:`bobkit.tasks.train_state`); this
process outlives them (a Python handler that does nothing, so the kernel it starts keeps the default
dispositions), and ends when the notebook does. The runner stops it with SIGKILL.

When ``$BOB_PARENT_PID`` is set (the runner sets it), the process asks Linux to SIGKILL it when its parent dies
(``PR_SET_PDEATHSIG``), so a batch killed with SIGKILL leaves no papermill behind (and the kernel, which polls
its own parent, follows within a second or two). Doing this here rather than in a ``preexec_fn`` keeps the
runner's fork safe in the presence of its worker threads.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

# Optional imports guarded by ``except ImportError`` in jsonschema and papermill that a local run never needs.
SKIPPED_IMPORTS = (
    # jsonschema's optional format checkers (nbformat's schema uses none of them; jsonschema only validates
    # formats when asked to, and nbformat does not ask)
    "rfc3987_syntax", "rfc3987", "rfc3986_validator", "rfc3339_validator", "isoduration", "webcolors",
    "jsonpointer", "uri_template", "fqdn",
    # papermill's remote notebook stores
    "pyarrow.fs", "gcsfs", "github",
)


def die_with_parent() -> None:
    """Linux: get SIGKILL when the parent process (``$BOB_PARENT_PID``) dies; exit now if it is already gone."""
    parent = os.environ.get("BOB_PARENT_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the parent died before the request took effect
        os._exit(1)


def outlive_stop_signals() -> None:
    """SIGTERM and SIGUSR2 do not end this process (the training in its kernel answers them; see the docstring)."""
    for signum in (signal.SIGTERM, signal.SIGUSR2):
        signal.signal(signum, lambda *_: None)


def skip_optional_imports() -> None:
    """Mark :data:`SKIPPED_IMPORTS` as absent so importing them raises ``ImportError`` at no cost."""
    for name in SKIPPED_IMPORTS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def pin_kernel_interpreter(folder: Path) -> None:
    """Make kernel ``python3`` run this interpreter, whatever ``python3`` kernelspecs the user has installed.

    Otherwise the first ``python3`` kernelspec on Jupyter's search path wins: one on ``$JUPYTER_PATH``, or a
    user-level one (``~/.local/share/jupyter``) outside a virtual environment, and the cell would run another
    Python (without bobkit, or with other library versions than the provenance records). ``$JUPYTER_PATH`` is
    searched first, so the spec written here goes at its front.
    """
    kernel_dir = folder / "jupyter" / "kernels" / "python3"
    kernel_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (kernel_dir / "kernel.json").write_text(json.dumps(
        {"argv": argv, "display_name": "Python 3 (ipykernel)", "language": "python", "metadata": {}}))
    paths = [str(folder / "jupyter"), os.environ.get("JUPYTER_PATH")]
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in paths if p)


def execute(spec: dict[str, Any], folder: Path | None = None) -> None:
    """Execute the notebook described by ``spec`` (see the module docstring).

    Without a ``kernel`` in the spec, the notebook's ``python3`` kernel runs this interpreter (see
    :func:`pin_kernel_interpreter`; its kernelspec goes to ``folder``).
    """
    skip_optional_imports()
    if not spec.get("kernel") and folder is not None:
        pin_kernel_interpreter(folder)
    import papermill

    papermill.execute_notebook(
        spec["input"],
        spec["output"],
        parameters=spec.get("parameters") or {},
        kernel_name=spec.get("kernel"),
        cwd=spec.get("cwd"),
        log_output=True,
        progress_bar=False,
        execution_timeout=spec.get("execution_timeout"),
        shutdown_kernel="immediate",
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``argv[0]`` is the spec file."""
    argv = sys.argv[1:] if argv is None else argv
    die_with_parent()
    outlive_stop_signals()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    spec_path = Path(argv[0])
    execute(json.loads(spec_path.read_text()), folder=spec_path.parent)


if __name__ == "__main__":
    main()
