"""What a report is built from, checked before anything runs: notebook names, the results table and the runs behind
it, and an output folder that is safe to clear.

Names that become paths (notebook names, task names and run keys from a table) are checked against strict patterns,
so ``--notebooks ../x`` or a run key ``../../etc`` never reaches the file system. The output folder is cleared only
when it is new, empty, or marked as a report folder by an earlier build (the ``.bob-report`` marker), and clearing
removes entries inside it without following symbolic links: nothing outside it is ever deleted.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from bobkit.utils.files import atomic_path

#: Analysis notebooks are named ``NN_words`` (``01_leaderboard``).
NOTEBOOK_NAME = re.compile(r"^\d{2}_[A-Za-z0-9_]+$")
#: A task name or run key that may become one folder name (no separators, no leading dot).
PATH_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: The file that marks a folder as made by ``bob report`` (and so safe for the next build to clear).
MARKER = ".bob-report"


class ReportInputError(ValueError):
    """A report input is unusable; the message names the parameter and the bad value."""


def analysis_dir() -> Path:
    """The shipped analysis notebooks (``notebooks/analysis``)."""
    from bobkit.utils.paths import repo_root

    return repo_root() / "notebooks" / "analysis"


def analysis_notebooks(source_dir: Path | None = None) -> list[str]:
    """Names (stems) of the analysis notebooks in ``source_dir`` (default: the shipped ones), in order."""
    folder = source_dir or analysis_dir()
    return sorted(p.stem for p in folder.glob("[0-9][0-9]_*.ipynb") if NOTEBOOK_NAME.match(p.stem))


def validate_notebook_names(names: Sequence[str] | None, source_dir: Path | None = None) -> list[str]:
    """The notebooks to run: ``names`` checked (pattern, then existence), or all of them when ``None``."""
    available = analysis_notebooks(source_dir)
    if names is None:
        return available
    for name in names:
        if not isinstance(name, str) or not NOTEBOOK_NAME.match(name):
            raise ReportInputError(f"--notebooks: {name!r} is not an analysis notebook name (NN_words, e.g. "
                                   f"01_leaderboard); available: {available}")
        if name not in available:
            raise ReportInputError(f"--notebooks: no analysis notebook {name!r}; available: {available}")
    if len(set(names)) != len(names):
        raise ReportInputError(f"--notebooks: names repeat in {list(names)}")
    return list(names)


def is_path_part(text: object) -> bool:
    """True when ``text`` can safely be one folder name (a task name or a run key)."""
    return isinstance(text, str) and bool(PATH_PART.match(text)) and ".." not in text


# --------------------------------------------------------------------------------------------------------------------
# The results table and its runs
# --------------------------------------------------------------------------------------------------------------------

RUN_COLUMNS = ("run_key", "task", "backbone", "display_name", "dataset", "protocol", "seed", "device",
               "setting_params")


@dataclass
class TableSource:
    """The table a report analyses and where the runs behind it are.

    ``runs`` has one row per run key of the table (``RUN_COLUMNS``); ``runs_dir_note`` says where ``runs_dir``
    came from (recorded in the table, or the ``--runs-dir`` fallback)."""

    results_path: Path | None
    runs: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(RUN_COLUMNS)))
    runs_dir: Path | None = None
    runs_dir_note: str = ""
    n_rows: int = 0


def shown_path(path: str | os.PathLike[str]) -> str:
    """``path`` as the report's pages show it, never as the machine's absolute path: relative to the folder
    ``bob report`` runs in when inside it, else under ``~`` when inside the home folder, else relative to the
    working folder (``../data/results.parquet``)."""
    target = Path(path).expanduser().resolve()
    here = Path.cwd().resolve()
    if target == here or here in target.parents:
        return target.relative_to(here).as_posix() or "."
    home = Path.home().resolve()
    if home in target.parents:
        return "~/" + target.relative_to(home).as_posix()
    return Path(os.path.relpath(target, here)).as_posix()


def read_table_source(results_path: Path | str | None, runs_dir_fallback: Path | str | None) -> TableSource:
    """Read the results table (``None``: the public reference tables, which have no runs) and find its runs folder:
    the one the table records (``attrs["runs_dir"]``, written by ``bob build``), else ``runs_dir_fallback``."""
    if results_path is None:
        return TableSource(None, runs_dir_note="no results table: the analysis uses the public reference tables")
    from bobkit.results.schema import read_results

    path = Path(results_path).resolve()
    if not path.is_file():
        raise ReportInputError(f"--results: no results table at {path}")
    table = read_results(path)
    recorded = table.attrs.get("runs_dir")
    if recorded:
        runs_dir, note = Path(recorded), f"recorded in the table ({path.name}) by bob build"
    elif runs_dir_fallback is not None:
        runs_dir = Path(runs_dir_fallback).resolve()
        note = ("the table does not record its runs folder (built before bob build recorded it, or a CSV): "
                f"using --runs-dir {shown_path(runs_dir)}")
    else:
        runs_dir, note = None, "the table does not record its runs folder and no --runs-dir was given"
    runs = table[[c for c in RUN_COLUMNS if c in table]].drop_duplicates("run_key").reset_index(drop=True)
    return TableSource(path, runs=runs, runs_dir=runs_dir, runs_dir_note=note, n_rows=len(table))


# --------------------------------------------------------------------------------------------------------------------
# The output folder
# --------------------------------------------------------------------------------------------------------------------

def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_out_dir(out: Path | str, protected: Iterable[Path | str | None] = ()) -> Path:
    """The resolved output folder, after checking it may be cleared: it is new, empty or a report folder (has the
    marker), and it is not, nor contains, anything in ``protected`` (the runs, the table, the notebooks)."""
    out = Path(out).expanduser().resolve()
    if out == Path(out.anchor) or out == Path.home().resolve():
        raise ReportInputError(f"--out: refusing to use {out} as the report folder")
    for item in protected:
        if item is None:
            continue
        item = Path(item).resolve()
        if _inside(item, out):
            raise ReportInputError(f"--out: {out} holds {item}, which the report reads; choose another folder")
    if out.exists() and not out.is_dir():
        raise ReportInputError(f"--out: {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ReportInputError(f"--out: {out} is not empty and was not made by bob report (no {MARKER} file); "
                               "choose a new or empty folder")
    return out


def clear_out_dir(out: Path) -> Path:
    """Empty a folder :func:`check_out_dir` accepted and mark it; links inside are removed, never followed."""
    out.mkdir(parents=True, exist_ok=True)
    for entry in out.iterdir():
        if entry.is_symlink() or not entry.is_dir():
            entry.unlink()
        else:
            shutil.rmtree(entry)
    with atomic_path(out / MARKER) as tmp:
        tmp.write_text("made by bob report: the next build empties this folder\n", encoding="utf-8")
    return out
