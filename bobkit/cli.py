"""The ``bob`` command: registry and data listings, batches, results, status and the report."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pandas as pd

if TYPE_CHECKING:
    from bobkit.batch.grid import Cell


def cmd_backbones(args: argparse.Namespace) -> int:
    """Print the backbone registry as a table."""
    from bobkit.backbones import registry_table

    table = registry_table()
    if args.offline:
        table = table[table["available offline"].astype(str).str.lower().isin(["yes", "true"])]
    _print_table(table)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """List the manifest's datasets and reference tables and which are present here; optionally download some,
    or write the example image folder of ``params/examples/own-data.yaml``."""
    from bobkit.data.inventory import status
    from bobkit.data.manifest import download, pin

    if args.example_folder:
        from bobkit.backbones.declared import write_stand_in_checkpoint
        from bobkit.data.example import write_example_folder

        counts = write_example_folder(args.example_folder, checkpoint=write_stand_in_checkpoint)
        print(f"wrote {args.example_folder}: {counts['images']} images in 6 class folders (images/), "
              f"{counts['sketches']} sketches of the same classes (sketches/), 1 corrupt file (images/cat/"
              f"broken.jpg, skipped and named when used) and a stand-in checkpoint (my_checkpoint.safetensors)")
        return 0
    if args.pin:
        record = pin(args.pin[0], args.pin[1])
        print(f"pinned {args.pin[0]}: {record['source']} sha256 {record['sha256']} ({record['size_bytes']} bytes)")
    for name in args.download or []:
        for path in download(name):
            print(f"{name}: {path}")
    _print_table(status(verify=args.verify))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Expand grid files without running them: every name resolves, every cell expands."""
    from bobkit.batch.grid import load_grid

    for path in args.params:
        cells = load_grid(path)
        tasks = pd.Series([c.task for c in cells]).value_counts().to_dict()
        print(f"{path}: {len(cells)} cells {tasks}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Expand a grid (validated first), run the cells that are not done, then optionally build the table."""
    from bobkit.batch.grid import load_grid

    cells = load_grid(args.params)  # raises before anything runs
    if args.build:
        from bobkit.results.schema import check_results_path

        check_results_path(args.results)
    print(f"{args.params}: {len(cells)} cells, runs folder {args.runs_dir}", flush=True)
    _warn_corrupt(cells, args.runs_dir)
    if args.dry_run:
        for cell in cells:
            print(f"  {cell.run_key}  {cell.label}")
        return 0
    from bobkit.batch.backends import get_backend
    from bobkit.features.artifacts import ARTIFACTS_ENV

    if args.artifacts_dir:  # the cells' kernels and jobs inherit it
        os.environ[ARTIFACTS_ENV] = str(Path(args.artifacts_dir).expanduser().resolve())
    backend = get_backend(args.backend, workers=args.workers, kernel=args.kernel, cluster=args.cluster,
                          progress=not args.no_progress)
    try:
        summary = backend.run(cells, args.runs_dir, only_failed=args.only_failed)
    except KeyboardInterrupt:
        # Cells in flight were killed and left pending (no sidecar); finished ones are recorded.
        print(f"interrupted: run the same command to resume (bob status {args.params} shows where it stands)",
              file=sys.stderr)
        return 130
    print(
        f"executed {summary.executed} cell(s): {summary.count('complete')} complete, {summary.count('failed')} failed;"
        f" {summary.count('skipped')} already done, {summary.count('busy')} running elsewhere"
        f" ({summary.seconds:.1f} s)"
    )
    for outcome in summary.outcomes:
        if outcome.status == "failed":
            print(f"  FAILED {outcome.cell.run_key} {outcome.cell.label}: {outcome.error}")
        elif outcome.status == "interrupted":
            print(f"  STOPPED {outcome.cell.run_key} {outcome.cell.label}: {outcome.error} (pending: run the same "
                  "command to resume)")
    if args.build:
        _build_and_print(args.runs_dir, args.results, force=args.force)
    if summary.count("failed") and not args.allow_failures:
        print(f"{summary.count('failed')} cell(s) failed (bob status {args.params} lists them; "
              "--allow-failures exits 0 anyway)", file=sys.stderr)
        return 1
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """Merge complete sidecars into the results table and print a small leaderboard."""
    _build_and_print(args.runs_dir, args.results, force=args.force, include_stale=args.include_stale)
    return 0


def _warn_corrupt(cells: list[Cell], runs_dir: str) -> None:
    """Say which of the grid's sidecars cannot stand as their cell's record (unreadable, not fitting the sidecar
    schema, made by other code than their run key names): those cells run again, the file is kept aside."""
    from bobkit.batch.runner import run_dir_of
    from bobkit.batch.sidecars import set_aside_reason

    for cell in cells:
        problem = set_aside_reason(run_dir_of(cell, runs_dir))
        if problem:
            print(f"warning: unusable sidecar of {cell.run_key} {cell.label} ({problem}): the cell runs again, "
                  "the file is kept as metrics.json.corrupt-*", file=sys.stderr)


def cmd_status(args: argparse.Namespace) -> int:
    """Counts of done / failed / running / pending cells, failures with their first error line."""
    from bobkit.batch.status import format_status, grid_status

    if not Path(args.runs_dir).is_dir():
        print(f"note: runs folder {args.runs_dir!r} does not exist (nothing has run there)", file=sys.stderr)
    print(format_status(grid_status(args.params, args.runs_dir), args.params, args.runs_dir))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Run the analysis notebooks on a results table and build the report book; exit 1 when a notebook failed
    (unless ``--allow-failures``)."""
    from bobkit.report.site import build_report

    results = Path(args.results) if args.results else None
    if results is None and Path("results/results.parquet").exists():
        results = Path("results/results.parquet")
    outcome = build_report(results, Path(args.out), runs_dir=Path(args.runs_dir), notebooks=args.notebooks,
                           jobs=args.jobs, timeout=args.timeout, parameters=_report_parameters(args.set),
                           render_runs=args.render_runs)
    source = outcome.source
    print(f"analysed: {source.results_path or 'the public reference tables'}")
    if source.results_path is not None:
        missing = sum(r.status in {"not found", "not a run folder name"} for r in outcome.runs)
        print(f"runs: {len(outcome.runs)} run keys of the table, from {source.runs_dir} ({source.runs_dir_note})"
              + (f"; {missing} not found there" if missing else ""))
    ok = len(outcome.notebooks) - len(outcome.failures)
    print(f"notebooks: {ok} of {len(outcome.notebooks)} ran")
    for run in outcome.failures:
        print(f"  FAILED {run.name}: {run.error}", file=sys.stderr)
    if outcome.stderr_removed:
        noisy = ", ".join(f"{name} ({count})" for name, count in outcome.stderr_removed.items())
        print(f"stderr output left out of the pages (warnings, progress bars): {noisy}")
    print(f"report: {outcome.index}")
    if outcome.failures and not args.allow_failures:
        print(f"bob report: {len(outcome.failures)} analysis notebook(s) failed; the site shows the errors but is "
              "not ready to publish (fix them, or pass --allow-failures to publish anyway)", file=sys.stderr)
        return 1
    return 0


def cmd_rehearse(args: argparse.Namespace) -> int:
    """Every distinct code path of a grid in miniature, on stand-ins of its datasets: a table, exit 1 on failure."""
    from bobkit.batch.grid import load_grid
    from bobkit.rehearsal import format_table, rehearse

    cells = load_grid(args.params)  # raises before anything runs

    def announce(outcome) -> None:
        if not outcome.passed:
            print(f"FAILED {outcome.label}: {outcome.error}", file=sys.stderr, flush=True)

    rehearsal = rehearse(cells, by=args.by, threads=args.threads, keep=Path(args.keep) if args.keep else None,
                         progress=not args.no_progress, on_outcome=announce)
    print(format_table(rehearsal))
    if not rehearsal.passed:
        print(f"bob rehearse: {len(rehearsal.failed)} group(s) failed; the cells they stand for would fail the "
              "same way in a real run", file=sys.stderr)
        return 1
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """The cost of a grid before it runs: passes, images, device hours and peak memory per task and in total;
    exit 1 when a cell cannot finish under its time limit or fit its GPU's memory (each is listed with remedies)."""
    from bobkit.batch.grid import load_grid
    from bobkit.rehearsal.plan import plan_grid
    from bobkit.rehearsal.plan_report import format_plan, plan_cells_frame
    from bobkit.rehearsal.throughput import load_table, measured_table, measurement_pairs

    cells = load_grid(args.params)
    if args.device:
        table = load_table(args.device)
    else:
        table = measured_table(measurement_pairs(cells), log=lambda m: print(m, file=sys.stderr, flush=True))
    plan = plan_grid(cells, table)
    print(format_plan(plan, args.params))
    if args.cells:
        from bobkit.utils.files import atomic_path

        with atomic_path(args.cells) as tmp:
            plan_cells_frame(plan).to_csv(tmp, index=False)
        print(f"per-cell plan: {args.cells}")
    if not plan.feasible:
        print(f"bob plan: {len(plan.cannot_finish)} cell(s) cannot finish and {len(plan.over_memory)} do not fit "
              "on their resources (listed above, each with its remedy)", file=sys.stderr)
        return 1
    return 0


def _report_parameters(assignments: list[str] | None) -> dict[str, object]:
    """``--set n_boot=200 --set tasks=[retrieval]`` -> papermill parameters (values read as YAML)."""
    import yaml

    parameters: dict[str, object] = {}
    for item in assignments or []:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise ValueError(f"--set: {item!r} is not NAME=VALUE (e.g. n_boot=200)")
        parameters[name] = yaml.safe_load(value)
    return parameters


def _build_and_print(runs_dir: str, results: str, *, force: bool = False, include_stale: bool = False) -> None:
    from bobkit.analysis.board import leaderboard
    from bobkit.analysis.settings import PRIMARY_METRICS, one_execution_per_cell, primary_metrics
    from bobkit.results.schema import check_results_path, write_results
    from bobkit.results.table import build_results, check_replacement

    check_results_path(results)
    table = build_results(runs_dir, include_stale=include_stale)
    _print_left_out(table.attrs)
    if not force:
        check_replacement(table, results)
    path = write_results(table, results)
    print(f"results: {path} ({len(table)} rows, {table['run_key'].nunique()} runs, from {table.attrs['runs_dir']})")
    table = table[table["task"] != "smoke"]  # the runner's self-test scores no backbone
    if table.empty:
        return
    # OOD: accuracy per shifted dataset and the mean corruption accuracy, side by side.
    primary = primary_metrics(table, {**PRIMARY_METRICS, "ood": (r"acc/[^/]+|mca",)})
    controls = set(table.loc[table["method_kind"] == "random", "backbone"])
    for task, rows in primary.groupby("task"):
        rows, _ = one_execution_per_cell(rows)  # a run on another device or precision is not one more seed
        board = leaderboard(rows, metric=None)
        if not board.empty:
            metrics = ", ".join(sorted(rows["metric"].unique()))
            print(f"\nleaderboard: {task} ({metrics}; mean over seeds, higher is better)")
            board = board.round(3).reset_index()
            # a random-init control is a baseline, not a contender, even where it scores above a pretrained one
            board.insert(1, "kind", ["random-init control" if b in controls else "" for b in board["backbone"]])
            _print_table(board)


def _print_left_out(attrs: dict) -> None:
    """What ``bob build`` left out of the table, and why."""
    left_out = attrs.get("left_out", {})
    if left_out.get("stale"):
        print(f"left out {left_out['stale']} stale run(s) made by other code (bob status <grid> lists them; "
              "--include-stale keeps them)", file=sys.stderr)
    if left_out.get("superseded"):
        print(f"left out {left_out['superseded']} earlier run(s) of cells whose declared data or checkpoint changed "
              "since (the latest run of each is kept)", file=sys.stderr)
    if left_out.get("no_notebook"):
        print(f"left out {left_out['no_notebook']} run(s) whose executed.ipynb is gone (bob run re-runs them)",
              file=sys.stderr)
    reasons = attrs.get("corrupt_reasons", {})
    for path in attrs.get("corrupt", []):
        why = f": {reasons[path]}" if path in reasons else ""
        print(f"warning: skipped unusable sidecar {path}{why}", file=sys.stderr)
    if left_out.get("corrupt"):
        print(f"skipped {left_out['corrupt']} unusable sidecar(s) (bob run runs their cells again)", file=sys.stderr)


def _print_table(table: pd.DataFrame) -> None:
    with pd.option_context("display.max_rows", 500, "display.max_columns", 50, "display.width", 200,
                           "display.max_colwidth", 40):
        print(table.to_string(index=False))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``bob``."""
    parser = argparse.ArgumentParser(prog="bob", description="bob-workbook: which pretrained backbone should I use?")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("backbones", help="list the backbone registry")
    p.add_argument("--offline", action="store_true", help="only backbones whose weights are available offline")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("data", help="list datasets and reference tables and whether they are present")
    p.add_argument("--download", nargs="+", metavar="NAME", help="download these manifest entries (sha256-checked)")
    p.add_argument("--verify", action="store_true", help="hash every present file against the manifest")
    p.add_argument("--pin", nargs=2, metavar=("NAME", "FILE"),
                   help="trust FILE as manifest entry NAME's file (one without a published sha256): record its hash")
    p.add_argument("--example-folder", metavar="DIR",
                   help="write an example image folder of your own (classes of photos, textures and faces that "
                        "ship with the setup), as params/examples/own-data.yaml uses")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("validate", help="expand grid files without running them")
    p.add_argument("params", nargs="+")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("run", help="run a grid of cells with papermill")
    p.add_argument("params")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--results", default="results/results.parquet")
    p.add_argument("--backend", choices=["local", "slurm"], default="local")
    p.add_argument("--cluster", default=None, help="submitit cluster for --backend slurm (slurm | local | debug)")
    p.add_argument("--workers", type=int, default=1, help="concurrent papermill processes (local backend)")
    p.add_argument("--only-failed", action="store_true", help="re-run only the cells whose sidecar says failed")
    p.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")
    p.add_argument("--artifacts-dir", default=None, metavar="DIR",
                   help="where cells keep the probe heads and fine-tuned weights they share (every node must see it; "
                        "default $BOB_ARTIFACTS_DIR, else <cache dir>/artifacts locally and <runs dir>/.artifacts "
                        "with --backend slurm)")
    p.add_argument("--build", action="store_true", help="build the results table afterwards")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their run keys, run nothing")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--allow-failures", action="store_true", help="exit 0 even when cells failed")
    p.add_argument("--strict", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    p.add_argument("--force", action="store_true", help="with --build: replace a results table that has more runs")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("build", help="merge sidecars into results/results.parquet")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--results", default="results/results.parquet")
    p.add_argument("--include-stale", action="store_true", help="keep runs made by other code (stale)")
    p.add_argument("--force", action="store_true", help="replace a results table that has more runs")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("status", help="done / failed / running / pending cells of a grid")
    p.add_argument("params")
    p.add_argument("--runs-dir", default="runs")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("rehearse", help="run every code path of a grid in miniature on stand-ins of its data (CPU)")
    p.add_argument("params")
    p.add_argument("--by", choices=["family", "architecture"], default="family",
                   help="pipeline groups per backbone family (default) or per architecture (every combination)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the rehearsed cells")
    p.add_argument("--keep", default=None, metavar="DIR",
                   help="leave the stand-ins, caches and task outputs in this new folder")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_rehearse)

    p = sub.add_parser("plan", help="the cost of a grid before it runs (passes, images, GPU-hours, peak memory); "
                       "exit 1 when a cell cannot finish under its time limit or fit its GPU")
    p.add_argument("params")
    p.add_argument("--device", default=None, metavar="NAME",
                   help="a stored throughput table (e.g. h100); default: measure this machine briefly (cached)")
    p.add_argument("--cells", default=None, metavar="CSV", help="also write the plan of every cell to this file")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("report", help="build the report book: analysis notebooks, overview, provenance")
    p.add_argument("--results", default=None,
                   help="results table (default: results/results.parquet if present, else the public tables)")
    p.add_argument("--out", default="site",
                   help="report folder (new, empty or made by bob report; emptied first); site in OUT/_build/html")
    p.add_argument("--runs-dir", default="runs",
                   help="runs folder, used only when the table does not record the one it was built from")
    p.add_argument("--notebooks", nargs="*", default=None, help="analysis notebooks to run (default: all)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="papermill parameter for every notebook, e.g. --set n_boot=200 (repeatable)")
    p.add_argument("--jobs", type=int, default=1, help="notebooks executed at once")
    p.add_argument("--timeout", type=int, default=600, help="seconds per notebook cell")
    p.add_argument("--render-runs", type=int, default=200,
                   help="runs' notebooks become pages up to this many runs; beyond, they are linked")
    p.add_argument("--allow-failures", action="store_true",
                   help="exit 0 even when an analysis notebook failed (the site shows the errors)")
    p.add_argument("--strict", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bob`` console command; bad input exits 2 with a one-line message."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ValueError, OSError, KeyError) as exc:  # bad input, missing files, no network: one clear line
        print(f"bob {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
