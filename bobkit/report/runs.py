"""The runs behind a results table, and the facts the provenance chapter states about them.

:func:`runs_behind` takes the table's run keys (never whatever a runs folder happens to hold) and looks each up in
the runs folder: its sidecar (status, label, device, code version, error) and its executed notebook. A notebook that
is a symbolic link, or sits in a folder that is one, is not published. :func:`failed_runs` lists the failed cells
of the same folder, which the table (built from complete runs only) leaves out.
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from bobkit.analysis.settings import differing_keys, params_of, readable_params
from bobkit.report.inputs import is_path_part
from bobkit.results.sidecars import SIDECAR, read_sidecar

NOTEBOOK = "executed.ipynb"
#: Packages whose versions the provenance chapter lists (those that move numbers or render the report).
REPORTED_PACKAGES = ("bobkit", "torch", "torchvision", "timm", "numpy", "pandas", "scipy", "scikit-learn",
                     "statsmodels", "matplotlib", "seaborn", "papermill", "nbformat", "jupyter-book", "myst-nb",
                     "sphinx-book-theme", "nh3")


@dataclass
class RunRecord:
    """One run as the provenance chapter lists it."""

    task: str
    run_key: str
    status: str
    label: str = ""
    backbone: str = ""
    dataset: str = ""
    protocol: str = ""
    seed: str = ""
    device: str = ""
    code_version: str = ""
    error: str = ""
    notebook: Path | None = None
    note: str = ""  # why there is no notebook to publish
    href: str = ""  # link from the book's root to the run's page or notebook
    setting_params: dict[str, Any] = field(default_factory=dict)
    setting_detail: str = ""  # what tells its setting from other runs of the same backbone, dataset and protocol

    @property
    def what_ran(self) -> str:
        """``resnet18.tv_in1k · fashion_mnist · linear_probe · 2-shot`` (the detail only where it is needed)."""
        parts = [self.backbone or self.run_key, self.dataset, self.protocol, self.setting_detail]
        return " · ".join(str(p) for p in parts if p)


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def error_text(sidecar: Mapping[str, Any]) -> str:
    """The recorded error of a failed run, one line (sidecars store a dict with ``message``, or a string)."""
    error = sidecar.get("error")
    if isinstance(error, Mapping):
        error = error.get("message") or error.get("kind")
    lines = _text(error).strip().splitlines()
    return lines[-1] if lines else ""


def _linked(path: Path, root: Path) -> bool:
    """True when ``path`` or a folder between ``root`` and it is a symbolic link."""
    current = path
    while current != root and root in current.parents:
        if current.is_symlink():
            return True
        current = current.parent
    return False


def _record(task: str, run_key: str, runs_dir: Path | None, row: Mapping[str, Any]) -> RunRecord:
    record = RunRecord(task=task, run_key=run_key, status="not found",
                       backbone=_text(row.get("display_name") or row.get("backbone")),
                       dataset=_text(row.get("dataset")), protocol=_text(row.get("protocol")),
                       seed=_text(row.get("seed")), device=_text(row.get("device")),
                       setting_params=params_of(row.get("setting_params")))
    if not (is_path_part(task) and is_path_part(run_key)):
        record.status, record.note = "not a run folder name", "the table's run key cannot name a run folder"
        return record
    if runs_dir is None:
        record.note = "no runs folder"
        return record
    run_dir = runs_dir / task / run_key
    if _linked(run_dir, runs_dir):
        record.status, record.note = "not published", "the run folder is a symbolic link"
        return record
    sidecar = read_sidecar(run_dir) if (run_dir / SIDECAR).is_file() else None
    if sidecar is None:
        record.note = f"no {SIDECAR} in {run_dir}"
    else:
        provenance = sidecar.get("provenance") or {}
        record.status = _text(sidecar.get("status")) or "unknown"
        record.label = _text(sidecar.get("label"))
        record.device = record.device or _text(provenance.get("device"))
        record.code_version = _text(sidecar.get("code_version") or provenance.get("git_commit"))
        record.error = error_text(sidecar)
    notebook = run_dir / NOTEBOOK
    if notebook.is_symlink():
        record.note = f"{NOTEBOOK} is a symbolic link: not published"
    elif notebook.is_file():
        record.notebook = notebook
    elif sidecar is not None:
        record.note = f"no {NOTEBOOK}"
    return record


def runs_behind(table_runs: pd.DataFrame, runs_dir: Path | None) -> list[RunRecord]:
    """One record per run key of the table (``table_runs``: one row per run key), looked up in ``runs_dir``."""
    runs_dir = runs_dir.resolve() if runs_dir is not None else None
    records = [_record(_text(row.get("task")), _text(row.get("run_key")), runs_dir, row)
               for row in table_runs.to_dict("records")]
    name_settings(records)
    return sorted(records, key=lambda r: (r.task, r.backbone, r.dataset, r.protocol, r.setting_detail, r.seed,
                                          r.run_key))


def name_settings(records: Iterable[RunRecord]) -> None:
    """Set each record's ``setting_detail``: the setting parameters that differ between runs of the same task,
    backbone, dataset and protocol (``2-shot`` beside ``full data``), so no two settings share a title."""
    groups: dict[tuple[str, ...], list[RunRecord]] = {}
    for record in records:
        groups.setdefault((record.task, record.backbone, record.dataset, record.protocol), []).append(record)
    for group in groups.values():
        keys = differing_keys(r.setting_params for r in group)
        for record in group:
            record.setting_detail = readable_params(record.setting_params, keys) if keys else ""


def failed_runs(runs_dir: Path | None, exclude: Iterable[str] = ()) -> list[RunRecord]:
    """Failed cells recorded in ``runs_dir`` whose keys are not in ``exclude`` (the table's run keys)."""
    if runs_dir is None or not runs_dir.is_dir():
        return []
    skip = set(exclude)
    records = []
    for sidecar_path in sorted(runs_dir.glob(f"*/*/{SIDECAR}")):
        run_dir = sidecar_path.parent
        if run_dir.name in skip or _linked(sidecar_path, runs_dir):
            continue
        sidecar = read_sidecar(run_dir) or {}
        if sidecar.get("status") != "failed":
            continue
        params = sidecar.get("params") or {}
        row = {k: params.get(k) for k in ("backbone", "dataset", "protocol", "seed")}
        setting = sidecar.get("setting_params")
        row["setting_params"] = setting if isinstance(setting, dict) else None
        record = _record(run_dir.parent.name, run_dir.name, runs_dir, row)
        records.append(record)
    name_settings(records)
    return records


# --------------------------------------------------------------------------------------------------------------------
# Versions and devices
# --------------------------------------------------------------------------------------------------------------------

def package_versions(names: Iterable[str] = REPORTED_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (``not installed`` when absent)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit(folder: Path) -> str:
    """The checkout's commit (with ``+changes`` when the work tree differs), or ``""`` outside a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+changes" if dirty else "")


def report_environment() -> dict[str, Any]:
    """Where and with what the report itself was built."""
    from bobkit.utils.paths import repo_root

    return {"python": platform.python_version(), "platform": platform.platform(), "executable": sys.executable,
            "code_version": git_commit(repo_root()), "packages": package_versions()}


def run_facts(records: Iterable[RunRecord], runs_dir: Path | None) -> dict[str, Counter]:
    """Counts over the runs: code versions, devices and the library versions their sidecars recorded."""
    records = list(records)
    libraries: Counter = Counter()
    for record in records:
        if runs_dir is None or record.status in {"not found", "not a run folder name", "not published"}:
            continue
        sidecar = read_sidecar(runs_dir / record.task / record.run_key) or {}
        for name, version in ((sidecar.get("provenance") or {}).get("libraries") or {}).items():
            libraries[f"{name} {version}"] += 1
    return {"code_version": Counter(r.code_version or "unknown" for r in records),
            "device": Counter(r.device or "unknown" for r in records),
            "status": Counter(r.status for r in records),
            "libraries": libraries}
